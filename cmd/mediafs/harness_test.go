package main

// End-to-end harness: the real mediafs binary, a real MinIO
// (backend/miniotest) and real FUSE mounts. A missing MinIO or /dev/fuse
// fails the tests; it never skips them.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/mediafs/mediafs/backend/miniotest"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mediafs-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "mediafs")
	out, err := exec.Command("go", "build", "-race", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		// -race needs cgo; fall back to a plain build.
		out, err = exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "building mediafs: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one MinIO server with one bucket.
type env struct {
	t      *testing.T
	minio  *miniotest.Server
	bucket string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("/dev/fuse is required: %v", err)
	}
	s := miniotest.Start(t)
	e := &env{t: t, minio: s, bucket: "media"}
	s.CreateBucket(t, e.bucket)
	return e
}

func (e *env) client() *minio.Client { return e.minio.Client() }

// mnt is one running mediafs mount.
type mnt struct {
	t        *testing.T
	e        *env
	dir      string
	cacheDir string
	args     []string
	cmd      *exec.Cmd
	logPath  string
	done     chan struct{}
	exitErr  error
}

// mount starts mediafs on a new mountpoint with a new cache dir. Extra
// flags go before the bucket argument.
func (e *env) mount(t *testing.T, flags ...string) *mnt {
	t.Helper()
	base := t.TempDir()
	m := &mnt{t: t, e: e, dir: filepath.Join(base, "mnt"), cacheDir: filepath.Join(base, "cache"),
		logPath: filepath.Join(base, "mediafs.log")}
	if err := os.Mkdir(m.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m.args = flags
	m.start(t)
	t.Cleanup(func() {
		m.stopQuiet()
		if t.Failed() {
			t.Logf("mediafs log (%s):\n%s", m.dir, tail(m.log(), 6000))
		}
	})
	return m
}

func (m *mnt) start(t *testing.T) {
	t.Helper()
	args := append([]string{"mount", "--endpoint", m.e.minio.Endpoint, "--cache-dir", m.cacheDir,
		"--writeback-delay", "200ms", "--drain-timeout", "30s"}, m.args...)
	args = append(args, m.e.bucket, m.dir)
	cmd := exec.Command(binPath, args...)
	cmd.Env = append(cleanEnv(), m.e.minio.Env()...)
	lf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.cmd = cmd
	m.done = make(chan struct{})
	go func() {
		m.exitErr = cmd.Wait()
		lf.Close()
		close(m.done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !isMounted(m.dir) {
		select {
		case <-m.done:
			t.Fatalf("mediafs exited before mounting: %v\n%s", m.exitErr, m.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mediafs did not mount within 30s\n%s", m.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cleanEnv is the test's environment without credentials or MEDIAFS_*
// settings of the machine, so tests see only what they set.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "AWS_ACCESS_KEY_ID=") || strings.HasPrefix(kv, "AWS_SECRET_ACCESS_KEY=") ||
			strings.HasPrefix(kv, "AWS_SESSION_TOKEN=") || (strings.HasPrefix(kv, "MEDIAFS_") && !strings.HasPrefix(kv, "MEDIAFS_MINIO_BIN=")) {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (m *mnt) log() string {
	b, _ := os.ReadFile(m.logPath)
	return string(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// path joins p to the mountpoint.
func (m *mnt) path(p string) string { return filepath.Join(m.dir, p) }

// stop sends SIGTERM and waits for the daemon to drain and exit.
func (m *mnt) stop(t *testing.T) {
	t.Helper()
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(60 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
		t.Fatalf("mediafs did not exit within 60s of SIGTERM\n%s", tail(m.log(), 4000))
	}
	if m.exitErr != nil {
		t.Fatalf("mediafs exited with %v\n%s", m.exitErr, tail(m.log(), 4000))
	}
	if isMounted(m.dir) {
		t.Fatalf("still mounted after mediafs exited")
	}
}

func (m *mnt) stopQuiet() {
	select {
	case <-m.done:
	default:
		m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(40 * time.Second):
			m.cmd.Process.Kill()
			<-m.done
		}
	}
	if isMounted(m.dir) {
		exec.Command("fusermount3", "-uz", m.dir).Run()
	}
}

// kill9 kills the daemon the hard way and clears the dead mount, as an
// operator would after a crash.
func (m *mnt) kill9(t *testing.T) {
	t.Helper()
	m.cmd.Process.Kill()
	<-m.done
	if isMounted(m.dir) {
		if out, err := exec.Command("fusermount3", "-uz", m.dir).CombinedOutput(); err != nil {
			t.Logf("fusermount3 -uz: %v %s", err, out)
		}
	}
}

// restart starts the daemon again on the same mountpoint and cache dir.
func (m *mnt) restart(t *testing.T) {
	t.Helper()
	m.start(t)
}

func isMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// getObject returns an object's bytes and info straight from MinIO.
func (e *env) getObject(key string) ([]byte, minio.ObjectInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o, err := e.client().GetObject(ctx, e.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, minio.ObjectInfo{}, err
	}
	defer o.Close()
	info, err := o.Stat()
	if err != nil {
		return nil, info, err
	}
	b, err := io.ReadAll(o)
	return b, info, err
}

// waitObject waits until the bucket holds key with exactly want.
func (e *env) waitObject(t *testing.T, key string, want []byte, timeout time.Duration) minio.ObjectInfo {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		b, info, err := e.getObject(key)
		if err == nil && bytes.Equal(b, want) {
			return info
		}
		if err == nil {
			lastErr = fmt.Errorf("content differs: %d bytes, want %d", len(b), len(want))
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("bucket object %q not as expected after %v: %v", key, timeout, lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitGone waits until key is absent from the bucket.
func (e *env) waitGone(t *testing.T, key string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		_, err := e.client().StatObject(context.Background(), e.bucket, key, minio.StatObjectOptions{})
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bucket object %q still there after %v (err %v)", key, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// keys lists every key in the bucket under prefix.
func (e *env) keys(t *testing.T, prefix string) []string {
	t.Helper()
	var out []string
	for o := range e.client().ListObjects(context.Background(), e.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list: %v", o.Err)
		}
		out = append(out, o.Key)
	}
	return out
}

// putObject writes an object straight to MinIO, with user metadata.
func (e *env) putObject(t *testing.T, key string, data []byte, meta map[string]string) {
	t.Helper()
	_, err := e.client().PutObject(context.Background(), e.bucket, key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{UserMetadata: meta})
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
}

// waitFile waits until path on a mount holds want (another mount's view).
func waitFile(t *testing.T, path string, want []byte, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var lastErr error
	for {
		b, err := os.ReadFile(path)
		if err == nil && bytes.Equal(b, want) {
			return time.Since(start)
		}
		if err == nil {
			lastErr = fmt.Errorf("content differs: %d bytes, want %d", len(b), len(want))
		} else {
			lastErr = err
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s not as expected after %v: %v", path, timeout, lastErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}
