package cache

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mediafs/mediafs/backend/backendtest"
)

// gets counts the store's GETs of key.
func gets(m *backendtest.Mem, key string) int {
	n := 0
	for _, c := range m.History() {
		if c.Method == backendtest.Get && c.Key == key {
			n++
		}
	}
	return n
}

func smallObjects(e *testEnv, dir string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%sf%03d.jpg", dir, i)
		e.mem.Set(keys[i], []byte(strings.Repeat(string(rune('a'+i%26)), 1000+i)), "", nil)
	}
	return keys
}

func TestReadingADirectoryInOrderFetchesTheNextFilesAhead(t *testing.T) {
	e := newEnv(t, nil)
	keys := smallObjects(e, "gallery/", 30)
	e.mem.Set("gallery/big.bin", make([]byte, 64<<10), "", nil)
	e.c.o.WholeFileLimit = 32 << 10 // big.bin sorts first and is no small file
	if _, err := e.c.List(ctxT(t), "gallery/"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < aheadRun; i++ {
		if got, want := e.read(keys[i]), strings.Repeat(string(rune('a'+i)), 1000+i); got != want {
			t.Fatalf("%s: %d bytes, want %d", keys[i], len(got), len(want))
		}
	}
	// The third open in order starts read-ahead of the next aheadFiles.
	last := aheadRun - 1
	waitFor(t, 5*time.Second, "read-ahead", func() bool { return gets(e.mem, keys[last+aheadFiles]) == 1 })
	if n := gets(e.mem, keys[last+aheadFiles+1]); n != 0 {
		t.Errorf("%s fetched %d times while the reader was %d files behind", keys[last+aheadFiles+1], n, aheadFiles+1)
	}
	// Every file then reads with the bytes of its object, each fetched
	// once: the reader's opens find what was read ahead.
	for i := aheadRun; i < len(keys); i++ {
		want := strings.Repeat(string(rune('a'+i%26)), 1000+i)
		if got := e.read(keys[i]); got != want {
			t.Fatalf("%s: %d bytes, want %d", keys[i], len(got), len(want))
		}
	}
	for _, k := range keys {
		if n := gets(e.mem, k); n != 1 {
			t.Errorf("%s: %d GETs, want 1", k, n)
		}
	}
	if n := gets(e.mem, "gallery/big.bin"); n != 0 {
		t.Errorf("an object over the whole-file limit was read ahead (%d GETs)", n)
	}
	// (The reader here outruns the goroutines: it may open a file before
	// its fetch starts, which then leaves it to the reader.)
	pf, miss := e.c.stats.Prefetches.Load(), e.c.stats.CacheMisses.Load()
	if pf < aheadFiles || pf+miss != int64(len(keys)) {
		t.Errorf("%d files read ahead and %d fetched by the reader, want at least %d ahead and %d in all", pf, miss, aheadFiles, len(keys))
	}
}

func TestRandomOpensInADirectoryFetchNothingAhead(t *testing.T) {
	e := newEnv(t, nil)
	keys := smallObjects(e, "d/", 40)
	if _, err := e.c.List(ctxT(t), "d/"); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{17, 3, 25, 4, 30, 9, 10, 2, 36} {
		e.read(keys[i])
	}
	time.Sleep(50 * time.Millisecond)
	if n := e.c.stats.Prefetches.Load(); n != 0 {
		t.Fatalf("%d files read ahead for opens in no order", n)
	}
	if n := e.mem.Calls()[backendtest.Get]; n != 9 {
		t.Fatalf("%d GETs for 9 opens", n)
	}
}

func TestReadAheadSkipsPendingFilesAndFollowsNewVersions(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = time.Hour })
	keys := smallObjects(e, "p/", 12)
	if _, err := e.c.List(ctxT(t), "p/"); err != nil {
		t.Fatal(err)
	}
	e.rewrite(keys[4], "local bytes, not uploaded")
	for i := 0; i < aheadRun; i++ {
		e.read(keys[i])
	}
	waitFor(t, 5*time.Second, "read-ahead", func() bool { return gets(e.mem, keys[aheadRun+aheadFiles-1]) == 1 })
	if n := gets(e.mem, keys[4]); n != 0 {
		t.Fatalf("a file changed here was fetched %d times", n)
	}
	if got := e.read(keys[4]); got != "local bytes, not uploaded" {
		t.Fatalf("pending file reads %q", got)
	}
	// Another machine replaces a file that was read ahead: the open
	// after the listing shows the new version reads the new bytes.
	e.setRemote(keys[6], "replaced elsewhere")
	if got := e.read(keys[6]); got != "replaced elsewhere" {
		t.Fatalf("replaced file reads %q", got)
	}
}

// A listing refreshed while a reader goes through the directory (its TTL
// ran out) keeps the reader's place: read-ahead goes on at the next open.
func TestReadAheadKeepsItsPlaceAcrossAListingRefresh(t *testing.T) {
	e := newEnv(t, nil)
	keys := smallObjects(e, "r/", 40)
	if _, err := e.c.List(ctxT(t), "r/"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < aheadRun; i++ {
		e.read(keys[i])
	}
	waitFor(t, 5*time.Second, "read-ahead", func() bool { return gets(e.mem, keys[aheadRun-1+aheadFiles]) == 1 })
	e.c.InvalidateDir("r/")
	if _, err := e.c.List(ctxT(t), "r/"); err != nil {
		t.Fatal(err)
	}
	e.read(keys[aheadRun])
	waitFor(t, 5*time.Second, "read-ahead after the refresh", func() bool { return gets(e.mem, keys[aheadRun+aheadFiles]) == 1 })
}
