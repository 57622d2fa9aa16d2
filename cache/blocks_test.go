package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/dgraph-io/badger/v4"
	"golang.org/x/sys/unix"

	"github.com/mediafs/mediafs/backend"
	"github.com/mediafs/mediafs/backend/backendtest"
)

// streamStore is a Mem whose GET bodies can be held or cut at a byte
// offset of the object, and which records the range of every GET.
type streamStore struct {
	*backendtest.Mem
	mu     sync.Mutex
	gets   [][2]int64 // off, n
	holdAt int64      // bodies stop before this offset until release is closed (-1: never)
	// release is closed to let held bodies go on.
	release chan struct{}
	// failAt makes the next body that crosses it fail there (-1: none).
	failAt int64
	// reached is closed when a body first reaches holdAt.
	reached chan struct{}
	once    sync.Once
}

func newStreamStore(mem *backendtest.Mem) *streamStore {
	return &streamStore{Mem: mem, holdAt: -1, failAt: -1, release: make(chan struct{}), reached: make(chan struct{})}
}

func (s *streamStore) Get(ctx context.Context, key, etag string, off, n int64) (io.ReadCloser, error) {
	s.mu.Lock()
	s.gets = append(s.gets, [2]int64{off, n})
	s.mu.Unlock()
	r, err := s.Mem.Get(ctx, key, etag, off, n)
	if err != nil {
		return nil, err
	}
	return &streamBody{s: s, r: r, start: off, pos: off, ctx: ctx}, nil
}

func (s *streamStore) ranges() [][2]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][2]int64(nil), s.gets...)
}

type streamBody struct {
	s          *streamStore
	r          io.ReadCloser
	start, pos int64
	ctx        context.Context
}

func (b *streamBody) Read(p []byte) (int, error) {
	s := b.s
	s.mu.Lock()
	hold, fail := s.holdAt, s.failAt
	s.mu.Unlock()
	if fail < b.start {
		fail = -1 // only a body that crosses it fails there
	}
	if hold >= 0 && b.pos >= hold {
		s.once.Do(func() { close(s.reached) })
		select {
		case <-s.release:
		case <-b.ctx.Done():
			return 0, fmt.Errorf("held body: %w", backend.ErrUnavailable)
		}
	} else if hold >= 0 && b.pos+int64(len(p)) > hold {
		p = p[:hold-b.pos]
	}
	if fail >= 0 && b.pos >= fail {
		s.mu.Lock()
		s.failAt = -1 // once
		s.mu.Unlock()
		return 0, fmt.Errorf("connection reset: %w", backend.ErrUnavailable)
	} else if fail >= 0 && b.pos+int64(len(p)) > fail {
		p = p[:fail-b.pos]
	}
	n, err := b.r.Read(p)
	b.pos += int64(n)
	return n, err
}

func (b *streamBody) Close() error { return b.r.Close() }

// bigObject is a pattern no two blocks share, so a block read from the
// wrong place shows.
func bigObject(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i ^ i>>11 ^ i>>19)
	}
	return b
}

// blockEnv is a cache over a streamStore holding obj under "big.bin".
func blockEnv(t *testing.T, obj []byte, opt func(*Options)) (*testEnv, *streamStore) {
	t.Helper()
	e := newEnv(t, opt)
	e.close()
	ss := newStreamStore(e.mem)
	e.st = ss
	e.open()
	e.mem.Set("big.bin", obj, "", nil)
	return e, ss
}

func (e *testEnv) openRead(key string) *Handle {
	e.t.Helper()
	h, err := e.c.Open(ctxT(e.t), key, e.lookup(key), OpenFlags{})
	if err != nil {
		e.t.Fatalf("open %s: %v", key, err)
	}
	return h
}

func readAt(t *testing.T, h *Handle, want []byte, off int64, n int) {
	t.Helper()
	p := make([]byte, n)
	got, err := h.ReadAt(ctxT(t), p, off)
	if err != nil || got != n || !bytes.Equal(p, want[off:off+int64(n)]) {
		t.Fatalf("read %d at %d: n=%d err=%v, bytes right=%v", n, off, got, err, bytes.Equal(p[:got], want[off:off+int64(got)]))
	}
}

func TestBlockReadReturnsOnceItsBytesArriveNotItsWholeBlock(t *testing.T) {
	obj := bigObject(3*blockSize + 12345)
	e, ss := blockEnv(t, obj, nil)
	ss.holdAt = 1 << 20 // the store sends the first MiB, then stalls
	h := e.openRead("big.bin")
	defer h.Release()
	done := make(chan struct{})
	go func() {
		defer close(done)
		readAt(t, h, obj, 0, 128<<10)
		readAt(t, h, obj, 512<<10, 256<<10)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a read of bytes already fetched waited for the rest of the block")
	}
	// Bytes past what arrived wait; they come once the store goes on.
	late := make(chan struct{})
	go func() {
		defer close(late)
		readAt(t, h, obj, blockSize-4096, 8192)
	}()
	select {
	case <-late:
		t.Fatal("a read of bytes not fetched yet returned")
	case <-time.After(100 * time.Millisecond):
	}
	close(ss.release)
	<-late
	m := h.blocks
	waitFor(t, 5*time.Second, "the first run to end", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.have[0] && m.have[1]
	})
}

func TestBlockSequentialReaderGetsReadAheadFromTheFirstRead(t *testing.T) {
	obj := bigObject(40 * blockSize)
	e, ss := blockEnv(t, obj, nil)
	h := e.openRead("big.bin")
	defer h.Release()
	// A read at offset 0 starts one long GET at once, not a block.
	readAt(t, h, obj, 0, 4096)
	if g := ss.ranges(); len(g) != 1 || g[0] != [2]int64{0, runBlocks * blockSize} {
		t.Fatalf("GETs after a read at 0: %v, want one of %d bytes at 0", g, runBlocks*blockSize)
	}
	// The next read, continuing it, reads ahead: readAhead blocks are
	// present or in flight.
	readAt(t, h, obj, 4096, 128<<10)
	m := h.blocks
	waitFor(t, 5*time.Second, "the read-ahead window", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		for b := 0; b < readAhead; b++ {
			if !m.have[b] && m.inflight[b] == nil {
				return false
			}
		}
		return true
	})
	for _, g := range ss.ranges() {
		if g[1] != runBlocks*blockSize || g[0]%(blockSize) != 0 {
			t.Errorf("read-ahead GET of %d bytes at %d, want runs of %d blocks", g[1], g[0], runBlocks)
		}
	}
	// A reader reading the whole file gets the right bytes.
	for off := int64(0); off < int64(len(obj)); off += 1 << 20 {
		readAt(t, h, obj, off, 1<<20)
	}
}

func TestBlockRandomReadFetchesOnlyItsBlock(t *testing.T) {
	obj := bigObject(40 * blockSize)
	e, ss := blockEnv(t, obj, nil)
	h := e.openRead("big.bin")
	defer h.Release()
	readAt(t, h, obj, 17*blockSize+100, 300<<10)
	readAt(t, h, obj, 5*blockSize+100, 300<<10)
	want := [][2]int64{{17 * blockSize, blockSize}, {5 * blockSize, blockSize}}
	if g := ss.ranges(); fmt.Sprint(g) != fmt.Sprint(want) {
		t.Errorf("GETs for two random reads: %v, want %v", g, want)
	}
}

func TestBlockRunCutMidwayResumesWhereItStopped(t *testing.T) {
	obj := bigObject(8 * blockSize)
	e, ss := blockEnv(t, obj, nil)
	ss.failAt = blockSize + 777 // the connection drops inside block 1
	h := e.openRead("big.bin")
	defer h.Release()
	for off := int64(0); off < int64(len(obj)); off += 256 << 10 {
		readAt(t, h, obj, off, 256<<10)
	}
	resumed := false
	for _, g := range ss.ranges()[1:] {
		resumed = resumed || g == [2]int64{blockSize + 777, 4*blockSize - (blockSize + 777)}
	}
	if !resumed {
		t.Errorf("GETs: %v; want one resuming the first run at %d", ss.ranges(), blockSize+777)
	}
}

func TestBlockStoreDownFailsTheReadAndKeepsNoPartialBlock(t *testing.T) {
	obj := bigObject(6 * blockSize)
	e, ss := blockEnv(t, obj, func(o *Options) { o.OpTimeout = 300 * time.Millisecond })
	ss.holdAt = blockSize + blockSize/2 // stalls inside block 1, forever
	h := e.openRead("big.bin")
	readAt(t, h, obj, 0, 4096)
	start := time.Now()
	_, err := h.ReadAt(ctxT(t), make([]byte, 4096), blockSize+blockSize/2+4096)
	if !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("read of bytes the store never sent: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the read failed after %v, want about the op timeout (300ms)", d)
	}
	m := h.blocks
	m.mu.Lock()
	have0, have1 := m.have[0], m.have[1]
	m.mu.Unlock()
	if !have0 || have1 {
		t.Errorf("after the stall: block 0 present %v (want true), block 1 %v (want false)", have0, have1)
	}
	// What was written of block 1 is punched out again.
	var st syscall.Stat_t
	if err := syscall.Fstat(int(h.it.f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > blockSize+blockSize/4 {
		t.Errorf("data file holds %d bytes after the failed run, want block 0 only", st.Blocks*512)
	}
	h.Release()

	// Restart: the bitmap kept block 0 only; with the store back, every
	// byte reads right.
	close(ss.release)
	e.close()
	e.open()
	var have []bool
	e.c.db.View(func(txn *badger.Txn) error {
		var err error
		cl, _, _ := getClean(txn, "big.bin")
		have, err = loadBitmap(txn, cl.DataID)
		return err
	})
	if len(have) != 6 || !have[0] || have[1] {
		t.Errorf("bitmap after restart: %v, want block 0 only", have)
	}
	h = e.openRead("big.bin")
	defer h.Release()
	for off := int64(0); off < int64(len(obj)); off += 1 << 20 {
		readAt(t, h, obj, off, 1<<20)
	}
}

func TestBlockBudgetHoldsWhileReadingAFileLargerThanTheCache(t *testing.T) {
	obj := bigObject(60 * blockSize)
	const cacheSize = 64 << 20
	e, _ := blockEnv(t, obj, func(o *Options) { o.CacheSize = cacheSize })
	h := e.openRead("big.bin")
	defer h.Release()
	limit := h.blocks.budget()
	if limit != (readAhead+2)*blockSize {
		t.Fatalf("budget %d, want the read-ahead window plus two blocks", limit)
	}
	var peak int64
	for off := int64(0); off < int64(len(obj)); off += 1 << 20 {
		readAt(t, h, obj, off, 1<<20)
		var st syscall.Stat_t
		syscall.Fstat(int(h.it.f.Fd()), &st)
		peak = max(peak, st.Blocks*512)
	}
	if peak > limit+blockSize/4 { // file system metadata blocks aside
		t.Errorf("data file reached %d MiB, budget %d MiB", peak>>20, limit>>20)
	}
	// Read backwards: blocks punched out are fetched again, right.
	for off := int64(len(obj)) - 1<<20; off >= 0; off -= 3 << 20 {
		readAt(t, h, obj, off, 1<<20)
	}
}

func TestBlockFileOpenedForWritingIsWholeFirst(t *testing.T) {
	obj := bigObject(30*blockSize + 5)
	// A cache smaller than the object: the budget must not punch out
	// what the writer needs.
	e, _ := blockEnv(t, obj, func(o *Options) { o.CacheSize = 64 << 20; o.WritebackDelay = never })
	r := e.openRead("big.bin")
	readAt(t, r, obj, 3*blockSize, 4096)
	w, err := e.c.Open(ctxT(t), "big.bin", e.lookup("big.bin"), OpenFlags{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	e.write(w, "tail", int64(len(obj)))
	e.closeHandle(w)
	r.Release()
	e.drain()
	if _, data := e.stored("big.bin"); data != string(obj)+"tail" {
		t.Errorf("big.bin after appending: %d bytes, right prefix %v", len(data), len(data) >= len(obj) && data[:len(obj)] == string(obj))
	}
}

func TestBlockWholeFileKeepsTheObjectMtime(t *testing.T) {
	obj := bigObject(3 * blockSize)
	e, _ := blockEnv(t, obj, nil)
	want := e.lookup("big.bin").Attr.Mtime
	h := e.openRead("big.bin")
	for off := int64(0); off < int64(len(obj)); off += 1 << 20 {
		readAt(t, h, obj, off, 1<<20)
		if got := h.Entry().Attr.Mtime; !got.Equal(want) {
			t.Fatalf("mtime of a file being filled: %v, want the object's %v", got, want)
		}
	}
	waitFor(t, 5*time.Second, "the file to be whole", h.blocks.complete)
	h.Release()
	h = e.openRead("big.bin")
	defer h.Release()
	if h.blocks != nil {
		t.Fatal("a whole file still opens as partial")
	}
	if got := h.Entry().Attr.Mtime; !got.Equal(want) {
		t.Errorf("mtime of the whole file: %v, want the object's %v", got, want)
	}
	fi, err := os.Stat(h.it.f.Name())
	if err != nil || !fi.ModTime().Equal(want) {
		t.Errorf("data file mtime %v (%v), want %v", fi.ModTime(), err, want)
	}
}

func TestBlockCloseStopsTheReadAhead(t *testing.T) {
	obj := bigObject(12 * blockSize)
	e, ss := blockEnv(t, obj, nil)
	ss.holdAt = 2 << 20 // the store sends 2 MiB, then nothing
	h := e.openRead("big.bin")
	readAt(t, h, obj, 0, 4096) // a program reads a header...
	<-ss.reached
	start := time.Now()
	h.Release() // ... and closes: the 16 MiB run stops
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("close waited %v for read-ahead", d)
	}
	if g := ss.ranges(); len(g) != 1 {
		t.Errorf("GETs: %v, want the one run", g)
	}
	// Nothing partial is marked present; the next open reads right.
	close(ss.release)
	h = e.openRead("big.bin")
	defer h.Release()
	h.blocks.mu.Lock()
	n := len(h.blocks.order)
	h.blocks.mu.Unlock()
	if n != 0 {
		t.Errorf("%d blocks present after a stopped run, want none", n)
	}
	for off := int64(0); off < int64(len(obj)); off += 1 << 20 {
		readAt(t, h, obj, off, 1<<20)
	}
}

// residentBytes is how much of the file at path is in the page cache.
func residentBytes(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	var n int64
	for _, v := range vec {
		if v&1 != 0 {
			n += int64(page)
		}
	}
	return n
}

// What a sequential reader has read leaves the data file's page cache
// (the mount's page cache holds it): a cold read does not cache the file
// in memory twice. The bytes stay on disk, whole.
func TestBlockSequentialReadDropsWhatItReadFromThePageCache(t *testing.T) {
	obj := bigObject(32 * blockSize)
	e, _ := blockEnv(t, obj, nil)
	onDisk(t, e)
	h := e.openRead("big.bin")
	for off := int64(0); off < int64(len(obj)); off += 1 << 20 {
		readAt(t, h, obj, off, 1<<20)
	}
	path := h.blocks.f.Name()
	// Dropped as the reader goes, or (blocks still being written out
	// then, and the last ones) a moment after its last read.
	waitFor(t, 5*time.Second, "the read-ahead to finish", func() bool { return h.blocks.complete() })
	deadline := time.Now().Add(5 * time.Second)
	for n := residentBytes(t, path); n > int64(len(obj))/8; n = residentBytes(t, path) {
		if time.Now().After(deadline) {
			t.Fatalf("%d MiB of the %d MiB data file still in the page cache after a sequential read", n>>20, len(obj)>>20)
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.Release()
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, obj) {
		t.Fatalf("data file after the read: err=%v, bytes right=%v", err, bytes.Equal(got, obj))
	}
	// A random reader keeps its pages: it may read them again.
	e2, _ := blockEnv(t, obj, nil)
	onDisk(t, e2)
	h2 := e2.openRead("big.bin")
	defer h2.Release()
	for _, b := range []int64{20, 3, 11, 27, 7, 15} {
		readAt(t, h2, obj, b*blockSize+100, 1<<20)
	}
	if n := residentBytes(t, h2.blocks.f.Name()); n < 6<<20 {
		t.Errorf("random reads left only %d KiB of their blocks in the page cache", n>>10)
	}
}

// onDisk moves e's cache to a disk-backed directory if the temporary
// directory is a tmpfs (as /tmp is on some distributions): the pages of a
// tmpfs file are its storage, so they never leave the page cache.
func onDisk(t *testing.T, e *testEnv) {
	t.Helper()
	tmpfs := func(dir string) bool {
		var st unix.Statfs_t
		return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
	}
	if !tmpfs(e.dir) {
		return
	}
	d, err := os.MkdirTemp(".", "testcache-") // the package directory
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Before newEnv's cleanup (they run last first): closed, then
		// removed.
		if e.c != nil {
			e.c.Close()
			e.c = nil
		}
		os.RemoveAll(d)
	})
	if tmpfs(d) {
		t.Skip("no disk-backed directory for the cache: the temporary directory and the package directory are tmpfs")
	}
	e.close()
	e.dir = d
	e.open()
}
