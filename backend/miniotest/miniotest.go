// Package miniotest starts a real MinIO server for a test, the way
// net/http/httptest starts an HTTP server: on 127.0.0.1, on a free port,
// with a private data directory and random root credentials, torn down
// when the test ends.
//
// The server binary is found through MEDIAFS_MINIO_BIN, then `minio` on
// PATH, then the cache that scripts/install-minio.sh fills
// ($MEDIAFS_CACHE or $HOME/.cache/mediafs, under bin/, the name
// cachedBinary). That build carries a one-method fix for streaming
// responses (see scripts/install-minio.sh) the change-feed tests need; a
// minio on PATH or named by MEDIAFS_MINIO_BIN must have it too. A missing
// binary fails the test instead of skipping it: a suite that silently
// skips its end-to-end tests would pass without testing anything.
//
// It must never be imported outside tests, and never puts credentials in
// argv or in the test log. Linux only: the server is tied to the test
// process with a parent-death signal, so a test binary killed by
// `go test -timeout` leaves no MinIO behind.
package miniotest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

const (
	// readyTimeout bounds how long a start or restart may take.
	readyTimeout = 60 * time.Second
	// stopTimeout is how long Stop waits after SIGTERM before SIGKILL.
	stopTimeout = 15 * time.Second
	// startAttempts covers the race between picking a free port and MinIO
	// binding it: another process may take the port in between.
	startAttempts = 3
	// logTailBytes is how much of MinIO's output a failure report shows.
	logTailBytes = 8 << 10
)

// Server is a running (or stopped) MinIO server owned by one test.
type Server struct {
	// Endpoint is the server's URL, "http://127.0.0.1:PORT".
	Endpoint string
	// Host is Endpoint without the scheme, the form minio.New takes.
	Host string
	// AccessKey and SecretKey are the root credentials.
	AccessKey, SecretKey string

	bin      string
	dataDir  string
	certsDir string
	logPath  string
	console  string // console listen address, "127.0.0.1:PORT"

	mu   sync.Mutex
	proc *process // nil while stopped
	runs int      // how many times the server was started
}

// process is one run of the MinIO binary.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
	err  error         // exit status, valid after done is closed
}

// Start starts a MinIO server and waits until it is ready. The server is
// stopped and its data removed when the test ends. It fails the test if the
// binary cannot be found or the server does not become ready in time.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := findBinary()
	if err != nil {
		t.Fatalf("miniotest: %v", err)
	}
	dir := t.TempDir()
	s := &Server{
		AccessKey: "mediafs-" + randomHex(t, 6),
		SecretKey: randomHex(t, 20),
		bin:       bin,
		dataDir:   filepath.Join(dir, "data"),
		certsDir:  filepath.Join(dir, "certs"),
		logPath:   filepath.Join(dir, "minio.log"),
	}
	for _, d := range []string{s.dataDir, s.certsDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatalf("miniotest: %v", err)
		}
	}
	// Registered after t.TempDir, so it runs first: the server is gone
	// before its data directory is removed. On any failure of the test,
	// MinIO's side of the story is printed once, here.
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("miniotest: MinIO output (%s):\n%s", s.logPath, s.logTail())
		}
	})

	for attempt := 1; ; attempt++ {
		api, console := freePort(t), freePort(t)
		s.Host = "127.0.0.1:" + strconv.Itoa(api)
		s.Endpoint = "http://" + s.Host
		s.console = "127.0.0.1:" + strconv.Itoa(console)
		err := s.start()
		if err == nil {
			return s
		}
		var early *exitedError
		if !errors.As(err, &early) || attempt == startAttempts {
			t.Fatalf("miniotest: %v (MinIO's output follows at the end of the test)", err)
		}
		t.Logf("miniotest: %v; retrying on other ports", err)
	}
}

// Client returns a minio-go client logged in as the root user.
func (s *Server) Client() *minio.Client {
	c, err := minio.New(s.Host, &minio.Options{
		Creds:  credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Secure: false,
	})
	if err != nil {
		// minio.New fails only on a malformed endpoint, which Start built.
		panic(fmt.Sprintf("miniotest: client for %s: %v", s.Endpoint, err))
	}
	return c
}

// CreateBucket creates a bucket or fails the test.
func (s *Server) CreateBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client().MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("miniotest: create bucket %q: %v", name, err)
	}
}

// Env returns the environment a client process (the mediafs daemon) needs
// to log in, as KEY=value pairs to append to exec.Cmd.Env.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
	}
}

// Stop stops the server, to simulate an outage: SIGTERM, then SIGKILL if it
// has not exited after a while. It returns once the process is gone. The
// data directory and port are kept for Restart. Stopping a stopped server
// does nothing. Stop may be called from any goroutine.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

// PID returns the process id of the running server, or 0 while it is
// stopped. Tests use it to freeze the server (SIGSTOP) and so simulate a
// hung object store; a test that does must SIGCONT it before the test
// ends, or Stop waits stopTimeout before it kills the frozen process.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// Restart starts a stopped server again on the same port, with the same
// data and credentials, and waits until it is ready. A running server is
// stopped first.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		t.Fatalf("miniotest: restart: %v (MinIO's output follows at the end of the test)", err)
	}
}

func (s *Server) stopLocked() {
	p := s.proc
	if p == nil {
		return
	}
	s.proc = nil
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// exitedError reports a server that exited before it became ready, which
// on a first start is most likely a port taken by someone else.
type exitedError struct{ err error }

func (e *exitedError) Error() string {
	return fmt.Sprintf("MinIO exited before it was ready: %v", e.err)
}

// start runs the binary and waits until the server is ready. On failure
// the process is stopped.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return errors.New("MinIO is already running")
	}
	s.runs++

	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy of the descriptor
	fmt.Fprintf(logf, "--- miniotest: run %d on %s ---\n", s.runs, s.Endpoint)

	cmd := exec.Command(s.bin, "server", s.dataDir,
		"--address", s.Host,
		"--console-address", s.console,
		// Without this MinIO would look in ~/.minio/certs and, finding a
		// certificate there, serve TLS.
		"--certs-dir", s.certsDir,
	)
	cmd.Env = s.childEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	p, err := spawn(cmd)
	if err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	s.proc = p
	if err := s.waitReady(p); err != nil {
		s.stopLocked()
		return err
	}
	return nil
}

// spawn starts cmd and reaps it from one goroutine locked to its OS thread.
// Pdeathsig fires when the thread that forked the child exits, not the
// process, and the Go runtime may retire threads; keeping the forking
// thread busy in Wait until the child exits makes the signal mean "the
// test process died".
func spawn(cmd *exec.Cmd) (*process, error) {
	p := &process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the goroutine ends locked, so its thread,
		// the child's Pdeathsig parent, is discarded only after Wait.
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// childEnv is the test's environment without any MINIO_ settings of the
// developer's, plus the server's own.
func (s *Server) childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "MINIO_") || strings.HasPrefix(kv, "_MINIO_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"MINIO_ROOT_USER="+s.AccessKey,
		"MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		// CI mode: no root-drive refusal for a data directory under /tmp
		// and a small buffer pool instead of half the machine's memory.
		"MINIO_CI_CD=on",
	)
}

// waitReady polls the readiness endpoint until it answers 200, the process
// exits, or readyTimeout passes.
func (s *Server) waitReady(p *process) error {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	}
	url := s.Endpoint + "/minio/health/ready"
	deadline := time.Now().Add(readyTimeout)
	var lastErr error
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				// The health check can answer before the object layer is
				// up ("Server not initialized yet"): wait for a real call.
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err = s.Client().ListBuckets(ctx)
				cancel()
				if err == nil {
					return nil
				}
			} else {
				err = fmt.Errorf("%s: %s", url, resp.Status)
			}
		}
		lastErr = err
		if time.Now().After(deadline) {
			return fmt.Errorf("MinIO not ready after %v: %v", readyTimeout, lastErr)
		}
		select {
		case <-p.done:
			return &exitedError{err: p.err}
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// logTail returns the end of MinIO's output.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no output: %v)", err)
	}
	if len(b) > logTailBytes {
		b = b[len(b)-logTailBytes:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
		b = append([]byte("...\n"), b...)
	}
	return string(b)
}

// findBinary looks for the MinIO server in the places scripts/test.sh and
// scripts/install-minio.sh put it.
// defaultPin is scripts/install-minio.sh's MinIO pin (a test checks they
// agree), and cachedBinary the name that script installs it under.
const (
	defaultPin   = "v0.0.0-20260212201848-7aac2a2c5b7c"
	cachedBinary = "minio-" + defaultPin + "-flushfix"
)

func findBinary() (string, error) {
	if p := os.Getenv("MEDIAFS_MINIO_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("MEDIAFS_MINIO_BIN: %w", err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	var tried []string
	for _, root := range []string{os.Getenv("MEDIAFS_CACHE"), homeCache()} {
		if root == "" {
			continue
		}
		p := filepath.Join(root, "bin", cachedBinary)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("MinIO server binary not found (MEDIAFS_MINIO_BIN unset, no minio on PATH, none at %s): run scripts/install-minio.sh or scripts/test.sh",
		strings.Join(tried, ", "))
}

func homeCache() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".cache", "mediafs")
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("miniotest: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("miniotest: random credentials: %v", err)
	}
	return hex.EncodeToString(b)
}
