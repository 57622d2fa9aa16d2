package miniotest_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/mediafs/mediafs/backend/miniotest"
)

func TestObjectSurvivesStopAndRestart(t *testing.T) {
	srv := miniotest.Start(t)
	srv.CreateBucket(t, "media")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	want := []byte("hello from mediafs\n")
	_, err := srv.Client().PutObject(ctx, "media", "dir/hello.txt",
		bytes.NewReader(want), int64(len(want)), minio.PutObjectOptions{ContentType: "text/plain"})
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	if got := get(ctx, t, srv.Client(), "media", "dir/hello.txt"); !bytes.Equal(got, want) {
		t.Fatalf("get before restart = %q, want %q", got, want)
	}

	srv.Stop()
	if c, err := net.DialTimeout("tcp", srv.Host, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Stop", srv.Host)
	}
	srv.Stop() // a second Stop is harmless

	endpoint := srv.Endpoint
	srv.Restart(t)
	if srv.Endpoint != endpoint {
		t.Fatalf("Restart moved the server from %s to %s", endpoint, srv.Endpoint)
	}
	if got := get(ctx, t, srv.Client(), "media", "dir/hello.txt"); !bytes.Equal(got, want) {
		t.Fatalf("get after restart = %q, want %q", got, want)
	}
}

func TestEnvCarriesCredentials(t *testing.T) {
	srv := miniotest.Start(t)
	env := strings.Join(srv.Env(), "\n")
	for _, want := range []string{
		"AWS_ACCESS_KEY_ID=" + srv.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + srv.SecretKey,
	} {
		if !strings.Contains(env, want) {
			t.Errorf("Env() = %q, missing %q", srv.Env(), want)
		}
	}
	if !strings.HasPrefix(srv.Endpoint, "http://127.0.0.1:") {
		t.Errorf("Endpoint = %q, want http://127.0.0.1:PORT", srv.Endpoint)
	}
}

func get(ctx context.Context, t *testing.T, c *minio.Client, bucket, key string) []byte {
	t.Helper()
	obj, err := c.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("get %s/%s: %v", bucket, key, err)
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		t.Fatalf("read %s/%s: %v", bucket, key, err)
	}
	return b
}
