package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// minioServer is the MinIO process every object-backed target shares.
type minioServer struct {
	*proc
	host, endpoint string
	access, secret string
	client         *minio.Client
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startMinio starts MinIO on 127.0.0.1 with a fresh data directory and
// random root credentials (passed in its environment), and waits until it
// is ready. A port race is retried on other ports.
func startMinio(bin, dir string) (*minioServer, error) {
	data, certs := filepath.Join(dir, "data"), filepath.Join(dir, "certs")
	if err := mkdirs(data, certs); err != nil {
		return nil, err
	}
	s := &minioServer{access: "bench-" + randomHex(6), secret: randomHex(20)}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		api, err := freePort()
		if err != nil {
			return nil, err
		}
		console, err := freePort()
		if err != nil {
			return nil, err
		}
		s.host = "127.0.0.1:" + strconv.Itoa(api)
		s.endpoint = "http://" + s.host
		cmd := exec.Command(bin, "server", data,
			"--address", s.host,
			"--console-address", "127.0.0.1:"+strconv.Itoa(console),
			"--certs-dir", certs, "--quiet")
		env := cleanEnv()
		cmd.Env = append(env,
			"MINIO_ROOT_USER="+s.access,
			"MINIO_ROOT_PASSWORD="+s.secret,
			"MINIO_BROWSER=off",
			"MINIO_UPDATE=off",
			"MINIO_CI_CD=on",
			// Request counters per API for the "where the time goes"
			// tables, readable without a token (127.0.0.1 only).
			"MINIO_PROMETHEUS_AUTH_TYPE=public",
		)
		p, err := spawn("minio", cmd, filepath.Join(dir, "minio.log"))
		if err != nil {
			return nil, err
		}
		s.proc = p
		if lastErr = s.waitReady(30 * time.Second); lastErr == nil {
			atCleanup(func() { p.kill(10 * time.Second) })
			break
		}
		p.kill(5 * time.Second)
		s.proc = nil
	}
	if s.proc == nil {
		return nil, fmt.Errorf("MinIO did not start: %v", lastErr)
	}
	c, err := minio.New(s.host, &minio.Options{
		Creds:     credentials.NewStaticV4(s.access, s.secret, ""),
		Transport: benchTransport(),
	})
	if err != nil {
		return nil, err
	}
	s.client = c
	return s, nil
}

func benchTransport() *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		DisableCompression:    true,
	}
}

func (s *minioServer) waitReady(timeout time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		resp, err := hc.Get(s.endpoint + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		if s.exited() {
			return fmt.Errorf("MinIO exited (%v): %s", s.err, lastLines(s.logTail(2000), 5))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v: %v", timeout, last)
}

func (s *minioServer) makeBucket(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.client.MakeBucket(ctx, name, minio.MakeBucketOptions{})
}

// env is what a client process needs to log in as AWS_* variables.
func (s *minioServer) env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.access, "AWS_SECRET_ACCESS_KEY=" + s.secret}
}

func minioVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "?"
	}
	return firstLine(string(out))
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
