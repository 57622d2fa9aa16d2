package backend

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Options configures an S3-compatible store.
type S3Options struct {
	// Endpoint is a URL: http://host:port means no TLS, https:// (or no
	// scheme) means TLS.
	Endpoint string
	Bucket   string
	// Prefix is prepended to every key ("" or ending in "/").
	Prefix             string
	Region             string
	AccessKey          string
	SecretKey          string
	SessionToken       string
	InsecureSkipVerify bool
	// CABundle is a PEM file of extra roots (AWS_CA_BUNDLE); empty or
	// missing means the system roots only.
	CABundle string
	// RequestTimeout bounds a request that makes no progress (no response
	// headers, or no body bytes) for this long.
	RequestTimeout time.Duration
	// PartSize and PartConcurrency tune multipart uploads.
	PartSize        int64
	PartConcurrency int
}

// S3 is a Store backed by an S3-compatible server through minio-go.
type S3 struct {
	c       *minio.Client
	bucket  string
	prefix  string
	timeout time.Duration
	partSz  int64
	partPar int

	// For the change feed (feed.go), which signs its own requests.
	endpoint *url.URL
	region   string
	creds    struct{ access, secret, token string }
	feedHTTP *http.Client
}

var _ Store = (*S3)(nil)

// NewS3 builds the client; it does not contact the server (see Check).
func NewS3(o S3Options) (*S3, error) {
	secure := true
	host := o.Endpoint
	if strings.Contains(host, "://") {
		u, err := url.Parse(o.Endpoint)
		if err != nil {
			return nil, fmt.Errorf("endpoint %q: %w", o.Endpoint, err)
		}
		switch u.Scheme {
		case "http":
			secure = false
		case "https":
		default:
			return nil, fmt.Errorf("endpoint %q: scheme must be http or https", o.Endpoint)
		}
		if u.Path != "" && u.Path != "/" {
			return nil, fmt.Errorf("endpoint %q: must not have a path", o.Endpoint)
		}
		host = u.Host
	}
	if host == "" {
		return nil, errors.New("endpoint is empty")
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 30 * time.Second
	}
	if o.PartSize <= 0 {
		o.PartSize = 16 << 20
	}
	if o.PartConcurrency <= 0 {
		o.PartConcurrency = 4
	}
	tr, err := transport(o)
	if err != nil {
		return nil, err
	}
	c, err := minio.New(host, &minio.Options{
		Creds:     credentials.NewStaticV4(o.AccessKey, o.SecretKey, o.SessionToken),
		Secure:    secure,
		Region:    o.Region,
		Transport: tr,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	p := o.Prefix
	if p != "" && !strings.HasSuffix(p, "/") {
		p += "/"
	}
	s := &S3{c: c, bucket: o.Bucket, prefix: p, timeout: o.RequestTimeout,
		partSz: o.PartSize, partPar: o.PartConcurrency,
		endpoint: &url.URL{Scheme: "https", Host: host}, region: o.Region}
	if !secure {
		s.endpoint.Scheme = "http"
	}
	if s.region == "" {
		s.region = "us-east-1"
	}
	s.creds.access, s.creds.secret, s.creds.token = o.AccessKey, o.SecretKey, o.SessionToken
	// The feed's one long request gets a transport of its own (same TLS
	// settings and proxy), so it never holds a connection the main pool
	// could use, and a header timeout of its own.
	ftr, err := transport(o)
	if err != nil {
		return nil, err
	}
	ftr.ResponseHeaderTimeout = feedHeaderTimeout
	s.feedHTTP = &http.Client{Transport: ftr}
	return s, nil
}

func transport(o S3Options) (*http.Transport, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.InsecureSkipVerify}
	if o.CABundle != "" {
		pem, err := os.ReadFile(o.CABundle)
		switch {
		case err == nil:
			pool, perr := x509.SystemCertPool()
			if perr != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("CA bundle %s: no certificates found", o.CABundle)
			}
			tlsConf.RootCAs = pool
		case errors.Is(err, os.ErrNotExist):
			// A bundle named by the environment but absent: system roots.
		default:
			return nil, fmt.Errorf("CA bundle: %w", err)
		}
	}
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: o.RequestTimeout,
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       tlsConf,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
	}, nil
}

// Check verifies that the bucket exists and the credentials work.
func (s *S3) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ok, err := s.c.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", s.bucket, mapErr(err))
	}
	if !ok {
		return fmt.Errorf("bucket %s: %w", s.bucket, ErrNotFound)
	}
	// BucketExists can succeed anonymously on public buckets; a listing
	// proves the credentials.
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	for o := range s.c.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, MaxKeys: 1}) {
		if o.Err != nil {
			return fmt.Errorf("bucket %s: %w", s.bucket, mapErr(o.Err))
		}
		break
	}
	return nil
}

func (s *S3) full(key string) string { return s.prefix + key }

func (s *S3) rel(key string) string { return strings.TrimPrefix(key, s.prefix) }

// Stat implements Store.
func (s *S3) Stat(ctx context.Context, key string) (Object, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	info, err := s.c.StatObject(ctx, s.bucket, s.full(key), minio.StatObjectOptions{})
	if err != nil {
		return Object{}, fmt.Errorf("stat %s: %w", key, mapErr(err))
	}
	return s.object(info, false), nil
}

func (s *S3) object(info minio.ObjectInfo, listed bool) Object {
	o := Object{
		Key:          s.rel(info.Key),
		Size:         info.Size,
		ETag:         strings.Trim(info.ETag, `"`),
		LastModified: info.LastModified,
		ContentType:  info.ContentType,
	}
	md := map[string]string{}
	if listed {
		for k, v := range info.UserMetadataStripped {
			md[strings.ToLower(k)] = v
		}
		if len(md) == 0 {
			for k, v := range info.UserMetadata {
				lk := strings.ToLower(k)
				if strings.HasPrefix(lk, "x-amz-meta-") {
					md[strings.TrimPrefix(lk, "x-amz-meta-")] = v
				}
			}
		}
	} else {
		for k, v := range info.UserMetadata {
			md[strings.ToLower(k)] = v
		}
	}
	if len(md) > 0 {
		o.Metadata = md
	}
	return o
}

// List implements Store.
func (s *S3) List(ctx context.Context, prefix string) (Listing, error) {
	ctx, cancel := context.WithTimeout(ctx, 4*s.timeout)
	defer cancel()
	var l Listing
	for info := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{
		Prefix: s.full(prefix), WithMetadata: true,
	}) {
		if info.Err != nil {
			return Listing{}, fmt.Errorf("list %q: %w", prefix, mapErr(info.Err))
		}
		if strings.HasSuffix(info.Key, "/") && info.Size == 0 && info.ETag == "" {
			l.Prefixes = append(l.Prefixes, s.rel(info.Key))
			continue
		}
		l.Objects = append(l.Objects, s.object(info, true))
	}
	return l, nil
}

// ListAll implements Store.
func (s *S3) ListAll(ctx context.Context, prefix string) ([]Object, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*s.timeout)
	defer cancel()
	var out []Object
	for info := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{
		Prefix: s.full(prefix), Recursive: true, WithMetadata: true,
	}) {
		if info.Err != nil {
			return nil, fmt.Errorf("list %q: %w", prefix, mapErr(info.Err))
		}
		out = append(out, s.object(info, true))
	}
	return out, nil
}

// Get implements Store. The returned reader fails with ErrUnavailable when
// the server stops sending for longer than the request timeout.
func (s *S3) Get(ctx context.Context, key, etag string, off, n int64) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	opts := minio.GetObjectOptions{}
	if etag != "" {
		if err := opts.SetMatchETag(etag); err != nil {
			cancel()
			return nil, err
		}
	}
	switch {
	case n > 0:
		if err := opts.SetRange(off, off+n-1); err != nil {
			cancel()
			return nil, err
		}
	case off > 0:
		if err := opts.SetRange(off, 0); err != nil {
			cancel()
			return nil, err
		}
	}
	wd := newWatchdog(s.timeout, cancel)
	// One GET, errors at once: the Client's lazy Object would add a HEAD
	// before every read.
	body, _, _, err := minio.Core{Client: s.c}.GetObject(ctx, s.bucket, s.full(key), opts)
	if err != nil {
		fired := wd.fired()
		wd.stop()
		cancel()
		if fired {
			return nil, fmt.Errorf("get %s: stalled: %w", key, ErrUnavailable)
		}
		return nil, fmt.Errorf("get %s: %w", key, mapErr(err))
	}
	wd.kick()
	return &getReader{obj: body, wd: wd, cancel: cancel, key: key}, nil
}

type getReader struct {
	obj    io.ReadCloser
	wd     *watchdog
	cancel context.CancelFunc
	key    string
}

func (g *getReader) Read(p []byte) (int, error) {
	n, err := g.obj.Read(p)
	g.wd.kick()
	if err != nil && err != io.EOF {
		if g.wd.fired() {
			return n, fmt.Errorf("get %s: stalled: %w", g.key, ErrUnavailable)
		}
		return n, fmt.Errorf("get %s: %w", g.key, mapErr(err))
	}
	return n, err
}

func (g *getReader) Close() error {
	g.wd.stop()
	err := g.obj.Close()
	g.cancel()
	return err
}

// watchdog cancels a request that has made no progress for d.
type watchdog struct {
	mu    sync.Mutex
	t     *time.Timer
	d     time.Duration
	fire  bool
	close bool
}

func newWatchdog(d time.Duration, cancel context.CancelFunc) *watchdog {
	w := &watchdog{d: d}
	w.t = time.AfterFunc(d, func() {
		w.mu.Lock()
		if !w.close {
			w.fire = true
		}
		w.mu.Unlock()
		cancel()
	})
	return w
}

func (w *watchdog) kick() {
	w.mu.Lock()
	if !w.close && !w.fire {
		w.t.Reset(w.d)
	}
	w.mu.Unlock()
}

func (w *watchdog) stop() {
	w.mu.Lock()
	w.close = true
	w.t.Stop()
	w.mu.Unlock()
}

func (w *watchdog) fired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fire
}

// progressReader kicks a watchdog as the upload reads its body.
type progressReader struct {
	r  *io.SectionReader
	wd *watchdog
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.wd.kick()
	return n, err
}

func (p *progressReader) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.r.ReadAt(b, off)
	p.wd.kick()
	return n, err
}

func (p *progressReader) Seek(off int64, whence int) (int64, error) { return p.r.Seek(off, whence) }

func userMeta(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Put implements Store.
func (s *S3) Put(ctx context.Context, key string, r io.ReaderAt, size int64, o PutOptions) (Object, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wd := newWatchdog(s.timeout, cancel)
	defer wd.stop()
	opts := minio.PutObjectOptions{
		ContentType:  o.ContentType,
		UserMetadata: userMeta(o.Metadata),
		PartSize:     uint64(s.partSz),
		NumThreads:   uint(s.partPar),
		// MD5 is not needed: the payload is signed (sha256 streaming) or
		// checked through the ETag below.
		DisableContentSha256: false,
	}
	if o.IfMatch != "" {
		opts.SetMatchETag(o.IfMatch)
	}
	if o.IfNoneMatch {
		opts.SetMatchETagExcept("*")
	}
	body := &progressReader{r: io.NewSectionReader(r, 0, size), wd: wd}
	info, err := s.c.PutObject(ctx, s.bucket, s.full(key), body, size, opts)
	if err != nil {
		if wd.fired() {
			return Object{}, fmt.Errorf("put %s: stalled: %w", key, ErrUnavailable)
		}
		if o.IfMatch != "" && minio.ToErrorResponse(err).Code == "NoSuchKey" {
			// S3 and MinIO answer If-Match on a missing key with 404; for
			// the Store contract every failed condition is a conflict.
			return Object{}, fmt.Errorf("put %s: %w: no object to match", key, ErrConflict)
		}
		return Object{}, fmt.Errorf("put %s: %w", key, mapErr(err))
	}
	return Object{Key: key, Size: info.Size, ETag: strings.Trim(info.ETag, `"`),
		LastModified: info.LastModified, ContentType: o.ContentType, Metadata: userMeta(o.Metadata)}, nil
}

// Copy implements Store.
func (s *S3) Copy(ctx context.Context, src, dst string, srcSize int64, o PutOptions) (Object, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*s.timeout)
	defer cancel()
	d := minio.CopyDestOptions{Bucket: s.bucket, Object: s.full(dst), NumThreads: uint(s.partPar)}
	if o.Metadata != nil {
		d.ReplaceMetadata = true
		d.UserMetadata = userMeta(o.Metadata)
		if d.UserMetadata == nil {
			d.UserMetadata = map[string]string{}
		}
		d.ContentType = o.ContentType
	}
	sr := minio.CopySrcOptions{Bucket: s.bucket, Object: s.full(src)}
	var info minio.UploadInfo
	var err error
	if srcSize > 5<<30 {
		info, err = s.c.ComposeObject(ctx, d, sr)
	} else {
		info, err = s.c.CopyObject(ctx, d, sr)
	}
	if err != nil {
		return Object{}, fmt.Errorf("copy %s to %s: %w", src, dst, mapErr(err))
	}
	return Object{Key: dst, Size: info.Size, ETag: strings.Trim(info.ETag, `"`),
		LastModified: info.LastModified, ContentType: o.ContentType, Metadata: userMeta(o.Metadata)}, nil
}

// Delete implements Store.
func (s *S3) Delete(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	err := s.c.RemoveObject(ctx, s.bucket, s.full(key), minio.RemoveObjectOptions{})
	if err != nil {
		err = mapErr(err)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// DeleteMany implements Store with S3's multi-object delete.
func (s *S3) DeleteMany(ctx context.Context, keys []string) []error {
	errs := make([]error, len(keys))
	if len(keys) == 0 {
		return errs
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout*time.Duration(1+len(keys)/1000))
	defer cancel()
	idx := make(map[string][]int, len(keys))
	ch := make(chan minio.ObjectInfo, len(keys))
	for i, k := range keys {
		f := s.full(k)
		idx[f] = append(idx[f], i)
		ch <- minio.ObjectInfo{Key: f}
	}
	close(ch)
	answered := make([]bool, len(keys))
	var whole error // a failure of a whole request
	for r := range s.c.RemoveObjectsWithResult(ctx, s.bucket, ch, minio.RemoveObjectsOptions{}) {
		if r.ObjectName == "" {
			if r.Err != nil && whole == nil {
				whole = r.Err
			}
			continue
		}
		for _, i := range idx[r.ObjectName] {
			answered[i] = true
			if r.Err == nil {
				continue
			}
			if err := mapErr(r.Err); !errors.Is(err, ErrNotFound) {
				errs[i] = fmt.Errorf("delete %s: %w", keys[i], err)
			}
		}
	}
	for i, ok := range answered {
		if ok {
			continue
		}
		err := whole
		if err == nil {
			err = ctx.Err()
		}
		if err == nil {
			// Left out of an answer that came: minio-go skips some
			// answers (a missing version; on GCS, which has no multi-
			// object delete, a missing key). Asked again on its own,
			// a missing key is no error.
			errs[i] = s.Delete(ctx, keys[i])
			continue
		}
		if mapped := mapErr(err); !errors.Is(mapped, ErrNotFound) {
			errs[i] = fmt.Errorf("delete %s: %w", keys[i], mapped)
		}
	}
	return errs
}

// mapErr turns minio-go and network errors into the sentinel errors. The
// server's message is kept (it never carries credentials).
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	resp := minio.ToErrorResponse(err)
	switch resp.Code {
	case "NoSuchKey", "NoSuchBucket", "NotFound":
		return fmt.Errorf("%w: %s", ErrNotFound, resp.Code)
	case "PreconditionFailed", "ConditionalRequestConflict":
		return fmt.Errorf("%w: %s", ErrConflict, resp.Code)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthorizationHeaderMalformed":
		return fmt.Errorf("%w: %s", ErrAccessDenied, resp.Code)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: %s", ErrNotFound, err)
	case resp.StatusCode == http.StatusPreconditionFailed:
		return fmt.Errorf("%w: %s", ErrConflict, err)
	case resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%w: %s", ErrAccessDenied, err)
	case resp.StatusCode >= 500 || resp.StatusCode == 0:
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return err
}
