package cache

// The uploader applies journal records to the bucket. A queue holds keys
// with the time they become due (close + write-back delay, or a retry
// backoff); a pool of workers takes due keys, one worker per key at a time.

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/mediafs/mediafs/backend"
)

type uploader struct {
	c *Cache

	mu      sync.Mutex
	q       dueHeap
	due     map[string]time.Time // latest due time per queued key
	busy    map[string]bool
	fails   map[string]int
	waiters map[string][]chan struct{}
	// urgent keys are uploaded at once, never paced (see pace.go).
	urgent map[string]bool
	// claimedAt is when the keys a delete batch claimed were due.
	claimedAt map[string]time.Time
	draining  bool
	// One idle worker, the keeper, sleeps until the next due time (tick
	// wakes it early); the others wait for wake. Sixteen workers on one
	// timer woke together for every due key: with 1000 files closed in a
	// second, thousands of wake-ups a second beside the application.
	keeper bool
	tick   chan struct{}
	wake   chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type dueItem struct {
	key string
	at  time.Time
}

type dueHeap []dueItem

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueItem)) }
func (h *dueHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func newUploader(c *Cache) *uploader {
	ctx, cancel := context.WithCancel(context.Background())
	return &uploader{c: c, due: map[string]time.Time{}, busy: map[string]bool{},
		fails: map[string]int{}, waiters: map[string][]chan struct{}{}, urgent: map[string]bool{}, claimedAt: map[string]time.Time{},
		tick: make(chan struct{}, 1), wake: make(chan struct{}, 1), ctx: ctx, cancel: cancel}
}

// replay queues every journal record at start-up.
func (u *uploader) replay() (int, int64, error) {
	var n int
	var bytes int64
	err := u.c.db.View(func(txn *badger.Txn) error {
		return scanRecords(txn, "", func(k string, r Record) error {
			n++
			if r.Op == OpPut {
				bytes += r.Size
			}
			u.enqueue(k, 0)
			return nil
		})
	})
	return n, bytes, err
}

func (u *uploader) start() {
	for i := 0; i < u.c.o.UploadConcurrency; i++ {
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			u.worker()
		}()
	}
}

func (u *uploader) stop() {
	u.cancel()
	u.wg.Wait()
}

// enqueue makes key due after delay (an earlier due time wins).
func (u *uploader) enqueue(key string, delay time.Duration) {
	at := time.Now().Add(delay)
	u.mu.Lock()
	if old, ok := u.due[key]; !ok || at.Before(old) || delay > 0 {
		// A new change restarts the write-back delay, so rewrites coalesce.
		u.due[key] = at
		heap.Push(&u.q, dueItem{key, at})
	}
	u.mu.Unlock()
	u.kick()
}

// enqueueRetry makes key due again after delay ("look again later"),
// unless it became due earlier meanwhile: a change or the last close
// while the worker was busy with it must not wait out the retry (a file
// found open for writing would otherwise wait --writeback-max-wait after
// its close).
func (u *uploader) enqueueRetry(key string, delay time.Duration) {
	at := time.Now().Add(delay)
	u.mu.Lock()
	if old, ok := u.due[key]; !ok || at.Before(old) {
		u.due[key] = at
		heap.Push(&u.q, dueItem{key, at})
	}
	u.mu.Unlock()
	u.kick()
}

func (u *uploader) enqueuePrefix(prefix string) {
	u.c.db.View(func(txn *badger.Txn) error {
		return scanRecords(txn, prefix, func(k string, _ Record) error {
			u.enqueue(k, u.c.o.WritebackDelay)
			return nil
		})
	})
}

// kick makes the keeper look at the queue again, and one more worker.
func (u *uploader) kick() {
	select {
	case u.tick <- struct{}{}:
	default:
	}
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// writerClosed: the last writer of key went away; upload it when due.
// claimed says the file is the data of an O_EXCL claim, which other
// machines see empty until it is uploaded: no write-back delay then.
func (u *uploader) writerClosed(key string, claimed bool) {
	if key == "" || !u.c.recs.has(key) {
		return // unchanged (nothing journaled)
	}
	if claimed {
		u.enqueueUrgent(key)
		return
	}
	u.enqueue(key, u.c.o.WritebackDelay)
}

// enqueueUrgent makes key due now, never held back (see pace.go) until
// it is uploaded.
func (u *uploader) enqueueUrgent(key string) {
	u.mu.Lock()
	u.urgent[key] = true
	u.mu.Unlock()
	u.enqueue(key, 0)
}

// enqueueDep makes dep, which key waits for, due now; if key is never
// held back, neither is dep.
func (u *uploader) enqueueDep(key, dep string) {
	u.mu.Lock()
	if u.urgent[key] || len(u.waiters[key]) > 0 {
		u.urgent[dep] = true
	}
	u.mu.Unlock()
	u.enqueue(dep, 0)
}

// next blocks until a key is due and free, and claims it.
func (u *uploader) next() (string, bool) {
	keeper := false
	for {
		u.mu.Lock()
		if keeper {
			u.keeper, keeper = false, false
		}
		now := time.Now()
		var wait time.Duration = time.Second
		// Busy keys go back on the queue only after the scan: while
		// draining, due times are ignored, and pushing one back at once
		// would make this loop pick it again forever, holding u.mu.
		var busy []dueItem
		claimed := ""
		for u.q.Len() > 0 {
			top := u.q[0]
			cur, ok := u.due[top.key]
			if !ok || !cur.Equal(top.at) {
				heap.Pop(&u.q) // superseded
				continue
			}
			if top.at.After(now) && !u.draining {
				wait = top.at.Sub(now)
				break
			}
			if u.pacedLocked(top, now) {
				// What is never held back may be queued behind it.
				if k := u.unpacedDueLocked(now); k != "" {
					delete(u.due, k) // its heap entry is superseded now
					u.busy[k] = true
					claimed = k
					break
				}
				// Look again soon: nothing wakes the workers when the
				// foreground goes quiet.
				wait = min(wait, paceIdle/2)
				break
			}
			heap.Pop(&u.q)
			if u.busy[top.key] {
				// Someone is uploading it; look again shortly.
				at := now.Add(200 * time.Millisecond)
				u.due[top.key] = at
				busy = append(busy, dueItem{top.key, at})
				continue
			}
			delete(u.due, top.key)
			u.busy[top.key] = true
			claimed = top.key
			break
		}
		for _, d := range busy {
			heap.Push(&u.q, d)
		}
		if len(busy) > 0 {
			wait = min(wait, 200*time.Millisecond)
		}
		if claimed != "" {
			more := u.q.Len() > 0
			u.mu.Unlock()
			if more {
				u.kick() // another worker takes over the queue
			}
			return claimed, true
		}
		if !u.keeper {
			u.keeper, keeper = true, true
		}
		u.mu.Unlock()
		if !keeper {
			select {
			case <-u.ctx.Done():
				return "", false
			case <-u.wake:
			}
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-u.ctx.Done():
			t.Stop()
			return "", false
		case <-u.tick:
		case <-t.C:
		}
		t.Stop()
	}
}

func (u *uploader) worker() {
	for {
		key, ok := u.next()
		if !ok {
			return
		}
		retry, err := u.process(key)
		u.settle(key, retry, err)
		if errors.Is(err, backend.ErrUnavailable) {
			// Don't hammer a server that is down: this worker pauses.
			select {
			case <-u.ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

// settle ends the claim of key after its record was processed: err
// schedules a retry with backoff, retry > 0 a look again later.
func (u *uploader) settle(key string, retry time.Duration, err error) {
	if err != nil {
		// Success is noted where a call reached the store: process also
		// succeeds without one (a record already gone, a delete waiting
		// for its copy), which says nothing about the store and must not
		// end an outage the mount knows about.
		u.c.noteBackend(err)
	}
	u.mu.Lock()
	delete(u.busy, key)
	delete(u.claimedAt, key)
	if err != nil {
		u.fails[key]++
		n := u.fails[key]
		u.mu.Unlock()
		if n == 1 || n%20 == 0 {
			u.c.log.Warn("upload failed; will retry", "key", key, "attempt", n, "err", err)
		}
		u.c.stats.UploadFailures.Add(1)
		u.enqueue(key, backoff(n))
	} else {
		delete(u.fails, key)
		if _, queued := u.due[key]; !queued && retry == 0 {
			// Done. (A failure or a retry stays urgent, and so does a
			// key queued again meanwhile: that may be urgent too.)
			delete(u.urgent, key)
		}
		u.mu.Unlock()
		if retry > 0 {
			u.enqueueRetry(key, retry)
		}
	}
	u.notify(key)
	u.kick()
}

func backoff(n int) time.Duration {
	d := 100 * time.Millisecond << min(n, 9)
	if d > 10*time.Second {
		d = 10 * time.Second
	}
	return d
}

func (u *uploader) notify(key string) {
	u.mu.Lock()
	ws := u.waiters[key]
	delete(u.waiters, key)
	u.mu.Unlock()
	for _, w := range ws {
		close(w)
	}
}

// waitUploaded returns once gen (or a later one) of key is in the bucket.
func (u *uploader) waitUploaded(ctx context.Context, key string, gen uint64) error {
	u.enqueue(key, 0) // close-synchronous: no write-back delay
	for {
		w := make(chan struct{})
		u.mu.Lock()
		u.waiters[key] = append(u.waiters[key], w)
		u.mu.Unlock()
		u.kick() // a held-back scan before the waiter was there looks again
		r, ok, err := u.c.record(key)
		if err != nil {
			return err
		}
		if !ok || r.UploadedGen >= gen {
			return nil
		}
		select {
		case <-w:
		case <-ctx.Done():
			return fmt.Errorf("upload of %s not finished: %w", key, backend.ErrUnavailable)
		}
	}
}

// drain uploads everything now, until done or ctx ends.
func (u *uploader) drain(ctx context.Context) (int, int64) {
	u.mu.Lock()
	u.draining = true
	u.mu.Unlock()
	u.kick()
	defer func() {
		u.mu.Lock()
		u.draining = false
		u.mu.Unlock()
	}()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		st, _ := u.c.Status()
		if st.Pending == 0 {
			return 0, 0
		}
		select {
		case <-ctx.Done():
			return st.Pending, st.PendingBytes
		case <-t.C:
			u.kick()
		}
	}
}

// process applies the record of key. retry > 0 asks to look again later
// without counting a failure.
func (u *uploader) process(key string) (retry time.Duration, err error) {
	c := u.c
	r, ok, err := c.record(key)
	if err != nil || !ok {
		return 0, err
	}
	ctx := u.ctx
	if r.After != "" && r.Op != OpDelete {
		// A new file (or a file renamed here) took the name of the
		// source of a pending rename: the copy from it goes first, or it
		// would take the new bytes.
		if after, wait, err := c.copyPending(key); err != nil {
			return 0, err
		} else if wait {
			u.enqueueDep(key, after)
			return time.Second, nil
		}
	}
	switch r.Op {
	case OpPut:
		return u.put(ctx, key, r)
	case OpCopy:
		return u.copy(ctx, key, r)
	case OpDelete:
		// A delete that must wait makes what it waits for due now: a
		// drain ignores due times, and waiters retried ahead of the work
		// they wait for would keep every worker busy with waiting.
		if IsDirKey(key) {
			// A directory's marker goes last: while records below it are
			// pending, listings still show their objects, and the
			// overlay hides the directory only through this record.
			below, err := c.pendingBelow(key)
			if err != nil {
				return 0, err
			}
			if len(below) > 0 {
				for _, k := range below {
					u.enqueueDep(key, k)
				}
				return time.Second, nil
			}
		}
		if r.After != "" {
			if after, wait, err := c.copyPending(key); err != nil {
				return 0, err
			} else if wait {
				u.enqueueDep(key, after)
				return time.Second, nil // the copy first
			}
		}
		return 0, u.deleteBatch(ctx, key, r)
	}
	return 0, fmt.Errorf("journal %s: unknown op %q", key, r.Op)
}

// copyPending reports whether a pending copy still reads key (the rename
// source key's record waits for, j/<After>). The record of key and the one
// it waits for are read in one transaction: a rename that moves that copy
// on to a new name, pointing key's After at it, commits either before or
// after, never in between (read apart, the copy seems gone and key's
// object is deleted before the moved copy has read it).
func (c *Cache) copyPending(key string) (after string, wait bool, err error) {
	err = c.db.View(func(txn *badger.Txn) error {
		cur, ok, err := getRecord(txn, key)
		if err != nil || !ok || cur.After == "" {
			return err
		}
		a, ok, err := getRecord(txn, cur.After)
		if err != nil {
			return err
		}
		after, wait = cur.After, ok && a.Op == OpCopy && a.Src == key
		return nil
	})
	return after, wait, err
}

// markSending records, before an upload or copy to key is sent, that the
// bucket may hold what it writes from then on (see Record.Sent): if the
// change is dropped later, even after a kill -9 while the request was in
// flight, the key is deleted. It reports false when key has no record any
// more, or a newer one than gen (whoever changed it queued it again).
func (c *Cache) markSending(key string, gen uint64) bool {
	ok := false
	err := c.update(func(txn *badger.Txn) error {
		cur, found, err := getRecord(txn, key)
		ok = found && cur.Op != OpDelete && cur.Gen == gen
		if err != nil || !ok || cur.inBucket(key) {
			return err
		}
		cur.Sent = true
		return putRecord(txn, key, cur)
	})
	if err != nil {
		c.log.Warn("journal an upload about to be sent", "key", key, "err", err)
		return true
	}
	return ok
}

// markSent records that a request writing key went unanswered (see
// Record.Sent). If the key has no record any more (unlinked or renamed
// away while the request hung), the object it may have left is deleted,
// as dropIfVanished does after an upload that succeeded.
func (c *Cache) markSent(key string) {
	queued := false
	err := c.update(func(txn *badger.Txn) error {
		queued = false
		cur, ok, err := getRecord(txn, key)
		switch {
		case err != nil:
			return err
		case !ok:
			queued = true
			return putRecord(txn, key, Record{Op: OpDelete, Gen: 1})
		case cur.Sent || cur.Op == OpDelete:
			return nil
		}
		cur.Sent = true
		return putRecord(txn, key, cur)
	})
	if err != nil {
		c.log.Warn("journal an unanswered upload", "key", key, "err", err)
		return
	}
	if queued {
		c.up.enqueue(key, 0)
	}
}

// pendingBelow returns the keys strictly below dirKey that have a record.
func (c *Cache) pendingBelow(dirKey string) ([]string, error) {
	var below []string
	err := c.db.View(func(txn *badger.Txn) error {
		return scanRecords(txn, dirKey, func(k string, _ Record) error {
			if k != dirKey {
				below = append(below, k)
			}
			return nil
		})
	})
	return below, err
}

// deleteBatchMax is the most keys one multi-object delete carries (S3's
// limit).
const deleteBatchMax = 1000

// deleteBatch deletes key, and with it the other deletes that are due, in
// one multi-object delete: rm -r of a thousand uploaded files is then one
// request, not a thousand on both sides. The others are claimed as a
// worker claims a key, and settled here.
func (u *uploader) deleteBatch(ctx context.Context, key string, r Record) error {
	c := u.c
	keys, recs := []string{key}, []Record{r}
	for _, k := range u.claimDueDeletes(deleteBatchMax - 1) {
		// Read again now that it is claimed: a change since is another
		// record, left to the queue.
		rk, ok, err := c.record(k)
		if err == nil && ok && rk.Op == OpDelete && !IsDirKey(k) && rk.After != "" {
			// A rename's source: only once its copy is done.
			var wait bool
			if _, wait, err = c.copyPending(k); wait {
				ok = false
			}
		}
		if err == nil && ok && rk.Op == OpDelete && !IsDirKey(k) {
			keys, recs = append(keys, k), append(recs, rk)
		} else {
			u.unclaim(k)
		}
	}
	var errs []error
	if len(keys) == 1 {
		errs = []error{c.st.Delete(ctx, key)}
	} else {
		errs = c.st.DeleteMany(ctx, keys)
	}
	var own error
	for i, k := range keys {
		err := errs[i]
		c.noteBackend(err)
		if err == nil {
			c.stats.Deletes.Add(1)
			// Noted before the record goes, so a lookup between the two
			// finds one or the other (see upload below).
			c.noteRemote(k, nil)
			_, err = u.finish(k, recs[i], nil)
		}
		if i == 0 {
			own = err
		} else {
			u.settle(k, 0, err)
		}
	}
	return own
}

// plainDelete reports whether r, the record of key, is a delete that can
// go in a batch whenever it is due: a file's, waiting for nothing. (A
// rename's source waits for its copy; it is hinted once that is done.)
func plainDelete(key string, r Record) bool {
	return r.Op == OpDelete && r.After == "" && !IsDirKey(key)
}

// claimDueDeletes claims up to n due keys that the index hints are plain
// deletes.
func (u *uploader) claimDueDeletes(n int) []string {
	hints := u.c.recs.deleteHints(4 * n)
	if len(hints) == 0 {
		return nil
	}
	now := time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	var claimed []string
	for _, k := range hints {
		if len(claimed) == n {
			break
		}
		at, ok := u.due[k]
		if !ok || u.busy[k] || (at.After(now) && !u.draining) {
			continue
		}
		delete(u.due, k) // its heap entry is superseded now
		u.busy[k] = true
		u.claimedAt[k] = at
		claimed = append(claimed, k)
	}
	return claimed
}

// unclaim gives a key claimed by claimDueDeletes back to the queue, due
// when it was.
func (u *uploader) unclaim(k string) {
	u.mu.Lock()
	delete(u.busy, k)
	at := u.claimedAt[k]
	delete(u.claimedAt, k)
	if old, ok := u.due[k]; !ok || at.Before(old) {
		u.due[k] = at
		heap.Push(&u.q, dueItem{k, at})
	}
	u.mu.Unlock()
	u.kick()
}

func (u *uploader) put(ctx context.Context, key string, r Record) (time.Duration, error) {
	c := u.c
	var body io.ReaderAt = emptyReader{}
	size := int64(0)
	a := r.Attr
	var snapshot string
	if r.DataID != 0 {
		c.mu.Lock()
		it := c.items[key]
		c.mu.Unlock()
		path := c.dataPath(r.DataID)
		if it != nil {
			it.mu.Lock()
			writers := it.writers
			it.mu.Unlock()
			if writers > 0 {
				// With --upload=close a close is waiting for this
				// generation: it cannot wait for the other writers too.
				if wait := c.o.WritebackMaxWait - time.Since(r.Since); wait > 0 && !c.o.UploadOnClose {
					// Uploaded when the writer closes, or from a
					// snapshot once it has been open too long.
					return wait, nil
				}
				// Held open too long, or a close waits: upload what is
				// there now.
				snap, err := u.snapshot(path)
				if err != nil {
					return 0, err
				}
				snapshot, path = snap, snap
				defer os.Remove(snap)
			}
		}
		f, err := os.Open(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				c.log.Error("pending data file is missing; dropping the upload", "key", key)
				_, err = u.finish(key, r, nil)
			}
			return 0, err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return 0, err
		}
		body, size = f, fi.Size()
		a.Mtime = fi.ModTime()
	}
	md := metaFromAttr(a)
	tag := u.uploadTag(r)
	md[metaUploadTag] = tag
	opts := backend.PutOptions{ContentType: contentType(key, r.Symlink), Metadata: md}
	switch {
	case r.BaseETag != "":
		// An overwrite (or the data of a claimed O_EXCL create): only if
		// the object is still the version it was based on.
		opts.IfMatch = r.BaseETag
	case r.Excl && !r.InBucket:
		// (With InBucket the create replaced a name this mount had
		// unlinked or renamed away, whose object is still there.)
		opts.IfNoneMatch = true
	}
	if !c.markSending(key, r.Gen) {
		return 0, nil // changed, unlinked or renamed away meanwhile: not this one to upload
	}
	obj, err := c.st.Put(ctx, key, body, size, opts)
	c.noteBackend(err)
	if errors.Is(err, backend.ErrUnavailable) {
		c.markSent(key)
	}
	if errors.Is(err, backend.ErrConflict) && snapshot == "" {
		return u.conflict(ctx, key, r, body, size, opts, tag)
	}
	if err != nil {
		return 0, err
	}
	c.stats.Uploads.Add(1)
	c.stats.UploadBytes.Add(size)
	if snapshot != "" {
		// The file is still open: keep the record, look again later.
		c.update(func(txn *badger.Txn) error {
			cur, ok, err := getRecord(txn, key)
			if err != nil || !ok {
				return err
			}
			cur.Uploaded = true
			cur.UploadedGen = max(cur.UploadedGen, r.Gen)
			cur.Since = time.Now()
			if cur.Op == OpPut && cur.DataID == r.DataID {
				// The next upload of this file builds on the snapshot
				// just made, or its If-Match would fail forever.
				cur.BaseETag, cur.Excl = obj.ETag, false
			}
			return putRecord(txn, key, cur)
		})
		c.rebase(key, r.DataID, obj.ETag)
		u.dropIfVanished(key)
		return c.o.WritebackMaxWait, nil
	}
	// The new version is noted before its record goes: a lookup reads
	// the journal, then the listing and this mount's notes, and must find
	// the file in one of them (a later record, if the file changed again
	// meanwhile, still wins over the note).
	e := Entry{Key: key, Name: baseName(key), Dir: IsDirKey(key), Size: size, Attr: a, ETag: obj.ETag, Symlink: r.Symlink}
	c.noteRemote(key, &e)
	done, err := u.finish(key, r, &Clean{V: recordVersion, DataID: r.DataID, ETag: obj.ETag, Size: size, Attr: &a})
	if !done && err == nil {
		u.dropIfVanished(key)
	}
	return 0, err
}

// dropIfVanished is called after an upload or copy to key that finish did
// not complete. If key has no record any more, it was unlinked or renamed
// away while the object was being written (a file never uploaded drops its
// record instead of journaling a delete), so the object just written must
// not stay in the bucket: its delete is journaled.
func (u *uploader) dropIfVanished(key string) {
	queued := false
	err := u.c.update(func(txn *badger.Txn) error {
		queued = false
		_, ok, err := getRecord(txn, key)
		if err != nil || ok {
			return err
		}
		queued = true
		return putRecord(txn, key, Record{Op: OpDelete, Gen: 1})
	})
	if err != nil {
		u.c.log.Warn("journal delete of an object renamed or unlinked during its upload", "key", key, "err", err)
		return
	}
	if queued {
		u.enqueue(key, 0)
	}
}

func (u *uploader) copy(ctx context.Context, key string, r Record) (time.Duration, error) {
	c := u.c
	if !c.markSending(key, r.Gen) {
		return 0, nil
	}
	obj, err := c.st.Copy(ctx, r.Src, key, r.SrcSize, backend.PutOptions{
		ContentType: contentType(key, r.Symlink),
		Metadata:    metaFromAttr(r.Attr),
	})
	c.noteBackend(err)
	if errors.Is(err, backend.ErrUnavailable) {
		c.markSent(key)
	}
	if errors.Is(err, backend.ErrNotFound) {
		c.log.Error("copy source vanished from the bucket; rename or attribute change dropped", "key", key, "src", r.Src)
		_, ferr := u.finish(key, r, nil)
		return 0, ferr
	}
	if err != nil {
		return 0, err
	}
	c.stats.Copies.Add(1)
	// A file open at key (renamed there while open, or opened since)
	// now builds on the object the copy made: without this its next
	// record would take the key for one the bucket does not hold, and a
	// rename or unlink of it would leave the copy behind. Before finish,
	// so a close in between journals on this base.
	c.rebaseOpen(key, obj.ETag)
	// Like an upload, the copy is noted as this mount's own change, before
	// its record goes (see put): otherwise an earlier upload's note (with
	// the old attributes) would override the listing and undo a chmod for
	// a while.
	e := Entry{Key: key, Name: baseName(key), Dir: IsDirKey(key), Size: r.SrcSize, Attr: r.Attr, ETag: obj.ETag, Symlink: r.Symlink}
	c.noteRemote(key, &e)
	done, err := u.finish(key, r, nil)
	if !done && err == nil {
		u.dropIfVanished(key)
	}
	if done {
		if r.Src != key {
			// Its delete was waiting for this copy: it may go now, in a
			// batch with others (a renamed tree's sources).
			if rs, ok, rerr := c.record(r.Src); rerr == nil && ok && rs.Op == OpDelete && rs.After == key && !IsDirKey(r.Src) {
				c.recs.hintDelete(r.Src, true)
			}
			u.enqueue(r.Src, 0)
		}
	}
	return 0, err
}

// finish removes the record if it is still the generation just applied,
// recording the clean data file when there is one.
func (u *uploader) finish(key string, r Record, clean *Clean) (bool, error) {
	c := u.c
	done := false
	var drop uint64
	// A writer may have opened the data file again while it was being
	// uploaded: then it is no clean copy of the version (a crash must not
	// pass its changes off as that version, a rename must not drop it as
	// a stale copy). Its lock keeps writers out until the record is done.
	var held *Item
	writing := false
	if clean != nil && clean.DataID != 0 {
		c.mu.Lock()
		held = c.items[key]
		c.mu.Unlock()
		if held != nil {
			held.mu.Lock()
		}
	}
	err := c.update(func(txn *badger.Txn) error {
		done, drop = false, 0
		writing = held != nil && held.writers > 0 && held.id.Load() == clean.DataID
		cur, ok, err := getRecord(txn, key)
		if err != nil || !ok {
			return err
		}
		if cur.Gen != r.Gen {
			cur.Uploaded = true
			cur.UploadedGen = max(cur.UploadedGen, r.Gen)
			if clean != nil && clean.ETag != "" && cur.Op == OpPut && cur.DataID == r.DataID {
				// Later changes build on the version just uploaded.
				cur.BaseETag, cur.Excl = clean.ETag, false
			}
			return putRecord(txn, key, cur)
		}
		done = true
		if err := deleteRecord(txn, key); err != nil {
			return err
		}
		if clean != nil && clean.DataID != 0 {
			old, hasOld, err := getClean(txn, key)
			if err == nil && hasOld && old.DataID != clean.DataID {
				drop = old.DataID
			}
			if writing {
				if hasOld {
					return txn.Delete(cKey(key))
				}
				return nil
			}
			return txn.Set(cKey(key), encode(*clean))
		}
		return nil
	})
	if held != nil {
		if err == nil && done && writing {
			// No record refers to the file now: it goes on the last
			// close, unless the writer's changes are journaled.
			held.dropOnClose.Store(true)
		}
		held.mu.Unlock()
	}
	if err != nil {
		return false, err
	}
	c.dropData(drop)
	if clean != nil && clean.ETag != "" {
		c.rebase(key, r.DataID, clean.ETag)
	}
	if done && clean != nil && clean.DataID != 0 && !writing {
		c.lru.add(clean.DataID, key, clean.Size)
	} else if !done {
		u.enqueue(key, c.o.WritebackDelay)
	}
	return done, nil
}

func (u *uploader) snapshot(src string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp(path.Dir(src), "snap-")
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(out.Name())
		return "", err
	}
	fi, _ := in.Stat()
	out.Close()
	os.Chtimes(out.Name(), fi.ModTime(), fi.ModTime())
	return out.Name(), nil
}

// metaUploadTag names each upload (host, data file, generation), so that a
// retry after a lost acknowledgement recognises its own earlier upload
// instead of taking it for another machine's write.
const metaUploadTag = "mediafs-upload"

func (u *uploader) uploadTag(r Record) string {
	return fmt.Sprintf("%s/%x/%d", u.c.instance, r.DataID, r.Gen)
}

// conflict handles an upload whose condition failed: another machine wrote
// the key since this change was based on it. If the object is our own
// earlier attempt, the upload is done. Otherwise the other version keeps
// the name and ours is kept as a sibling, logged and counted: nothing is
// silently dropped.
func (u *uploader) conflict(ctx context.Context, key string, r Record, body io.ReaderAt, size int64,
	opts backend.PutOptions, tag string) (time.Duration, error) {
	c := u.c
	cur, err := c.st.Stat(ctx, key)
	if err == nil && ownLineage(cur.Metadata[metaUploadTag], tag) && cur.Metadata[metaUploadTag] != tag {
		// Our own earlier upload from this data file (its acknowledgement
		// or rebase raced with a newer change): build on it.
		opts.IfMatch, opts.IfNoneMatch = cur.ETag, false
		obj, perr := c.st.Put(ctx, key, body, size, opts)
		if perr != nil {
			return 0, perr
		}
		e := Entry{Key: key, Name: baseName(key), Size: size, Attr: r.Attr, ETag: obj.ETag, Symlink: r.Symlink}
		done, ferr := u.finish(key, r, &Clean{V: recordVersion, DataID: r.DataID, ETag: obj.ETag, Size: size})
		if done {
			c.noteRemote(key, &e)
		}
		return 0, ferr
	}
	if err == nil && cur.Metadata[metaUploadTag] == tag {
		e := entryFromObject(cur, c.o.Defaults)
		done, ferr := u.finish(key, r, &Clean{V: recordVersion, DataID: r.DataID, ETag: cur.ETag, Size: size})
		if done {
			c.noteRemote(key, &e)
		}
		return 0, ferr
	}
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return 0, err
	}
	if errors.Is(err, backend.ErrNotFound) && r.BaseETag != "" && !r.Excl {
		// Deleted elsewhere meanwhile: our write re-creates it.
		opts.IfMatch, opts.IfNoneMatch = "", true
		if _, perr := c.st.Put(ctx, key, body, size, opts); perr == nil {
			done, ferr := u.finish(key, r, nil)
			if done {
				c.InvalidateDir(parentDir(key))
			}
			return 0, ferr
		} else if !errors.Is(perr, backend.ErrConflict) {
			return 0, perr
		}
	}
	sib := conflictName(key, c.o.Host+"-"+c.instance[:6], time.Now())
	opts.IfMatch, opts.IfNoneMatch = "", false
	if _, err := c.st.Put(ctx, sib, body, size, opts); err != nil {
		return 0, err
	}
	c.stats.Conflicts.Add(1)
	c.log.Warn("conflict: the object was changed on another machine; it keeps the name and this machine's version is kept beside it",
		"key", key, "kept_as", sib)
	done, ferr := u.finish(key, r, nil)
	c.InvalidateDir(parentDir(key))
	if done {
		c.dropData(r.DataID)
	}
	return 0, ferr
}

// rebase makes an open item's next upload build on etag, the version this
// mount just uploaded from the same data file.
func (c *Cache) rebase(key string, id uint64, etag string) {
	c.mu.Lock()
	it := c.items[key]
	c.mu.Unlock()
	if it == nil {
		return
	}
	it.mu.Lock()
	if it.id.Load() == id && it.key == key {
		it.base, it.excl = etag, false
	}
	it.mu.Unlock()
}

// rebaseOpen makes the item open at key, whatever its data file, build on
// etag (an object a copy to key just made).
func (c *Cache) rebaseOpen(key, etag string) {
	if etag == "" {
		return
	}
	c.mu.Lock()
	it := c.items[key]
	c.mu.Unlock()
	if it == nil {
		return
	}
	it.mu.Lock()
	if it.key == key {
		it.base, it.excl = etag, false
	}
	it.mu.Unlock()
}

// ownLineage reports whether two upload tags come from the same host and
// data file.
func ownLineage(a, b string) bool {
	i := strings.LastIndexByte(a, '/')
	j := strings.LastIndexByte(b, '/')
	return i > 0 && j > 0 && a[:i] == b[:j]
}

// conflictName is "dir/name.conflict-HOST-20060102T150405Z.ext".
func conflictName(key, host string, t time.Time) string {
	dir, base := parentDir(key), baseName(key)
	ext := path.Ext(base)
	if ext == base {
		ext = ""
	}
	stem := strings.TrimSuffix(base, ext)
	host = strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' {
			return '_'
		}
		return r
	}, host)
	return dir + stem + ".conflict-" + host + "-" + t.UTC().Format("20060102T150405Z") + ext
}

type emptyReader struct{}

func (emptyReader) ReadAt(p []byte, off int64) (int, error) { return 0, io.EOF }
