package backend

import (
	"context"
	"errors"
	"io"
	"time"
)

// Sentinel errors. Upper layers test for these with errors.Is and never see
// minio-go types.
var (
	// ErrNotFound means the object (or bucket) does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrConflict means a precondition (If-Match / If-None-Match) failed.
	ErrConflict = errors.New("precondition failed")
	// ErrUnavailable means the backend could not be reached or answered with
	// a server error; the operation may succeed when retried later.
	ErrUnavailable = errors.New("backend unavailable")
	// ErrAccessDenied means the credentials were refused.
	ErrAccessDenied = errors.New("access denied")
)

// Metadata keys, stored as x-amz-meta-<name>, the names s3fs uses.
const (
	MetaMode  = "mode"
	MetaUID   = "uid"
	MetaGID   = "gid"
	MetaMtime = "mtime"
)

// Object describes one object. Key is relative to the store's prefix.
type Object struct {
	Key          string
	Size         int64
	ETag         string
	LastModified time.Time
	ContentType  string
	// Metadata holds user metadata with lower-case names and without the
	// x-amz-meta- prefix (for example "mode", "mtime").
	Metadata map[string]string
}

// Listing is one directory level: objects directly under the prefix and
// the common prefixes (sub directories), both as keys relative to the
// store's prefix. Prefixes end in "/".
type Listing struct {
	Objects  []Object
	Prefixes []string
}

// PutOptions are the attributes and conditions of an upload.
type PutOptions struct {
	ContentType string
	Metadata    map[string]string
	// IfMatch, when set, makes the write succeed only if the object's
	// current ETag is this one (ErrConflict otherwise).
	IfMatch string
	// IfNoneMatch makes the write succeed only if no object exists under
	// the key (ErrConflict otherwise).
	IfNoneMatch bool
}

// Store is the object store as the cache sees it. Every method honours the
// context's deadline; implementations add their own per-request timeouts
// and retries so that a hung server cannot hang a caller forever.
type Store interface {
	// Stat returns the object under key or ErrNotFound.
	Stat(ctx context.Context, key string) (Object, error)
	// List returns one level under prefix ("" or ending in "/"), all pages,
	// with user metadata where the server supports it.
	List(ctx context.Context, prefix string) (Listing, error)
	// ListAll returns every object under prefix, recursively.
	ListAll(ctx context.Context, prefix string) ([]Object, error)
	// Get returns a reader over [off, off+n) of the object; n < 0 means to
	// the end. etag, when set, makes the read fail with ErrConflict if the
	// object changed.
	Get(ctx context.Context, key, etag string, off, n int64) (io.ReadCloser, error)
	// Put uploads size bytes from r. Large objects are uploaded in parts,
	// read concurrently through ReadAt.
	Put(ctx context.Context, key string, r io.ReaderAt, size int64, opts PutOptions) (Object, error)
	// Copy copies src to dst on the server, replacing the metadata with
	// opts.Metadata when it is not nil.
	Copy(ctx context.Context, src, dst string, srcSize int64, opts PutOptions) (Object, error)
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// DeleteMany removes keys in as few requests as the server allows (S3's
	// multi-object delete: 1000 keys a request); errs[i] is the result
	// for keys[i], as Delete would give it.
	DeleteMany(ctx context.Context, keys []string) (errs []error)
}
