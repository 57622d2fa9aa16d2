package cache

// Block cache for objects too large to fetch whole on open. The object's
// version (key + ETag) gets a sparse data file; ranged GETs fill it in
// blockSize blocks, and a bitmap in Badger (b/<data id>) records which
// blocks are present, so a restart keeps what was read and a partial read
// never downloads the whole object. Once every block is present the file
// is complete and later opens use FUSE passthrough like any cached file.
//
// Runs. Missing blocks are fetched by runs: one ranged GET for up to
// runBlocks consecutive blocks, streamed into the file in order. An object
// store spends far less per byte on a few long GETs than on many short
// ones (MinIO here: about twice the CPU for 4 MiB ranges as for 16 MiB
// ones, on a machine where that CPU is what bounds a cold read). A run
// records, per block, how many bytes from the block's start are on disk,
// so a read waits only for the bytes it asks for, not for its whole block.
// Those bytes came from a GET of this version (If-Match on the ETag) and
// were written before they are read. A block is marked present only once
// all of it is on disk, and only then can the budget punch it out or the
// bitmap keep it across a restart; a run that fails punches out what it
// wrote of its unfinished blocks.
//
// Read-ahead. A read at offset 0 starts one run at once (a program that
// reads only a header costs one GET); a read that continues where the
// previous ones ended widens the window to readAhead blocks with up to
// maxRuns GETs in flight, since an object store delivers far more with
// several streams than with one.
//
// The bitmap is written after the block's data (without fsync: this is
// clean, re-fetchable data; after a power loss blocks may read back as
// zeros until the entry is evicted, which the README documents), and
// before a block is punched out, so it never claims a hole. Bitmaps are
// versioned in memory so that an older one never overwrites a newer one.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
	"golang.org/x/sys/unix"

	"github.com/mediafs/mediafs/backend"
)

const (
	blockSize = 4 << 20
	// runBlocks is the most blocks one GET fetches.
	runBlocks = 4
	// readAhead is how many blocks ahead of a sequential reader are kept
	// fetched or in flight; maxRuns bounds the read-ahead GETs in flight
	// per file (a read that needs a block always gets its GET).
	readAhead = 16
	maxRuns   = 4
	// dropLag: a sequential reader's blocks this far behind it leave the
	// data file's page cache (see dropBehind).
	dropLag = 2
	// dropRetry: how far behind that dropBehind tries again, for blocks
	// still being written out when it passed them.
	dropRetry = 4
	// lateDrop: how long after a sequential reader's last read what it
	// left behind is dropped once more.
	lateDrop  = time.Second
	lateTries = 3
	// seqSlack: a read starting this close to where the previous reads
	// ended continues them. The kernel's read-ahead sends several READs
	// at once, and they reach the map in any order.
	seqSlack = blockSize
)

// copyBufs are the buffers runs stream through: a run writes to the file,
// and wakes the readers waiting for it, this much at a time (1 MiB, a
// kernel READ: fewer writes and wake-ups than 256 KiB, ~10% less CPU).
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

func bKey(id uint64) []byte { return []byte(fmt.Sprintf("b/%016x", id)) }

type blockMap struct {
	c    *Cache
	key  string
	etag string
	size int64
	id   uint64
	f    *os.File
	// mtime is the object's: the file gets it back once whole (writing
	// blocks moved it).
	mtime time.Time

	mu       sync.Mutex
	have     []bool
	missing  int
	inflight map[int]*blockFetch
	runs     int           // runs in flight
	sem      chan struct{} // bounds the GETs in flight
	// waiting are the reads waiting for bytes of a run.
	waiting []*waiter
	// nextOff is where the last reads ended (-1 before the first); seq
	// is set while the reads continue each other; blocks below dropped
	// have left the data file's page cache (see dropBehind).
	nextOff int64
	seq     bool
	dropped int
	// order lists the present blocks oldest first, for the per-file
	// budget; punched counts hole punches and punchedAt[b] is the count
	// at b's last one.
	order     []int
	punched   uint64
	punchedAt map[int]uint64
	// filling is set while fillAll makes the file whole for a writer:
	// the budget must not punch out what it just fetched.
	filling bool
	// ver counts changes of have; saveMu and savedVer order the bitmap
	// writes (see store).
	ver      uint64
	saveMu   sync.Mutex
	savedVer uint64
	// failAt and failErr remember the last run that failed because the
	// store is unreachable (see failFast).
	failAt  time.Time
	failErr error
	// detached is set once a writer took the data file over (see detach).
	detached bool
	// ctx ends the map's runs (cancel) when the file is closed or taken
	// over; stopped is set then, and a stopped map neither punches nor
	// saves its bitmap any more (see stop).
	ctx     context.Context
	cancel  context.CancelFunc
	stopped atomic.Bool
	// lateMu orders the late drop (see dropBehind) with stop; late is
	// its timer.
	lateMu   sync.Mutex
	late     *time.Timer
	lateLeft int
	// running counts this map's runs (detach waits for them); wg, the
	// item's, counts every run writing into its data file (see setGroup).
	running sync.WaitGroup
	wg      *sync.WaitGroup
}

// failFast: while the store is down, a read of a missing block within
// this long of a failed fetch fails at once instead of waiting out
// another op timeout. The kernel retries a failed read itself, and a
// read(2) must fail within one op timeout, not two.
const failFast = 2 * time.Second

// errStopped ends a run whose file was closed or taken over by a writer.
var errStopped = errors.New("reading stopped: the file was closed or taken over by a writer")

// fetchGroup is set by the owning item: it waits for the map's fetches
// before closing the data file they write into.
func (m *blockMap) setGroup(wg *sync.WaitGroup) { m.wg = wg }

// blockFetch is one block of a run in flight. Its fields are guarded by
// the map's mu.
type blockFetch struct {
	got    int64 // bytes on disk from the block's start
	failed bool  // the run ended before the block was whole
	err    error // why, when failed
}

// waiter is a read waiting until f has need bytes (or fails); ch is
// closed then. Waking only the reads whose bytes are there, rather than
// all of them at every write, saves a wake-up per read and chunk.
type waiter struct {
	f    *blockFetch
	need int64
	ch   chan struct{}
}

func nblocks(size int64) int { return int((size + blockSize - 1) / blockSize) }

func newBlockMap(c *Cache, key, etag string, size int64, id uint64, f *os.File, have []bool) *blockMap {
	n := nblocks(size)
	if len(have) != n {
		have = make([]bool, n)
	}
	m := &blockMap{c: c, key: key, etag: etag, size: size, id: id, f: f, have: have,
		inflight: map[int]*blockFetch{}, sem: make(chan struct{}, maxRuns+2),
		nextOff: -1, punchedAt: map[int]uint64{}}
	m.ctx, m.cancel = context.WithCancel(context.Background())
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

// blockLen is the length of block b (the last one may be short).
func (m *blockMap) blockLen(b int) int64 {
	return min(blockSize, m.size-int64(b)*blockSize)
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
		if off >= m.size || len(p) == 0 {
			return 0, nil
		}
		q := p
		if int64(len(q)) > m.size-off {
			q = q[:m.size-off]
		}
		n, retry, err := m.readOnce(ctx, q, off)
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
// truncated): no block is fetched into it any more, and the runs in
// flight are waited for, since they would write the old version's bytes
// over the writer's. Handles still holding the map read the file as is.
func (m *blockMap) detach() {
	m.mu.Lock()
	m.detached = true
	m.wakeLocked(true)
	m.mu.Unlock()
	m.stop()
}

// stop ends the runs in flight and waits for them: on the last close
// (the read-ahead of a program that read a header and closed must not
// go on downloading), and when a writer takes the file over. What a run
// wrote of an unfinished block stays, not marked present: the next map
// of this file (a new open may already have one) fetches it again, and
// punching it could punch out what that map just fetched. For the same
// reason a stopped map saves no bitmap.
func (m *blockMap) stop() {
	m.lateMu.Lock()
	m.stopped.Store(true)
	if m.late != nil {
		m.late.Stop()
	}
	m.lateMu.Unlock()
	m.cancel()
	m.running.Wait()
}

// readOnce makes sure the bytes of p are on disk and reads them. retry is
// true when a block was punched out (budget eviction, a failed run)
// during the read, or the file was detached.
func (m *blockMap) readOnce(ctx context.Context, p []byte, off int64) (int, bool, error) {
	end := off + int64(len(p))
	first, last := int(off/blockSize), int((end-1)/blockSize)
	m.mu.Lock()
	if m.detached {
		m.mu.Unlock()
		return 0, true, nil
	}
	if err := m.startLocked(first, last, m.aheadLocked(off, end, first, last)); err != nil {
		m.mu.Unlock()
		return 0, false, err
	}
	fetches := make([]*blockFetch, last-first+1)
	for b := first; b <= last; b++ {
		if !m.have[b] {
			fetches[b-first] = m.inflight[b]
		}
	}
	for {
		if m.detached {
			m.mu.Unlock()
			return 0, true, nil
		}
		var w *waiter
		for i, f := range fetches {
			b := first + i
			if m.have[b] {
				continue
			}
			if f == nil {
				m.mu.Unlock()
				return 0, true, nil // punched out since: fetch again
			}
			if f.failed {
				err := f.err
				m.mu.Unlock()
				return 0, false, err
			}
			bStart := int64(b) * blockSize
			if need := min(end, bStart+blockSize) - bStart; f.got < need {
				w = &waiter{f: f, need: need, ch: make(chan struct{})}
				break
			}
		}
		if w == nil {
			break
		}
		m.waiting = append(m.waiting, w)
		m.mu.Unlock()
		select {
		case <-w.ch:
			m.mu.Lock()
		case <-ctx.Done():
			m.mu.Lock()
			m.dropWaiterLocked(w)
			m.mu.Unlock()
			return 0, false, ctx.Err()
		}
	}
	punched := m.punched
	m.mu.Unlock()
	n, err := m.f.ReadAt(p, off)
	if err == io.EOF {
		err = nil
	}
	m.mu.Lock()
	retry := m.punched != punched && m.anyPunchedLocked(first, last, punched)
	m.mu.Unlock()
	m.dropBehind()
	return n, retry, err
}

// aheadLocked detects sequential reading and returns how many blocks past
// last to fetch ahead.
func (m *blockMap) aheadLocked(off, end int64, first, last int) int {
	cont := m.nextOff >= 0 && off >= m.nextOff-seqSlack && off <= m.nextOff+seqSlack
	m.seq = cont
	switch {
	case cont:
		m.nextOff = max(m.nextOff, end)
		return readAhead
	case off == 0:
		// Maybe a sequential reader, maybe one that reads a header: one
		// run for now.
		m.nextOff = end
		return runBlocks - 1 - (last - first)
	}
	m.nextOff = end
	return 0
}

// startLocked starts runs for the missing blocks of first..last (always)
// and of the read-ahead window after them (while fewer than maxRuns runs
// are in flight and the budget allows).
func (m *blockMap) startLocked(first, last, ahead int) error {
	end := min(last+max(ahead, 0), len(m.have)-1)
	for b := first; b <= end; {
		if m.have[b] || m.inflight[b] != nil {
			b++
			continue
		}
		needed := b <= last
		if m.failErr != nil && time.Since(m.failAt) < failFast && m.c.backendDown() {
			if !needed {
				return nil // no read-ahead either
			}
			return m.failErr
		}
		if !needed && m.runs >= maxRuns {
			return nil
		}
		e := b
		for e < end && e-b+1 < runBlocks && !m.have[e+1] && m.inflight[e+1] == nil {
			e++
		}
		if !needed {
			if e == end && e-b+1 < runBlocks && end < len(m.have)-1 {
				// The window moves on a block at a time: wait until it
				// holds a whole run rather than send a GET per block.
				return nil
			}
			// Read-ahead: only what the budget holds.
			for e >= b && !m.roomLocked(first, last, e-b+1) {
				e--
			}
			if e < b {
				return nil
			}
		} else {
			// Never punch out a block of this read; the budget holds
			// at least the read-ahead window, so it fits.
			m.roomLocked(first, last, e-b+1)
		}
		m.startRunLocked(b, e)
		b = e + 1
	}
	return nil
}

// startRunLocked starts a run for blocks b..e.
func (m *blockMap) startRunLocked(b, e int) {
	fs := make([]*blockFetch, e-b+1)
	for i := range fs {
		fs[i] = &blockFetch{}
		m.inflight[b+i] = fs[i]
	}
	m.runs++
	m.running.Add(1)
	if m.wg != nil {
		m.wg.Add(1)
	}
	go m.run(b, fs)
}

// wakeLocked wakes the reads whose bytes are on disk, or whose run
// failed; all wakes every read (the file was detached).
func (m *blockMap) wakeLocked(all bool) {
	kept := m.waiting[:0]
	for _, w := range m.waiting {
		if all || w.f.failed || w.f.got >= w.need {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	clear(m.waiting[len(kept):])
	m.waiting = kept
}

// dropWaiterLocked forgets a read that stopped waiting.
func (m *blockMap) dropWaiterLocked(w *waiter) {
	for i, x := range m.waiting {
		if x == w {
			m.waiting = append(m.waiting[:i], m.waiting[i+1:]...)
			return
		}
	}
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
// behind the reader are punched out, oldest first. 0 means no bound.
func (m *blockMap) budget() int64 {
	limit := m.c.o.CacheSize / 2
	if m.filling || limit <= 0 || m.size <= limit {
		return 0
	}
	// The window must hold the blocks being read plus the read-ahead,
	// or trimming would punch out what the reader is about to use.
	if min := int64(readAhead+2) * blockSize; limit < min {
		limit = min
	}
	return limit
}

// roomLocked makes room under the budget for k more blocks in flight,
// punching out the oldest present blocks other than first..last. It
// reports false, punching nothing, if they would not fit.
func (m *blockMap) roomLocked(first, last, k int) bool {
	limit := m.budget()
	if limit == 0 {
		return true
	}
	over := len(m.order) + len(m.inflight) + k - int(limit/blockSize)
	if over <= 0 {
		return true
	}
	var victims []int
	kept := m.order[:0:0]
	for _, b := range m.order {
		if len(victims) < over && (b < first || b > last) {
			victims = append(victims, b)
		} else {
			kept = append(kept, b)
		}
	}
	if len(victims) < over {
		return false
	}
	m.order = kept
	for _, b := range victims {
		m.have[b] = false
		m.missing++
	}
	// The bitmap first: it must never claim a hole.
	m.ver++
	m.store(m.ver, m.encodeLocked(), false)
	for _, b := range victims {
		m.punchLocked(b)
	}
	return true
}

// punchLocked punches block b out of the file and counts it, so that a
// read of it in progress starts again.
func (m *blockMap) punchLocked(b int) {
	if err := punchHole(m.f, int64(b)*blockSize, m.blockLen(b)); err != nil {
		m.c.log.Warn("punching a cache block", "key", m.key, "err", err)
	}
	m.punched++
	m.punchedAt[b] = m.punched
}

// run fetches the blocks fs (from block b0 on) with as few GETs as it can.
func (m *blockMap) run(b0 int, fs []*blockFetch) {
	defer m.running.Done()
	if m.wg != nil {
		defer m.wg.Done()
	}
	m.sem <- struct{}{}
	defer func() { <-m.sem }()
	if !m.stopped.Load() {
		off := int64(b0) * blockSize
		m.c.makeRoom(min(off+int64(len(fs))*blockSize, m.size) - off)
	}
	done := 0 // blocks of fs complete
	err := m.fetchRun(b0, fs, &done)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.runs--
	if errors.Is(err, backend.ErrUnavailable) {
		m.failAt, m.failErr = time.Now(), err
	}
	for i := done; i < len(fs); i++ {
		b, f := b0+i, fs[i]
		f.failed, f.err = true, err
		if m.inflight[b] == f {
			delete(m.inflight, b)
		}
		if !m.stopped.Load() && f.got > 0 {
			// Part of it was written (or allocated): give the space
			// back. A read of that part in progress starts again.
			m.punchLocked(b)
		}
	}
	m.wakeLocked(false)
}

// fetchRun streams blocks b0.. into the file, marking each present as it
// is whole; *done counts them. A store that stops sending ends the run
// within the op timeout of its last progress.
func (m *blockMap) fetchRun(b0 int, fs []*blockFetch, done *int) error {
	pos := int64(b0) * blockSize
	end := min(pos+int64(len(fs))*blockSize, m.size)
	ctx, cancel := context.WithCancel(m.ctx)
	defer cancel()
	stall := time.AfterFunc(m.c.o.OpTimeout, cancel)
	defer stall.Stop()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	m.mu.Lock()
	ferr, fat := m.failErr, m.failAt
	m.mu.Unlock()
	if ferr != nil && time.Since(fat) < failFast && m.c.backendDown() {
		// Queued behind runs that found the store down: fail now, not
		// after another op timeout.
		return ferr
	}
	var err error
	for attempt := 0; attempt < 3 && pos < end; attempt++ {
		if m.stopped.Load() {
			return fmt.Errorf("read %s: %w", m.key, errStopped)
		}
		var r io.ReadCloser
		r, err = m.c.st.Get(ctx, m.key, m.etag, pos, end-pos)
		if err != nil {
			if errors.Is(err, backend.ErrConflict) || errors.Is(err, backend.ErrNotFound) || ctx.Err() != nil {
				break
			}
			continue
		}
		for pos < end {
			var n int
			n, err = io.ReadFull(r, buf[:min(int64(len(buf)), end-pos)])
			if n > 0 {
				if pos%blockSize == 0 {
					// Allocating the block at once costs less CPU than
					// ext4's delayed allocation page by page.
					syscall.Fallocate(int(m.f.Fd()), 1, pos, min(blockSize, m.size-pos)) // KEEP_SIZE
				}
				if _, werr := m.f.WriteAt(buf[:n], pos); werr != nil {
					r.Close()
					return fmt.Errorf("cache file: %w", werr)
				}
				pos += int64(n)
				stall.Reset(m.c.o.OpTimeout)
				attempt = 0
				complete, ok := m.advance(b0, fs, pos, done)
				if !ok {
					r.Close()
					return fmt.Errorf("read %s: %w", m.key, errStopped)
				}
				if complete {
					m.save()
					m.writeOut(b0 + *done - 1)
				}
			}
			if err != nil {
				break
			}
		}
		r.Close()
		if pos >= end {
			m.c.noteBackend(nil)
			return nil
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("get %s: short read (%d bytes missing): %w", m.key, end-pos, backend.ErrUnavailable)
		}
		if ctx.Err() != nil {
			break
		}
	}
	if m.ctx.Err() != nil {
		return fmt.Errorf("read %s: %w", m.key, errStopped) // not the store's doing
	}
	if ctx.Err() != nil && !errors.Is(err, backend.ErrUnavailable) {
		err = fmt.Errorf("get %s: no data for %v: %w", m.key, m.c.o.OpTimeout, backend.ErrUnavailable)
	}
	m.c.noteBackend(err)
	if errors.Is(err, backend.ErrConflict) {
		// The object changed under us: this version is gone.
		return fmt.Errorf("read %s: object changed on the server: %w", m.key, backend.ErrUnavailable)
	}
	return err
}

// advance records that the run's bytes up to pos are on disk, marks the
// blocks that are now whole present and wakes the readers. complete is
// true if a block became present; ok is false if the file was detached.
func (m *blockMap) advance(b0 int, fs []*blockFetch, pos int64, done *int) (complete, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.detached || m.stopped.Load() {
		return false, false
	}
	for ; *done < len(fs); *done++ {
		b, f := b0+*done, fs[*done]
		bStart := int64(b) * blockSize
		f.got = min(pos-bStart, m.blockLen(b))
		if f.got < m.blockLen(b) {
			break
		}
		delete(m.inflight, b)
		if !m.have[b] {
			m.have[b] = true
			m.missing--
			m.order = append(m.order, b)
			m.ver++
			complete = true
		}
	}
	m.wakeLocked(false)
	return complete, true
}

// Drop-behind. Read through the daemon, a block sits in two page caches:
// the mount's (the kernel keeps what a READ returned, and
// FOPEN_KEEP_CACHE keeps it between opens) and the data file's. The
// second copy is of no use to a sequential reader once it is past, and
// filling fresh pages is what costs most in a cold read (the copy into
// the data file took half the daemon's CPU, more in a VM whose host
// reclaims the guest's free memory). So a block's write-out starts as
// soon as it is whole, and the blocks a sequential reader has left
// dropLag behind, long written, leave the data file's page cache: the
// next blocks reuse those pages while they are warm, and the data is
// cached in memory once. A later read of them (after the mount's pages
// were reclaimed, or through passthrough once the file is whole) reads
// the cache disk.

// writeOut starts writing block b, just made whole, to disk. It does not
// wait: the run goes on streaming.
func (m *blockMap) writeOut(b int) {
	unix.SyncFileRange(int(m.f.Fd()), int64(b)*blockSize, m.blockLen(b), unix.SYNC_FILE_RANGE_WRITE)
}

// dropBehind drops the blocks a sequential reader has left dropLag
// behind. It runs after each read, in the reader's request: a close
// waits for the runs, so they must not wait for the disk.
func (m *blockMap) dropBehind() {
	m.mu.Lock()
	from, upto := m.dropped, int(m.nextOff/blockSize)-dropLag
	if !m.seq || m.detached || upto <= from {
		if upto < from {
			m.dropped = max(upto, 0) // it went back: drop again from there
		}
		m.mu.Unlock()
		return
	}
	m.dropped = upto
	m.mu.Unlock()
	// Only clean pages go; a block whose write-out (started when it
	// became whole) is still running keeps its pages, and the next calls
	// try it again, dropRetry blocks back. Waiting for the write-out here
	// put the disk in the reader's way: a cold read ran at 400-680 MB/s
	// waiting, 440-710 (most runs over 600) not (dd of 512 MiB, 7 rounds
	// each, interleaved), with the same memory once the writes are done.
	fd := int(m.f.Fd())
	from = max(from-dropRetry, 0)
	off, n := int64(from)*blockSize, int64(upto-from)*blockSize
	unix.Fadvise(fd, off, n, unix.FADV_DONTNEED)
	// Once the reader pauses or is done, what it left behind goes too
	// (the last blocks, and any whose write-out was still running).
	m.lateMu.Lock()
	if !m.stopped.Load() {
		m.lateLeft = lateTries
		if m.late == nil {
			m.late = time.AfterFunc(lateDrop, m.dropLate)
		} else {
			m.late.Reset(lateDrop)
		}
	}
	m.lateMu.Unlock()
}

// dropLate drops everything a sequential reader has read, lateDrop after
// its last read, and again a few times (pages still being written out are
// kept by FADV_DONTNEED). It does not wait for the disk either.
func (m *blockMap) dropLate() {
	m.lateMu.Lock()
	defer m.lateMu.Unlock()
	if m.stopped.Load() {
		return // closing: the file may be gone
	}
	m.mu.Lock()
	upto, seq := m.nextOff, m.seq
	m.mu.Unlock()
	if !seq || upto <= 0 {
		return
	}
	unix.Fadvise(int(m.f.Fd()), 0, upto, unix.FADV_DONTNEED)
	if m.lateLeft--; m.lateLeft > 0 {
		m.late.Reset(lateDrop)
	}
}

// save stores the bitmap as it is now.
func (m *blockMap) save() {
	m.mu.Lock()
	ver, bm, whole := m.ver, m.encodeLocked(), m.missing == 0
	m.mu.Unlock()
	m.store(ver, bm, whole)
}

// store writes bitmap bm of version ver, unless a newer one is stored
// already; whole means every block is present, and the file is an
// ordinary clean file from then on. The map's mu may be held (lock
// order: mu, then saveMu).
func (m *blockMap) store(ver uint64, bm []byte, whole bool) {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	if ver <= m.savedVer || m.stopped.Load() {
		return
	}
	m.savedVer = ver
	if whole && !m.mtime.IsZero() {
		// Before the record says whole: from then on the file's mtime is
		// what its handles report.
		os.Chtimes(m.f.Name(), m.mtime, m.mtime)
	}
	if err := m.c.update(func(txn *badger.Txn) error {
		cl, ok, err := getClean(txn, m.key)
		if err != nil {
			return err
		}
		if !ok || cl.DataID != m.id {
			// No longer the clean copy (replaced by a newer version, or
			// dropped): its bitmap would outlive it.
			return txn.Delete(bKey(m.id))
		}
		if !whole {
			return txn.Set(bKey(m.id), bm)
		}
		{
			cl.Partial = false
			if err := txn.Set(cKey(m.key), encode(cl)); err != nil {
				return err
			}
		}
		return txn.Delete(bKey(m.id))
	}); err != nil {
		m.c.log.Warn("saving block map", "key", m.key, "err", err)
	}
}

// fillAll fetches every missing block (before a write to the file): it
// reads the last byte of each, which a run writes last.
func (m *blockMap) fillAll(ctx context.Context) error {
	m.mu.Lock()
	m.filling = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.filling = false
		m.mu.Unlock()
	}()
	buf := make([]byte, 1)
	for !m.complete() {
		for b := 0; b < len(m.have); b++ {
			m.mu.Lock()
			h := m.have[b]
			m.mu.Unlock()
			if h {
				continue
			}
			if _, err := m.ReadAt(ctx, buf, int64(b)*blockSize+m.blockLen(b)-1); err != nil {
				return err
			}
		}
		if m.isDetached() {
			return nil
		}
	}
	return nil
}

func punchHole(f *os.File, off, n int64) error {
	return syscall.Fallocate(int(f.Fd()), 0x02|0x01, off, n) // PUNCH_HOLE|KEEP_SIZE
}
