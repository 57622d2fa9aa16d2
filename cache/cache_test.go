package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/mediafs/mediafs/backend"
	"github.com/mediafs/mediafs/backend/backendtest"
)

// never is a write-back delay no test waits for: uploads happen only when
// the test drains the queue.
const never = time.Hour

// testEnv is one cache over an in-memory store.
type testEnv struct {
	t   testing.TB
	dir string
	mem *backendtest.Mem
	st  backend.Store // what the cache talks to: mem, or a wrapper of it
	o   Options
	c   *Cache
	log *syncBuffer
}

// syncBuffer collects the cache's log; it is shown only if the test fails
// (a logger writing to t after the test ended would panic).
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newEnv opens a cache with a short write-back delay unless opt changes
// it. The cache is closed when the test ends.
func newEnv(t testing.TB, opt func(*Options)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, dir: t.TempDir(), mem: backendtest.NewMem(), log: &syncBuffer{}}
	e.st = e.mem
	e.o = Options{
		Logger:            slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Defaults:          Defaults{UID: 1000, GID: 1000, FileMode: 0o644, DirMode: 0o755},
		DirTTL:            time.Minute,
		WritebackDelay:    10 * time.Millisecond,
		UploadConcurrency: 4,
		OpTimeout:         10 * time.Second,
		Host:              "testhost",
	}
	if opt != nil {
		opt(&e.o)
	}
	t.Cleanup(func() {
		if e.c != nil {
			e.c.Close()
		}
		if t.Failed() {
			t.Logf("cache log:\n%s", e.log.String())
		}
	})
	e.open()
	return e
}

// open opens the cache in the env's directory (again, after close).
func (e *testEnv) open() {
	e.t.Helper()
	o := e.o
	o.Dir, o.Store = e.dir, e.st
	c, err := Open(o)
	if err != nil {
		e.t.Fatalf("cache.Open: %v", err)
	}
	e.c = c
}

func (e *testEnv) close() {
	e.t.Helper()
	if err := e.c.Close(); err != nil {
		e.t.Fatalf("cache.Close: %v", err)
	}
	e.c = nil
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

var fileAttr = Attr{Mode: syscall.S_IFREG | 0o640, UID: 501, GID: 20, Mtime: time.Unix(1700000000, 0)}

// create creates key, writes data and closes it (flush, then release),
// as `echo data > key` does.
func (e *testEnv) create(key, data string) {
	e.t.Helper()
	h := e.createOpen(key)
	e.write(h, data, 0)
	e.closeHandle(h)
}

func (e *testEnv) createOpen(key string) *Handle {
	e.t.Helper()
	h, err := e.c.Create(ctxT(e.t), key, fileAttr, false)
	if err != nil {
		e.t.Fatalf("create %s: %v", key, err)
	}
	return h
}

func (e *testEnv) write(h *Handle, data string, off int64) {
	e.t.Helper()
	if _, err := h.WriteAt([]byte(data), off); err != nil {
		e.t.Fatalf("write: %v", err)
	}
}

func (e *testEnv) closeHandle(h *Handle) {
	e.t.Helper()
	if err := h.Flush(ctxT(e.t)); err != nil {
		e.t.Fatalf("flush: %v", err)
	}
	h.Release()
}

func (e *testEnv) remove(key string) {
	e.t.Helper()
	if err := e.c.Remove(ctxT(e.t), key); err != nil {
		e.t.Fatalf("remove %s: %v", key, err)
	}
}

// rewrite opens an existing key with O_TRUNC and writes data.
func (e *testEnv) rewrite(key, data string) {
	e.t.Helper()
	ent := e.lookup(key)
	h, err := e.c.Open(ctxT(e.t), key, ent, OpenFlags{Write: true, Trunc: true})
	if err != nil {
		e.t.Fatalf("open %s for writing: %v", key, err)
	}
	e.write(h, data, 0)
	e.closeHandle(h)
}

// read opens key for reading and returns its bytes.
func (e *testEnv) read(key string) string {
	e.t.Helper()
	ent := e.lookup(key)
	h, err := e.c.Open(ctxT(e.t), key, ent, OpenFlags{})
	if err != nil {
		e.t.Fatalf("open %s: %v", key, err)
	}
	defer h.Release()
	p := make([]byte, ent.Size+1)
	n, err := h.ReadAt(ctxT(e.t), p, 0)
	if err != nil {
		e.t.Fatalf("read %s: %v", key, err)
	}
	return string(p[:n])
}

func (e *testEnv) lookup(key string) Entry {
	e.t.Helper()
	ent, err := e.c.Lookup(ctxT(e.t), key)
	if err != nil {
		e.t.Fatalf("lookup %s: %v", key, err)
	}
	return ent
}

// drain uploads everything and fails the test if anything is left.
func (e *testEnv) drain() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if left, bytes := e.c.Drain(ctx); left != 0 {
		e.t.Fatalf("drain left %d records (%d bytes); journal:\n%s\nstore calls: %+v",
			left, bytes, e.journal(), e.mem.History())
	}
}

// journal describes the pending records, for failure messages.
func (e *testEnv) journal() string {
	var b bytes.Buffer
	e.c.db.View(func(txn *badger.Txn) error {
		return scanRecords(txn, "", func(k string, r Record) error {
			fmt.Fprintf(&b, "\t%s: %+v\n", k, r)
			return nil
		})
	})
	return b.String()
}

func (e *testEnv) pending() int {
	e.t.Helper()
	st, err := e.c.Status()
	if err != nil {
		e.t.Fatal(err)
	}
	return st.Pending
}

// stored returns the bytes of key in the bucket, failing if it is absent.
func (e *testEnv) stored(key string) (backend.Object, string) {
	e.t.Helper()
	o, data, ok := e.mem.Object(key)
	if !ok {
		e.t.Fatalf("%s is not in the bucket (keys: %q)", key, e.mem.Keys())
	}
	return o, string(data)
}

// setRemote stores an object as another machine would, and drops the
// cached listing of its directory as if its TTL had passed.
func (e *testEnv) setRemote(key, data string) {
	e.mem.Set(key, []byte(data), "", nil)
	e.c.InvalidateDir(parentDir(key))
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mutations are the calls that change the bucket, in order.
func mutations(m *backendtest.Mem) []backendtest.Call {
	var out []backendtest.Call
	for _, c := range m.History() {
		switch c.Method {
		case backendtest.Put, backendtest.Copy, backendtest.Delete:
			out = append(out, c)
		}
	}
	return out
}

func names(ents []Entry) []string {
	var out []string
	for _, e := range ents {
		out = append(out, e.Name)
	}
	sort.Strings(out)
	return out
}

func TestClosedFileIsUploadedWithBytesMetadataAndType(t *testing.T) {
	tests := []struct {
		key, data, contentType string
	}{
		{"photo.jpg", "\xff\xd8jpeg", "image/jpeg"},
		{"Holiday.PNG", "png", "image/png"},
		{"dir/clip.mp4", "mp4 bytes", "video/mp4"},
		{"notes.txt", "hello\n", "text/plain; charset=utf-8"},
		{"no-extension", "raw", "application/octet-stream"},
		{"empty.json", "", "application/json"},
	}
	e := newEnv(t, nil)
	mtime := time.Unix(1700000000, 123456789)
	for _, tt := range tests {
		h := e.createOpen(tt.key)
		e.write(h, tt.data, 0)
		// cp -p: the data, then the times.
		if _, err := e.c.SetAttr(ctxT(t), tt.key, h.Entry(), AttrChange{Mtime: &mtime}); err != nil {
			t.Fatalf("set mtime of %s: %v", tt.key, err)
		}
		e.closeHandle(h)
	}
	e.drain()
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			o, data := e.stored(tt.key)
			if data != tt.data {
				t.Errorf("bucket holds %q, want %q", data, tt.data)
			}
			if o.ContentType != tt.contentType {
				t.Errorf("Content-Type = %q, want %q", o.ContentType, tt.contentType)
			}
			want := map[string]string{
				backend.MetaMode:  strconv.Itoa(syscall.S_IFREG | 0o640),
				backend.MetaUID:   "501",
				backend.MetaGID:   "20",
				backend.MetaMtime: "1700000000", // whole seconds, as s3fs writes
			}
			for k, v := range want {
				if o.Metadata[k] != v {
					t.Errorf("metadata %s = %q, want %q (all: %v)", k, o.Metadata[k], v, o.Metadata)
				}
			}
			a := attrFromMeta(o.Metadata, false, o.LastModified, e.o.Defaults)
			if !a.Mtime.Equal(mtime) {
				t.Errorf("mtime read back = %v, want %v", a.Mtime, mtime)
			}
		})
	}
	if n := e.mem.Calls()[backendtest.Put]; n != len(tests) {
		t.Errorf("%d puts for %d files", n, len(tests))
	}
	if p := e.pending(); p != 0 {
		t.Errorf("%d records pending after the uploads", p)
	}
}

func TestUploadedFileReadsBackFromCacheAndBucket(t *testing.T) {
	e := newEnv(t, nil)
	e.create("a.txt", "local bytes")
	e.drain()
	if got := e.read("a.txt"); got != "local bytes" {
		t.Errorf("read after upload = %q", got)
	}
	if n := e.mem.Calls()[backendtest.Get]; n != 0 {
		t.Errorf("reading a file just uploaded from here made %d GETs; the data file is the clean copy", n)
	}
	e.setRemote("remote.txt", "from elsewhere")
	if got := e.read("remote.txt"); got != "from elsewhere" {
		t.Errorf("read of a remote object = %q", got)
	}
}

func TestRewritesDuringDelayCoalesceIntoOnePut(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = 2 * time.Second })
	e.create("movie.mp4", "v1")
	e.rewrite("movie.mp4", "version 2")
	e.rewrite("movie.mp4", "v3")
	if n := e.mem.Calls()[backendtest.Put]; n != 0 {
		t.Fatalf("%d puts before the write-back delay passed", n)
	}
	waitFor(t, 20*time.Second, "the upload", func() bool { return e.pending() == 0 })
	if _, data := e.stored("movie.mp4"); data != "v3" {
		t.Errorf("bucket holds %q, want the last version v3", data)
	}
	if n := e.mem.Calls()[backendtest.Put]; n != 1 {
		t.Errorf("%d puts for three writes within the delay, want 1", n)
	}
}

func TestPendingUploadSurvivesRestart(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
	e.create("a/one.txt", "first")
	e.create("two.bin", "second")
	if err := e.c.Sync(); err != nil {
		t.Fatal(err)
	}
	e.close()
	if n := e.mem.Calls()[backendtest.Put]; n != 0 {
		t.Fatalf("%d puts before the restart", n)
	}

	// The next start replays the journal without waiting for the delay.
	e.open()
	waitFor(t, 20*time.Second, "the replayed uploads", func() bool { return e.pending() == 0 })
	for key, want := range map[string]string{"a/one.txt": "first", "two.bin": "second"} {
		if _, data := e.stored(key); data != want {
			t.Errorf("%s = %q after restart, want %q", key, data, want)
		}
	}
	if got := e.read("a/one.txt"); got != "first" {
		t.Errorf("read after restart = %q", got)
	}
}

func TestStoreDownRetriesAndLosesNothing(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = 0 })
	e.mem.SetDown(true)
	want := map[string]string{"a.txt": "alpha", "d/b.txt": "beta", "c.jpg": "gamma"}
	for k, v := range want {
		e.create(k, v)
	}
	waitFor(t, 20*time.Second, "upload attempts", func() bool {
		return e.mem.Calls()[backendtest.Put] >= 2*len(want)
	})
	if keys := e.mem.Keys(); len(keys) != 0 {
		t.Fatalf("bucket holds %q while down", keys)
	}
	if p := e.pending(); p != len(want) {
		t.Fatalf("%d records pending while down, want %d", p, len(want))
	}
	if e.c.StatsRef().UploadFailures.Load() == 0 {
		t.Error("no upload failures counted")
	}
	// Still readable from the cache while down.
	if got := e.read("d/b.txt"); got != "beta" {
		t.Errorf("read while down = %q", got)
	}

	e.mem.SetDown(false)
	e.drain()
	for k, v := range want {
		if _, data := e.stored(k); data != v {
			t.Errorf("%s = %q, want %q", k, data, v)
		}
	}
}

func TestDrainWithDeadlineReturnsWhatIsLeft(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
	e.mem.SetDown(true)
	e.create("a", "12345")
	e.create("b", "123")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	left, bytes := e.c.Drain(ctx)
	if left != 2 || bytes != 8 {
		t.Errorf("Drain = %d records, %d bytes; want 2, 8", left, bytes)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Drain with a 300ms deadline took %v", d)
	}
	e.mem.SetDown(false)
	e.drain()
}

func TestUploadOnCloseFlushWaitsForTheBucket(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.UploadOnClose = true; o.WritebackDelay = never })
	h := e.createOpen("sync.txt")
	e.write(h, "now", 0)
	if err := h.Flush(ctxT(t)); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if _, data := e.stored("sync.txt"); data != "now" {
		t.Errorf("bucket holds %q when Flush returned", data)
	}
	h.Release()

	e.mem.SetDown(true)
	h = e.createOpen("down.txt")
	e.write(h, "x", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := h.Flush(ctx); !errors.Is(err, backend.ErrUnavailable) {
		t.Errorf("flush with the store down = %v, want ErrUnavailable", err)
	}
	h.Release()
	e.mem.SetDown(false)
	e.drain()
	if _, data := e.stored("down.txt"); data != "x" {
		t.Errorf("down.txt = %q after the store came back", data)
	}
}

// With --upload=close, a close while another writer still has the file
// open uploads what is there now instead of waiting for that writer (a
// log appender, a second upload handler) and failing after the timeout.
func TestUploadOnCloseWithAnotherWriterOpen(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.UploadOnClose = true
		o.WritebackDelay = never
		o.WritebackMaxWait = time.Hour
	})
	h1 := e.createOpen("shared.log")
	e.write(h1, "first\n", 0)
	ent := e.lookup("shared.log")
	h2, err := e.c.Open(ctxT(t), "shared.log", ent, OpenFlags{Write: true})
	if err != nil {
		t.Fatalf("second open: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := h1.Flush(ctx); err != nil {
		t.Fatalf("first close with a second writer open: %v (after %v)", err, time.Since(start))
	}
	h1.Release()
	if _, data := e.stored("shared.log"); data != "first\n" {
		t.Errorf("bucket holds %q when the first close returned, want %q", data, "first\n")
	}
	e.write(h2, "second\n", 6)
	if err := h2.Flush(ctx); err != nil {
		t.Fatalf("second close: %v", err)
	}
	h2.Release()
	if _, data := e.stored("shared.log"); data != "first\nsecond\n" {
		t.Errorf("bucket holds %q after the second close", data)
	}
}

func TestRenameOfPendingFileUploadsOnlyTheNewKey(t *testing.T) {
	tests := []struct {
		name string
		// renameWhileOpen renames between two writes of one handle.
		renameWhileOpen bool
	}{
		{"closed", false},
		{"still open", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
			h := e.createOpen("draft.txt")
			e.write(h, "hello", 0)
			if !tt.renameWhileOpen {
				e.closeHandle(h)
			}
			if err := e.c.Rename(ctxT(t), "draft.txt", "final.txt", e.lookup("draft.txt")); err != nil {
				t.Fatalf("rename: %v", err)
			}
			if tt.renameWhileOpen {
				e.write(h, " world", 5)
				e.closeHandle(h)
			}
			if _, err := e.c.Lookup(ctxT(t), "draft.txt"); !errors.Is(err, ErrNotExist) {
				t.Errorf("lookup of the old name = %v, want ErrNotExist", err)
			}
			e.drain()
			want := "hello"
			if tt.renameWhileOpen {
				want = "hello world"
			}
			if _, data := e.stored("final.txt"); data != want {
				t.Errorf("final.txt = %q, want %q", data, want)
			}
			if keys := e.mem.Keys(); !slices.Equal(keys, []string{"final.txt"}) {
				t.Errorf("bucket keys = %q, want only final.txt", keys)
			}
			for _, c := range mutations(e.mem) {
				if c.Key == "draft.txt" || c.Src == "draft.txt" {
					t.Errorf("the old name reached the bucket: %+v", c)
				}
			}
		})
	}
}

func TestRenameOfUploadedFileCopiesBeforeDeleting(t *testing.T) {
	e := newEnv(t, nil)
	md := map[string]string{backend.MetaMode: strconv.Itoa(syscall.S_IFREG | 0o600), backend.MetaUID: "7"}
	e.mem.Set("old.jpg", []byte("picture"), "image/jpeg", md)
	// The first copies fail: the source must survive them.
	var copies int
	var mu sync.Mutex
	e.mem.SetHook(func(_ context.Context, c backendtest.Call) error {
		mu.Lock()
		defer mu.Unlock()
		if c.Method == backendtest.Copy {
			if copies++; copies <= 3 {
				return fmt.Errorf("%w: injected", backend.ErrUnavailable)
			}
		}
		return nil
	})
	if err := e.c.Rename(ctxT(t), "old.jpg", "new.jpg", e.lookup("old.jpg")); err != nil {
		t.Fatalf("rename: %v", err)
	}
	if got := e.read("new.jpg"); got != "picture" {
		t.Errorf("read of the new name before the copy = %q", got)
	}
	e.drain()

	if keys := e.mem.Keys(); !slices.Equal(keys, []string{"new.jpg"}) {
		t.Fatalf("bucket keys = %q, want only new.jpg", keys)
	}
	o, data := e.stored("new.jpg")
	if data != "picture" || o.Metadata[backend.MetaMode] != md[backend.MetaMode] || o.Metadata[backend.MetaUID] != "7" {
		t.Errorf("new.jpg = %q %v, want the old bytes and attributes", data, o.Metadata)
	}
	copied := false
	for _, c := range mutations(e.mem) {
		switch {
		case c.Method == backendtest.Copy && c.Src == "old.jpg" && c.Key == "new.jpg" && c.Err == nil:
			copied = true
		case c.Method == backendtest.Delete && c.Key == "old.jpg" && !copied:
			t.Fatalf("old.jpg deleted before its copy existed: %+v", mutations(e.mem))
		case c.Method == backendtest.Put:
			t.Errorf("a rename of an uploaded file re-uploaded its bytes: %+v", c)
		}
	}
	if !copied {
		t.Error("no successful copy")
	}
}

func TestRenameOfDirectoryMovesEveryKey(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
	for _, k := range []string{"d/x.txt", "d/sub/y.txt", "d/sub/deeper/z.txt", "other/keep.txt", "d-sibling.txt"} {
		e.mem.Set(k, []byte("data of "+k), "", nil)
	}
	e.create("d/new.txt", "pending")
	if err := e.c.Rename(ctxT(t), "d/", "e/", e.lookup("d")); err != nil {
		t.Fatalf("rename d/ e/: %v", err)
	}

	// Before any upload, the namespace already shows the move.
	ents, err := e.c.List(ctxT(t), "e/")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(ents), []string{"new.txt", "sub", "x.txt"}; !slices.Equal(got, want) {
		t.Errorf("ls e = %q, want %q", got, want)
	}
	if got := e.read("e/sub/deeper/z.txt"); got != "data of d/sub/deeper/z.txt" {
		t.Errorf("read e/sub/deeper/z.txt = %q", got)
	}
	ents, err = e.c.List(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(ents), []string{"d-sibling.txt", "e", "other"}; !slices.Equal(got, want) {
		t.Errorf("ls / after mv d e = %q, want %q", got, want)
	}
	if _, err := e.c.Lookup(ctxT(t), "d"); !errors.Is(err, ErrNotExist) {
		t.Errorf("lookup d after mv d e = %v, want ErrNotExist", err)
	}

	e.drain()
	want := []string{"d-sibling.txt", "e/", "e/new.txt", "e/sub/deeper/z.txt", "e/sub/y.txt", "e/x.txt", "other/keep.txt"}
	if keys := e.mem.Keys(); !slices.Equal(keys, want) {
		t.Errorf("bucket keys = %q, want %q", keys, want)
	}
	if _, data := e.stored("e/sub/y.txt"); data != "data of d/sub/y.txt" {
		t.Errorf("e/sub/y.txt = %q", data)
	}
	if _, data := e.stored("e/new.txt"); data != "pending" {
		t.Errorf("e/new.txt = %q", data)
	}
	for _, c := range mutations(e.mem) {
		if c.Method == backendtest.Put && c.Key == "d/new.txt" {
			t.Errorf("the pending file was uploaded under its old name")
		}
	}
}

func TestUnlinkOfNeverUploadedFileMakesNoCalls(t *testing.T) {
	tests := []struct {
		name      string
		whileOpen bool
	}{
		{"closed", false},
		{"still open", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
			h := e.createOpen("tmp.swp")
			e.write(h, "scratch", 0)
			if !tt.whileOpen {
				e.closeHandle(h)
			}
			if err := e.c.Remove(ctxT(t), "tmp.swp"); err != nil {
				t.Fatalf("remove: %v", err)
			}
			if tt.whileOpen {
				e.write(h, "more", 7) // an unlinked open file stays writable
				e.closeHandle(h)
			}
			e.drain()
			if m := mutations(e.mem); len(m) != 0 {
				t.Errorf("bucket calls for a file that never reached it: %+v", m)
			}
			if _, err := e.c.Lookup(ctxT(t), "tmp.swp"); !errors.Is(err, ErrNotExist) {
				t.Errorf("lookup after unlink = %v, want ErrNotExist", err)
			}
		})
	}
}

func TestUnlinkOfUploadedFileDeletesIt(t *testing.T) {
	e := newEnv(t, nil)
	e.create("a.txt", "v")
	e.drain()
	if err := e.c.Remove(ctxT(t), "a.txt"); err != nil {
		t.Fatal(err)
	}
	e.drain()
	if keys := e.mem.Keys(); len(keys) != 0 {
		t.Errorf("bucket keys after unlink = %q", keys)
	}
}

// TestReplacedObjectIsDeletedWhenItsReplacementGoes replaces a name the
// bucket holds and then removes the replacement, all before the uploader
// gets to it (editors do this with swap and backup files): the bucket's
// object must go, though the pending change was based on no version of it.
func TestReplacedObjectIsDeletedWhenItsReplacementGoes(t *testing.T) {
	mode := uint32(0o600)
	tests := []struct {
		name string
		// steps run with the store down; want are the bucket's keys after.
		steps func(e *testEnv)
		want  map[string]string
	}{
		{"rm, create, rm", func(e *testEnv) {
			e.remove("notes.txt")
			e.create("notes.txt", "new")
			e.remove("notes.txt")
		}, nil},
		{"chmod, truncate, rm", func(e *testEnv) {
			if _, err := e.c.SetAttr(ctxT(e.t), "notes.txt", e.lookup("notes.txt"), AttrChange{Mode: &mode}); err != nil {
				e.t.Fatal(err)
			}
			e.rewrite("notes.txt", "new")
			e.remove("notes.txt")
		}, nil},
		{"rm, create, mv away", func(e *testEnv) {
			e.remove("notes.txt")
			e.create("notes.txt", "new")
			if err := e.c.Rename(ctxT(e.t), "notes.txt", "moved.txt", e.lookup("notes.txt")); err != nil {
				e.t.Fatal(err)
			}
		}, map[string]string{"moved.txt": "new"}},
		{"save through a rename over it, rm", func(e *testEnv) {
			e.create(".notes.txt.tmp", "new")
			if err := e.c.Rename(ctxT(e.t), ".notes.txt.tmp", "notes.txt", e.lookup(".notes.txt.tmp")); err != nil {
				e.t.Fatal(err)
			}
			e.remove("notes.txt")
		}, nil},
		{"rm, symlink, rm", func(e *testEnv) {
			e.remove("notes.txt")
			if err := e.c.Symlink(ctxT(e.t), "notes.txt", "target", fileAttr); err != nil {
				e.t.Fatal(err)
			}
			e.remove("notes.txt")
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
			e.mem.Set("notes.txt", []byte("old"), "", nil)
			e.lookup("notes.txt")
			e.mem.SetDown(true) // nothing goes out before the last step
			tt.steps(e)
			e.mem.SetDown(false)
			e.drain()
			var keys []string
			for k, v := range tt.want {
				keys = append(keys, k)
				if _, data := e.stored(k); data != v {
					t.Errorf("%s = %q, want %q", k, data, v)
				}
			}
			sort.Strings(keys)
			if got := e.mem.Keys(); !slices.Equal(got, keys) {
				t.Errorf("bucket keys = %q, want %q", got, keys)
			}
			e.c.InvalidateDir("")
			if _, err := e.c.Lookup(ctxT(t), "notes.txt"); !errors.Is(err, ErrNotExist) {
				t.Errorf("lookup notes.txt = %v, want ErrNotExist", err)
			}
		})
	}
}

func TestSetAttrOnUploadedObjectIsMetadataOnlyCopy(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
	e.mem.Set("x.jpg", []byte("jpeg"), "image/jpeg", map[string]string{
		backend.MetaMode: strconv.Itoa(syscall.S_IFREG | 0o644), backend.MetaUID: "1", backend.MetaGID: "2",
		backend.MetaMtime: "1600000000",
	})
	mode, uid := uint32(0o600), uint32(42)
	got, err := e.c.SetAttr(ctxT(t), "x.jpg", e.lookup("x.jpg"), AttrChange{Mode: &mode, UID: &uid})
	if err != nil {
		t.Fatal(err)
	}
	if got.Attr.Mode != syscall.S_IFREG|0o600 || got.Attr.UID != 42 || got.Attr.GID != 2 {
		t.Errorf("SetAttr returned %+v", got.Attr)
	}
	if l := e.lookup("x.jpg"); l.Attr.Mode != syscall.S_IFREG|0o600 || !l.Pending {
		t.Errorf("lookup before upload = %+v, want the new mode, pending", l)
	}
	e.drain()
	calls := e.mem.Calls()
	if calls[backendtest.Copy] != 1 || calls[backendtest.Put] != 0 || calls[backendtest.Get] != 0 {
		t.Errorf("calls = %v, want one copy and no put or get", calls)
	}
	o, data := e.stored("x.jpg")
	if data != "jpeg" || o.ContentType != "image/jpeg" {
		t.Errorf("x.jpg = %q %q after chmod", data, o.ContentType)
	}
	for k, v := range map[string]string{
		backend.MetaMode: strconv.Itoa(syscall.S_IFREG | 0o600), backend.MetaUID: "42",
		backend.MetaGID: "2", backend.MetaMtime: "1600000000",
	} {
		if o.Metadata[k] != v {
			t.Errorf("metadata %s = %q, want %q", k, o.Metadata[k], v)
		}
	}
}

func TestListShowsPendingCreatesAndHidesPendingDeletes(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
	for _, k := range []string{"a.txt", "b.txt", "sub/c.txt"} {
		e.mem.Set(k, []byte(k), "", nil)
	}
	e.create("new.txt", "fresh")
	e.create("newdir/inner.txt", "deep")
	if err := e.c.Mkdir(ctxT(t), "empty/", Attr{Mode: syscall.S_IFDIR | 0o700}); err != nil {
		t.Fatal(err)
	}
	e.lookup("b.txt")
	if err := e.c.Remove(ctxT(t), "b.txt"); err != nil {
		t.Fatal(err)
	}
	ents, err := e.c.List(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(ents), []string{"a.txt", "empty", "new.txt", "newdir", "sub"}; !slices.Equal(got, want) {
		t.Errorf("ls = %q, want %q", got, want)
	}
	for _, ent := range ents {
		switch ent.Name {
		case "new.txt":
			if !ent.Pending || ent.Size != 5 || ent.Dir {
				t.Errorf("new.txt = %+v, want a pending 5-byte file", ent)
			}
		case "newdir", "empty", "sub":
			if !ent.Dir {
				t.Errorf("%s is not a directory: %+v", ent.Name, ent)
			}
		}
	}
	if _, err := e.c.Lookup(ctxT(t), "b.txt"); !errors.Is(err, ErrNotExist) {
		t.Errorf("lookup of a pending delete = %v, want ErrNotExist", err)
	}
	if l := e.lookup("newdir"); !l.Dir {
		t.Errorf("lookup newdir = %+v, want a directory", l)
	}
	if n := e.mem.Calls()[backendtest.List]; n != 1 {
		t.Errorf("%d LISTs of the root within the TTL, want 1", n)
	}
}

// slowList holds the answer of a List that was computed before an upload
// finished and is delivered after it.
type slowList struct {
	*backendtest.Mem
	mu      sync.Mutex
	hold    bool
	fetched chan struct{}
	release chan struct{}
}

func (s *slowList) List(ctx context.Context, prefix string) (backend.Listing, error) {
	l, err := s.Mem.List(ctx, prefix)
	s.mu.Lock()
	hold := s.hold
	s.hold = false
	s.mu.Unlock()
	if hold {
		close(s.fetched)
		<-s.release
	}
	return l, err
}

func TestLookupAfterUploadFindsFileDespiteOlderListing(t *testing.T) {
	t.Run("listing cached before the upload", func(t *testing.T) {
		e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
		e.create("f.txt", "data")
		if ents, err := e.c.List(ctxT(t), ""); err != nil || len(ents) != 1 {
			t.Fatalf("ls before upload = %v, %v", ents, err)
		}
		e.drain()
		if l := e.lookup("f.txt"); l.Pending || l.Size != 4 {
			t.Errorf("lookup after upload = %+v", l)
		}
		ents, err := e.c.List(ctxT(t), "")
		if err != nil || !slices.Equal(names(ents), []string{"f.txt"}) {
			t.Errorf("ls after upload = %q, %v", names(ents), err)
		}
	})
	t.Run("listing in flight during the upload", func(t *testing.T) {
		mem := backendtest.NewMem()
		sl := &slowList{Mem: mem, hold: true, fetched: make(chan struct{}), release: make(chan struct{})}
		e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
		e.close()
		e.mem, e.st = mem, sl
		e.open()
		e.create("f.txt", "data")
		listed := make(chan []Entry, 1)
		go func() {
			ents, _ := e.c.List(context.Background(), "")
			listed <- ents
		}()
		<-sl.fetched // the bucket answered without f.txt ...
		e.drain()    // ... then the upload finished ...
		close(sl.release)
		<-listed // ... and the old answer arrived.
		if _, _, ok := e.mem.Object("f.txt"); !ok {
			t.Fatal("f.txt not uploaded")
		}
		if l, err := e.c.Lookup(ctxT(t), "f.txt"); err != nil || l.Size != 4 {
			t.Errorf("lookup after upload = %+v, %v; want the file", l, err)
		}
		ents, err := e.c.List(ctxT(t), "")
		if err != nil || !slices.Equal(names(ents), []string{"f.txt"}) {
			t.Errorf("ls after upload = %q, %v", names(ents), err)
		}
	})
}

func TestEvictionNeverRemovesDirtyData(t *testing.T) {
	const size = 4096
	e := newEnv(t, func(o *Options) { o.WritebackDelay = never; o.CacheSize = 3 * size })
	dirty := map[string]string{}
	for i := range 4 {
		k := fmt.Sprintf("dirty-%d.bin", i)
		dirty[k] = string(bytes.Repeat([]byte{byte('a' + i)}, size))
		e.create(k, dirty[k])
	}
	for i := range 8 {
		k := fmt.Sprintf("clean-%d.bin", i)
		e.setRemote(k, string(bytes.Repeat([]byte{byte('0' + i)}, size)))
		if got := e.read(k); len(got) != size {
			t.Fatalf("read %s: %d bytes", k, len(got))
		}
	}
	if e.c.StatsRef().Evictions.Load() == 0 {
		t.Error("no evictions with 8 clean files over a 3-file cap")
	}
	if st, _ := e.c.Status(); st.CachedBytes > e.o.CacheSize {
		t.Errorf("cached bytes %d over the cap %d", st.CachedBytes, e.o.CacheSize)
	}
	for k, v := range dirty {
		if got := e.read(k); got != v {
			t.Errorf("%s reads %d bytes after eviction, want its %d dirty bytes", k, len(got), len(v))
		}
	}
	e.drain()
	for k, v := range dirty {
		if _, data := e.stored(k); data != v {
			t.Errorf("%s uploaded as %d bytes, want %d", k, len(data), len(v))
		}
	}
}

// TestAppendToObjectLargerThanCacheKeepsData opens a bucket object for
// appending when the cache cap is smaller than the object: the fetched
// data file must survive the eviction the fetch triggers.
func TestAppendToObjectLargerThanCacheKeepsData(t *testing.T) {
	const size = 8192
	e := newEnv(t, func(o *Options) { o.WritebackDelay = never; o.CacheSize = 1024 })
	orig := bytes.Repeat([]byte("x"), size)
	e.mem.Set("log.txt", orig, "", nil)
	h, err := e.c.Open(ctxT(t), "log.txt", e.lookup("log.txt"), OpenFlags{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	e.write(h, "tail", size)
	e.closeHandle(h)
	e.drain()
	if _, data := e.stored("log.txt"); data != string(orig)+"tail" {
		t.Errorf("log.txt is %d bytes after appending 4 to %d", len(data), size)
	}
}

func TestConcurrentWritersAndUploadsAreSafe(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = 0; o.CacheSize = 16 << 10 })
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 10 {
				k := fmt.Sprintf("w%d/f%d.txt", w, i%3)
				ent, err := e.c.Lookup(context.Background(), k)
				var h *Handle
				if err == nil {
					h, err = e.c.Open(context.Background(), k, ent, OpenFlags{Write: true, Trunc: true})
				} else {
					h, err = e.c.Create(context.Background(), k, fileAttr, false)
				}
				if err != nil {
					t.Errorf("open %s: %v", k, err)
					continue
				}
				h.WriteAt([]byte(fmt.Sprintf("%s v%d", k, i)), 0)
				h.Flush(context.Background())
				h.Release()
				e.c.List(context.Background(), fmt.Sprintf("w%d/", w))
			}
		})
	}
	wg.Wait()
	e.drain()
	for w := range 4 {
		for i := range 3 {
			k := fmt.Sprintf("w%d/f%d.txt", w, i)
			last := 9 - (9-i)%3
			if _, data := e.stored(k); data != fmt.Sprintf("%s v%d", k, last) {
				t.Errorf("%s = %q, want its last write v%d", k, data, last)
			}
		}
	}
}

// TestDrainFinishesDirectoryRenameWithFewWorkers drains a directory rename
// of more files than there are upload workers: the deletes waiting for
// their copies must not keep every worker busy (unmount drains this way).
func TestDrainFinishesDirectoryRenameWithFewWorkers(t *testing.T) {
	for _, workers := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("%d workers", workers), func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.WritebackDelay = never; o.UploadConcurrency = workers })
			var want []string
			for i := range 12 {
				k := fmt.Sprintf("album/sub%d/img%02d.jpg", i%3, i)
				e.mem.Set(k, []byte(k), "image/jpeg", nil)
				want = append(want, "moved/"+k[len("album/"):])
			}
			want = append(want, "moved/")
			sort.Strings(want)
			if err := e.c.Rename(ctxT(t), "album/", "moved/", e.lookup("album")); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			e.drain()
			if keys := e.mem.Keys(); !slices.Equal(keys, want) {
				t.Errorf("bucket keys = %q, want %q", keys, want)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("drain took %v", d)
			}
		})
	}
}

// Close-to-open with a handle still open: a new open after the object
// changed elsewhere gets the new version, while the handle opened before
// keeps reading the version it opened (as with a file replaced by rename
// on a local disk).
func TestOpenWhileAnOlderVersionIsOpenGetsTheNewVersion(t *testing.T) {
	e := newEnv(t, nil)
	e.setRemote("v.txt", "version one")
	ent := e.lookup("v.txt")
	h1, err := e.c.Open(ctxT(t), "v.txt", ent, OpenFlags{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	e.setRemote("v.txt", "version two!")
	if got := e.read("v.txt"); got != "version two!" {
		t.Errorf("new open while the old version is open reads %q, want %q", got, "version two!")
	}
	p := make([]byte, 64)
	n, err := h1.ReadAt(ctxT(t), p, 0)
	if err != nil || string(p[:n]) != "version one" {
		t.Errorf("the handle opened first reads %q, %v; want %q", p[:n], err, "version one")
	}
	h1.Release()
	if got := e.read("v.txt"); got != "version two!" {
		t.Errorf("after the old handle closed: %q", got)
	}
}

// Each snapshot upload of a file held open by another writer builds on
// the one before: a second close (an overwrite, uploaded with If-Match)
// must not fail its condition against the first snapshot forever.
func TestUploadOnCloseSnapshotsBuildOnEachOther(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.UploadOnClose = true
		o.WritebackDelay = never
		o.WritebackMaxWait = time.Hour
	})
	e.setRemote("log.txt", "base\n")
	ent := e.lookup("log.txt")
	hold, err := e.c.Open(ctxT(t), "log.txt", ent, OpenFlags{Write: true})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer hold.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	want := "base\n"
	for i, line := range []string{"one\n", "two\n", "three\n"} {
		h, err := e.c.Open(ctxT(t), "log.txt", e.lookup("log.txt"), OpenFlags{Write: true})
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		e.write(h, line, int64(len(want)))
		want += line
		start := time.Now()
		if err := h.Flush(ctx); err != nil {
			t.Fatalf("close %d with another writer open: %v (after %v)", i, err, time.Since(start))
		}
		h.Release()
		if _, data := e.stored("log.txt"); data != want {
			t.Errorf("after close %d the bucket holds %q, want %q", i, data, want)
		}
	}
	if n := len(e.mem.Keys()); n != 1 {
		t.Errorf("bucket keys %q: want only log.txt (no conflict copies)", e.mem.Keys())
	}
}

// A block bitmap whose data file no record names (its file was dropped
// while partly cached) is removed at the next start.
func TestStartDropsOrphanBlockBitmaps(t *testing.T) {
	e := newEnv(t, nil)
	if err := e.c.update(func(txn *badger.Txn) error {
		return txn.Set(bKey(0xdead), []byte(`{"n":1,"bits":"AQ=="}`))
	}); err != nil {
		t.Fatal(err)
	}
	e.close()
	e.open()
	err := e.c.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(bKey(0xdead))
		return err
	})
	if !errors.Is(err, badger.ErrKeyNotFound) {
		t.Errorf("orphan bitmap after restart: %v, want it gone", err)
	}
}

// Deleting many uploaded files (rm -r) sends their deletes in multi-object
// requests, and a delete that must wait for its copy (a rename's) stays
// out of them until it may go.
func TestUnlinksOfManyUploadedFilesGoInFewRequests(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = 10 * time.Millisecond })
	const n = 300
	for i := range n {
		e.create(fmt.Sprintf("old/%03d.jpg", i), "x")
	}
	e.create("keep.jpg", "k")
	e.drain()
	e.mem.ResetCalls()
	// As the file system does: each unlink is a change being served, so
	// the deletes wait until the loop is over (see pace.go).
	for i := range n {
		e.c.Foreground()
		e.remove(fmt.Sprintf("old/%03d.jpg", i))
	}
	if err := e.c.Rename(ctxT(t), "keep.jpg", "kept.jpg", e.lookup("keep.jpg")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the deletes", func() bool { return e.pending() == 0 })
	if keys := e.mem.Keys(); len(keys) != 1 || keys[0] != "kept.jpg" {
		t.Fatalf("bucket holds %d keys after the unlinks and the rename: %q", len(keys), keys)
	}
	calls := e.mem.Calls()
	if calls[backendtest.Delete] != n+1 {
		t.Errorf("%d keys deleted, want %d", calls[backendtest.Delete], n+1)
	}
	// Four workers take what is due when they look: a few batches.
	if calls[backendtest.DeleteMany] == 0 || calls[backendtest.DeleteMany] > 8 {
		t.Errorf("%d multi-object deletes for %d keys", calls[backendtest.DeleteMany], n)
	}
	// The rename's delete came after its copy.
	h := mutations(e.mem)
	copied := -1
	for i, c := range h {
		if c.Method == backendtest.Copy && c.Key == "kept.jpg" {
			copied = i
		}
		if c.Method == backendtest.Delete && c.Key == "keep.jpg" && (copied < 0 || copied > i) {
			t.Fatalf("keep.jpg deleted before its copy (history %+v)", h)
		}
	}
}

// The sources of many renames are deleted in batches too, each only after
// its copy.
func TestRenamesOfManyUploadedFilesDeleteTheirSourcesInBatches(t *testing.T) {
	e := newEnv(t, nil)
	const n = 200
	for i := range n {
		e.create(fmt.Sprintf("in/%03d.jpg", i), fmt.Sprint(i))
	}
	e.drain()
	e.mem.ResetCalls()
	// The sources' deletes fail (and are retried) until every copy is
	// done, so the retries find them all due together.
	var copies atomic.Int64
	e.mem.SetHook(func(ctx context.Context, c backendtest.Call) error {
		switch {
		case c.Method == backendtest.Copy:
			copies.Add(1)
		case c.Method == backendtest.Delete && copies.Load() < n:
			return errors.New("not yet")
		}
		return nil
	})
	for i := range n {
		from, to := fmt.Sprintf("in/%03d.jpg", i), fmt.Sprintf("out/%03d.jpg", i)
		if err := e.c.Rename(ctxT(t), from, to, e.lookup(from)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "the renames", func() bool { return e.pending() == 0 })
	keys := e.mem.Keys()
	if len(keys) != n || keys[0] != "out/000.jpg" || keys[n-1] != fmt.Sprintf("out/%03d.jpg", n-1) {
		t.Fatalf("bucket holds %d keys after the renames (first %.3q)", len(keys), keys)
	}
	for i := range n {
		if _, data := e.stored(fmt.Sprintf("out/%03d.jpg", i)); data != fmt.Sprint(i) {
			t.Fatalf("out/%03d.jpg holds %q", i, data)
		}
	}
	copied := map[string]bool{}
	for _, c := range mutations(e.mem) {
		switch {
		case c.Method == backendtest.Copy:
			copied[c.Src] = true
		case c.Method == backendtest.Delete && c.Err == nil:
			if !copied[c.Key] {
				t.Fatalf("%s deleted before its copy", c.Key)
			}
		}
	}
	// (How many depends on how the retries fall; without the hint a
	// rename's source always goes alone.)
	if b := e.mem.Calls()[backendtest.DeleteMany]; b == 0 {
		t.Errorf("no multi-object delete for %d renamed sources", n)
	}
}
