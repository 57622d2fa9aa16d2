package backend_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/mediafs/mediafs/backend"
	"github.com/mediafs/mediafs/backend/miniotest"
)

// feedRecorder collects what Watch reports, for a test to wait on.
type feedRecorder struct {
	ch chan backend.FeedEvent
}

func watch(t *testing.T, s *backend.S3) (*feedRecorder, context.CancelFunc) {
	t.Helper()
	r := &feedRecorder{ch: make(chan backend.FeedEvent, 1024)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, func(e backend.FeedEvent) { r.ch <- e }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v after cancel, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Watch did not return within 10 s of its context's end")
		}
	})
	return r, cancel
}

// next waits for the first event that match accepts.
func (r *feedRecorder) next(t *testing.T, d time.Duration, what string, match func(backend.FeedEvent) bool) backend.FeedEvent {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case e := <-r.ch:
			if match(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s within %s", what, d)
		}
	}
}

func (r *feedRecorder) change(t *testing.T, d time.Duration, key string, removed bool) backend.Change {
	t.Helper()
	var got backend.Change
	r.next(t, d, "change of "+key, func(e backend.FeedEvent) bool {
		for _, c := range e.Changes {
			if c.Object.Key == key && c.Removed == removed {
				got = c
				return true
			}
		}
		return false
	})
	return got
}

func isLive(e backend.FeedEvent) bool { return e.Live }

// Another client's upload, metadata copy and delete reach the feed at
// once, with the key as written (not URL-encoded), relative to the
// store's prefix, and with the attributes the cache needs.
func TestWatchReportsOtherClientsChangesAtOnce(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := newBucket(t, srv)
	ctx := testCtx(t)
	s := s3For(t, srv, bucket, "media/")
	r, _ := watch(t, s)
	r.next(t, 15*time.Second, "live stream", isLive)

	mc := srv.Client()
	key := "a b/c+d%41é.jpg"
	start := time.Now()
	info, err := mc.PutObject(ctx, bucket, "media/"+key, strings.NewReader("hello"), 5,
		minio.PutObjectOptions{UserMetadata: map[string]string{"mode": "33188", "mtime": "1700000000"}})
	if err != nil {
		t.Fatal(err)
	}
	c := r.change(t, 5*time.Second, key, false)
	delay := time.Since(start)
	t.Logf("put reached the feed %s after the PUT was sent", delay)
	if delay > time.Second {
		t.Errorf("put reached the feed after %s, want within 1 s", delay)
	}
	if c.Object.Size != 5 || c.Object.ETag != strings.Trim(info.ETag, `"`) {
		t.Errorf("change = size %d etag %q, want 5 %q", c.Object.Size, c.Object.ETag, info.ETag)
	}
	if c.Object.Metadata["mode"] != "33188" || c.Object.Metadata["mtime"] != "1700000000" {
		t.Errorf("change metadata = %v, want mode and mtime", c.Object.Metadata)
	}

	// Outside the prefix: not reported.
	if _, err := mc.PutObject(ctx, bucket, "other/x", strings.NewReader("x"), 1, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := mc.RemoveObject(ctx, bucket, "media/"+key, minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	r.next(t, 5*time.Second, "delete of "+key, func(e backend.FeedEvent) bool {
		for _, c := range e.Changes {
			if strings.HasPrefix(c.Object.Key, "other/") || strings.HasPrefix(c.Object.Key, "media/") {
				t.Errorf("change outside the prefix or not relative to it: %q", c.Object.Key)
			}
			if c.Object.Key == key && c.Removed {
				return true
			}
		}
		return false
	})
	t.Logf("delete reached the feed %s after the DELETE was sent", time.Since(start))
}

// When the server goes away the feed says so, and once it is back the
// feed is live again and delivers the changes made after that.
func TestWatchReconnectsAfterServerRestart(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := newBucket(t, srv)
	ctx := testCtx(t)
	s := s3For(t, srv, bucket, "")
	r, _ := watch(t, s)
	r.next(t, 15*time.Second, "live stream", isLive)

	srv.Stop()
	r.next(t, 15*time.Second, "down report", func(e backend.FeedEvent) bool { return e.Down })
	srv.Restart(t)
	r.next(t, 45*time.Second, "live stream after the restart", isLive)
	if _, err := srv.Client().PutObject(ctx, bucket, "after", strings.NewReader("x"), 1, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	r.change(t, 5*time.Second, "after", false)
}

// A server without the API answers the listen request with an error: the
// feed gives up at once with ErrNotSupported instead of retrying forever.
func TestWatchGivesUpOnServersWithoutTheAPI(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotImplemented)
		w.Write([]byte(`<?xml version="1.0"?><Error><Code>NotImplemented</Code><Message>no</Message></Error>`))
	}))
	defer ts.Close()
	s := newS3(t, backend.S3Options{Endpoint: ts.URL, Bucket: "b", AccessKey: "k", SecretKey: "s"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.Watch(ctx, func(backend.FeedEvent) {})
	if !errors.Is(err, backend.ErrNotSupported) || !strings.Contains(err.Error(), "NotImplemented") {
		t.Fatalf("Watch = %v, want ErrNotSupported naming NotImplemented", err)
	}
}
