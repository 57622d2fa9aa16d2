// Package backendtest provides Mem, an in-memory backend.Store for unit
// tests of the layers above backend, the way net/http/httptest serves the
// tests of HTTP clients. Mem follows the Store contract as the S3
// implementation does against MinIO (one-level listings with "/" as
// delimiter, conditional writes, metadata-replacing copies, idempotent
// deletes) and adds what a test needs: fault injection (SetDown, SetHook),
// call counters (Calls) and an ordered call history (History).
//
// It must never be imported outside tests, and it must never grow
// behaviour the real store lacks: a test that passes only against Mem
// proves nothing.
package backendtest

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mediafs/mediafs/backend"
)

// Method names, as counted by Calls and recorded in History.
const (
	Stat    = "Stat"
	List    = "List"
	ListAll = "ListAll"
	Get     = "Get"
	Put     = "Put"
	Copy    = "Copy"
	Delete  = "Delete"
	// DeleteMany is counted once per call; its keys are recorded in the
	// history as one Delete each.
	DeleteMany = "DeleteMany"
)

// Content types the server gives an object when the client sends none:
// minio-go's default for an upload, MinIO's for a metadata-replacing copy.
const (
	defaultContentType     = "application/octet-stream"
	defaultCopyContentType = "binary/octet-stream"
)

// Call is one call made to a Mem.
type Call struct {
	Method string
	// Key is the object key or listing prefix; for Copy, the destination.
	Key string
	// Src is the source of a Copy.
	Src string
	// Err is the call's result (nil on success).
	Err error
}

// Mem is an in-memory backend.Store, safe for concurrent use. The zero
// value is not usable; call NewMem.
type Mem struct {
	mu      sync.Mutex
	objs    map[string]memObject
	down    bool
	hook    func(ctx context.Context, c Call) error
	calls   map[string]int
	history []Call
}

type memObject struct {
	data []byte
	obj  backend.Object // Key, Size, ETag, LastModified, ContentType, Metadata
}

var _ backend.Store = (*Mem)(nil)

// NewMem returns an empty store.
func NewMem() *Mem {
	return &Mem{objs: map[string]memObject{}, calls: map[string]int{}}
}

// SetDown makes every call fail with backend.ErrUnavailable while down is
// true, as if the server could not be reached. Calls are still counted.
func (m *Mem) SetDown(down bool) {
	m.mu.Lock()
	m.down = down
	m.mu.Unlock()
}

// SetHook installs fn, called at the start of every call (outside Mem's
// lock, after SetDown's check) with the call's method and keys. A non-nil
// error from fn becomes the call's result; fn may also block, to hold a
// call in flight. SetHook(nil) removes it.
func (m *Mem) SetHook(fn func(ctx context.Context, c Call) error) {
	m.mu.Lock()
	m.hook = fn
	m.mu.Unlock()
}

// Calls returns how many times each method was called, failed calls
// included.
func (m *Mem) Calls() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.calls)
}

// History returns every call made so far, in the order they ended.
func (m *Mem) History() []Call {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.history)
}

// ResetCalls clears the counters and the history.
func (m *Mem) ResetCalls() {
	m.mu.Lock()
	m.calls = map[string]int{}
	m.history = nil
	m.mu.Unlock()
}

// Set stores an object directly, as another client of the bucket would,
// without counting a call or honouring SetDown. md names are lower-cased.
func (m *Mem) Set(key string, data []byte, contentType string, md map[string]string) backend.Object {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.storeLocked(key, bytes.Clone(data), contentType, md)
}

// Object returns the stored object and its bytes, without counting a call
// or honouring SetDown.
func (m *Mem) Object(key string) (backend.Object, []byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objs[key]
	if !ok {
		return backend.Object{}, nil, false
	}
	return cloneObject(o.obj), bytes.Clone(o.data), true
}

// Keys returns every stored key, sorted.
func (m *Mem) Keys() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.objs))
}

// begin counts a call and applies SetDown and the hook.
func (m *Mem) begin(ctx context.Context, c Call) error {
	m.mu.Lock()
	m.calls[c.Method]++
	down, hook := m.down, m.hook
	m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
	}
	if down {
		return fmt.Errorf("%w: store is down", backend.ErrUnavailable)
	}
	if hook != nil {
		return hook(ctx, c)
	}
	return nil
}

// end records the call's result in the history and returns err wrapped
// the way the S3 store wraps it.
func (m *Mem) end(c Call, err error) error {
	m.mu.Lock()
	c.Err = err
	m.history = append(m.history, c)
	m.mu.Unlock()
	if err == nil {
		return nil
	}
	if c.Method == Copy {
		return fmt.Errorf("copy %s to %s: %w", c.Src, c.Key, err)
	}
	return fmt.Errorf("%s %s: %w", strings.ToLower(c.Method), c.Key, err)
}

// Stat implements backend.Store.
func (m *Mem) Stat(ctx context.Context, key string) (backend.Object, error) {
	c := Call{Method: Stat, Key: key}
	if err := m.begin(ctx, c); err != nil {
		return backend.Object{}, m.end(c, err)
	}
	m.mu.Lock()
	o, ok := m.objs[key]
	m.mu.Unlock()
	if !ok {
		return backend.Object{}, m.end(c, backend.ErrNotFound)
	}
	return cloneObject(o.obj), m.end(c, nil)
}

// List implements backend.Store: the objects directly under prefix (the
// marker object named prefix itself included, as S3 lists it) and the
// common prefixes below it, both sorted. Listed objects carry user
// metadata (as MinIO lists them) but no Content-Type.
func (m *Mem) List(ctx context.Context, prefix string) (backend.Listing, error) {
	c := Call{Method: List, Key: prefix}
	if err := m.begin(ctx, c); err != nil {
		return backend.Listing{}, m.end(c, err)
	}
	var l backend.Listing
	m.mu.Lock()
	for _, k := range slices.Sorted(maps.Keys(m.objs)) {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			// Keys under one prefix are adjacent in sorted order.
			p := prefix + rest[:i+1]
			if n := len(l.Prefixes); n == 0 || l.Prefixes[n-1] != p {
				l.Prefixes = append(l.Prefixes, p)
			}
			continue
		}
		l.Objects = append(l.Objects, listed(m.objs[k].obj))
	}
	m.mu.Unlock()
	return l, m.end(c, nil)
}

// ListAll implements backend.Store.
func (m *Mem) ListAll(ctx context.Context, prefix string) ([]backend.Object, error) {
	c := Call{Method: ListAll, Key: prefix}
	if err := m.begin(ctx, c); err != nil {
		return nil, m.end(c, err)
	}
	var out []backend.Object
	m.mu.Lock()
	for _, k := range slices.Sorted(maps.Keys(m.objs)) {
		if strings.HasPrefix(k, prefix) {
			out = append(out, listed(m.objs[k].obj))
		}
	}
	m.mu.Unlock()
	return out, m.end(c, nil)
}

// Get implements backend.Store. A range that starts past the end of a
// non-empty object fails, as S3 answers 416; one that runs past the end is
// cut short.
func (m *Mem) Get(ctx context.Context, key, etag string, off, n int64) (io.ReadCloser, error) {
	c := Call{Method: Get, Key: key}
	if err := m.begin(ctx, c); err != nil {
		return nil, m.end(c, err)
	}
	m.mu.Lock()
	o, ok := m.objs[key]
	m.mu.Unlock()
	switch {
	case !ok:
		return nil, m.end(c, backend.ErrNotFound)
	case etag != "" && etag != o.obj.ETag:
		return nil, m.end(c, backend.ErrConflict)
	case off < 0 || (off > 0 && off >= int64(len(o.data))):
		return nil, m.end(c, fmt.Errorf("invalid range: offset %d of %d bytes", off, len(o.data)))
	}
	end := int64(len(o.data))
	if n >= 0 && off+n < end {
		end = off + n
	}
	// o.data is never modified in place (a Put stores a new slice), so the
	// reader may share it.
	return io.NopCloser(bytes.NewReader(o.data[off:end])), m.end(c, nil)
}

// Put implements backend.Store. The conditions are checked when the bytes
// have been read, atomically with the write; If-Match on a missing key is a
// conflict, as the Store contract (not the S3 wire protocol) has it.
func (m *Mem) Put(ctx context.Context, key string, r io.ReaderAt, size int64, opts backend.PutOptions) (backend.Object, error) {
	c := Call{Method: Put, Key: key}
	if err := m.begin(ctx, c); err != nil {
		return backend.Object{}, m.end(c, err)
	}
	data := make([]byte, size)
	if size > 0 {
		if k, err := r.ReadAt(data, 0); k < len(data) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return backend.Object{}, m.end(c, fmt.Errorf("read body: %w", err))
		}
	}
	m.mu.Lock()
	cur, exists := m.objs[key]
	var err error
	switch {
	case opts.IfNoneMatch && exists:
		err = backend.ErrConflict
	case opts.IfMatch != "" && (!exists || cur.obj.ETag != opts.IfMatch):
		err = backend.ErrConflict
	}
	var o backend.Object
	if err == nil {
		o = m.storeLocked(key, data, opts.ContentType, opts.Metadata)
	}
	m.mu.Unlock()
	return o, m.end(c, err)
}

// Copy implements backend.Store. With opts.Metadata nil the source's
// metadata and Content-Type are kept; otherwise both are replaced, the
// Content-Type by the server's default when opts.ContentType is empty, as
// MinIO does. The conditions in opts are ignored, as the S3 store ignores
// them.
func (m *Mem) Copy(ctx context.Context, src, dst string, srcSize int64, opts backend.PutOptions) (backend.Object, error) {
	c := Call{Method: Copy, Key: dst, Src: src}
	if err := m.begin(ctx, c); err != nil {
		return backend.Object{}, m.end(c, err)
	}
	m.mu.Lock()
	s, ok := m.objs[src]
	var o backend.Object
	if ok {
		ct, md := s.obj.ContentType, s.obj.Metadata
		if opts.Metadata != nil {
			md, ct = opts.Metadata, opts.ContentType
			if ct == "" {
				ct = defaultCopyContentType
			}
		}
		o = m.storeLocked(dst, s.data, ct, md)
	}
	m.mu.Unlock()
	if !ok {
		return backend.Object{}, m.end(c, backend.ErrNotFound)
	}
	return o, m.end(c, nil)
}

// Delete implements backend.Store.
func (m *Mem) Delete(ctx context.Context, key string) error {
	c := Call{Method: Delete, Key: key}
	if err := m.begin(ctx, c); err != nil {
		return m.end(c, err)
	}
	m.mu.Lock()
	delete(m.objs, key)
	m.mu.Unlock()
	return m.end(c, nil)
}

// DeleteMany implements backend.Store: each key as Delete would, the
// hook and SetDown applying to each.
func (m *Mem) DeleteMany(ctx context.Context, keys []string) []error {
	m.mu.Lock()
	m.calls[DeleteMany]++
	m.mu.Unlock()
	errs := make([]error, len(keys))
	for i, k := range keys {
		errs[i] = m.Delete(ctx, k)
	}
	return errs
}

// storeLocked writes an object; data must not be shared with the caller.
func (m *Mem) storeLocked(key string, data []byte, contentType string, md map[string]string) backend.Object {
	if contentType == "" {
		contentType = defaultContentType
	}
	sum := md5.Sum(data)
	o := backend.Object{
		Key:          key,
		Size:         int64(len(data)),
		ETag:         hex.EncodeToString(sum[:]),
		LastModified: time.Now().UTC(),
		ContentType:  contentType,
	}
	if len(md) > 0 {
		o.Metadata = make(map[string]string, len(md))
		for k, v := range md {
			o.Metadata[strings.ToLower(k)] = v
		}
	}
	m.objs[key] = memObject{data: data, obj: o}
	return cloneObject(o)
}

// listed is an object as a listing shows it: S3 listings carry no
// Content-Type.
func listed(o backend.Object) backend.Object {
	o = cloneObject(o)
	o.ContentType = ""
	return o
}

func cloneObject(o backend.Object) backend.Object {
	o.Metadata = maps.Clone(o.Metadata)
	return o
}
