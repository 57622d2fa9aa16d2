package main

// A data-integrity exerciser in the spirit of xfstests' fsx: seeded random
// operations on a few files through a real mount, every read checked
// against an in-memory model of what each file must hold.
//
// Operations: pwrite at random offsets and lengths (past EOF too, leaving
// holes), appends, truncate (ftruncate and truncate by path; grow and
// shrink), pread, mmap read and mmap write (MAP_SHARED, msync), fallocate
// (extending, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE), fstat/stat, fsync,
// close and reopen (O_RDWR, sometimes O_TRUNC), a second read-only
// descriptor held across operations, rename to a free name and over
// another file (whose descriptor may stay open, unlinked), unlink and
// re-create, and now and then "settle": close, wait until the bucket holds
// the model, then read again from a fresh read-only open (for the large
// files that is the block cache, after the clean copy was evicted under
// the small --cache-size).
//
// Two of the files are larger than the 8 MiB whole-file limit and the
// 8 MiB --cache-size: one is put into the bucket before the mount, the
// other is written through it.
//
// At the end the mount is stopped (the upload queue drains) and every
// object in the bucket must equal the model, with no other keys. Then two
// mounts: a file changed and closed on one must read back on the other
// once uploaded, both ways.
//
// The seed is logged; a failure prints the seed, the op index and the last
// operations. Reproduce or run longer with
//
//	MEDIAFS_MINIO_BIN=... go test -count=1 -run 'TestFsx$' ./cmd/mediafs/ -fsx.seed=1234 -fsx.ops=200000
//
// (-fsx.ops defaults to 10,000, which stays under about a minute;
// -fsx.mountflags="--no-passthrough" runs everything through the daemon.
// Known: -fsx.mountflags=--upload=close fails at the first append, whose
// close(2) waits out --op-timeout and gets EIO: the uploader does not
// upload a file while another descriptor has it open for writing.)
//
// Bugs it found, with the fixes in cache/ and fs/: a reader of a partial
// block-cache file kept fetching old blocks into the file a writer had
// taken over (and read it clipped to the old size); fallocate got EBADF
// on a handle served through the daemon; an O_EXCL create of a name this
// mount had unlinked or renamed away got EEXIST from its own not yet
// deleted object; a put over the source of a pending rename could land
// before the copy; an upload finishing while the file was open again for
// writing recorded it clean, and a rename then deleted the pending data;
// a copy to an open file's name, or a rename over a file open for
// writing, left the object behind once the file went; a renamed file
// reopened before its copy stayed the old name's clean copy (evicted or
// dropped under the new name's pending data) and was uploaded If-Match
// the old name's ETag (a false conflict).
// TestFsxRenamedFileReopenedBeforeItsCopy keeps the last one.

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

var (
	fsxSeedFlag = flag.Int64("fsx.seed", 0, "fsx exerciser: random seed (0: from the clock; always logged)")
	fsxOpsFlag  = flag.Int("fsx.ops", 10000, "fsx exerciser: number of random operations")
	fsxFlags    = flag.String("fsx.mountflags", "", "fsx exerciser: extra mount flags, space-separated (e.g. \"--no-passthrough\")")
)

// fsxMountFlags are the exerciser's mount flags: a cache smaller than the
// large files, so that eviction and the block cache take part.
func fsxMountFlags() []string {
	return append([]string{"--cache-size", "8M"}, strings.Fields(*fsxFlags)...)
}

const (
	fsxDir       = "fsx"
	fsxSmallMax  = 3 << 20
	fsxBigMax    = 16 << 20
	fsxBigMin    = 8<<20 + 1 // over the whole-file limit and the cache size
	fsxBlock     = 4 << 20   // cache/blocks.go blockSize
	fsxPage      = 4096
	fsxLogKeep   = 50
	fsxUploadMax = 45 * time.Second
)

// fsxFile is one file of the model.
type fsxFile struct {
	slot int
	name string // path below the mount; "" once unlinked (an orphan)
	data []byte
	big  bool
	f    *os.File // O_RDWR, or nil
	ro   *os.File // a second, read-only descriptor, or nil
}

func (f *fsxFile) String() string {
	n := f.name
	if n == "" {
		n = "(unlinked)"
	}
	return fmt.Sprintf("s%d[%s]", f.slot, n)
}

type fsxRun struct {
	t       *testing.T
	e       *env
	m       *mnt
	seed    int64
	rng     *rand.Rand
	op      int
	files   []*fsxFile // by slot; a dead slot has name "" and no fds
	orphans []*fsxFile
	names   []string
	log     []string
	all     []string            // every op, written to a file on failure
	byName  map[string][]string // recent ops naming each name
	counts  map[string]int
}

// fsxPattern is what op writes at file offset off: even bytes carry the
// op's low byte, odd ones its high byte mixed with the position, so a
// misplaced or stale byte tells which op wrote it and shifts show.
func fsxPattern(op int, off int64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		p := off + int64(i)
		if p%2 == 0 {
			b[i] = byte(op)
		} else {
			b[i] = byte(op>>8) ^ fsxPosHash(p)
		}
	}
	return b
}

func fsxPosHash(p int64) byte { return byte((uint64(p) * 2654435761) >> 13) }

// fsxWhoWrote guesses the op that wrote the pair of bytes at p, p+1.
func fsxWhoWrote(b []byte, base int64, i int) string {
	p := base + int64(i)
	if p%2 == 1 {
		i--
		p--
	}
	if i < 0 || i+1 >= len(b) {
		return "?"
	}
	return fmt.Sprintf("op#%d(mod 65536)", int(b[i])|int(b[i+1]^fsxPosHash(p+1))<<8)
}

func fsxResize(b []byte, n int64) []byte {
	if int64(len(b)) >= n {
		return b[:n]
	}
	return append(b, make([]byte, n-int64(len(b)))...)
}

func fsxApplyWrite(b []byte, off int64, p []byte) []byte {
	if end := off + int64(len(p)); end > int64(len(b)) {
		b = fsxResize(b, end)
	}
	copy(b[off:], p)
	return b
}

func (r *fsxRun) logf(format string, a ...any) {
	s := fmt.Sprintf("#%d ", r.op) + fmt.Sprintf(format, a...)
	r.all = append(r.all, s)
	r.log = append(r.log, s)
	if len(r.log) > fsxLogKeep {
		r.log = r.log[len(r.log)-fsxLogKeep:]
	}
	for _, n := range r.names {
		if strings.Contains(s, "["+n+"]") || strings.Contains(s, "-> "+n) {
			h := append(r.byName[n], s)
			if len(h) > 20 {
				h = h[len(h)-20:]
			}
			r.byName[n] = h
		}
	}
}

// fail reports the seed, the op and the recent operations, and stops.
func (r *fsxRun) fail(format string, a ...any) {
	r.t.Helper()
	var files []string
	for _, f := range r.files {
		files = append(files, fmt.Sprintf("%v size=%d big=%v rw=%v ro=%v", f, len(f.data), f.big, f.f != nil, f.ro != nil))
	}
	msg := fmt.Sprintf(format, a...)
	for _, n := range r.names {
		if strings.Contains(msg, n) && len(r.byName[n]) > 0 {
			files = append(files, fmt.Sprintf("last ops on %s:\n    %s", n, strings.Join(r.byName[n], "\n    ")))
		}
	}
	if hf, err := os.CreateTemp("", fmt.Sprintf("fsx-seed%d-*.log", r.seed)); err == nil {
		fmt.Fprintln(hf, strings.Join(r.all, "\n"))
		hf.Close()
		files = append(files, "every op: "+hf.Name())
	}
	r.t.Fatalf("fsx: seed %d, op #%d: %s\nfiles:\n  %s\nlast %d ops:\n  %s\n(reproduce: -run 'TestFsx$' -fsx.seed=%d -fsx.ops=%d -fsx.mountflags=%q)",
		r.seed, r.op, msg, strings.Join(files, "\n  "), len(r.log),
		strings.Join(r.log, "\n  "), r.seed, *fsxOpsFlag, *fsxFlags)
}

// compare checks got (read at off) against the model of f.
func (r *fsxRun) compare(f *fsxFile, how string, off int64, want, got []byte) {
	r.t.Helper()
	if bytes.Equal(want, got) {
		return
	}
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	lo, hi := max(i-8, 0), i+24
	cut := func(b []byte) []byte { return b[min(lo, len(b)):min(hi, len(b))] }
	r.fail("%s of %v at %d: got %d bytes, want %d; first difference at file offset %d (0x%x, block %d)\n  want % x\n  got  % x\n  the bad bytes look written by %s",
		how, f, off, len(got), len(want), off+int64(i), off+int64(i), (off+int64(i))/fsxBlock,
		cut(want), cut(got), fsxWhoWrote(got, off, i))
}

func (r *fsxRun) path(name string) string { return r.m.path(name) }

// rw returns f's read-write descriptor, opening it if needed.
func (r *fsxRun) rw(f *fsxFile) *os.File {
	r.t.Helper()
	if f.f == nil {
		fd, err := os.OpenFile(r.path(f.name), os.O_RDWR, 0)
		if err != nil {
			r.fail("open %v O_RDWR: %v", f, err)
		}
		f.f = fd
		r.logf("open %v O_RDWR", f)
	}
	return f.f
}

// reader returns some descriptor to read f through.
func (r *fsxRun) reader(f *fsxFile) (*os.File, string) {
	if f.ro != nil && (f.f == nil || r.rng.Intn(2) == 0) {
		return f.ro, "ro"
	}
	return r.rw(f), "rw"
}

// randOff picks an offset: anywhere, near EOF, past EOF (a hole), or
// around a block boundary.
func (r *fsxRun) randOff(f *fsxFile, maxSize int64) int64 {
	size := int64(len(f.data))
	var off int64
	switch x := r.rng.Intn(100); {
	case x < 35 && size > 0:
		off = r.rng.Int63n(size)
	case x < 55:
		off = size - int64(r.rng.Intn(8192)) + int64(r.rng.Intn(8192))
	case x < 70:
		off = size + int64(r.rng.Intn(512<<10))
	case x < 85:
		off = int64(r.rng.Intn(int(maxSize/fsxBlock)+1))*fsxBlock + int64(r.rng.Intn(16384)) - 8192
	default:
		off = r.rng.Int63n(maxSize)
	}
	return min(max(off, 0), maxSize-1)
}

func (r *fsxRun) randLen() int {
	switch x := r.rng.Intn(100); {
	case x < 60:
		return 1 + r.rng.Intn(4096)
	case x < 92:
		return 4096 + r.rng.Intn(128<<10)
	default:
		return (128 << 10) + r.rng.Intn(1<<20)
	}
}

func (f *fsxFile) maxSize() int64 {
	if f.big {
		return fsxBigMax
	}
	return fsxSmallMax
}

func (r *fsxRun) doWrite(f *fsxFile) {
	lim := f.maxSize()
	off := r.randOff(f, lim)
	n := min(int64(r.randLen()), lim-off)
	p := fsxPattern(r.op, off, int(n))
	fd := r.rw(f)
	r.logf("pwrite %v off=%d len=%d (size %d -> %d)", f, off, n, len(f.data), max(int64(len(f.data)), off+n))
	if w, err := fd.WriteAt(p, off); err != nil || w != len(p) {
		r.fail("pwrite %v off=%d len=%d: wrote %d, %v", f, off, n, w, err)
	}
	f.data = fsxApplyWrite(f.data, off, p)
}

func (r *fsxRun) doAppend(f *fsxFile) {
	n := min(int64(r.randLen()), f.maxSize()-int64(len(f.data)))
	if n <= 0 {
		r.doTruncate(f)
		return
	}
	off := int64(len(f.data))
	p := fsxPattern(r.op, off, int(n))
	r.logf("append %v len=%d via a new O_WRONLY|O_APPEND fd (size %d -> %d)", f, n, off, off+n)
	fd, err := os.OpenFile(r.path(f.name), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		r.fail("open %v O_APPEND: %v", f, err)
	}
	if w, err := fd.Write(p); err != nil || w != len(p) {
		r.fail("append to %v: wrote %d, %v", f, w, err)
	}
	if err := fd.Close(); err != nil {
		r.fail("close append fd of %v: %v", f, err)
	}
	f.data = fsxApplyWrite(f.data, off, p)
}

func (r *fsxRun) doRead(f *fsxFile) {
	size := int64(len(f.data))
	off := r.randOff(f, max(size+4096, 1))
	n := r.randLen()
	if r.rng.Intn(4) == 0 && size > 0 && (!f.big || r.rng.Intn(8) == 0) {
		// A whole-file read, as a program copying it would (rarer for
		// the large files: they cost the most).
		off, n = 0, int(size)+1
	}
	fd, via := r.reader(f)
	r.logf("pread %v via %s off=%d len=%d (size %d)", f, via, off, n, size)
	buf := make([]byte, n)
	got, err := fd.ReadAt(buf, off)
	if err != nil && err != io.EOF {
		r.fail("pread %v off=%d len=%d: %v", f, off, n, err)
	}
	var want []byte
	if off < size {
		want = f.data[off:min(off+int64(n), size)]
	}
	r.compare(f, "pread via "+via, off, want, buf[:got])
}

func (r *fsxRun) doTruncate(f *fsxFile) {
	size := int64(len(f.data))
	lim := f.maxSize()
	var ns int64
	switch x := r.rng.Intn(100); {
	case x < 40 && size > 0:
		ns = r.rng.Int63n(size)
		if f.big && ns < fsxBigMin && r.rng.Intn(10) != 0 {
			ns = fsxBigMin + r.rng.Int63n(max(size-fsxBigMin, 1))
		}
	case x < 60:
		ns = int64(r.rng.Intn(int(lim/fsxBlock)+1))*fsxBlock + int64(r.rng.Intn(8192)) - 4096
	default:
		ns = size + int64(r.rng.Intn(1<<20))
	}
	ns = min(max(ns, 0), lim)
	if f.f != nil && r.rng.Intn(3) != 0 {
		r.logf("ftruncate %v %d -> %d", f, size, ns)
		if err := f.f.Truncate(ns); err != nil {
			r.fail("ftruncate %v to %d: %v", f, ns, err)
		}
	} else {
		r.logf("truncate(path) %v %d -> %d (rw fd open: %v)", f, size, ns, f.f != nil)
		if err := os.Truncate(r.path(f.name), ns); err != nil {
			r.fail("truncate %v to %d: %v", f, ns, err)
		}
	}
	f.data = fsxResize(f.data, ns)
}

// mmapRange picks a page-aligned mapping inside the file.
func (r *fsxRun) mmapRange(f *fsxFile) (int64, int, bool) {
	size := int64(len(f.data))
	if size == 0 {
		return 0, 0, false
	}
	start := r.rng.Int63n(size) &^ (fsxPage - 1)
	if r.rng.Intn(4) == 0 && size > fsxBlock {
		// Across a block boundary.
		b := int64(1+r.rng.Intn(int((size-1)/fsxBlock))) * fsxBlock
		start = max(b-int64(r.rng.Intn(4))*fsxPage-fsxPage, 0)
	}
	n := min(size-start, int64(fsxPage+r.rng.Intn(256<<10)))
	return start, int(n), true
}

// fsxMmap maps, runs fn, and turns a fault (SIGBUS) into an error.
func fsxMmap(fd *os.File, off int64, n int, prot int, fn func(b []byte) error) (err error) {
	b, err := syscall.Mmap(int(fd.Fd()), off, n, prot, syscall.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	defer func() {
		if uerr := syscall.Munmap(b); uerr != nil && err == nil {
			err = fmt.Errorf("munmap: %w", uerr)
		}
	}()
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("fault touching the mapping: %v", p)
		}
	}()
	return fn(b)
}

func fsxMsync(b []byte) error {
	_, _, e := syscall.Syscall(syscall.SYS_MSYNC, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), syscall.MS_SYNC)
	if e != 0 {
		return e
	}
	return nil
}

func (r *fsxRun) doMmapRead(f *fsxFile) {
	start, n, ok := r.mmapRange(f)
	if !ok {
		r.doWrite(f)
		return
	}
	fd, via := r.reader(f)
	r.logf("mmap read %v via %s off=%d len=%d (size %d)", f, via, start, n, len(f.data))
	var got []byte
	if err := fsxMmap(fd, start, n, syscall.PROT_READ, func(b []byte) error {
		got = append([]byte(nil), b...)
		return nil
	}); err != nil {
		r.fail("mmap read %v off=%d len=%d: %v", f, start, n, err)
	}
	r.compare(f, "mmap read via "+via, start, f.data[start:start+int64(n)], got)
}

func (r *fsxRun) doMmapWrite(f *fsxFile) {
	start, n, ok := r.mmapRange(f)
	if !ok {
		r.doWrite(f)
		return
	}
	// Write a sub-range of the mapping.
	wo := r.rng.Intn(n)
	wn := 1 + r.rng.Intn(n-wo)
	p := fsxPattern(r.op, start+int64(wo), wn)
	fd := r.rw(f)
	r.logf("mmap write %v map=[%d,+%d) write off=%d len=%d, msync", f, start, n, start+int64(wo), wn)
	if err := fsxMmap(fd, start, n, syscall.PROT_READ|syscall.PROT_WRITE, func(b []byte) error {
		copy(b[wo:], p)
		return fsxMsync(b)
	}); err != nil {
		r.fail("mmap write %v off=%d len=%d: %v", f, start+int64(wo), wn, err)
	}
	f.data = fsxApplyWrite(f.data, start+int64(wo), p)
}

const (
	fsxFallocKeepSize  = 0x01
	fsxFallocPunchHole = 0x02
	fsxFallocZeroRange = 0x10
)

func (r *fsxRun) doFallocate(f *fsxFile) {
	lim := f.maxSize()
	size := int64(len(f.data))
	off := r.randOff(f, lim)
	n := min(int64(r.randLen()), lim-off)
	var mode uint32
	var name string
	switch r.rng.Intn(6) {
	case 0, 1:
		mode, name = 0, "extend"
	case 2, 3:
		mode, name = fsxFallocKeepSize, "KEEP_SIZE"
	case 4:
		mode, name = fsxFallocPunchHole|fsxFallocKeepSize, "PUNCH_HOLE|KEEP_SIZE"
	default:
		mode, name = fsxFallocZeroRange, "ZERO_RANGE"
		if r.rng.Intn(2) == 0 {
			mode, name = fsxFallocZeroRange|fsxFallocKeepSize, "ZERO_RANGE|KEEP_SIZE"
		}
	}
	fd := r.rw(f)
	r.logf("fallocate %v %s off=%d len=%d (size %d)", f, name, off, n, size)
	if err := syscall.Fallocate(int(fd.Fd()), mode, off, n); err != nil {
		r.fail("fallocate %v %s off=%d len=%d: %v", f, name, off, n, err)
	}
	end := off + n
	if mode&fsxFallocKeepSize == 0 && end > size {
		f.data = fsxResize(f.data, end)
	}
	if mode&(fsxFallocPunchHole|fsxFallocZeroRange) != 0 && off < int64(len(f.data)) {
		clear(f.data[off:min(end, int64(len(f.data)))])
	}
}

func (r *fsxRun) doStat(f *fsxFile) {
	var st syscall.Stat_t
	how := "stat(path)"
	var err error
	if f.f != nil && r.rng.Intn(2) == 0 {
		how = "fstat"
		err = syscall.Fstat(int(f.f.Fd()), &st)
	} else {
		err = syscall.Stat(r.path(f.name), &st)
	}
	r.logf("%s %v (size %d)", how, f, len(f.data))
	if err != nil {
		r.fail("%s %v: %v", how, f, err)
	}
	if st.Size != int64(len(f.data)) {
		r.fail("%s %v: size %d, want %d", how, f, st.Size, len(f.data))
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		r.fail("%s %v: mode %o is not a regular file", how, f, st.Mode)
	}
}

func (r *fsxRun) doFsync(f *fsxFile) {
	fd := r.rw(f)
	r.logf("fsync %v", f)
	if err := fd.Sync(); err != nil {
		r.fail("fsync %v: %v", f, err)
	}
}

func (r *fsxRun) closeRW(f *fsxFile) {
	if f.f == nil {
		return
	}
	r.logf("close %v rw", f)
	if err := f.f.Close(); err != nil {
		r.fail("close %v: %v", f, err)
	}
	f.f = nil
}

func (r *fsxRun) closeRO(f *fsxFile) {
	if f.ro == nil {
		return
	}
	r.logf("close %v ro", f)
	if err := f.ro.Close(); err != nil {
		r.fail("close ro %v: %v", f, err)
	}
	f.ro = nil
}

func (r *fsxRun) doReopen(f *fsxFile) {
	r.closeRW(f)
	flags, how := os.O_RDWR, "O_RDWR"
	if r.rng.Intn(8) == 0 {
		flags, how = os.O_RDWR|os.O_TRUNC, "O_RDWR|O_TRUNC"
	}
	r.logf("reopen %v %s", f, how)
	fd, err := os.OpenFile(r.path(f.name), flags, 0)
	if err != nil {
		r.fail("reopen %v %s: %v", f, how, err)
	}
	f.f = fd
	if flags&os.O_TRUNC != 0 {
		f.data = f.data[:0]
		if f.big {
			r.fill(f) // stay over the whole-file limit
		}
	}
}

// doRO opens or closes the second, read-only descriptor.
func (r *fsxRun) doRO(f *fsxFile) {
	if f.ro != nil {
		r.closeRO(f)
		return
	}
	r.logf("open %v O_RDONLY (held)", f)
	fd, err := os.Open(r.path(f.name))
	if err != nil {
		r.fail("open %v O_RDONLY: %v", f, err)
	}
	f.ro = fd
}

// roCheck reads f through a fresh read-only open: a few random ranges
// and, for the small files, the whole of it.
func (r *fsxRun) roCheck(f *fsxFile, why string) {
	r.logf("check %v through a fresh O_RDONLY fd (%s, size %d)", f, why, len(f.data))
	fd, err := os.Open(r.path(f.name))
	if err != nil {
		r.fail("open %v O_RDONLY: %v", f, err)
	}
	defer fd.Close()
	size := int64(len(f.data))
	for i := 0; i < 4; i++ {
		off := r.randOff(f, max(size, 1))
		n := r.randLen()
		buf := make([]byte, n)
		got, err := fd.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			r.fail("pread %v (%s) off=%d len=%d: %v", f, why, off, n, err)
		}
		var want []byte
		if off < size {
			want = f.data[off:min(off+int64(n), size)]
		}
		r.compare(f, "pread ("+why+")", off, want, buf[:got])
	}
	if !f.big || r.rng.Intn(3) == 0 {
		b, err := io.ReadAll(fd)
		if err != nil {
			r.fail("read all of %v (%s): %v", f, why, err)
		}
		r.compare(f, "sequential read ("+why+")", 0, f.data, b)
	}
	if size > 0 {
		start, n, _ := r.mmapRange(f)
		var got []byte
		if err := fsxMmap(fd, start, n, syscall.PROT_READ, func(b []byte) error {
			got = append([]byte(nil), b...)
			return nil
		}); err != nil {
			r.fail("mmap read %v (%s) off=%d len=%d: %v", f, why, start, n, err)
		}
		r.compare(f, "mmap read ("+why+")", start, f.data[start:start+int64(n)], got)
	}
}

// settle closes f, waits until the bucket holds the model, and reads it
// again from a fresh open: for a large file, through the block cache once
// the clean copy has been evicted.
func (r *fsxRun) settle(f *fsxFile) {
	r.closeRO(f)
	r.closeRW(f)
	r.logf("settle %v: wait for the upload of %d bytes", f, len(f.data))
	if err := r.waitObject(f.name, f.data, fsxUploadMax); err != nil {
		r.fail("settle %v: %v", f, err)
	}
	r.roCheck(f, "after upload")
}

// waitObject waits until the bucket holds key with exactly want.
func (r *fsxRun) waitObject(key string, want []byte, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, _, err := r.e.getObject(key)
		if err == nil && bytes.Equal(b, want) {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("bucket object %q after %v: %v", key, timeout, err)
			}
			i := 0
			for i < len(b) && i < len(want) && b[i] == want[i] {
				i++
			}
			return fmt.Errorf("bucket object %q after %v: %d bytes, want %d, first difference at %d (bad bytes look written by %s)",
				key, timeout, len(b), len(want), i, fsxWhoWrote(b, 0, i))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *fsxRun) freeNames() []string {
	used := map[string]bool{}
	for _, f := range r.files {
		if f.name != "" {
			used[f.name] = true
		}
	}
	var free []string
	for _, n := range r.names {
		if !used[n] {
			free = append(free, n)
		}
	}
	return free
}

func (r *fsxRun) alive() []*fsxFile {
	var out []*fsxFile
	for _, f := range r.files {
		if f.name != "" {
			out = append(out, f)
		}
	}
	return out
}

// orphan detaches f's descriptors from its name (it is being unlinked or
// renamed over): they may stay open and keep their own model.
func (r *fsxRun) orphan(f *fsxFile) {
	if f.f == nil && f.ro == nil {
		return
	}
	if r.rng.Intn(2) == 0 {
		r.closeRO(f)
		r.closeRW(f)
		return
	}
	o := &fsxFile{slot: f.slot, data: append([]byte(nil), f.data...), big: f.big, f: f.f, ro: f.ro}
	r.orphans = append(r.orphans, o)
	r.logf("keep %v's fds open after its name goes (orphan %d)", f, len(r.orphans)-1)
	f.f, f.ro = nil, nil
}

func (r *fsxRun) doRename(f *fsxFile) {
	free := r.freeNames()
	var others []*fsxFile
	for _, o := range r.alive() {
		if o != f {
			others = append(others, o)
		}
	}
	if len(free) == 0 || (len(others) > 0 && r.rng.Intn(4) == 0) {
		// Over another file.
		t := others[r.rng.Intn(len(others))]
		r.logf("rename %v over %v (rw open: %v/%v)", f, t, f.f != nil, t.f != nil)
		r.orphan(t)
		if err := os.Rename(r.path(f.name), r.path(t.name)); err != nil {
			r.fail("rename %v over %v: %v", f, t, err)
		}
		f.name, t.name, t.data = t.name, "", nil
		return
	}
	to := free[r.rng.Intn(len(free))]
	r.logf("rename %v -> %s (rw open: %v)", f, to, f.f != nil)
	if err := os.Rename(r.path(f.name), r.path(to)); err != nil {
		r.fail("rename %v -> %s: %v", f, to, err)
	}
	f.name = to
}

func (r *fsxRun) doUnlink(f *fsxFile) {
	r.logf("unlink %v (rw open: %v)", f, f.f != nil)
	r.orphan(f)
	if err := os.Remove(r.path(f.name)); err != nil {
		r.fail("unlink %v: %v", f, err)
	}
	f.name, f.data = "", nil
}

// create brings a dead slot back under a free name.
func (r *fsxRun) create(f *fsxFile) {
	free := r.freeNames()
	name := free[r.rng.Intn(len(free))]
	flags, how := os.O_RDWR|os.O_CREATE|os.O_EXCL, "O_CREAT|O_EXCL"
	if r.rng.Intn(2) == 0 {
		flags, how = os.O_RDWR|os.O_CREATE|os.O_TRUNC, "O_CREAT|O_TRUNC"
	}
	r.logf("create s%d[%s] %s", f.slot, name, how)
	fd, err := os.OpenFile(r.path(name), flags, 0o644)
	if err != nil {
		var st syscall.Stat_t
		serr := syscall.Stat(r.path(name), &st)
		b, info, gerr := r.e.getObject(name)
		var who []string
		for _, i := range []int{0, len(b) / 2, len(b) - 2} {
			if i >= 0 && i < len(b) {
				who = append(who, fmt.Sprintf("@%d %s", i, fsxWhoWrote(b, 0, i)))
			}
		}
		r.fail("create %s: %v (stat on the mount: size %d, %v; in the bucket: %d bytes, etag %s, modified %v, %v; bytes written by %v; meta %v)",
			name, err, st.Size, serr, info.Size, info.ETag, info.LastModified, gerr, who, info.UserMetadata)
	}
	f.name, f.data, f.f = name, nil, fd
	if f.big {
		r.fill(f)
	}
}

// fill writes a big file past the whole-file limit in one go.
func (r *fsxRun) fill(f *fsxFile) {
	n := fsxBigMin + int64(r.rng.Intn(4<<20))
	p := fsxPattern(r.op, 0, int(n))
	fd := r.rw(f)
	r.logf("fill %v with %d bytes", f, n)
	if w, err := fd.WriteAt(p, 0); err != nil || w != len(p) {
		r.fail("fill %v: %d, %v", f, w, err)
	}
	f.data = fsxApplyWrite(f.data[:0], 0, p)
}

// doOrphan works on a descriptor whose name is gone, then maybe closes it.
func (r *fsxRun) doOrphan() {
	i := r.rng.Intn(len(r.orphans))
	o := r.orphans[i]
	if o.f != nil && r.rng.Intn(2) == 0 {
		off := r.randOff(o, o.maxSize())
		n := min(int64(1+r.rng.Intn(8192)), o.maxSize()-off)
		p := fsxPattern(r.op, off, int(n))
		r.logf("pwrite orphan %d off=%d len=%d", i, off, n)
		if w, err := o.f.WriteAt(p, off); err != nil || w != len(p) {
			r.fail("pwrite orphan %d: %d, %v", i, w, err)
		}
		o.data = fsxApplyWrite(o.data, off, p)
	} else {
		fd, via := o.f, "rw"
		if fd == nil || (o.ro != nil && r.rng.Intn(2) == 0) {
			fd, via = o.ro, "ro"
		}
		size := int64(len(o.data))
		off := r.randOff(o, max(size, 1))
		n := r.randLen()
		buf := make([]byte, n)
		r.logf("pread orphan %d via %s off=%d len=%d (size %d)", i, via, off, n, size)
		got, err := fd.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			r.fail("pread orphan %d: %v", i, err)
		}
		var want []byte
		if off < size {
			want = o.data[off:min(off+int64(n), size)]
		}
		r.compare(o, fmt.Sprintf("pread of orphan %d via %s", i, via), off, want, buf[:got])
	}
	if r.rng.Intn(3) == 0 {
		r.logf("close orphan %d", i)
		r.closeRO(o)
		r.closeRW(o)
		r.orphans = append(r.orphans[:i], r.orphans[i+1:]...)
	}
}

func (r *fsxRun) step() {
	if len(r.orphans) > 0 && r.rng.Intn(40) == 0 {
		r.counts["orphan"]++
		r.doOrphan()
		return
	}
	f := r.files[r.rng.Intn(len(r.files))]
	if f.name == "" {
		r.counts["create"]++
		r.create(f)
		return
	}
	// Every close of a large file uploads it whole: fewer of those keep
	// the run short.
	reopenW := 7
	if f.big {
		reopenW = 2
	}
	type opw struct {
		name string
		w    int
		fn   func(*fsxFile)
	}
	ops := []opw{
		{"write", 24, r.doWrite},
		{"read", 20, r.doRead},
		{"append", 2, r.doAppend},
		{"truncate", 6, r.doTruncate},
		{"mmapread", 6, r.doMmapRead},
		{"mmapwrite", 6, r.doMmapWrite},
		{"fallocate", 6, r.doFallocate},
		{"stat", 5, r.doStat},
		{"fsync", 3, r.doFsync},
		{"reopen", reopenW, r.doReopen},
		{"ro", 4, r.doRO},
		{"rocheck", 3, func(f *fsxFile) { r.roCheck(f, "fresh open") }},
		{"rename", 3, r.doRename},
		{"unlink", 1, r.doUnlink},
	}
	total := 0
	for _, o := range ops {
		total += o.w
	}
	x := r.rng.Intn(total)
	for _, o := range ops {
		if x < o.w {
			r.counts[o.name]++
			o.fn(f)
			return
		}
		x -= o.w
	}
}

func (r *fsxRun) closeAll() {
	for _, f := range r.files {
		r.closeRO(f)
		r.closeRW(f)
	}
	for _, o := range r.orphans {
		r.closeRO(o)
		r.closeRW(o)
	}
	r.orphans = nil
}

// checkBucket compares the bucket under fsx/ with the model: every live
// file's bytes, and no other key.
func (r *fsxRun) checkBucket(why string) {
	r.t.Helper()
	want := map[string][]byte{}
	for _, f := range r.alive() {
		want[f.name] = f.data
	}
	var keys []string
	for _, k := range r.e.keys(r.t, fsxDir+"/") {
		if k != fsxDir+"/" {
			keys = append(keys, k)
		}
	}
	var wantKeys []string
	for k := range want {
		wantKeys = append(wantKeys, k)
	}
	sort.Strings(keys)
	sort.Strings(wantKeys)
	if strings.Join(keys, " ") != strings.Join(wantKeys, " ") {
		r.fail("%s: bucket keys %q, want %q", why, keys, wantKeys)
	}
	for _, f := range r.alive() {
		b, _, err := r.e.getObject(f.name)
		if err != nil {
			r.fail("%s: get %v: %v", why, f, err)
		}
		r.compare(f, why+": bucket object", 0, f.data, b)
	}
}

func TestFsx(t *testing.T) {
	seed := *fsxSeedFlag
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("fsx seed %d (reproduce with -fsx.seed=%d), %d ops", seed, seed, *fsxOpsFlag)
	e := newEnv(t)
	r := &fsxRun{t: t, e: e, seed: seed, rng: rand.New(rand.NewSource(seed)), counts: map[string]int{}, byName: map[string][]string{}}
	r.names = []string{fsxDir + "/seed.bin", fsxDir + "/a.bin", fsxDir + "/b.dat", fsxDir + "/c.jpg",
		fsxDir + "/d", fsxDir + "/e.mp4", fsxDir + "/f.txt", fsxDir + "/g.bin"}

	// A large object already in the bucket, read through the block cache.
	seeded := seededBytes(seed, 12<<20+777)
	e.putObject(t, r.names[0], seeded, nil)
	r.m = e.mount(t, fsxMountFlags()...)
	m := r.m

	r.files = []*fsxFile{
		{slot: 0, name: r.names[0], data: seeded, big: true},
		{slot: 1, name: r.names[1], big: true},
		{slot: 2, name: r.names[2]},
		{slot: 3, name: r.names[3]},
		{slot: 4, name: r.names[4]},
	}
	// Read the seeded object before anything opens it for writing: the
	// block cache.
	r.roCheck(r.files[0], "seeded object")
	for _, f := range r.files[1:] {
		fd, err := os.OpenFile(m.path(f.name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			r.fail("create %v: %v", f, err)
		}
		f.f = fd
		r.logf("create %v", f)
		if f.big {
			r.fill(f)
		}
	}

	nops := *fsxOpsFlag
	settleEvery := 700
	start := time.Now()
	for r.op = 1; r.op <= nops; r.op++ {
		if r.op%settleEvery == 0 {
			// Alternate: a big file (block cache, eviction) and any.
			alive := r.alive()
			f := alive[r.rng.Intn(len(alive))]
			if (r.op/settleEvery)%2 == 1 {
				for _, a := range alive {
					if a.big {
						f = a
						break
					}
				}
			}
			r.counts["settle"]++
			r.settle(f)
			continue
		}
		r.step()
	}
	elapsed := time.Since(start)
	t.Logf("fsx: %d ops in %v (%.0f ops/s): %v", nops, elapsed.Round(time.Millisecond), float64(nops)/elapsed.Seconds(), r.counts)

	// Everything closed and checked once more through the mount, then the
	// queue drained by a clean stop: the bucket must hold the model.
	r.closeAll()
	for _, f := range r.alive() {
		r.roCheck(f, "after the run")
	}
	r.logf("stop the mount (drain)")
	m.stop(t)
	r.checkBucket("after drain")

	// Two mounts: the same cache again (A) and a fresh one (B).
	m.restart(t)
	b := e.mount(t, fsxMountFlags()...)
	for _, f := range r.alive() {
		got, err := os.ReadFile(b.path(f.name))
		if err != nil {
			r.fail("read %v on B: %v", f, err)
		}
		r.compare(f, "read on mount B", 0, f.data, got)
	}
	r.crossMount(m, b, "A->B")
	r.crossMount(b, m, "B->A")
	r.closeAll()
}

// crossMount changes a file on mount from (a few writes, a truncate),
// closes it, waits for the upload and checks that mount to sees it after
// reopening, within the close-to-open bound.
func (r *fsxRun) crossMount(from, to *mnt, how string) {
	r.t.Helper()
	for _, f := range r.alive() {
		if !f.big && r.rng.Intn(2) == 0 {
			continue
		}
		r.m = from
		// Warm to's cache of the old version first, so a stale copy
		// there would show.
		if _, err := os.ReadFile(to.path(f.name)); err != nil {
			r.fail("%s: warm read of %v: %v", how, f, err)
		}
		for i := 0; i < 5; i++ {
			r.op++
			switch r.rng.Intn(4) {
			case 0:
				r.doTruncate(f)
			case 1:
				r.doMmapWrite(f)
			default:
				r.doWrite(f)
			}
		}
		r.closeRW(f)
		r.logf("%s: wait for the upload of %v", how, f)
		if err := r.waitObject(f.name, f.data, fsxUploadMax); err != nil {
			r.fail("%s: %v", how, err)
		}
		uploaded := time.Now()
		var got []byte
		for {
			var err error
			got, err = os.ReadFile(to.path(f.name))
			if err == nil && bytes.Equal(got, f.data) {
				break
			}
			// B trusts listings and attributes for 1 s.
			if time.Since(uploaded) > 3*time.Second {
				if err != nil {
					r.fail("%s: read %v on the other mount: %v", how, f, err)
				}
				r.compare(f, how+": read on the other mount 3s after the upload", 0, f.data, got)
			}
			time.Sleep(50 * time.Millisecond)
		}
		r.t.Logf("%s: %v (%d bytes) seen on the other mount %v after its upload", how, f, len(f.data), time.Since(uploaded).Round(time.Millisecond))
	}
	r.m = from
}

// TestFsxRenamedFileReopenedBeforeItsCopy: an uploaded file renamed and
// opened for writing under the new name before the server-side copy ran
// is filled from the old name's object. That file is the new name's
// pending data from then on; it must not stay the old name's clean copy,
// which the LRU evicts (found by TestFsx, seed 10).
func TestFsxRenamedFileReopenedBeforeItsCopy(t *testing.T) {
	e := newEnv(t)
	big := seededBytes(77, 9<<20)
	e.putObject(t, "fsxr/big.bin", big, nil)
	m := e.mount(t, "--cache-size", "8M", "--writeback-delay", "3s")
	if err := os.Mkdir(m.path("fsxr"), 0o755); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	data := seededBytes(78, 300_000)
	writeFile(t, m.path("fsxr/a.bin"), data)
	// And one renamed over an uploaded file.
	d, old := seededBytes(80, 200_000), seededBytes(81, 1000)
	writeFile(t, m.path("fsxr/d.bin"), d)
	writeFile(t, m.path("fsxr/e.bin"), old)
	e.waitObject(t, "fsxr/a.bin", data, 30*time.Second)
	e.waitObject(t, "fsxr/d.bin", d, 30*time.Second)
	e.waitObject(t, "fsxr/e.bin", old, 30*time.Second)
	// Let the uploaded file go from the open-file table.
	time.Sleep(300 * time.Millisecond)
	if err := os.Rename(m.path("fsxr/a.bin"), m.path("fsxr/b.bin")); err != nil {
		t.Fatal(err)
	}
	f := openT(t, m.path("fsxr/b.bin"), os.O_RDWR, 0)
	patch := bytes.Repeat([]byte("B"), 1000)
	writeAtT(t, f, patch, 5000)
	closeT(t, f)
	if err := os.Rename(m.path("fsxr/d.bin"), m.path("fsxr/e.bin")); err != nil {
		t.Fatal(err)
	}
	f = openT(t, m.path("fsxr/e.bin"), os.O_RDWR, 0)
	writeAtT(t, f, patch, 0)
	closeT(t, f)
	wantE := append([]byte(nil), d...)
	copy(wantE, patch)
	want := append([]byte(nil), data...)
	copy(want[5000:], patch)
	// Another file takes the old name: whatever is cached for it goes.
	other := seededBytes(79, 1000)
	writeFile(t, m.path("fsxr/c.bin"), other)
	if err := os.Rename(m.path("fsxr/c.bin"), m.path("fsxr/a.bin")); err != nil {
		t.Fatal(err)
	}
	// Reading a large object fills the cache past --cache-size: the LRU
	// evicts whatever clean file it can.
	if got := readFile(t, m.path("fsxr/big.bin")); !bytes.Equal(got, big) {
		t.Fatalf("big.bin reads back wrong")
	}
	if got := readFile(t, m.path("fsxr/b.bin")); !bytes.Equal(got, want) {
		t.Fatalf("b.bin on the mount: %d bytes, want %d (equal: %v)", len(got), len(want), bytes.Equal(got, want))
	}
	m.stop(t)
	e.waitObject(t, "fsxr/b.bin", want, 5*time.Second)
	e.waitObject(t, "fsxr/a.bin", other, 5*time.Second)
	e.waitObject(t, "fsxr/e.bin", wantE, 5*time.Second)
	if keys := strings.Join(e.keys(t, "fsxr/"), " "); keys != "fsxr/a.bin fsxr/b.bin fsxr/big.bin fsxr/e.bin" {
		t.Errorf("bucket keys: %s", keys)
	}
	if strings.Contains(m.log(), "missing") {
		t.Errorf("mediafs log:\n%s", tail(m.log(), 3000))
	}
}
