package cache

// Namespace changes: create, unlink, mkdir, rmdir, rename, attributes and
// symlinks. Each is one journal transaction, applied to the bucket later by
// the uploader.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/mediafs/mediafs/backend"
)

// maxRenameEntries bounds a directory rename done as one transaction;
// larger trees get EXDEV, and mv(1) then copies them instead.
const maxRenameEntries = 5000

// Create makes a new empty file open for writing. Its journal record is
// written at once, so the name is visible in listings before close.
func (c *Cache) Create(ctx context.Context, key string, a Attr, excl bool) (*Handle, error) {
	// An open file of the same name is no longer in the namespace
	// (created over): detach it.
	its, err := c.lockItems(ctx, func(k string) bool { return k == key })
	if err != nil {
		return nil, err
	}
	c.detachLocked(its, key)
	unlockItems(its)
	h, err := c.Open(ctx, key, Entry{}, OpenFlags{Write: true, Create: true, Excl: excl, Attr: a})
	if err != nil {
		return nil, err
	}
	it := h.it
	if excl && !c.o.LocalExcl {
		if err := c.claim(ctx, it, a); err != nil {
			it.mu.Lock()
			it.removed = true
			it.mu.Unlock()
			h.counted = false
			h.write = false
			h.Release()
			return nil, err
		}
	}
	it.mu.Lock()
	gen, err := c.journalPut(it, 0, a.Mtime)
	if err == nil {
		// Journaled as it is: a close with no write in between has
		// nothing more to record.
		it.dirtyData = false
		h.stat0 = stamp(it.f)
		h.createdGen = gen
	}
	claimSent := it.claimSent
	it.mu.Unlock()
	if err != nil {
		h.Release()
		return nil, err
	}
	if claimSent {
		c.markSent(key)
	}
	return h, nil
}

// claim makes an O_EXCL create exclusive across machines: an empty object
// is written at once with If-None-Match: *, so exactly one machine gets the
// name; the data follows with If-Match on the claim's ETag. With the
// backend down the create stays exclusive on this machine only, and the
// upload's If-None-Match turns a lost race into a conflict copy.
func (c *Cache) claim(ctx context.Context, it *Item, a Attr) error {
	if c.backendDown() {
		// Known to be down: don't make every create wait for it to fail.
		return nil
	}
	if r, ok, err := c.record(it.key); err == nil && ok && r.Op == OpDelete {
		// The object there is one this mount unlinked or renamed away and
		// has not deleted yet: the name is free here, and the create
		// replaces that object (exclusive on this machine only).
		return nil
	}
	md := metaFromAttr(a)
	md[metaUploadTag] = fmt.Sprintf("%s/%x/0", c.instance, it.id.Load())
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(c.o.ClaimTimeout, c.o.OpTimeout)) // see opCtx
	defer cancel()
	obj, err := c.st.Put(octx, it.key, emptyReader{}, 0, backend.PutOptions{
		ContentType: contentType(it.key, false), Metadata: md, IfNoneMatch: true})
	c.noteBackend(err)
	switch {
	case err == nil:
		it.mu.Lock()
		it.base, it.excl = obj.ETag, true
		it.mu.Unlock()
		return nil
	case errors.Is(err, backend.ErrConflict):
		c.InvalidateDir(parentDir(it.key))
		return os.ErrExist
	case errors.Is(err, backend.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		c.log.Debug("O_EXCL claim not possible, backend unavailable; exclusive on this machine only", "key", it.key)
		it.mu.Lock()
		it.claimSent = true // the empty claim object may still land
		it.mu.Unlock()
		return nil
	}
	return err
}

// lockItems locks the open items whose keys match, in key order, so a
// close racing with a rename or unlink cannot journal under a stale name.
func (c *Cache) lockItems(ctx context.Context, match func(string) bool) ([]*Item, error) {
	c.mu.Lock()
	var its []*Item
	for k, it := range c.items {
		if match(k) {
			its = append(its, it)
		}
	}
	c.mu.Unlock()
	sort.Slice(its, func(i, j int) bool { return its[i].key < its[j].key })
	for i, it := range its {
		if err := it.mu.LockCtx(ctx); err != nil {
			unlockItems(its[:i])
			return nil, err
		}
	}
	return its, nil
}

func unlockItems(its []*Item) {
	for _, it := range its {
		it.mu.Unlock()
	}
}

// Remove unlinks a file (or a symlink).
func (c *Cache) Remove(ctx context.Context, key string) error {
	its, err := c.lockItems(ctx, func(k string) bool { return k == key })
	if err != nil {
		return err
	}
	defer unlockItems(its)
	var drop []uint64
	err = c.update(func(txn *badger.Txn) error {
		drop = drop[:0]
		old, ok, err := getRecord(txn, key)
		if err != nil {
			return err
		}
		r := Record{Op: OpDelete, Gen: 1}
		if ok {
			r.Gen = old.Gen + 1
			r.After = old.After // still the source of a pending rename
			if old.Op == OpPut {
				drop = append(drop, old.DataID)
			}
			if old.Op == OpPut && !old.inBucket(key) {
				// Never reached the bucket: nothing to delete.
				return deleteRecord(txn, key)
			}
		}
		if cl, ok, err := getClean(txn, key); err != nil {
			return err
		} else if ok {
			drop = append(drop, cl.DataID)
			if err := txn.Delete(cKey(key)); err != nil {
				return err
			}
		}
		return putRecord(txn, key, r)
	})
	if err != nil {
		return fmt.Errorf("journal unlink %s: %w", key, err)
	}
	c.detachLocked(its, key)
	for _, id := range drop {
		c.dropData(id)
	}
	c.up.enqueue(key, 0)
	return nil
}

// detachLocked marks the locked items of key as no longer in the
// namespace (unlinked or replaced).
func (c *Cache) detachLocked(its []*Item, key string) {
	for _, it := range its {
		if it.key != key {
			continue
		}
		c.mu.Lock()
		if c.items[key] == it {
			delete(c.items, key)
		}
		c.mu.Unlock()
		it.removed = true
		it.key = ""
	}
}

// Mkdir records a directory marker, so an empty directory persists.
func (c *Cache) Mkdir(ctx context.Context, dirKey string, a Attr) error {
	err := c.update(func(txn *badger.Txn) error {
		old, ok, err := getRecord(txn, dirKey)
		if err != nil {
			return err
		}
		r := Record{Op: OpPut, Attr: a, Gen: 1}
		if ok {
			r.Gen = old.Gen + 1
			r.InBucket = old.inBucket(dirKey) // mkdir after rmdir
		}
		return putRecord(txn, dirKey, r)
	})
	if err != nil {
		return fmt.Errorf("journal mkdir %s: %w", dirKey, err)
	}
	c.up.enqueue(dirKey, c.o.WritebackDelay)
	return nil
}

// ErrNotEmpty is returned by Rmdir and Rename onto a non-empty directory.
var ErrNotEmpty = syscall.ENOTEMPTY

// Rmdir removes an empty directory.
func (c *Cache) Rmdir(ctx context.Context, dirKey string) error {
	ents, err := c.List(ctx, dirKey)
	if err != nil {
		return err
	}
	if len(ents) > 0 {
		return ErrNotEmpty
	}
	err = c.update(func(txn *badger.Txn) error {
		old, ok, err := getRecord(txn, dirKey)
		if err != nil {
			return err
		}
		r := Record{Op: OpDelete, Gen: 1}
		if ok {
			r.Gen = old.Gen + 1
		}
		return putRecord(txn, dirKey, r)
	})
	if err != nil {
		return fmt.Errorf("journal rmdir %s: %w", dirKey, err)
	}
	c.InvalidateDir(dirKey)
	c.up.enqueue(dirKey, 0)
	return nil
}

// Symlink creates a symlink object holding target, as s3fs stores them.
func (c *Cache) Symlink(ctx context.Context, key, target string, a Attr) error {
	id, err := c.newDataID()
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.dataPath(id), []byte(target), 0o600); err != nil {
		return fmt.Errorf("cache file: %w", err)
	}
	a.Mode = syscall.S_IFLNK | 0o777
	var drop uint64
	err = c.update(func(txn *badger.Txn) error {
		old, ok, err := getRecord(txn, key)
		if err != nil {
			return err
		}
		r := Record{Op: OpPut, DataID: id, Size: int64(len(target)), Attr: a, Symlink: true, Gen: 1}
		if ok {
			r.Gen = old.Gen + 1
			r.InBucket, r.Sent = old.sentApart().inBucket(key), old.Sent
			if old.Op == OpPut {
				drop = old.DataID
			}
		}
		return putRecord(txn, key, r)
	})
	if err != nil {
		os.Remove(c.dataPath(id))
		return fmt.Errorf("journal symlink %s: %w", key, err)
	}
	c.dropData(drop)
	c.up.enqueue(key, c.o.WritebackDelay)
	return nil
}

// Readlink returns a symlink's target.
func (c *Cache) Readlink(ctx context.Context, key string, e Entry) (string, error) {
	if r, ok, err := c.record(key); err != nil {
		return "", err
	} else if ok && r.Op == OpPut && r.DataID != 0 {
		b, err := os.ReadFile(c.dataPath(r.DataID))
		return string(b), err
	}
	src := key
	if r, ok, _ := c.record(key); ok && r.Op == OpCopy {
		src = r.Src
		e.ETag = ""
	}
	octx, cancel := c.opCtx(ctx)
	defer cancel()
	rd, err := c.st.Get(octx, src, e.ETag, 0, 4096)
	if err != nil {
		return "", err
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	return string(b), err
}

// AttrChange is a chmod/chown/utimens; nil fields are left alone.
type AttrChange struct {
	Mode     *uint32 // permission bits
	UID, GID *uint32
	Mtime    *time.Time
	Atime    *time.Time
}

func (ch AttrChange) apply(a Attr) Attr {
	if ch.Mode != nil {
		a.Mode = a.Mode&syscall.S_IFMT | *ch.Mode&07777
	}
	if ch.UID != nil {
		a.UID = *ch.UID
	}
	if ch.GID != nil {
		a.GID = *ch.GID
	}
	if ch.Mtime != nil {
		a.Mtime = *ch.Mtime
	}
	return a
}

// SetAttr changes the attributes of key (e is its current entry). A
// pending upload carries them; otherwise a metadata-only server-side copy
// is queued.
func (c *Cache) SetAttr(ctx context.Context, key string, e Entry, ch AttrChange) (Entry, error) {
	c.mu.Lock()
	it := c.items[key]
	c.mu.Unlock()
	if it != nil {
		it.mu.Lock()
		if it.f != nil && !it.removed {
			it.attr = ch.apply(it.attr)
			if ch.Mtime != nil {
				at := time.Now()
				if ch.Atime != nil {
					at = *ch.Atime
				}
				os.Chtimes(it.f.Name(), at, *ch.Mtime)
			}
			_, hasRec, _ := c.record(key)
			if hasRec || it.dirtyData || it.writers > 0 {
				st := stamp(it.f)
				_, err := c.journalPut(it, st.size, st.mtime)
				it.dirtyData = false
				it.mu.Unlock()
				if err != nil {
					return e, err
				}
				e.Attr = it.attr
				e.Attr.Mtime = st.mtime
				return e, nil
			}
		}
		it.mu.Unlock()
	}
	var out Attr
	var drop uint64
	err := c.update(func(txn *badger.Txn) error {
		drop = 0
		old, ok, err := getRecord(txn, key)
		if err != nil {
			return err
		}
		var r Record
		switch {
		case ok && old.Op == OpDelete:
			return ErrNotExist
		case ok:
			r = old
			r.Gen = old.Gen + 1
			r.Attr = ch.apply(old.Attr)
			if old.Op == OpPut && old.DataID != 0 && ch.Mtime != nil {
				os.Chtimes(c.dataPath(old.DataID), *ch.Mtime, *ch.Mtime)
			}
		case IsDirKey(key):
			// The directory exists, so its marker may be in the bucket:
			// a rename or rmdir before this upload must still delete it.
			r = Record{Op: OpPut, Attr: ch.apply(e.Attr), Gen: 1, InBucket: true}
		default:
			r = Record{Op: OpCopy, Src: key, SrcSize: e.Size, Attr: ch.apply(e.Attr), BaseETag: e.ETag, Gen: 1}
			if cl, ok, err := getClean(txn, key); err == nil && ok && ch.Mtime != nil {
				// The cached bytes are still right; only the clock moves.
				os.Chtimes(c.dataPath(cl.DataID), *ch.Mtime, *ch.Mtime)
			}
		}
		out = r.Attr
		return putRecord(txn, key, r)
	})
	if err != nil {
		return e, err
	}
	c.dropData(drop)
	c.up.enqueue(key, c.o.WritebackDelay)
	e.Attr = out
	e.Pending = true
	return e, nil
}

// Rename moves oldKey to newKey, replacing newKey. For directories both
// keys end in "/" and every key below moves in one transaction.
func (c *Cache) Rename(ctx context.Context, oldKey, newKey string, oldEntry Entry) error {
	if IsDirKey(oldKey) {
		return c.renameDir(ctx, oldKey, newKey)
	}
	// A target the bucket holds is replaced by the moved change, which is
	// based on no version of it: if that change goes before its upload,
	// the object must still be deleted. Unsure (backend down) means yes;
	// a target's record, if it still has one, knows for itself. (Not
	// target.Pending: a file open for writing reads as pending though
	// its object is in the bucket.)
	_, terr := c.Lookup(ctx, newKey)
	replaces := terr == nil || !errors.Is(terr, ErrNotExist)
	its, err := c.lockItems(ctx, func(k string) bool { return k == oldKey || k == newKey })
	if err != nil {
		return err
	}
	defer unlockItems(its)
	var drop []uint64
	err = c.update(func(txn *badger.Txn) error {
		drop = drop[:0]
		_, hadRec, err := getRecord(txn, newKey)
		if err != nil {
			return err
		}
		if err := c.renameKeyTxn(txn, oldKey, newKey, &oldEntry, &drop); err != nil {
			return err
		}
		r, ok, err := getRecord(txn, newKey)
		if err != nil || !ok || !replaces || hadRec || r.InBucket {
			return err
		}
		r.InBucket = true
		return putRecord(txn, newKey, r)
	})
	if err != nil {
		return err
	}
	c.rekeyLocked(its, oldKey, newKey)
	for _, id := range drop {
		c.dropData(id)
	}
	c.up.enqueue(oldKey, c.o.WritebackDelay)
	c.up.enqueue(newKey, c.o.WritebackDelay)
	return nil
}

// renameKeyTxn moves one key inside txn. remote is the bucket's object
// when there is no pending record for oldKey.
func (c *Cache) renameKeyTxn(txn *badger.Txn, oldKey, newKey string, remote *Entry, drop *[]uint64) error {
	rOld, okOld, err := getRecord(txn, oldKey)
	if err != nil {
		return err
	}
	rNew, okNew, err := getRecord(txn, newKey)
	if err != nil {
		return err
	}
	gen := uint64(1)
	// A target that is the source of a pending rename keeps waiting for
	// that copy, whatever now takes its name (see uploader.process).
	after := ""
	if okNew {
		gen = rNew.Gen + 1
		after = rNew.After
		if rNew.Op == OpPut {
			*drop = append(*drop, rNew.DataID)
		}
	}
	for _, k := range []string{oldKey, newKey} {
		if cl, ok, err := getClean(txn, k); err != nil {
			return err
		} else if ok {
			*drop = append(*drop, cl.DataID)
			if err := txn.Delete(cKey(k)); err != nil {
				return err
			}
		}
	}
	setOld := func(r Record) error {
		if okOld {
			r.Gen = rOld.Gen + 1
		} else {
			r.Gen = 1
		}
		return putRecord(txn, oldKey, r)
	}
	switch {
	case okOld && rOld.Op == OpDelete:
		return ErrNotExist
	case okOld && rOld.Op == OpPut:
		r := rOld
		r.Gen, r.BaseETag, r.Excl, r.Uploaded, r.Since = gen, "", false, false, time.Time{}
		r.Sent = false // what an unanswered request may have left is at oldKey
		r.InBucket = okNew && rNew.inBucket(newKey)
		r.After = after
		if err := putRecord(txn, newKey, r); err != nil {
			return err
		}
		if !rOld.inBucket(oldKey) {
			return deleteRecord(txn, oldKey)
		}
		return setOld(Record{Op: OpDelete, After: rOld.After})
	case okOld && rOld.Op == OpCopy:
		r := rOld
		r.Gen, r.Since, r.Sent = gen, time.Time{}, false
		r.InBucket = okNew && rNew.inBucket(newKey)
		r.After = after
		if err := putRecord(txn, newKey, r); err != nil {
			return err
		}
		if rOld.Src == oldKey {
			return setOld(Record{Op: OpDelete, After: newKey})
		}
		// Point the source's pending delete at the new name.
		if src, ok, err := getRecord(txn, rOld.Src); err != nil {
			return err
		} else if ok && src.Op == OpDelete && src.After == oldKey {
			src.After = newKey
			src.Gen++
			if err := putRecord(txn, rOld.Src, src); err != nil {
				return err
			}
		}
		if rOld.InBucket || rOld.Sent {
			return setOld(Record{Op: OpDelete, After: rOld.After}) // it replaced an object there, or may have made one
		}
		return deleteRecord(txn, oldKey)
	default:
		if remote == nil || remote.Key == "" {
			return ErrNotExist
		}
		r := Record{Op: OpCopy, Src: oldKey, SrcSize: remote.Size, Attr: remote.Attr, Gen: gen,
			Symlink: remote.Symlink, InBucket: okNew && rNew.inBucket(newKey), After: after}
		if err := putRecord(txn, newKey, r); err != nil {
			return err
		}
		return setOld(Record{Op: OpDelete, After: newKey})
	}
}

// rekeyLocked moves the locked open items to their new names after a
// rename; items already at the target names are detached (replaced).
func (c *Cache) rekeyLocked(its []*Item, oldKey, newKey string) {
	moves := func(k string) bool {
		return k == oldKey || (IsDirKey(oldKey) && strings.HasPrefix(k, oldKey))
	}
	for _, it := range its {
		if !moves(it.key) && (it.key == newKey || (IsDirKey(newKey) && strings.HasPrefix(it.key, newKey))) {
			c.detachLocked([]*Item{it}, it.key)
		}
	}
	for _, it := range its {
		if it.key == "" || !moves(it.key) {
			continue
		}
		nk := newKey + strings.TrimPrefix(it.key, oldKey)
		c.mu.Lock()
		if c.items[it.key] == it {
			delete(c.items, it.key)
		}
		c.items[nk] = it
		c.mu.Unlock()
		it.key = nk
		it.base, it.excl = "", false
	}
}

func (c *Cache) renameDir(ctx context.Context, oldDir, newDir string) error {
	if oldDir == "" || strings.HasPrefix(newDir, oldDir) {
		return syscall.EINVAL
	}
	// The target, if it exists, must be empty.
	if ents, err := c.List(ctx, newDir); err == nil && len(ents) > 0 {
		if _, lerr := c.Lookup(ctx, strings.TrimSuffix(newDir, "/")); lerr == nil {
			return ErrNotEmpty
		}
	}
	// The journal first, then the bucket: a record applied in between
	// (or later) is then found in one of them, and is renamed as the
	// object it became (see below).
	pending := map[string]Record{}
	var pendingKeys []string
	err := c.db.View(func(txn *badger.Txn) error {
		return scanRecords(txn, oldDir, func(k string, r Record) error {
			pending[k] = r
			pendingKeys = append(pendingKeys, k)
			return nil
		})
	})
	if err != nil {
		return err
	}
	lctx, cancel := c.opCtx(ctx)
	objs, err := c.st.ListAll(lctx, oldDir)
	cancel()
	if err != nil {
		return err
	}
	if len(objs)+len(pendingKeys) > maxRenameEntries {
		return syscall.EXDEV
	}
	its, err := c.lockItems(ctx, func(k string) bool { return strings.HasPrefix(k, oldDir) || strings.HasPrefix(k, newDir) })
	if err != nil {
		return err
	}
	defer unlockItems(its)
	var drop []uint64
	err = c.update(func(txn *badger.Txn) error {
		drop = drop[:0]
		var oldDirGen uint64
		if r, ok, err := getRecord(txn, oldDir); err != nil {
			return err
		} else if ok {
			oldDirGen = r.Gen
		}
		for _, k := range pendingKeys {
			r, ok, err := getRecord(txn, k)
			if err != nil {
				return err
			}
			if !ok && pending[k].Op != OpDelete {
				// Uploaded or copied since the scan (and perhaps
				// since the listing): the object is in the bucket now.
				e := c.entryFromRecord(k, pending[k])
				if err := c.renameKeyTxn(txn, k, newDir+k[len(oldDir):], &e, &drop); err != nil {
					return err
				}
				continue
			}
			if !ok || (r.Op == OpDelete && r.After == "") {
				continue // already gone; its delete stays where it is
			}
			if r.Op == OpDelete {
				continue // source of a pending rename elsewhere
			}
			if err := c.renameKeyTxn(txn, k, newDir+k[len(oldDir):], nil, &drop); err != nil {
				return err
			}
		}
		for _, o := range objs {
			if _, ok := pending[o.Key]; ok {
				continue // done above
			}
			e := entryFromObject(o, c.o.Defaults)
			if err := c.renameKeyTxn(txn, o.Key, newDir+o.Key[len(oldDir):], &e, &drop); err != nil {
				return err
			}
		}
		// The old name goes at once, though the bucket lists objects
		// below it until their deletes are done; the uploader deletes a
		// directory's marker only after everything below it.
		if _, ok, err := getRecord(txn, oldDir); err != nil {
			return err
		} else if !ok {
			if err := putRecord(txn, oldDir, Record{Op: OpDelete, Gen: oldDirGen + 1}); err != nil {
				return err
			}
		}
		// Keep the (possibly empty) directory itself.
		if _, ok, err := getRecord(txn, newDir); err != nil {
			return err
		} else if !ok {
			a := Attr{Mode: syscall.S_IFDIR | c.o.Defaults.DirMode, UID: c.o.Defaults.UID, GID: c.o.Defaults.GID, Mtime: time.Now()}
			if da, ok := c.DirAttr(oldDir); ok {
				a = da
			}
			return putRecord(txn, newDir, Record{Op: OpPut, Attr: a, Gen: 1})
		}
		return nil
	})
	if errors.Is(err, badger.ErrTxnTooBig) {
		return syscall.EXDEV
	}
	if err != nil {
		return fmt.Errorf("journal rename %s: %w", oldDir, err)
	}
	c.rekeyLocked(its, oldDir, newDir)
	for _, id := range drop {
		c.dropData(id)
	}
	c.InvalidateDir(oldDir)
	c.InvalidateDir(newDir)
	c.up.enqueuePrefix(oldDir)
	c.up.enqueuePrefix(newDir)
	return nil
}
