package cache

// An in-memory index of which keys have a journal record. Most lookups,
// getattrs and closes are of keys with no pending change, and each asked
// Badger to be sure: a read transaction costs tens of microseconds (its
// read mark wakes Badger's watermark goroutine) on a path the kernel
// waits on. The index is a superset of the keys with a record, so "not in
// the index" means "no record" without a transaction; "in the index"
// means look in Badger as before.
//
// It stays a superset this way: a key is added (and its epoch bumped)
// when a transaction writes or deletes its record, before that
// transaction commits, and counted as in flight until it ends. A key
// leaves the index only after a transaction that deleted its record has
// ended, if Badger then shows no record and no write began meanwhile
// (same epoch, nothing in flight): any write that could commit after that
// check was marked before it.

import (
	"strings"
	"sync"

	"github.com/dgraph-io/badger/v4"
)

type recIndex struct {
	mu   sync.Mutex
	keys map[string]*recMark
	// below counts the keys in keys under each directory (at any depth),
	// for the "anything pending below this name?" question of a lookup.
	below map[string]int
	// dels hints at the keys whose latest record written is a plain
	// delete (one a multi-object delete can carry; see deleteBatch): a
	// hint only, each is read again before it goes in a batch.
	dels map[string]struct{}
	// gen counts the index's events (a mark, a transaction's end, a key
	// leaving); touched (per key) and removedAt are the gen of the last
	// such event, for Unchanged.
	gen       uint64
	removedAt uint64
}

type recMark struct {
	epoch    uint64
	touched  uint64
	inflight int
	// maybeGone: a transaction deleted the record; checked once none
	// is in flight.
	maybeGone bool
}

func newRecIndex() *recIndex {
	return &recIndex{keys: map[string]*recMark{}, below: map[string]int{}, dels: map[string]struct{}{}}
}

// txnMarks lists the keys a write transaction marked, so they are
// released when it ends.
type txnMarks struct {
	idx    *recIndex
	marked []string
}

// txnHooks maps a running write transaction (of Cache.update) to its marks.
var txnHooks sync.Map // *badger.Txn -> *txnMarks

// markTxn is called by putRecord and deleteRecord before the change.
func markTxn(txn *badger.Txn, key string, deleted bool) {
	v, ok := txnHooks.Load(txn)
	if !ok {
		// Not a Cache.update transaction (tests writing a journal
		// directly): there is no index to keep.
		return
	}
	m := v.(*txnMarks)
	m.idx.mark(key, deleted)
	m.marked = append(m.marked, key)
}

// hintTxn notes, for putRecord, whether key's new record is a plain
// delete.
func hintTxn(txn *badger.Txn, key string, plainDel bool) {
	if v, ok := txnHooks.Load(txn); ok {
		v.(*txnMarks).idx.hintDelete(key, plainDel)
	}
}

func (x *recIndex) hintDelete(key string, yes bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if yes {
		x.dels[key] = struct{}{}
	} else {
		delete(x.dels, key)
	}
}

// deleteHints returns up to n keys hinted to be plain deletes.
func (x *recIndex) deleteHints(n int) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]string, 0, min(n, len(x.dels)))
	for k := range x.dels {
		if len(out) == n {
			break
		}
		out = append(out, k)
	}
	return out
}

func (x *recIndex) mark(key string, deleted bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if deleted {
		delete(x.dels, key)
	}
	m := x.keys[key]
	if m == nil {
		m = &recMark{}
		x.keys[key] = m
		x.addBelow(key, 1)
	}
	m.epoch++
	x.gen++
	m.touched = x.gen
	m.inflight++
	if deleted {
		m.maybeGone = true
	}
}

func (x *recIndex) addBelow(key string, d int) {
	k := strings.TrimSuffix(key, "/")
	for {
		i := strings.LastIndexByte(k, '/')
		if i < 0 {
			x.below[""] += d
			if x.below[""] == 0 {
				delete(x.below, "")
			}
			return
		}
		k = k[:i]
		dk := k + "/"
		x.below[dk] += d
		if x.below[dk] == 0 {
			delete(x.below, dk)
		}
	}
}

// has reports whether key may have a record.
func (x *recIndex) has(key string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.keys[key] != nil
}

// quiet reports that key, dir form key+"/" and every key below it have
// no record, which is what a lookup needs to know before the listing.
func (x *recIndex) quiet(key string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.keys[key] == nil && x.keys[key+"/"] == nil && x.below[key+"/"] == 0
}

// now returns the index's event count, to compare with in unchangedSince.
func (x *recIndex) now() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.gen
}

// unchangedSince reports that no transaction wrote or deleted key's
// record since now() returned g, nor was one in flight then: a key
// with a mark must not have been touched since, or be in flight; one
// without must not have left the index since (it may have come and gone).
func (x *recIndex) unchangedSince(key string, g uint64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if m := x.keys[key]; m != nil {
		return m.touched <= g && m.inflight == 0
	}
	return x.removedAt <= g
}

// quietBelow reports that dir form key+"/" and every key below it have
// no record: a lookup of a pending file need not look for a directory.
func (x *recIndex) quietBelow(key string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.keys[key+"/"] == nil && x.below[key+"/"] == 0
}

// end releases the marks of a transaction that ended (committed or not)
// and drops the keys whose record some transaction deleted, once none is
// in flight and Badger confirms the record is gone.
func (x *recIndex) end(db *badger.DB, ms []*txnMarks) {
	var check []string
	x.mu.Lock()
	for _, m := range ms {
		for _, k := range m.marked {
			if km := x.keys[k]; km != nil {
				km.inflight--
				x.gen++
				km.touched = x.gen
				if km.inflight == 0 && km.maybeGone {
					check = append(check, k)
				}
			}
		}
	}
	x.mu.Unlock()
	for _, k := range check {
		x.forgetIfGone(db, k)
	}
}

func (x *recIndex) forgetIfGone(db *badger.DB, key string) {
	x.mu.Lock()
	m := x.keys[key]
	if m == nil || m.inflight > 0 {
		x.mu.Unlock()
		return
	}
	epoch := m.epoch
	x.mu.Unlock()
	exists := true
	if err := db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(jKey(key))
		if err == badger.ErrKeyNotFound {
			exists = false
			return nil
		}
		return err
	}); err != nil {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	m = x.keys[key]
	if m == nil || m.epoch != epoch || m.inflight > 0 {
		return // written again meanwhile: that write's end looks again
	}
	if exists {
		m.maybeGone = false // a later write put it back
		return
	}
	delete(x.keys, key)
	delete(x.dels, key)
	x.gen++
	x.removedAt = x.gen
	x.addBelow(key, -1)
}

// load fills the index from the journal at start-up, before any writer.
func (x *recIndex) load(db *badger.DB) error {
	return db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Prefix = []byte("j/")
		it := txn.NewIterator(opts)
		defer it.Close()
		x.mu.Lock()
		defer x.mu.Unlock()
		for it.Rewind(); it.Valid(); it.Next() {
			k := string(it.Item().Key()[2:])
			if x.keys[k] == nil {
				x.keys[k] = &recMark{}
				x.addBelow(k, 1)
			}
		}
		return nil
	})
}
