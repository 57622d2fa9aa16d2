package cache

import (
	"fmt"
	"math/rand"
	"sync"
	"testing"

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
