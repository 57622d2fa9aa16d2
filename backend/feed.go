package backend

// The S3 store's change feed: MinIO's ListenBucketNotification API, a GET
// on the bucket that streams one JSON line per event, and an empty record
// every ping interval.
//
// minio-go has a client for it, but it hides what the cache must know: it
// reconnects by itself without saying so (so events lost in the gap go
// unnoticed), swallows the pings (so a stream that stopped delivering
// looks like a quiet bucket) and shares the main client's transport. The
// request is therefore made here, signed with minio-go's signer, on a
// transport of its own. Compression stays off: with Accept-Encoding: gzip,
// MinIO's gzip layer buffers the stream too.
//
// The stream counts as live only once bytes arrive (the first ping, at the
// latest a second after the request), and stops counting as live when
// none arrive for feedStall. A MinIO without the flush fix (see
// scripts/install-minio.sh) sends nothing, not even the response header,
// until 4 KiB of events have piled up: against it the feed is never live,
// and the cache keeps polling.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/minio/minio-go/v7/pkg/s3utils"
	"github.com/minio/minio-go/v7/pkg/signer"
)

const (
	// feedPing is the ping interval asked of the server, in seconds.
	feedPing = 1
	// feedStall is how long a live stream may send nothing before it is
	// taken for dead and reconnected.
	feedStall = 5 * time.Second
	// feedHeaderTimeout bounds the wait for the response to the listen
	// request (the server answers once its first ping is flushed).
	feedHeaderTimeout = 10 * time.Second
	// feedBackoffMin and feedBackoffMax bound the wait between attempts.
	feedBackoffMin = 500 * time.Millisecond
	feedBackoffMax = 30 * time.Second
	// feedMaxLine bounds one event line (MinIO sends one event a line).
	feedMaxLine = 4 << 20
)

// emptySHA256 is the payload hash of a request without a body.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

var _ Watcher = (*S3)(nil)

// Watch implements Watcher with MinIO's ListenBucketNotification.
func (s *S3) Watch(ctx context.Context, on func(FeedEvent)) error {
	if s3utils.IsAmazonEndpoint(*s.endpoint) || s3utils.IsGoogleEndpoint(*s.endpoint) {
		return fmt.Errorf("%s: %w (bucket notifications by listening are a MinIO API)", s.endpoint.Host, ErrNotSupported)
	}
	backoff := feedBackoffMin
	for {
		live, err := s.listen(ctx, on)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrNotSupported) {
			return err
		}
		on(FeedEvent{Down: true, Err: err})
		if live {
			backoff = feedBackoffMin
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, feedBackoffMax)
	}
}

// listen runs one listen request until the stream ends. live reports
// whether it delivered anything (so the caller's backoff starts over).
func (s *S3) listen(ctx context.Context, on func(FeedEvent)) (live bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q := url.Values{}
	q["events"] = []string{"s3:ObjectCreated:*", "s3:ObjectRemoved:*"}
	q.Set("ping", fmt.Sprint(feedPing))
	q.Set("prefix", s.prefix)
	q.Set("suffix", "")
	u := *s.endpoint
	u.Path = "/" + s.bucket + "/"
	u.RawQuery = s3utils.QueryEncode(q)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return false, fmt.Errorf("listen request: %w", err)
	}
	req.Header.Set("X-Amz-Content-Sha256", emptySHA256)
	req.Header.Set("User-Agent", "mediafs")
	req = signer.SignV4(*req, s.creds.access, s.creds.secret, s.creds.token, s.region)

	resp, err := s.feedHTTP.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which says nothing new
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false, fmt.Errorf("listen on bucket %s: %w: no answer within %s (a server that buffers the stream, such as a MinIO without the flush fix, answers late or never)",
				s.bucket, ErrUnavailable, feedHeaderTimeout)
		}
		return false, fmt.Errorf("listen on bucket %s: %w: %v", s.bucket, ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, feedStatusErr(s.bucket, resp)
	}

	wd := newWatchdog(feedStall, cancel)
	defer wd.stop()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), feedMaxLine)
	for sc.Scan() {
		wd.kick()
		if !live {
			live = true
			on(FeedEvent{Live: true})
		}
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var info feedLine
		if err := json.Unmarshal(line, &info); err != nil {
			return live, fmt.Errorf("listen on bucket %s: unreadable event: %w", s.bucket, err)
		}
		if chs := s.changes(info); len(chs) > 0 {
			on(FeedEvent{Changes: chs})
		}
	}
	switch {
	case wd.fired():
		return live, fmt.Errorf("listen on bucket %s: %w: nothing received for %s", s.bucket, ErrUnavailable, feedStall)
	case sc.Err() != nil:
		return live, fmt.Errorf("listen on bucket %s: %w: %v", s.bucket, ErrUnavailable, sc.Err())
	}
	return live, fmt.Errorf("listen on bucket %s: %w: the server ended the stream", s.bucket, ErrUnavailable)
}

// feedStatusErr maps a refused listen request. A client error other than
// throttling means the server does not offer the API (S3 servers answer
// 400, 403, 404, 405 or 501 to a GET with these parameters, in their
// various ways) or will not to these credentials: neither changes by
// retrying.
func feedStatusErr(bucket string, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	code := resp.Status
	if m := xmlField(body, "Code"); m != "" {
		code = m
	}
	st := resp.StatusCode
	if st == http.StatusNotImplemented || (st >= 400 && st < 500 && st != http.StatusRequestTimeout && st != http.StatusTooManyRequests) {
		return fmt.Errorf("listen on bucket %s: %w: %s", bucket, ErrNotSupported, code)
	}
	return fmt.Errorf("listen on bucket %s: %w: %s", bucket, ErrUnavailable, code)
}

// xmlField returns the text of the first <name> element of an S3 error
// body, or "".
func xmlField(body []byte, name string) string {
	s := string(body)
	i := strings.Index(s, "<"+name+">")
	if i < 0 {
		return ""
	}
	s = s[i+len(name)+2:]
	j := strings.Index(s, "</"+name+">")
	if j < 0 {
		return ""
	}
	return s[:j]
}

// feedLine is one line of the stream: a batch of events (none in a ping).
type feedLine struct {
	Records []struct {
		EventName string `json:"eventName"`
		EventTime string `json:"eventTime"`
		S3        struct {
			Object struct {
				Key          string            `json:"key"`
				Size         int64             `json:"size"`
				ETag         string            `json:"eTag"`
				ContentType  string            `json:"contentType"`
				UserMetadata map[string]string `json:"userMetadata"`
			} `json:"object"`
		} `json:"s3"`
	} `json:"Records"`
}

// changes converts a line's events. MinIO's listen API sends keys as they
// are (it URL-encodes them only for its configured notification targets,
// as AWS does), so they are not decoded here.
func (s *S3) changes(info feedLine) []Change {
	var out []Change
	for _, r := range info.Records {
		key := r.S3.Object.Key
		if !strings.HasPrefix(key, s.prefix) || key == s.prefix {
			continue
		}
		ch := Change{Event: r.EventName, Object: Object{Key: s.rel(key)}}
		switch {
		case strings.HasPrefix(r.EventName, "s3:ObjectRemoved:"):
			ch.Removed = true
		case strings.HasPrefix(r.EventName, "s3:ObjectCreated:"):
			o := &ch.Object
			o.Size = r.S3.Object.Size
			o.ETag = strings.Trim(r.S3.Object.ETag, `"`)
			o.ContentType = r.S3.Object.ContentType
			if t, err := time.Parse(time.RFC3339Nano, r.EventTime); err == nil {
				o.LastModified = t
			}
			for k, v := range r.S3.Object.UserMetadata {
				lk := strings.ToLower(k)
				switch {
				case strings.HasPrefix(lk, "x-amz-meta-"):
					if o.Metadata == nil {
						o.Metadata = map[string]string{}
					}
					o.Metadata[strings.TrimPrefix(lk, "x-amz-meta-")] = v
				case lk == "content-type" && o.ContentType == "":
					o.ContentType = v
				}
			}
		default:
			continue
		}
		out = append(out, ch)
	}
	return out
}
