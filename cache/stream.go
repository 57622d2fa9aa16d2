package cache

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/mediafs/mediafs/backend"
)

// streamReader serves reads of a large object that is not cached locally
// with ranged GETs: one open stream follows a sequential reader, a seek
// (or a gap of more than skipLimit) starts a new one.
type streamReader struct {
	c   *Cache
	key string
	e   Entry

	mu   sync.Mutex
	body io.ReadCloser
	pos  int64
}

const skipLimit = 4 << 20

func newStreamReader(c *Cache, key string, e Entry) *streamReader {
	return &streamReader{c: c, key: key, e: e}
}

func (s *streamReader) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off >= s.e.Size {
		return 0, nil
	}
	if int64(len(p)) > s.e.Size-off {
		p = p[:s.e.Size-off]
	}
	for attempt := 0; ; attempt++ {
		n, err := s.readLocked(ctx, p, off)
		if err == nil || attempt >= 2 || errors.Is(err, backend.ErrConflict) || errors.Is(err, backend.ErrNotFound) || ctx.Err() != nil {
			return n, err
		}
		// A dropped stream: start again from where we are.
		s.closeLocked()
		p, off = p[n:], off+int64(n)
		if len(p) == 0 {
			return n, nil
		}
		m, err2 := s.readLocked(ctx, p, off)
		if err2 == nil {
			return n + m, nil
		}
		s.closeLocked()
	}
}

func (s *streamReader) readLocked(ctx context.Context, p []byte, off int64) (int, error) {
	if s.body != nil && (off < s.pos || off-s.pos > skipLimit) {
		s.closeLocked()
	}
	if s.body == nil {
		// The stream outlives this request, so it gets its own context;
		// the backend's watchdog bounds a stalled server.
		r, err := s.c.st.Get(context.WithoutCancel(ctx), s.key, s.e.ETag, off, -1)
		if err != nil {
			return 0, err
		}
		s.body, s.pos = r, off
	}
	if off > s.pos {
		if _, err := io.CopyN(io.Discard, s.body, off-s.pos); err != nil {
			return 0, err
		}
		s.pos = off
	}
	n, err := io.ReadFull(s.body, p)
	s.pos += int64(n)
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		if s.pos >= s.e.Size {
			return n, nil
		}
	}
	return n, err
}

func (s *streamReader) closeLocked() {
	if s.body != nil {
		s.body.Close()
		s.body = nil
	}
}

func (s *streamReader) Close() {
	s.mu.Lock()
	s.closeLocked()
	s.mu.Unlock()
}
