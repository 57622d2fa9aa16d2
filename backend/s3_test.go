package backend_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/mediafs/mediafs/backend"
	"github.com/mediafs/mediafs/backend/backendtest"
	"github.com/mediafs/mediafs/backend/miniotest"
)

// testTimeout bounds every test's backend calls; MinIO on a loaded CI
// machine answers in milliseconds, so this only catches hangs.
const testTimeout = 2 * time.Minute

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

var bucketSeq atomic.Int64

// newBucket creates a fresh bucket on srv and returns its name.
func newBucket(t *testing.T, srv *miniotest.Server) string {
	t.Helper()
	name := fmt.Sprintf("mediafs-test-%d", bucketSeq.Add(1))
	srv.CreateBucket(t, name)
	return name
}

func newS3(t *testing.T, o backend.S3Options) *backend.S3 {
	t.Helper()
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 10 * time.Second
	}
	s, err := backend.NewS3(o)
	if err != nil {
		t.Fatalf("NewS3: %v", err)
	}
	return s
}

func s3For(t *testing.T, srv *miniotest.Server, bucket, prefix string) *backend.S3 {
	t.Helper()
	return newS3(t, backend.S3Options{Endpoint: srv.Endpoint, Bucket: bucket, Prefix: prefix,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
}

func putString(ctx context.Context, t *testing.T, s backend.Store, key, data string, opts backend.PutOptions) backend.Object {
	t.Helper()
	o, err := s.Put(ctx, key, strings.NewReader(data), int64(len(data)), opts)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return o
}

func getString(ctx context.Context, s backend.Store, key, etag string, off, n int64) (string, error) {
	r, err := s.Get(ctx, key, etag, off, n)
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	return string(b), err
}

func md5hex(b []byte) string {
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

func keysOf(objs []backend.Object) []string {
	var keys []string
	for _, o := range objs {
		keys = append(keys, o.Key)
	}
	return keys
}

func TestS3CheckReportsWhatIsWrong(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := newBucket(t, srv)
	closed := closedPortEndpoint(t)
	tests := []struct {
		name string
		o    backend.S3Options
		want error // nil: Check succeeds
	}{
		{"good credentials and bucket", backend.S3Options{Endpoint: srv.Endpoint, Bucket: bucket,
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}, nil},
		{"good with a prefix", backend.S3Options{Endpoint: srv.Endpoint, Bucket: bucket, Prefix: "media",
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}, nil},
		{"missing bucket", backend.S3Options{Endpoint: srv.Endpoint, Bucket: "no-such-bucket",
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}, backend.ErrNotFound},
		{"bad secret", backend.S3Options{Endpoint: srv.Endpoint, Bucket: bucket,
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey + "x"}, backend.ErrAccessDenied},
		{"unknown access key", backend.S3Options{Endpoint: srv.Endpoint, Bucket: bucket,
			AccessKey: "nobody", SecretKey: srv.SecretKey}, backend.ErrAccessDenied},
		{"closed port", backend.S3Options{Endpoint: closed, Bucket: bucket,
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, RequestTimeout: 3 * time.Second}, backend.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newS3(t, tt.o)
			start := time.Now()
			err := s.Check(testCtx(t))
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Check = %v, want %v", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), srv.SecretKey) {
				t.Errorf("Check error %q carries the secret key", err)
			}
			if d := time.Since(start); d > 30*time.Second {
				t.Errorf("Check took %v", d)
			}
		})
	}
}

// closedPortEndpoint is an endpoint nothing listens on.
func closedPortEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func TestNewS3RejectsBadEndpoints(t *testing.T) {
	for _, ep := range []string{"", "ftp://host", "http://host/path", "http://"} {
		if _, err := backend.NewS3(backend.S3Options{Endpoint: ep, Bucket: "b"}); err == nil {
			t.Errorf("NewS3(Endpoint %q) succeeded, want an error", ep)
		}
	}
}

// TestStoreContract runs the same checks against S3 on a real MinIO and
// against backendtest.Mem, so the fake the cache's unit tests rely on
// behaves as the real store does.
func TestStoreContract(t *testing.T) {
	var srv *miniotest.Server
	makers := []struct {
		name string
		new  func(t *testing.T) backend.Store
	}{
		{"S3", func(t *testing.T) backend.Store {
			return s3For(t, srv, newBucket(t, srv), "")
		}},
		{"Mem", func(*testing.T) backend.Store { return backendtest.NewMem() }},
	}
	checks := []struct {
		name string
		fn   func(t *testing.T, s backend.Store)
	}{
		{"PutStatAndListCarryMetadata", contractMetadata},
		{"ListIsOneLevel", contractList},
		{"GetServesRanges", contractGet},
		{"PutConditions", contractPutConditions},
		{"CopyKeepsOrReplacesMetadata", contractCopy},
		{"DeleteOfMissingKeyIsNil", contractDelete},
		{"DeleteManyRemovesEveryKeyItNames", contractDeleteMany},
	}
	for _, m := range makers {
		t.Run(m.name, func(t *testing.T) {
			if m.name == "S3" {
				srv = miniotest.Start(t)
			}
			for _, c := range checks {
				t.Run(c.name, func(t *testing.T) { c.fn(t, m.new(t)) })
			}
		})
	}
}

func contractMetadata(t *testing.T, s backend.Store) {
	ctx := testCtx(t)
	md := map[string]string{
		backend.MetaMode: "33188", backend.MetaUID: "1000",
		backend.MetaGID: "100", backend.MetaMtime: "1700000000",
	}
	data := "jpeg bytes"
	put := putString(ctx, t, s, "dir/photo.jpg", data, backend.PutOptions{ContentType: "image/jpeg", Metadata: md})
	if put.ETag != md5hex([]byte(data)) {
		t.Errorf("put ETag = %q, want the hex MD5 %q", put.ETag, md5hex([]byte(data)))
	}
	st, err := s.Stat(ctx, "dir/photo.jpg")
	if err != nil {
		t.Fatal(err)
	}
	if st.Key != "dir/photo.jpg" || st.Size != int64(len(data)) || st.ETag != put.ETag ||
		st.ContentType != "image/jpeg" || st.LastModified.IsZero() {
		t.Errorf("stat = %+v", st)
	}
	checkMeta(t, "stat", st.Metadata, md)

	l, err := s.List(ctx, "dir/")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Objects) != 1 || l.Objects[0].Key != "dir/photo.jpg" || l.Objects[0].ETag != put.ETag {
		t.Fatalf("list = %+v", l)
	}
	checkMeta(t, "list", l.Objects[0].Metadata, md)
	all, err := s.ListAll(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 {
		t.Fatalf("ListAll = %+v", all)
	}
	checkMeta(t, "ListAll", all[0].Metadata, md)

	if _, err := s.Stat(ctx, "dir/nope"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("stat of a missing key = %v, want ErrNotFound", err)
	}
}

// checkMeta wants exactly the names in want, lower-case as s3fs writes
// them.
func checkMeta(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s metadata = %v, want %v", what, got, want)
		return
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s metadata = %v, want %v", what, got, want)
			return
		}
	}
}

func contractList(t *testing.T, s backend.Store) {
	ctx := testCtx(t)
	for _, k := range []string{"z.txt", "a.txt", "d/", "d/x", "d/y/1", "d/y/2", "d-e", "e/f/g"} {
		putString(ctx, t, s, k, "x", backend.PutOptions{})
	}
	tests := []struct {
		prefix   string
		objects  []string
		prefixes []string
	}{
		{"", []string{"a.txt", "d-e", "z.txt"}, []string{"d/", "e/"}},
		{"d/", []string{"d/", "d/x"}, []string{"d/y/"}},
		{"d/y/", []string{"d/y/1", "d/y/2"}, nil},
		{"e/", nil, []string{"e/f/"}},
		{"none/", nil, nil},
	}
	for _, tt := range tests {
		l, err := s.List(ctx, tt.prefix)
		if err != nil {
			t.Fatalf("list %q: %v", tt.prefix, err)
		}
		if got := keysOf(l.Objects); !slices.Equal(got, tt.objects) {
			t.Errorf("list %q objects = %q, want %q", tt.prefix, got, tt.objects)
		}
		if !slices.Equal(l.Prefixes, tt.prefixes) {
			t.Errorf("list %q prefixes = %q, want %q", tt.prefix, l.Prefixes, tt.prefixes)
		}
	}
	all, err := s.ListAll(ctx, "d/")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := keysOf(all), []string{"d/", "d/x", "d/y/1", "d/y/2"}; !slices.Equal(got, want) {
		t.Errorf("ListAll(d/) = %q, want %q", got, want)
	}
}

func contractGet(t *testing.T, s backend.Store) {
	ctx := testCtx(t)
	o := putString(ctx, t, s, "k", "0123456789", backend.PutOptions{})
	putString(ctx, t, s, "empty", "", backend.PutOptions{})
	tests := []struct {
		name    string
		key     string
		etag    string
		off, n  int64
		want    string
		wantErr error
	}{
		{"whole", "k", "", 0, -1, "0123456789", nil},
		{"middle", "k", "", 2, 3, "234", nil},
		{"to the end", "k", "", 7, -1, "789", nil},
		{"past the end is cut", "k", "", 8, 10, "89", nil},
		{"matching etag", "k", o.ETag, 1, 2, "12", nil},
		{"changed etag", "k", md5hex([]byte("other")), 0, -1, "", backend.ErrConflict},
		{"missing", "nope", "", 0, -1, "", backend.ErrNotFound},
		{"empty object", "empty", "", 0, -1, "", nil},
	}
	for _, tt := range tests {
		got, err := getString(ctx, s, tt.key, tt.etag, tt.off, tt.n)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("%s: err = %v, want %v", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: got %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	if _, err := getString(ctx, s, "k", "", 10, -1); err == nil {
		t.Error("a range starting at the end succeeded, want an error")
	}
}

func contractPutConditions(t *testing.T, s backend.Store) {
	ctx := testCtx(t)
	first := putString(ctx, t, s, "k", "v1", backend.PutOptions{})
	tests := []struct {
		name    string
		key     string
		opts    backend.PutOptions
		wantErr error
	}{
		{"if-none-match on an existing key", "k", backend.PutOptions{IfNoneMatch: true}, backend.ErrConflict},
		{"if-match with a wrong etag", "k", backend.PutOptions{IfMatch: md5hex([]byte("other"))}, backend.ErrConflict},
		{"if-match on a missing key", "gone", backend.PutOptions{IfMatch: first.ETag}, backend.ErrConflict},
		{"if-none-match on a new key", "new", backend.PutOptions{IfNoneMatch: true}, nil},
		{"if-match with the current etag", "k", backend.PutOptions{IfMatch: first.ETag}, nil},
	}
	for _, tt := range tests {
		data := "v2 " + tt.name
		_, err := s.Put(ctx, tt.key, strings.NewReader(data), int64(len(data)), tt.opts)
		if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.wantErr)
			continue
		}
		got, gerr := getString(ctx, s, tt.key, "", 0, -1)
		switch {
		case tt.wantErr == nil && got != data:
			t.Errorf("%s: object = %q, %v after a successful put", tt.name, got, gerr)
		case tt.wantErr != nil && tt.key == "k" && got != "v1":
			t.Errorf("%s: a failed put changed the object to %q", tt.name, got)
		case tt.wantErr != nil && tt.key == "gone" && !errors.Is(gerr, backend.ErrNotFound):
			t.Errorf("%s: a failed put created the object (%q, %v)", tt.name, got, gerr)
		}
	}
}

func contractCopy(t *testing.T, s backend.Store) {
	ctx := testCtx(t)
	srcMD := map[string]string{backend.MetaMode: "33188", backend.MetaMtime: "1"}
	src := putString(ctx, t, s, "src.png", "data", backend.PutOptions{ContentType: "image/png", Metadata: srcMD})

	if _, err := s.Copy(ctx, "src.png", "kept.png", src.Size, backend.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	kept, err := s.Stat(ctx, "kept.png")
	if err != nil {
		t.Fatal(err)
	}
	if kept.ETag != src.ETag || kept.ContentType != "image/png" {
		t.Errorf("copy without metadata = %+v, want the source's etag and type", kept)
	}
	checkMeta(t, "kept copy", kept.Metadata, srcMD)

	newMD := map[string]string{backend.MetaMode: "33261", backend.MetaUID: "7"}
	if _, err := s.Copy(ctx, "src.png", "replaced.png", src.Size,
		backend.PutOptions{ContentType: "image/webp", Metadata: newMD}); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Stat(ctx, "replaced.png")
	if err != nil {
		t.Fatal(err)
	}
	if rep.ContentType != "image/webp" {
		t.Errorf("replacing copy Content-Type = %q, want image/webp", rep.ContentType)
	}
	checkMeta(t, "replacing copy", rep.Metadata, newMD)
	if got, _ := getString(ctx, s, "replaced.png", "", 0, -1); got != "data" {
		t.Errorf("replacing copy holds %q, want the source's bytes", got)
	}

	// chmod of an uploaded file: a metadata-only copy onto itself.
	if _, err := s.Copy(ctx, "src.png", "src.png", src.Size,
		backend.PutOptions{ContentType: "image/png", Metadata: newMD}); err != nil {
		t.Fatalf("metadata-only self copy: %v", err)
	}
	self, err := s.Stat(ctx, "src.png")
	if err != nil {
		t.Fatal(err)
	}
	checkMeta(t, "self copy", self.Metadata, newMD)
	if got, _ := getString(ctx, s, "src.png", "", 0, -1); got != "data" {
		t.Errorf("self copy changed the bytes to %q", got)
	}

	if _, err := s.Copy(ctx, "missing", "dst", 0, backend.PutOptions{}); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("copy of a missing source = %v, want ErrNotFound", err)
	}
}

func contractDelete(t *testing.T, s backend.Store) {
	ctx := testCtx(t)
	putString(ctx, t, s, "k", "v", backend.PutOptions{})
	if err := s.Delete(ctx, "k"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := s.Stat(ctx, "k"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("stat after delete = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "k"); err != nil {
		t.Errorf("delete of a missing key = %v, want nil", err)
	}
	if err := s.Delete(ctx, "never/was"); err != nil {
		t.Errorf("delete of a never existing key = %v, want nil", err)
	}
}

func TestS3PrefixIsAddedAndHidden(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := newBucket(t, srv)
	ctx := testCtx(t)
	s := s3For(t, srv, bucket, "media") // normalised to "media/"
	putString(ctx, t, s, "a/b.txt", "b", backend.PutOptions{})
	putString(ctx, t, s, "top.txt", "t", backend.PutOptions{})
	raw := srv.Client()
	if _, err := raw.PutObject(ctx, bucket, "outside.txt", strings.NewReader("o"), 1, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.PutObject(ctx, bucket, "mediaX/near.txt", strings.NewReader("n"), 1, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}

	if _, err := raw.StatObject(ctx, bucket, "media/a/b.txt", minio.StatObjectOptions{}); err != nil {
		t.Errorf("the object is not stored under the prefix: %v", err)
	}
	st, err := s.Stat(ctx, "a/b.txt")
	if err != nil || st.Key != "a/b.txt" {
		t.Errorf("stat = %+v, %v; want key a/b.txt", st, err)
	}
	l, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(l.Objects); !slices.Equal(got, []string{"top.txt"}) {
		t.Errorf("list objects = %q, want [top.txt]", got)
	}
	if !slices.Equal(l.Prefixes, []string{"a/"}) {
		t.Errorf("list prefixes = %q, want [a/]", l.Prefixes)
	}
	l, err = s.List(ctx, "a/")
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(l.Objects); !slices.Equal(got, []string{"a/b.txt"}) {
		t.Errorf("list a/ = %q, want [a/b.txt]", got)
	}
	all, err := s.ListAll(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(all); !slices.Equal(got, []string{"a/b.txt", "top.txt"}) {
		t.Errorf("ListAll = %q, want [a/b.txt top.txt]", got)
	}
	if _, err := s.Copy(ctx, "top.txt", "a/copy.txt", 1, backend.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, err := getString(ctx, s, "a/copy.txt", "", 0, -1); got != "t" || err != nil {
		t.Errorf("get of the copy = %q, %v", got, err)
	}
	if err := s.Delete(ctx, "top.txt"); err != nil {
		t.Fatal(err)
	}
	for _, err := range s.DeleteMany(ctx, []string{"a/b.txt", "a/copy.txt", "outside.txt"}) {
		if err != nil {
			t.Fatal(err)
		}
	}
	if all, err := s.ListAll(ctx, ""); err != nil || len(all) != 0 {
		t.Errorf("after deleting every key under the prefix: %q, %v", keysOf(all), err)
	}
	if _, err := raw.StatObject(ctx, bucket, "outside.txt", minio.StatObjectOptions{}); err != nil {
		t.Errorf("an object outside the prefix was touched: %v", err)
	}
}

// TestS3MultipartPutRoundTrips uploads an object large enough for several
// parts, with AWS_CA_BUNDLE unset and naming a missing file (which must
// fall back to the system roots, not break the client).
func TestS3MultipartPutRoundTrips(t *testing.T) {
	srv := miniotest.Start(t)
	const size = 40 << 20
	data := make([]byte, size)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < size; i += 8 {
		v := rnd.Uint64()
		for j := range 8 {
			data[i+j] = byte(v >> (8 * j))
		}
	}
	for _, tt := range []struct {
		name     string
		caBundle string
	}{
		{"no CA bundle", ""},
		{"CA bundle names a missing file", "/nonexistent/mediafs/ca-bundle.pem"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.caBundle != "" {
				t.Setenv("AWS_CA_BUNDLE", tt.caBundle)
			}
			bucket := newBucket(t, srv)
			ctx := testCtx(t)
			s := newS3(t, backend.S3Options{Endpoint: srv.Endpoint, Bucket: bucket,
				AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, CABundle: tt.caBundle,
				PartSize: 5 << 20, PartConcurrency: 3})
			md := map[string]string{backend.MetaMode: "33188"}
			o, err := s.Put(ctx, "big/video.mp4", bytes.NewReader(data), size,
				backend.PutOptions{ContentType: "video/mp4", Metadata: md})
			if err != nil {
				t.Fatalf("put: %v", err)
			}
			if o.Size != size || !strings.HasSuffix(o.ETag, "-8") {
				t.Errorf("put = size %d etag %q, want %d bytes in 8 parts", o.Size, o.ETag, size)
			}
			st, err := s.Stat(ctx, "big/video.mp4")
			if err != nil {
				t.Fatal(err)
			}
			if st.Size != size || st.ETag != o.ETag || st.ContentType != "video/mp4" {
				t.Errorf("stat = %+v", st)
			}
			checkMeta(t, "multipart", st.Metadata, md)
			r, err := s.Get(ctx, "big/video.mp4", o.ETag, 0, -1)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes (md5 %s), want %d (md5 %s)", len(got), md5hex(got), size, md5hex(data))
			}
			// A range across a part boundary.
			off := int64(5<<20) - 3
			part, err := getString(ctx, s, "big/video.mp4", o.ETag, off, 6)
			if err != nil || part != string(data[off:off+6]) {
				t.Errorf("range across parts = %x, %v; want %x", part, err, data[off:off+6])
			}
			// Conditions hold for multipart uploads too.
			if _, err := s.Put(ctx, "big/video.mp4", bytes.NewReader(data), size,
				backend.PutOptions{IfNoneMatch: true}); !errors.Is(err, backend.ErrConflict) {
				t.Errorf("multipart put with if-none-match on an existing key = %v, want ErrConflict", err)
			}
		})
	}
}

func TestS3CABundleWithoutCertificatesIsRefused(t *testing.T) {
	path := t.TempDir() + "/empty.pem"
	if err := os.WriteFile(path, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := backend.NewS3(backend.S3Options{Endpoint: "https://example.invalid", Bucket: "b", CABundle: path}); err == nil {
		t.Error("NewS3 with a CA bundle holding no certificates succeeded")
	}
}

func contractDeleteMany(t *testing.T, s backend.Store) {
	ctx := testCtx(t)
	keys := []string{"a/1.jpg", "a/two words.jpg", "a/été ünïcode.jpg", "a/&<xml>'\".jpg", "never/was"}
	for i := 0; i < 1100; i++ { // more than one request's worth
		keys = append(keys, fmt.Sprintf("many/%04d", i))
	}
	for _, k := range keys {
		if k != "never/was" { // a missing key is no error
			putString(ctx, t, s, k, "x", backend.PutOptions{})
		}
	}
	putString(ctx, t, s, "a/kept.jpg", "k", backend.PutOptions{})
	errs := s.DeleteMany(ctx, keys)
	if len(errs) != len(keys) {
		t.Fatalf("%d results for %d keys", len(errs), len(keys))
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("%q: %v", keys[i], err)
		}
	}
	l, err := s.ListAll(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, o := range l {
		left = append(left, o.Key)
	}
	if len(left) != 1 || left[0] != "a/kept.jpg" {
		t.Fatalf("after the delete the bucket holds %d keys (%.5q), want only a/kept.jpg", len(left), left)
	}
}
