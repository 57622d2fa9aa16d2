package cache

// Cached-file state machine. An Item is the local side of one key while it
// is open; its state is also in the journal:
//
//	remote      the bucket has it, no local copy      (no j/, no c/)
//	clean       a data file holds the object version  (c/ = {id, etag})
//	dirty       local changes not uploaded             (j/ put {id, gen})
//	uploading   a worker is uploading gen g            (j/ put, busy)
//
//	remote  --open (small, or for writing)-->  clean (fetched whole)
//	clean   --open for writing-->               c/ removed first, so a
//	                                            crash can't pass modified
//	                                            bytes for the old version
//	any     --flush/release after a change-->   dirty (gen+1)
//	dirty   --upload of gen g succeeds-->       clean if gen is still g,
//	                                            else dirty again (re-queued)
//	clean   --evicted (not open)-->             remote
//
// All handles of one key share the Item's data file: FUSE passthrough binds
// one backing file per inode, so the file must not change while any handle
// is open.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/mediafs/mediafs/backend"
)

// Item is the local state of one open key.
type Item struct {
	c *Cache
	// mu guards the fields below.
	mu          chanMutex
	key         string        // "" once unlinked
	id          atomic.Uint64 // data file; read without mu by dropData
	f           *os.File
	refs        int
	writers     int
	attr        Attr
	base        string // ETag the data was fetched at ("" if new)
	excl        bool
	dirtyData   bool        // changed since the last journal write
	dropOnClose atomic.Bool // set by dropData: remove the file on last close
	removed     bool
	// claimSent: the O_EXCL claim went unanswered (see Record.Sent).
	claimSent bool
	// blocks is set while the data file holds only some blocks.
	blocks *blockMap
	// fetches counts block fetches writing into f (see blockMap.setGroup).
	fetches sync.WaitGroup
	// cachedIO counts open handles served through the daemon rather than
	// by FUSE passthrough. The kernel fails with EIO an open that would
	// put an inode in both modes at once, so while any such handle is
	// open, new ones are served through the daemon too.
	cachedIO int
}

// Handle is one open file description.
type Handle struct {
	c       *Cache
	it      *Item
	write   bool
	counted bool // counted in it.writers
	stat0   fileStamp
	// createdGen is the generation Create journaled, which an unchanged
	// file's close must still wait for with --upload=close.
	createdGen uint64
	blocks     *blockMap // set while the data file is partial
	// cachedIO: served through the daemon (counted in it.cachedIO).
	cachedIO bool
}

type fileStamp struct {
	size  int64
	mtime time.Time
}

func stamp(f *os.File) fileStamp {
	fi, err := f.Stat()
	if err != nil {
		return fileStamp{size: -1}
	}
	return fileStamp{size: fi.Size(), mtime: fi.ModTime()}
}

// OpenFlags say how a file is opened.
type OpenFlags struct {
	Write, Trunc, Create, Excl bool
	// Attr for a created file.
	Attr Attr
	// prefetch marks the directory read-ahead's own opens (prefetch.go).
	prefetch bool
}

// Open opens key for reading or writing. e is the entry the file system
// looked up (ignored with Create).
func (c *Cache) Open(ctx context.Context, key string, e Entry, fl OpenFlags) (*Handle, error) {
	if fl.Write {
		if err := c.EnsureSpace(ctx); err != nil {
			return nil, err
		}
	}
	for {
		c.mu.Lock()
		it := c.items[key]
		if it == nil {
			it = &Item{c: c, key: key, mu: newChanMutex()}
			c.items[key] = it
		}
		it.refs++ // pins the item while it is being filled
		c.mu.Unlock()

		h, err := c.openItem(ctx, it, e, fl)
		if err != nil {
			c.unref(it)
		}
		if errors.Is(err, errStaleItem) {
			continue // set aside: the next round makes a new item
		}
		if err == nil && !fl.Write && !fl.Create && !fl.prefetch && !e.Pending && e.ETag != "" {
			c.pf.opened(key)
		}
		return h, err
	}
}

// errStaleItem: the open item holds an older version than the one being
// opened; it was set aside for the handles that have it open.
var errStaleItem = errors.New("open item holds an older version")

// staleLocked reports whether it, open with clean data, holds another
// version than entry e, which the file system just looked up: another
// machine changed the object. Caller holds it.mu.
func (c *Cache) staleLocked(it *Item, e Entry, fl OpenFlags) bool {
	if it.f == nil || fl.Create || e.Pending || e.ETag == "" || it.base == "" || e.ETag == it.base {
		return false
	}
	if it.writers > 0 || it.dirtyData || it.removed || c.recs.has(it.key) {
		return false // this mount's own version, pending
	}
	return true
}

func (c *Cache) openItem(ctx context.Context, it *Item, e Entry, fl OpenFlags) (*Handle, error) {
	if err := it.mu.LockCtx(ctx); err != nil {
		return nil, err
	}
	defer it.mu.Unlock()
	if c.staleLocked(it, e, fl) {
		// The handles open on it keep reading the version they opened
		// (its data file goes when the last one closes, once the new
		// version replaces it as the clean copy); new opens get the new
		// version from a new item.
		c.mu.Lock()
		if c.items[it.key] == it {
			delete(c.items, it.key)
		}
		c.mu.Unlock()
		return nil, errStaleItem
	}
	h := &Handle{c: c, it: it, write: fl.Write}
	if it.f == nil {
		if err := c.fill(ctx, it, e, fl); err != nil {
			return nil, err
		}
	} else if !fl.Write {
		c.stats.CacheHits.Add(1) // open already, or just read ahead
	}
	if fl.Write && it.blocks != nil {
		// Writing needs the whole object locally.
		if !fl.Trunc {
			if err := it.blocks.fillAll(ctx); err != nil {
				return nil, err
			}
		}
		// Handles opened on the partial file keep the map: it must stop
		// fetching into a file the writer changes.
		it.blocks.detach()
		it.blocks = nil
	}
	if it.blocks != nil && !it.blocks.complete() {
		h.blocks = it.blocks
	}
	if fl.Write {
		if it.writers == 0 && !fl.Create {
			// The data file is about to change: it no longer holds any
			// clean version. (A created file's data file is new: no
			// clean record names it, and one transaction less per
			// small file matters.)
			if err := c.update(func(txn *badger.Txn) error {
				if err := txn.Delete(bKey(it.id.Load())); err != nil { // a partial file's bitmap
					return err
				}
				return txn.Delete(cKey(it.key))
			}); err != nil {
				return nil, err
			}
			c.lru.forget(it.id.Load())
		}
		it.writers++
		h.counted = true
		if fl.Trunc {
			if err := it.f.Truncate(0); err != nil {
				it.writers--
				return nil, err
			}
			it.dirtyData = true
		}
		if fl.Excl {
			it.excl = true
		}
	}
	if h.blocks != nil || it.cachedIO > 0 {
		h.cachedIO = true
		it.cachedIO++
	}
	h.stat0 = stamp(it.f)
	c.lru.touch(it.id.Load())
	return h, nil
}

// fill gives an item its data file: the pending one, the clean cached one,
// a new empty one, the object fetched whole, or (a large object opened for
// reading) a sparse file the block cache fills.
func (c *Cache) fill(ctx context.Context, it *Item, e Entry, fl OpenFlags) error {
	key := it.key
	if fl.Create {
		return c.newData(it, fl.Attr, "", true)
	}
	var rec Record
	var hasRec bool
	var cl Clean
	var hasClean bool
	err := c.db.View(func(txn *badger.Txn) error {
		var err error
		if rec, hasRec, err = getRecord(txn, key); err != nil {
			return err
		}
		cl, hasClean, err = getClean(txn, key)
		return err
	})
	if err != nil {
		return err
	}
	switch {
	case hasRec && rec.Op == OpPut && rec.DataID != 0:
		f, err := os.OpenFile(c.dataPath(rec.DataID), os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("pending data of %s: %w", key, err)
		}
		it.f, it.attr, it.base, it.excl = f, rec.Attr, rec.BaseETag, rec.Excl
		it.id.Store(rec.DataID)
		if !fl.Write {
			c.stats.CacheHits.Add(1)
		}
		return nil
	case hasRec && rec.Op == OpCopy:
		// Renamed or re-attributed, not copied yet: the bytes are at Src.
		if fl.Trunc {
			return c.newData(it, rec.Attr, "", false)
		}
		src := rec.Src
		srcE, err := c.Lookup(ctx, src)
		if err != nil || srcE.Pending {
			o, serr := c.statRemote(ctx, src)
			if serr == nil {
				srcE = entryFromObject(o, c.o.Defaults)
			}
			err = serr
		} else {
			err = nil
		}
		if err == nil {
			err = c.fetchWhole(ctx, it, src, srcE)
		}
		if errors.Is(err, backend.ErrNotFound) && src != key {
			// The copy may have run, and the source's delete after it,
			// since the record was read: the bytes are at key now.
			if _, ok, rerr := c.record(key); rerr == nil && !ok {
				if o, serr := c.statRemote(ctx, key); serr == nil {
					ke := entryFromObject(o, c.o.Defaults)
					if ferr := c.fetchWhole(ctx, it, key, ke); ferr != nil {
						return ferr
					}
					return nil
				}
			}
		}
		if err != nil {
			return err
		}
		it.attr = rec.Attr
		if src != key {
			// The fetched file is not a clean copy of key, nor src's from
			// now on: it is key's data (a writer changes it, and the LRU
			// or a change to src must not drop it as src's copy). It is
			// based on no version of key, and nothing refers to it until
			// a change is journaled.
			id := it.id.Load()
			c.update(func(txn *badger.Txn) error {
				if err := txn.Delete(cKey(key)); err != nil {
					return err
				}
				if cl, ok, err := getClean(txn, src); err != nil || !ok || cl.DataID != id {
					return err
				}
				return txn.Delete(cKey(src))
			})
			c.lru.forget(id)
			it.base = ""
			it.dropOnClose.Store(true)
		}
		return nil
	case hasRec && rec.Op == OpDelete:
		return ErrNotExist
	}
	if hasClean && cl.ETag == e.ETag && cl.Size == e.Size && c.pinData(it, cl.DataID) {
		f, err := os.OpenFile(c.dataPath(cl.DataID), os.O_RDWR, 0)
		if err != nil {
			it.id.Store(0)
		}
		if err == nil {
			it.f, it.attr, it.base = f, e.Attr, e.ETag
			it.id.Store(cl.DataID)
			if cl.Partial {
				var have []bool
				if err := c.db.View(func(txn *badger.Txn) error {
					var err error
					have, err = loadBitmap(txn, cl.DataID)
					return err
				}); err != nil {
					c.log.Warn("reading block map; refetching", "key", key, "err", err)
				}
				it.blocks = newBlockMap(c, key, e.ETag, e.Size, cl.DataID, f, have)
				it.blocks.setGroup(&it.fetches)
				it.blocks.mtime = e.Attr.Mtime
			}
			if !fl.prefetch {
				c.stats.CacheHits.Add(1)
			}
			return nil
		}
	}
	if hasClean {
		// A stale version: drop it.
		c.update(func(txn *badger.Txn) error { return txn.Delete(cKey(key)) })
		c.dropData(cl.DataID)
	}
	if fl.prefetch {
		c.stats.Prefetches.Add(1)
	} else {
		c.stats.CacheMisses.Add(1)
	}
	if fl.Write && fl.Trunc {
		return c.newData(it, e.Attr, e.ETag, false)
	}
	if !fl.Write && e.Size > c.o.WholeFileLimit {
		return c.newSparse(it, key, e)
	}
	if fl.prefetch {
		// The item is locked meanwhile, and nobody asked for this
		// fetch: a writer, unlink or rename of the file waits for it,
		// so a slow or hung store ends it soon (see prefetch.go).
		pctx, cancel := context.WithTimeout(ctx, prefetchTimeout)
		defer cancel()
		return c.fetchWholeIn(pctx, it, key, e)
	}
	return c.fetchWhole(ctx, it, key, e)
}

// newSparse gives a large object opened for reading a sparse data file
// that the block cache fills as it is read.
func (c *Cache) newSparse(it *Item, key string, e Entry) error {
	id, err := c.newDataID()
	if err != nil {
		return err
	}
	path := c.dataPath(id)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err == nil {
		err = f.Truncate(e.Size)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		os.Remove(path)
		return fmt.Errorf("cache file: %w", err)
	}
	if !e.Attr.Mtime.IsZero() {
		os.Chtimes(path, e.Attr.Mtime, e.Attr.Mtime)
	}
	if err := c.update(func(txn *badger.Txn) error {
		return txn.Set(cKey(key), encode(Clean{V: recordVersion, DataID: id, ETag: e.ETag, Size: e.Size, Partial: true, Attr: &e.Attr}))
	}); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	it.f, it.attr, it.base = f, e.Attr, e.ETag
	it.id.Store(id) // before the LRU may evict: see fetchWhole
	it.blocks = newBlockMap(c, key, e.ETag, e.Size, id, f, nil)
	it.blocks.setGroup(&it.fetches)
	it.blocks.mtime = e.Attr.Mtime
	c.lru.add(id, key, e.Size)
	return nil
}

func (c *Cache) newData(it *Item, a Attr, base string, created bool) error {
	sf, err := c.spares.take()
	if err != nil {
		return err
	}
	id, f := sf.id, sf.f
	it.f, it.attr, it.base = f, a, base
	it.id.Store(id)
	if created {
		it.dirtyData = true
	}
	if !a.Mtime.IsZero() {
		os.Chtimes(f.Name(), a.Mtime, a.Mtime)
	}
	return nil
}

// fetchWhole downloads object src (version e) into a new data file for it
// and records it as clean for src.
func (c *Cache) fetchWhole(ctx context.Context, it *Item, src string, e Entry) error {
	// Not ended by a FUSE interrupt (see opCtx).
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.OpTimeout+time.Duration(e.Size>>20)*time.Second)
	defer cancel()
	return c.fetchWholeIn(octx, it, src, e)
}

// fetchWholeIn is fetchWhole with the GET bounded by octx.
func (c *Cache) fetchWholeIn(octx context.Context, it *Item, src string, e Entry) error {
	sf, err := c.spares.take()
	if err != nil {
		return err
	}
	id, f, path := sf.id, sf.f, sf.f.Name()
	c.makeRoom(e.Size)
	r, err := c.st.Get(octx, src, e.ETag, 0, -1)
	c.noteBackend(err)
	if err == nil {
		var n int64
		n, err = io.Copy(f, r)
		r.Close()
		if err == nil && n != e.Size && e.Size >= 0 {
			err = fmt.Errorf("fetch %s: got %d bytes, want %d: %w", src, n, e.Size, backend.ErrUnavailable)
		}
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if !e.Attr.Mtime.IsZero() {
		os.Chtimes(path, e.Attr.Mtime, e.Attr.Mtime)
	}
	if err := c.update(func(txn *badger.Txn) error {
		return txn.Set(cKey(src), encode(Clean{V: recordVersion, DataID: id, ETag: e.ETag, Size: e.Size, Attr: &e.Attr}))
	}); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	it.f, it.attr, it.base = f, e.Attr, e.ETag
	// The item names the file before the LRU may evict for it: eviction
	// skips open files, and a writer is about to change this one.
	it.id.Store(id)
	c.lru.add(id, src, e.Size)
	return nil
}

// unref drops one reference; the last one closes the data file, and
// removes it if nothing refers to it any more. Caller must not hold it.mu.
func (c *Cache) unref(it *Item) {
	c.mu.Lock()
	it.refs--
	idle := it.refs == 0
	if idle && c.items[it.key] == it {
		delete(c.items, it.key)
	}
	c.mu.Unlock()
	if !idle {
		return
	}
	it.mu.Lock()
	defer it.mu.Unlock()
	// Read-ahead still running is stopped, and waited for before the file
	// it writes into is closed.
	if it.blocks != nil {
		it.blocks.stop()
	}
	it.fetches.Wait()
	if it.f != nil {
		it.f.Close()
		it.f = nil
	}
	if it.dropOnClose.Load() || it.removed {
		c.lru.forget(it.id.Load())
		c.trash.drop(c.dataPath(it.id.Load()))
	}
}

// Fd is the data file descriptor for FUSE passthrough; ok is false while
// the data file is partial (the daemon fills it as it is read).
func (h *Handle) Fd() (int, bool) {
	if h.it == nil || h.it.f == nil || h.blocks != nil || h.cachedIO {
		return 0, false
	}
	return int(h.it.f.Fd()), true
}

// ReadAt reads through the daemon (no passthrough).
func (h *Handle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if h.blocks != nil {
		return h.blocks.ReadAt(ctx, p, off)
	}
	n, err := h.it.f.ReadAt(p, off)
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// WriteAt writes through the daemon (no passthrough).
func (h *Handle) WriteAt(p []byte, off int64) (int, error) {
	if h.it == nil || !h.write {
		return 0, syscall.EBADF
	}
	n, err := h.it.f.WriteAt(p, off)
	if n > 0 {
		h.it.mu.Lock()
		h.it.dirtyData = true
		h.it.mu.Unlock()
	}
	return n, err
}

// Truncate changes the size through this handle.
func (h *Handle) Truncate(size int64) error {
	if h.it == nil || !h.write {
		return syscall.EBADF
	}
	h.it.mu.Lock()
	defer h.it.mu.Unlock()
	h.it.dirtyData = true
	return h.it.f.Truncate(size)
}

// Size is the current size of the data.
func (h *Handle) Size() int64 {
	if fi, err := h.it.f.Stat(); err == nil {
		return fi.Size()
	}
	return 0
}

// Flush is called on every close(2): if the handle changed the data, the
// journal record is written (the data then survives a daemon crash) and
// the upload queued. With UploadOnClose it waits for the upload.
func (h *Handle) Flush(ctx context.Context) error {
	if h.it == nil || !h.write {
		return nil
	}
	gen, key, err := h.commit(true)
	if err != nil {
		return err
	}
	if gen == 0 {
		gen = h.createdGen
	}
	h.createdGen = 0
	if h.c.o.UploadOnClose && gen > 0 {
		wctx, cancel := h.c.opCtx(ctx)
		defer cancel()
		return h.c.up.waitUploaded(wctx, key, gen)
	}
	return nil
}

// commit journals the item if it changed. It returns the new generation
// (0 if nothing changed).
func (h *Handle) commit(flush bool) (uint64, string, error) {
	it := h.it
	it.mu.Lock()
	defer it.mu.Unlock()
	if h.counted && flush {
		it.writers--
		h.counted = false
	}
	now := stamp(it.f)
	changed := it.dirtyData || now != h.stat0
	h.stat0 = now
	if !changed || it.removed || it.f == nil {
		return 0, it.key, nil
	}
	gen, err := it.c.journalPut(it, now.size, now.mtime)
	if err != nil {
		return 0, it.key, err
	}
	it.dirtyData = false
	return gen, it.key, nil
}

// journalPut writes the put record of an item. Caller holds it.mu.
func (c *Cache) journalPut(it *Item, size int64, mtime time.Time) (uint64, error) {
	var gen uint64
	var oldData uint64
	var cleared bool
	a := it.attr
	a.Mtime = mtime
	err := c.update(func(txn *badger.Txn) error {
		old, ok, err := getRecord(txn, it.key)
		if err != nil {
			return err
		}
		r := Record{Op: OpPut, DataID: it.id.Load(), Size: size, Attr: a, BaseETag: it.base, Excl: it.excl, Gen: 1}
		if ok {
			r.Gen = old.Gen + 1
			r.Since, r.UploadedGen = old.Since, old.UploadedGen
			r.InBucket, r.Sent = old.sentApart().inBucket(it.key), old.Sent
			r.After = old.After // still the source of a pending rename
			if old.Op == OpPut && old.DataID != it.id.Load() {
				oldData = old.DataID
			}
		}
		gen = r.Gen
		// A data file is clean or dirty, never both: an upload that
		// finished while this writer had the file open recorded it as
		// clean, and eviction must not take it now.
		cleared = false
		if cl, ok, err := getClean(txn, it.key); err != nil {
			return err
		} else if ok && cl.DataID == it.id.Load() {
			if err := txn.Delete(cKey(it.key)); err != nil {
				return err
			}
			cleared = true
		}
		return putRecord(txn, it.key, r)
	})
	if err != nil {
		return 0, fmt.Errorf("journal %s: %w", it.key, err)
	}
	if cleared {
		c.lru.forget(it.id.Load())
	}
	// The record refers to the data file now: whatever dropped it before
	// (it was a clean copy replaced or renamed), it stays.
	it.dropOnClose.Store(false)
	if oldData != 0 {
		c.dropData(oldData)
	}
	if it.excl && it.base != "" {
		// Other machines see the empty claim object until the data is
		// there: upload without the write-back delay, never held back.
		c.up.enqueueUrgent(it.key)
	} else {
		c.up.enqueue(it.key, c.o.WritebackDelay)
	}
	return gen, nil
}

// Sync makes the handle's data and journal durable on disk (fsync).
func (h *Handle) Sync(ctx context.Context) error {
	if h.it == nil {
		return nil
	}
	gen, key := uint64(0), ""
	if h.write {
		var err error
		if gen, key, err = h.commit(false); err != nil {
			return err
		}
	}
	if err := h.it.f.Sync(); err != nil {
		return err
	}
	if err := h.c.db.Sync(); err != nil {
		return err
	}
	if h.c.o.UploadOnClose && gen > 0 {
		wctx, cancel := h.c.opCtx(ctx)
		defer cancel()
		return h.c.up.waitUploaded(wctx, key, gen)
	}
	return nil
}

// Release is the last close of the handle.
func (h *Handle) Release() {
	if h.write {
		if _, _, err := h.commit(true); err != nil {
			h.c.log.Error("journal on release", "key", h.it.key, "err", err)
		}
	}
	it := h.it
	it.mu.Lock()
	key := it.key
	claimed := it.excl && it.base != ""
	if h.cachedIO {
		it.cachedIO--
	}
	it.mu.Unlock()
	h.c.unref(it)
	if h.write {
		h.c.up.writerClosed(key, claimed)
	}
}

// DataID names the data file the handle reads and writes: handles of one
// file opened while another machine replaced it may differ.
func (h *Handle) DataID() uint64 { return h.it.id.Load() }

// Writable reports whether the handle was opened for writing.
func (h *Handle) Writable() bool { return h.write && h.it != nil }

// Allocate is fallocate(2) on the data file. It works for every writable
// handle, including one served through the daemon (while another handle
// of the file reads a partial block-cache file, say).
func (h *Handle) Allocate(off, size int64, mode uint32) error {
	if h.it == nil || !h.write {
		return syscall.EBADF
	}
	h.it.mu.Lock()
	defer h.it.mu.Unlock()
	if h.it.f == nil {
		return syscall.EBADF
	}
	if err := syscall.Fallocate(int(h.it.f.Fd()), mode, off, size); err != nil {
		return err
	}
	h.it.dirtyData = true
	return nil
}

// Entry describes the open file: attributes from the item, size and mtime
// from its data file.
func (h *Handle) Entry() Entry {
	it := h.it
	it.mu.Lock()
	defer it.mu.Unlock()
	e := Entry{Key: it.key, Name: baseName(it.key), Attr: it.attr, ETag: it.base}
	if it.f != nil {
		if fi, err := it.f.Stat(); err == nil {
			e.Size = fi.Size()
			if it.blocks == nil {
				e.Attr.Mtime = fi.ModTime()
			}
			// else the block cache is filling the file: its mtime is
			// that of the last block written, not the object's, and a
			// changed mtime makes the kernel drop the file's pages.
		}
	}
	e.Symlink = it.attr.Mode&syscall.S_IFMT == syscall.S_IFLNK
	return e
}
