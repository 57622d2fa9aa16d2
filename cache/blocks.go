package cache

// Block cache for objects too large to fetch whole on open. The object's
// version (key + ETag) gets a sparse data file; ranged GETs fill it in
// blockSize blocks, and a bitmap in Badger (b/<data id>) records which
// blocks are present, so a restart keeps what was read and a partial read
// never downloads the whole object. Sequential readers get read-ahead:
// several blocks in flight in parallel, since an object store delivers far
// more with several streams than with one. Once every block is present the
// file is complete and later opens use FUSE passthrough like any cached
// file.
//
// The bitmap is written after the block's data (without fsync: this is
// clean, re-fetchable data; after a power loss blocks may read back as
// zeros until the entry is evicted, which the README documents).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/mediafs/mediafs/backend"
)

const (
	blockSize = 4 << 20
	// readAhead is how many blocks ahead of a sequential reader are
	// fetched; maxFetches bounds the GETs in flight per file.
	readAhead  = 12
	maxFetches = 6
)

// copyBufs are the buffers block fetches stream through.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func bKey(id uint64) []byte { return []byte(fmt.Sprintf("b/%016x", id)) }

type blockMap struct {
	c    *Cache
	key  string
	etag string
	size int64
	id   uint64
	f    *os.File

	mu       sync.Mutex
	have     []bool
	missing  int
	inflight map[int]*blockFetch
	sem      chan struct{}
	next     int // block after the last one read: sequential detection
	seq      int
	// order lists present blocks oldest first, for the per-file budget;
	// punched counts hole punches and punchedAt[b] is the count at b's.
	order     []int
	punched   uint64
	punchedAt map[int]uint64
	// failAt and failErr remember the last fetch that failed because the
	// store is unreachable (see failFast).
	failAt  time.Time
	failErr error
	// detached is set once a writer took the data file over (see detach).
	detached bool
	// wg counts fetches in flight (see setGroup).
	wg *sync.WaitGroup
}

// failFast: while the store is down, a read of a missing block within
// this long of a failed fetch fails at once instead of waiting out
// another op timeout. The kernel retries a failed read itself, and a
// read(2) must fail within one op timeout, not two.
const failFast = 2 * time.Second

// fetchGroup is set by the owning item: it waits for the map's fetches
// before closing the data file they write into.
func (m *blockMap) setGroup(wg *sync.WaitGroup) { m.wg = wg }

type blockFetch struct {
	done chan struct{}
	err  error
}

func nblocks(size int64) int { return int((size + blockSize - 1) / blockSize) }

func newBlockMap(c *Cache, key, etag string, size int64, id uint64, f *os.File, have []bool) *blockMap {
	n := nblocks(size)
	if len(have) != n {
		have = make([]bool, n)
	}
	m := &blockMap{c: c, key: key, etag: etag, size: size, id: id, f: f, have: have,
		inflight: map[int]*blockFetch{}, sem: make(chan struct{}, maxFetches), punchedAt: map[int]uint64{}}
	for b, h := range have {
		if !h {
			m.missing++
		} else {
			m.order = append(m.order, b)
		}
	}
	return m
}

func loadBitmap(txn *badger.Txn, id uint64) ([]bool, error) {
	it, err := txn.Get(bKey(id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var have []bool
	err = it.Value(func(v []byte) error {
		have = make([]bool, 0, len(v)*8)
		var raw struct {
			N    int    `json:"n"`
			Bits []byte `json:"bits"`
		}
		if err := json.Unmarshal(v, &raw); err != nil {
			return err
		}
		if raw.N < 0 || raw.N > len(raw.Bits)*8 {
			// Torn or foreign: the caller refetches instead of crashing.
			return fmt.Errorf("block bitmap of %d blocks in %d bytes", raw.N, len(raw.Bits))
		}
		for i := 0; i < raw.N; i++ {
			have = append(have, raw.Bits[i/8]&(1<<(i%8)) != 0)
		}
		return nil
	})
	return have, err
}

func (m *blockMap) encodeLocked() []byte {
	bits := make([]byte, (len(m.have)+7)/8)
	for i, h := range m.have {
		if h {
			bits[i/8] |= 1 << (i % 8)
		}
	}
	return encode(struct {
		N    int    `json:"n"`
		Bits []byte `json:"bits"`
	}{len(m.have), bits})
}

// complete reports whether every block is present.
func (m *blockMap) complete() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.missing == 0
}

// ReadAt serves p at off, fetching missing blocks and reading ahead for
// sequential readers.
func (m *blockMap) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	for {
		if m.isDetached() {
			// A writer has the file: it is what it holds now, whatever
			// its size (handles opened on the partial file read it too).
			n, err := m.f.ReadAt(p, off)
			if err == io.EOF {
				err = nil
			}
			return n, err
		}
		if off >= m.size {
			return 0, nil
		}
		q := p
		if int64(len(q)) > m.size-off {
			q = q[:m.size-off]
		}
		first, last := int(off/blockSize), int((off+int64(len(q))-1)/blockSize)
		n, retry, err := m.readOnce(ctx, q, off, first, last)
		if !retry {
			return n, err
		}
	}
}

func (m *blockMap) isDetached() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.detached
}

// detach hands the data file over to a writer (after fillAll, or to be
// truncated): no block is fetched into it any more, and the fetches in
// flight are waited for, since they would write the old version's bytes
// over the writer's. Handles still holding the map read the file as is.
func (m *blockMap) detach() {
	m.mu.Lock()
	m.detached = true
	var waits []*blockFetch
	for _, f := range m.inflight {
		waits = append(waits, f)
	}
	m.mu.Unlock()
	for _, f := range waits {
		<-f.done
	}
}

// readOnce makes sure blocks first..last are present and reads them. retry
// is true when a block was punched out (budget eviction) during the read.
func (m *blockMap) readOnce(ctx context.Context, p []byte, off int64, first, last int) (int, bool, error) {
	m.mu.Lock()
	if m.detached {
		m.mu.Unlock()
		return 0, true, nil
	}
	if first == m.next || first == m.next-1 {
		m.seq++
	} else {
		m.seq = 0
	}
	m.next = last + 1
	ahead := 0
	if m.seq >= 2 {
		ahead = readAhead
	}
	var waits []*blockFetch
	for b := first; b <= last+ahead && b < len(m.have); b++ {
		if m.have[b] {
			continue
		}
		f := m.inflight[b]
		if f == nil && m.failErr != nil && time.Since(m.failAt) < failFast && m.c.backendDown() {
			if b > last {
				break // no read-ahead either
			}
			err := m.failErr
			m.mu.Unlock()
			return 0, false, err
		}
		if f == nil {
			f = &blockFetch{done: make(chan struct{})}
			m.inflight[b] = f
			if m.wg != nil {
				m.wg.Add(1)
			}
			go m.fetch(b, f)
		}
		if b <= last {
			waits = append(waits, f)
		}
	}
	m.mu.Unlock()
	for _, f := range waits {
		select {
		case <-f.done:
			if f.err != nil {
				return 0, false, f.err
			}
		case <-ctx.Done():
			return 0, false, ctx.Err()
		}
	}
	m.mu.Lock()
	if m.detached {
		m.mu.Unlock()
		return 0, true, nil
	}
	punched := m.punched
	for b := first; b <= last; b++ {
		if !m.have[b] {
			m.mu.Unlock()
			return 0, true, nil // evicted before we got to it: fetch again
		}
	}
	m.mu.Unlock()
	n, err := m.f.ReadAt(p, off)
	if err == io.EOF {
		err = nil
	}
	m.mu.Lock()
	retry := m.punched != punched && m.anyPunchedLocked(first, last, punched)
	m.mu.Unlock()
	return n, retry, err
}

// anyPunchedLocked reports whether a block in first..last was punched out
// after the punch count was since.
func (m *blockMap) anyPunchedLocked(first, last int, since uint64) bool {
	for b := first; b <= last; b++ {
		if m.punchedAt[b] > since {
			return true
		}
	}
	return false
}

// budget bounds the bytes a single file may hold in the cache, so reading
// an object larger than --cache-size keeps the cache under its cap: blocks
// behind the reader are punched out, oldest first.
func (m *blockMap) budget() int64 {
	limit := m.c.o.CacheSize / 2
	if limit <= 0 || m.size <= limit {
		return 0
	}
	// The window must hold the block being read plus the read-ahead, or
	// trimming would punch out what the reader is about to use.
	if min := int64(readAhead+maxFetches) * blockSize; limit < min {
		limit = min
	}
	return limit
}

// trimLocked punches out the oldest fetched blocks while over budget.
func (m *blockMap) trimLocked(keep int) {
	limit := m.budget()
	if limit == 0 {
		return
	}
	for int64(len(m.order))*blockSize > limit {
		b := m.order[0]
		m.order = m.order[1:]
		if b == keep || !m.have[b] {
			continue
		}
		off := int64(b) * blockSize
		if err := punchHole(m.f, off, blockSize); err != nil {
			m.c.log.Warn("punching a cache block", "key", m.key, "err", err)
			return
		}
		m.have[b] = false
		m.missing++
		m.punched++
		m.punchedAt[b] = m.punched
	}
}

// fetch downloads block b into the sparse file.
func (m *blockMap) fetch(b int, f *blockFetch) {
	if m.wg != nil {
		defer m.wg.Done()
	}
	m.sem <- struct{}{}
	defer func() { <-m.sem }()
	off := int64(b) * blockSize
	n := int64(blockSize)
	if off+n > m.size {
		n = m.size - off
	}
	m.c.makeRoom(n)
	var err error
	if m.isDetached() {
		err = fmt.Errorf("read %s: the cache file was taken over by a writer: %w", m.key, backend.ErrUnavailable)
	} else {
		err = m.fetchRange(off, n)
	}
	m.mu.Lock()
	delete(m.inflight, b)
	if errors.Is(err, backend.ErrUnavailable) {
		m.failAt, m.failErr = time.Now(), err
	}
	if err == nil && !m.have[b] {
		m.have[b] = true
		m.missing--
		m.order = append(m.order, b)
		m.trimLocked(b)
		bm := m.encodeLocked()
		complete := m.missing == 0
		m.mu.Unlock()
		if uerr := m.c.update(func(txn *badger.Txn) error {
			if !complete {
				return txn.Set(bKey(m.id), bm)
			}
			// Whole now: an ordinary clean file from here on.
			if cl, ok, err := getClean(txn, m.key); err != nil || !ok || cl.DataID != m.id {
				return err
			} else {
				cl.Partial = false
				if err := txn.Set(cKey(m.key), encode(cl)); err != nil {
					return err
				}
			}
			return txn.Delete(bKey(m.id))
		}); uerr != nil {
			m.c.log.Warn("saving block map", "key", m.key, "err", uerr)
		}
	} else {
		m.mu.Unlock()
	}
	f.err = err
	close(f.done)
}

func (m *blockMap) fetchRange(off, n int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), m.c.o.OpTimeout)
	defer cancel()
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var r io.ReadCloser
		r, err = m.c.st.Get(ctx, m.key, m.etag, off, n)
		if err != nil {
			if errors.Is(err, backend.ErrConflict) || errors.Is(err, backend.ErrNotFound) || ctx.Err() != nil {
				break
			}
			continue
		}
		bp := copyBufs.Get().(*[]byte)
		var got int64
		got, err = io.CopyBuffer(io.NewOffsetWriter(m.f, off), io.LimitReader(r, n), *bp)
		copyBufs.Put(bp)
		r.Close()
		if err == nil && got != n {
			err = fmt.Errorf("get %s: short read (%d of %d bytes): %w", m.key, got, n, backend.ErrUnavailable)
		}
		if err == nil {
			m.c.noteBackend(nil)
			return nil
		}
		var pe *os.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("cache file: %w", err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	m.c.noteBackend(err)
	if errors.Is(err, backend.ErrConflict) {
		// The object changed under us: this version is gone.
		return fmt.Errorf("read %s: object changed on the server: %w", m.key, backend.ErrUnavailable)
	}
	return err
}

// fillAll fetches every missing block (before a write to the file).
func (m *blockMap) fillAll(ctx context.Context) error {
	buf := make([]byte, 1)
	for b := 0; b < len(m.have); b++ {
		m.mu.Lock()
		h := m.have[b]
		m.mu.Unlock()
		if h {
			continue
		}
		if _, err := m.ReadAt(ctx, buf, int64(b)*blockSize); err != nil {
			return err
		}
	}
	return nil
}

func punchHole(f *os.File, off, n int64) error {
	return syscall.Fallocate(int(f.Fd()), 0x02|0x01, off, n) // PUNCH_HOLE|KEEP_SIZE
}
