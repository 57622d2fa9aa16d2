package cache

import (
	"fmt"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// The index must hold every key that has a record, whatever the
// interleaving of writers, and drop keys whose record is gone.
func TestRecordIndexIsASupersetOfTheJournal(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
	c := e.c
	keys := []string{"a", "b", "d/x", "d/y", "d/e/z"}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for i := 0; i < 500; i++ {
				k := keys[rng.Intn(len(keys))]
				put := rng.Intn(2) == 0
				err := c.update(func(txn *badger.Txn) error {
					if put {
						return putRecord(txn, k, Record{Op: OpPut, Gen: uint64(i + 1)})
					}
					return deleteRecord(txn, k)
				})
				if err != nil {
					errs <- err
					return
				}
				// What this goroutine just committed may be undone by
				// another one at once, so only the put's own key is
				// checked, and only through Badger when it is missing.
				if put && !c.recs.has(k) {
					if _, ok, _ := c.recordFromDB(k); ok {
						errs <- fmt.Errorf("%s has a record but is not in the index", k)
						return
					}
				}
			}
		}(int64(w))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, k := range keys {
		_, inDB, err := c.recordFromDB(k)
		if err != nil {
			t.Fatal(err)
		}
		if inDB && !c.recs.has(k) {
			t.Errorf("%s has a record but is not in the index", k)
		}
		if inDB {
			if err := c.update(func(txn *badger.Txn) error { return deleteRecord(txn, k) }); err != nil {
				t.Fatal(err)
			}
		}
		if c.recs.has(k) {
			t.Errorf("%s stays in the index after its record was deleted", k)
		}
	}
	if !c.recs.quiet("d") {
		t.Errorf("quiet(d) = false with no record left below d/ (below = %v)", c.recs.below)
	}
}

// A lookup of a name whose directory has a pending file below it finds
// the directory through the index.
func TestRecordIndexSeesPendingBelow(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = never })
	e.create("p/q/r.txt", "x")
	if e.c.recs.quiet("p") || e.c.recs.quiet("p/q") {
		t.Fatalf("quiet with p/q/r.txt pending")
	}
	if ent := e.lookup("p"); !ent.Dir {
		t.Errorf("p = %+v, want a directory", ent)
	}
	e.drain()
	if !e.c.recs.quiet("p") || e.c.recs.has("p/q/r.txt") {
		t.Errorf("index keeps p/q/r.txt after its upload")
	}
	if ent := e.lookup("p/q/r.txt"); ent.Size != 1 {
		t.Errorf("p/q/r.txt after upload = %+v", ent)
	}
}

// unchangedSince is how the fs layer knows a List entry still holds: any
// write, delete or transaction end on the key after the stamp, and any
// key leaving the index after it for keys without a mark, say no.
func TestRecIndexUnchangedSince(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WritebackDelay = time.Hour })
	x := e.c.recs
	e.create("a.txt", "1")
	g := x.now()
	if !x.unchangedSince("a.txt", g) || !x.unchangedSince("never.txt", g) {
		t.Fatal("unchanged keys reported changed")
	}
	e.rewrite("a.txt", "2")
	if x.unchangedSince("a.txt", g) {
		t.Error("a rewrite since the stamp went unseen")
	}
	if !x.unchangedSince("never.txt", g) {
		t.Error("an untouched key without a record reported changed")
	}
	// A key that comes and goes after the stamp (created and uploaded):
	// absent then and now, but changed.
	g = x.now()
	e.create("b.txt", "b")
	e.drain()
	waitFor(t, 5*time.Second, "b.txt to leave the index", func() bool { return !x.has("b.txt") })
	if x.unchangedSince("b.txt", g) {
		t.Error("a key that came and went since the stamp reported unchanged")
	}
}
