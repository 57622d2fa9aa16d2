package cache

// The namespace overlay: what a directory holds is the bucket's listing
// (cached for DirTTL), corrected by changes this mount completed recently
// (so a listing fetched just before an upload finished cannot hide it) and
// by the journal (pending creates, renames and deletes).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/dgraph-io/badger/v4"

	"github.com/mediafs/mediafs/backend"
)

// ErrNotExist is returned for names that do not exist.
var ErrNotExist = os.ErrNotExist

type dirListing struct {
	prev       *dirListing // the last good listing, while this one is fetched
	refreshing bool        // a background refresh runs (guarded by Cache.mu)
	started    time.Time
	fetched    time.Time
	entries    map[string]Entry
	self       *Entry // the dir's own marker object, when listed
	done       chan struct{}
	err        error
}

type recentChange struct {
	at    time.Time
	entry *Entry // nil: deleted
}

// validName reports why a key segment cannot be a file name, or "".
func validName(seg string) string {
	switch {
	case seg == "":
		return "empty path segment"
	case seg == "." || seg == "..":
		return "dot segment"
	case len(seg) > 255:
		return "segment longer than 255 bytes"
	case strings.IndexByte(seg, 0) >= 0:
		return "NUL byte"
	case !utf8.ValidString(seg):
		return "invalid UTF-8"
	}
	return ""
}

// listing returns the bucket's view of dirKey, fetching it when older than
// the TTL. Concurrent callers share one LIST. While the backend is down, the
// last good listing is served (and refreshed in the background), so stat
// and ls of what the mount knows keep working during an outage.
func (c *Cache) listing(ctx context.Context, dirKey string) (*dirListing, error) {
	if c.backendDown() {
		c.mu.Lock()
		known := c.dirs[dirKey] != nil
		c.mu.Unlock()
		if ol := c.offlineListing(dirKey); !known && ol != nil {
			return ol, nil
		}
		if !known {
			// Nothing known of this directory (never listed, or a
			// restart during the outage): fail now instead of making
			// every caller wait out the op timeout, and let one fetch
			// in the background find out when the store is back.
			c.mu.Lock()
			if c.dirs[dirKey] == nil {
				nl := &dirListing{started: time.Now(), done: make(chan struct{})}
				c.dirs[dirKey] = nl
				go c.fetchListing(context.Background(), dirKey, nl)
			}
			c.mu.Unlock()
			return nil, fmt.Errorf("list %q: %w (the object store was unreachable moments ago)", dirKey, backend.ErrUnavailable)
		}
	}
	c.mu.Lock()
	l := c.dirs[dirKey]
	var prev *dirListing
	if l != nil {
		select {
		case <-l.done:
			age, ttl := time.Since(l.fetched), c.listingTTL(l)
			if l.err == nil && age < ttl {
				c.mu.Unlock()
				return l, nil
			}
			if l.err == nil && age < 2*ttl && !c.backendDown() {
				// Just expired: answer from it while one refresh runs in
				// the background, so a busy directory's lookups never all
				// wait for a LIST. What is served is at most about one TTL
				// plus one LIST old.
				if !l.refreshing {
					l.refreshing = true
					go c.refreshListing(dirKey, l)
				}
				c.mu.Unlock()
				return l, nil
			}
			prev = l
			if l.err != nil {
				prev = l.prev
			}
			if prev != nil && c.backendDown() {
				nl := &dirListing{started: time.Now(), done: make(chan struct{}), prev: prev}
				c.dirs[dirKey] = nl
				c.mu.Unlock()
				go c.fetchListing(context.Background(), dirKey, nl)
				return prev, nil
			}
		default:
			prev = l.prev
			c.mu.Unlock()
			if prev != nil && c.backendDown() {
				return prev, nil
			}
			if c.backendDown() {
				if ol := c.offlineListing(dirKey); ol != nil {
					return ol, nil
				}
				return nil, fmt.Errorf("list %q: %w (the object store was unreachable moments ago)", dirKey, backend.ErrUnavailable)
			}
			select {
			case <-l.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if l.err != nil {
				if prev != nil && errors.Is(l.err, backend.ErrUnavailable) {
					return prev, nil
				}
				if ol := c.offlineListing(dirKey); ol != nil && errors.Is(l.err, backend.ErrUnavailable) {
					return ol, nil
				}
				return nil, l.err
			}
			return l, nil
		}
	}
	l = &dirListing{started: time.Now(), done: make(chan struct{}), prev: prev}
	c.dirs[dirKey] = l
	c.mu.Unlock()
	if err := c.fetchListing(ctx, dirKey, l); err != nil {
		if prev != nil && errors.Is(err, backend.ErrUnavailable) {
			return prev, nil
		}
		if ol := c.offlineListing(dirKey); ol != nil && errors.Is(err, backend.ErrUnavailable) {
			return ol, nil
		}
		return nil, err
	}
	return l, nil
}

// offlineListing stands in, while the backend is down, for the listing of
// a directory made on this mount and not uploaded yet (nil for any other):
// the bucket holds nothing below it this mount needs, and creating files
// in a new directory must go on at local speed during an outage. The
// journal's records below it are overlaid as usual.
func (c *Cache) offlineListing(dirKey string) *dirListing {
	if dirKey == "" || !IsDirKey(dirKey) {
		return nil
	}
	r, ok, err := c.record(dirKey)
	if err != nil || !ok || r.Op != OpPut || r.Uploaded {
		return nil
	}
	now := time.Now()
	l := &dirListing{started: now, fetched: now, entries: map[string]Entry{}, done: make(chan struct{})}
	close(l.done)
	return l
}

// refreshListing fetches a new listing of dirKey in the background and
// puts it in place of old (unless old was dropped or replaced meanwhile).
func (c *Cache) refreshListing(dirKey string, old *dirListing) {
	nl := &dirListing{started: time.Now(), done: make(chan struct{})}
	err := c.fetchListing(context.Background(), dirKey, nl)
	c.mu.Lock()
	defer c.mu.Unlock()
	old.refreshing = false
	if err == nil && c.dirs[dirKey] == old {
		c.dirs[dirKey] = nl
	}
}

// backendDown reports whether the backend failed as unavailable recently
// and has not answered since.
func (c *Cache) backendDown() bool {
	t := c.downAt.Load()
	return t != 0 && time.Since(time.Unix(0, t)) < 30*time.Second
}

// noteBackend records whether a backend call reached the server.
func (c *Cache) noteBackend(err error) {
	switch {
	case err == nil || errors.Is(err, backend.ErrNotFound) || errors.Is(err, backend.ErrConflict):
		c.downAt.Store(0)
	case errors.Is(err, backend.ErrUnavailable):
		c.downAt.Store(time.Now().UnixNano())
	}
}

// BackendDown is for status and readiness.
func (c *Cache) BackendDown() bool { return c.backendDown() }

// fetchListing runs one LIST into l and installs it (or, on failure, puts
// the previous good listing back).
func (c *Cache) fetchListing(ctx context.Context, dirKey string, l *dirListing) error {
	octx, cancel := c.opCtx(ctx)
	res, err := c.st.List(octx, dirKey)
	cancel()
	c.noteBackend(err)
	if err != nil {
		l.err = err
		c.mu.Lock()
		if c.dirs[dirKey] == l {
			if l.prev != nil {
				c.dirs[dirKey] = l.prev
			} else {
				delete(c.dirs, dirKey)
			}
		}
		c.mu.Unlock()
		close(l.done)
		return err
	}
	c.mu.Lock()
	l.prev = nil
	c.mu.Unlock()
	l.entries = make(map[string]Entry, len(res.Objects)+len(res.Prefixes))
	for _, o := range res.Objects {
		if o.Key == dirKey {
			e := entryFromObject(o, c.o.Defaults)
			l.self = &e
			continue
		}
		name := strings.TrimSuffix(o.Key[len(dirKey):], "/")
		if why := validName(name); why != "" || strings.Contains(name, "/") {
			if why == "" {
				why = "empty path segment"
			}
			c.logSkipped(o.Key, why)
			continue
		}
		if len(o.Key) > 1024 {
			c.logSkipped(o.Key, "key longer than 1024 bytes")
			continue
		}
		e := entryFromObject(o, c.o.Defaults)
		if old, ok := l.entries[name]; ok && old.Dir {
			continue // the directory wins over a file of the same name
		}
		l.entries[name] = e
	}
	for _, p := range res.Prefixes {
		name := strings.TrimSuffix(p[len(dirKey):], "/")
		if why := validName(name); why != "" {
			c.logSkipped(p, why)
			continue
		}
		e := dirEntry(p, c.o.Defaults)
		if old, ok := l.entries[name]; ok && old.Dir {
			e = old
		}
		l.entries[name] = e
	}
	l.fetched = time.Now()
	close(l.done)
	return nil
}

// noteRemote records a change this mount made in the bucket, so listings
// fetched before it became visible do not hide it.
func (c *Cache) noteRemote(key string, e *Entry) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	pd := parentDir(key)
	dir := c.recent[pd]
	if dir == nil {
		dir = map[string]recentChange{}
		c.recent[pd] = dir
	}
	dir[key] = recentChange{at: now, entry: e}
	if IsDirKey(key) {
		if e != nil {
			c.dirMetas[key] = dirMeta{attr: e.Attr, at: now, found: true}
		} else {
			delete(c.dirMetas, key)
		}
		// The directory's own listing holds its marker too (dirAttr
		// prefers it): keep it in step, or a chmod/utime uploaded after
		// that listing was fetched would be hidden until the next one.
		if l := c.dirs[key]; l != nil {
			select {
			case <-l.done:
				if e != nil {
					cp := *e
					l.self = &cp
				} else {
					l.self = nil
				}
			default:
			}
		}
	}
	// Sweep old changes now and then, not on every call: a directory
	// getting thousands of changes a second would otherwise rescan all of
	// them each time.
	if len(dir) > 1024 && now.Sub(c.recentSwept[pd]) > time.Second {
		c.recentSwept[pd] = now
		for k, r := range dir {
			if now.Sub(r.at) > c.maxDirTTL()+10*time.Second {
				delete(dir, k)
			}
		}
	}
}

// InvalidateDir drops the cached listing of dirKey.
func (c *Cache) InvalidateDir(dirKey string) {
	c.mu.Lock()
	delete(c.dirs, dirKey)
	c.mu.Unlock()
}

// applyRecent corrects a listing fetched before this mount's own changes
// in that directory were visible.
func (c *Cache) applyRecent(dirKey string, l *dirListing, out map[string]Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, r := range c.recent[dirKey] {
		applyChange(l, k, r, out)
	}
}

// applyRecentOne is applyRecent for one name (a lookup).
func (c *Cache) applyRecentOne(dirKey, name string, l *dirListing, out map[string]Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	dir := c.recent[dirKey]
	for _, k := range []string{dirKey + name, dirKey + name + "/"} {
		if r, ok := dir[k]; ok {
			applyChange(l, k, r, out)
		}
	}
}

func applyChange(l *dirListing, k string, r recentChange, out map[string]Entry) {
	if l.started.After(r.at.Add(2 * time.Second)) {
		return // the listing is newer than the change: trust it
	}
	name := baseName(k)
	if r.entry != nil {
		if !(out[name].Dir && !r.entry.Dir) {
			out[name] = *r.entry
		}
	} else if old, ok := out[name]; ok && old.Dir == IsDirKey(k) {
		delete(out, name)
	}
}

// entriesOf returns a listing's entries; the map is never changed after
// the listing is fetched (this mount's later changes are in c.recent).
func (c *Cache) entriesOf(l *dirListing) map[string]Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return l.entries
}

// List returns the entries of directory dirKey ("" is the root).
func (c *Cache) List(ctx context.Context, dirKey string) ([]Entry, error) {
	l, err := c.listing(ctx, dirKey)
	if err != nil {
		return nil, err
	}
	entries := c.entriesOf(l)
	out := make(map[string]Entry, len(entries))
	for k, v := range entries {
		out[k] = v
	}
	// The journal is read before this mount's recent changes are applied
	// (as Lookup does): a record the uploader completes in between is
	// then either seen here or among the recent changes. The other way
	// round, a delete finishing in between would be in neither, and the
	// stale listing would show the name again (rm -rf's rmdir: ENOTEMPTY).
	type pendingRec struct {
		k string
		r Record
	}
	var recs []pendingRec
	err = c.db.View(func(txn *badger.Txn) error {
		return scanRecords(txn, dirKey, func(k string, r Record) error {
			recs = append(recs, pendingRec{k, r})
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	c.applyRecent(dirKey, l, out)
	for _, pr := range recs {
		k, r := pr.k, pr.r
		rel := k[len(dirKey):]
		if rel == "" {
			continue
		}
		seg, rest, nested := strings.Cut(rel, "/")
		if nested && rest != "" {
			// Something pending deeper down: seg is a directory.
			if r.Op != OpDelete {
				if old, ok := out[seg]; !ok || !old.Dir {
					out[seg] = dirEntry(dirKey+seg+"/", c.o.Defaults)
				}
			}
			continue
		}
		if r.Op == OpDelete {
			if old, ok := out[seg]; ok && old.Dir == nested {
				delete(out, seg)
			}
			continue
		}
		e := c.entryFromRecord(k, r)
		if old, ok := out[seg]; ok && old.Dir && !e.Dir {
			continue
		}
		out[seg] = e
	}
	res := make([]Entry, 0, len(out))
	for _, e := range out {
		res = append(res, c.withOpenSize(e))
	}
	return res, nil
}

func (c *Cache) entryFromRecord(key string, r Record) Entry {
	e := Entry{Key: key, Name: baseName(key), Dir: IsDirKey(key), Size: r.Size, Attr: r.Attr,
		Pending: true, Symlink: r.Symlink}
	if r.Op == OpCopy {
		e.Size = r.SrcSize
	}
	if e.Dir {
		e.Size = 0
	}
	return e
}

// ListStamp is taken before List; Current tells whether an entry of that
// List still holds for this mount's changes, and gives its live size.
type ListStamp uint64

// Stamp returns the journal index's position now, for Current.
func (c *Cache) Stamp() ListStamp { return ListStamp(c.recs.now()) }

// Current returns e, from a List made after s was taken, with the live
// size and mtime of a file open here for writing; ok is false when this
// mount changed e's record since s (ask Lookup then). Changes of other
// machines are as fresh as the listing, as in List.
func (c *Cache) Current(e Entry, s ListStamp) (Entry, bool) {
	if !c.recs.unchangedSince(e.Key, uint64(s)) {
		return e, false
	}
	return c.withOpenSize(e), true
}

// withOpenSize reports the live size and mtime of a file open here.
func (c *Cache) withOpenSize(e Entry) Entry {
	if e.Dir {
		return e
	}
	c.mu.Lock()
	it := c.items[e.Key]
	c.mu.Unlock()
	if it == nil {
		return e
	}
	if !it.mu.TryLock() {
		return e // being filled or changed: the journal's view will do
	}
	defer it.mu.Unlock()
	if it.f == nil || (!it.dirtyData && it.writers == 0) {
		return e
	}
	if fi, err := it.f.Stat(); err == nil {
		e.Size = fi.Size()
		e.Attr.Mtime = fi.ModTime()
		e.Attr.Mode, e.Attr.UID, e.Attr.GID = it.attr.Mode, it.attr.UID, it.attr.GID
		e.Pending = true
	}
	return e
}

// Lookup returns the entry for key (a file key without trailing slash;
// a directory is found under key+"/").
func (c *Cache) Lookup(ctx context.Context, key string) (Entry, error) {
	if key == "" {
		e := dirEntry("", c.o.Defaults)
		e.Attr = c.implicitDir(e.Attr)
		return e, nil
	}
	var rec, dirRec Record
	var hasRec, hasDirRec, pendingBelow bool
	var err error
	if !c.recs.quiet(key) {
		err = c.db.View(func(txn *badger.Txn) error {
			var err error
			// (The index is a superset: without a mark for key+"/" or
			// below it, made before any commit this transaction can
			// see, there is no such record and no iterator is needed.)
			if rec, hasRec, err = getRecord(txn, key); err != nil || c.recs.quietBelow(key) {
				return err
			}
			if dirRec, hasDirRec, err = getRecord(txn, key+"/"); err != nil {
				return err
			}
			return scanRecords(txn, key+"/", func(_ string, r Record) error {
				if r.Op != OpDelete {
					pendingBelow = true
					return errStop
				}
				return nil
			})
		})
	}
	if err != nil && !errors.Is(err, errStop) {
		return Entry{}, err
	}
	if hasDirRec && dirRec.Op != OpDelete {
		return c.entryFromRecord(key+"/", dirRec), nil
	}
	if pendingBelow {
		// Its marker (if any) is in the bucket already: its attributes,
		// not the defaults, as for a directory found by listing.
		e := dirEntry(key+"/", c.o.Defaults)
		e.Attr = c.dirAttr(ctx, e.Key, e.Attr)
		return e, nil
	}
	if hasRec && rec.Op != OpDelete {
		return c.withOpenSize(c.entryFromRecord(key, rec)), nil
	}
	// The bucket, through the parent's listing.
	dirKey := parentDir(key)
	l, err := c.listing(ctx, dirKey)
	if err != nil {
		if errors.Is(err, backend.ErrUnavailable) {
			// No listing to go by while the store is unreachable (a
			// restart during an outage): what is cached here is served.
			if hasRec {
				return Entry{}, ErrNotExist // pending delete
			}
			if e, ok := c.cachedEntry(key); ok && !(e.Dir && hasDirRec) {
				return c.withOpenSize(e), nil
			}
		}
		return Entry{}, err
	}
	name := baseName(key)
	one := map[string]Entry{}
	if e, ok := c.entriesOf(l)[name]; ok {
		one[name] = e
	}
	c.applyRecentOne(dirKey, name, l, one)
	e, ok := one[name]
	if !ok {
		return Entry{}, ErrNotExist
	}
	if e.Dir && hasDirRec {
		return Entry{}, ErrNotExist // pending rmdir
	}
	if !e.Dir && hasRec {
		return Entry{}, ErrNotExist // pending delete
	}
	if e.Dir {
		e.Attr = c.dirAttr(ctx, e.Key, e.Attr)
	}
	return c.withOpenSize(e), nil
}

// cachedEntry is key as the cache index knows it: a file with a clean
// cached copy, or a directory holding one. It stands in for the bucket's
// listing when there is none and the store is unreachable; a name it does
// not know stays unknown (EIO), never "no such file".
func (c *Cache) cachedEntry(key string) (Entry, bool) {
	var e Entry
	found := false
	c.db.View(func(txn *badger.Txn) error {
		if cl, ok, err := getClean(txn, key); err == nil && ok {
			a := Attr{Mode: syscall.S_IFREG | c.o.Defaults.FileMode, UID: c.o.Defaults.UID, GID: c.o.Defaults.GID}
			if cl.Attr != nil {
				a = *cl.Attr
			}
			if a.Mtime.IsZero() {
				if fi, err := os.Stat(c.dataPath(cl.DataID)); err == nil {
					a.Mtime = fi.ModTime()
				}
			}
			e = Entry{Key: key, Name: baseName(key), Size: cl.Size, ETag: cl.ETag, Attr: a,
				Symlink: a.Mode&syscall.S_IFMT == syscall.S_IFLNK}
			found = true
			return nil
		}
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		p := cKey(key + "/")
		opts.Prefix = p
		it := txn.NewIterator(opts)
		defer it.Close()
		if it.Seek(p); it.ValidForPrefix(p) {
			e = dirEntry(key+"/", c.o.Defaults)
			e.Attr = c.implicitDir(e.Attr)
			found = true
		}
		return nil
	})
	return e, found
}

// dirMeta caches a directory's attributes from its marker object.
type dirMeta struct {
	attr  Attr
	at    time.Time
	found bool
}

// dirMetaTTL bounds how long a directory's marker attributes are trusted;
// they change rarely (chmod of a directory on another machine).
const dirMetaTTL = 10 * time.Second

// dirAttr returns a directory's attributes: from the marker object "dir/"
// when there is one (its own listing, or a HEAD cached for dirMetaTTL),
// else the mount defaults with the mount's start time.
func (c *Cache) dirAttr(ctx context.Context, dirKey string, def Attr) Attr {
	c.mu.Lock()
	if dl := c.dirs[dirKey]; dl != nil && dl.self != nil {
		select {
		case <-dl.done:
			a := dl.self.Attr
			c.mu.Unlock()
			return a
		default:
		}
	}
	m, ok := c.dirMetas[dirKey]
	c.mu.Unlock()
	if (!ok || time.Since(m.at) > dirMetaTTL) && !c.backendDown() {
		o, err := c.statRemote(ctx, dirKey)
		switch {
		case err == nil:
			e := entryFromObject(o, c.o.Defaults)
			m = dirMeta{attr: e.Attr, at: time.Now(), found: true}
		case errors.Is(err, backend.ErrNotFound):
			m = dirMeta{at: time.Now()}
		default:
			if !ok {
				return c.implicitDir(def)
			}
		}
		c.mu.Lock()
		c.dirMetas[dirKey] = m
		c.mu.Unlock()
	}
	if m.found {
		return m.attr
	}
	return c.implicitDir(def)
}

func (c *Cache) implicitDir(def Attr) Attr {
	if def.Mtime.IsZero() {
		def.Mtime = c.started
	}
	return def
}

var errStop = errors.New("stop")

// DirEntry is the entry of a directory the kernel already knows (the
// GETATTR of its inode, sent after every create, rename and unlink in it):
// its attributes, without proving again that it exists, which would scan
// every pending change below it.
func (c *Cache) DirEntry(ctx context.Context, dirKey string) Entry {
	e := dirEntry(dirKey, c.o.Defaults)
	if r, ok, err := c.record(dirKey); err == nil && ok && r.Op == OpPut {
		e.Attr, e.Pending = r.Attr, true
		return e
	}
	e.Attr = c.dirAttr(ctx, dirKey, e.Attr)
	return e
}

// DirAttr returns the attributes of directory dirKey from its marker, if
// it was listed; ok is false otherwise.
func (c *Cache) DirAttr(dirKey string) (Attr, bool) {
	if r, ok, err := c.record(dirKey); err == nil && ok && r.Op == OpPut {
		return r.Attr, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if dl := c.dirs[dirKey]; dl != nil && dl.self != nil {
		select {
		case <-dl.done:
			return dl.self.Attr, true
		default:
		}
	}
	return Attr{}, false
}

// ErrNameTooLong is returned for names that cannot be keys.
var ErrNameTooLong = syscall.ENAMETOOLONG

// CheckName validates a name the app asked for: ENAMETOOLONG or EINVAL.
func CheckName(name, key string) error {
	if len(name) > 255 || len(key) > 1024 {
		return syscall.ENAMETOOLONG
	}
	if why := validName(name); why != "" {
		return syscall.EINVAL
	}
	return nil
}

// statRemote is a HEAD, for when only the object itself is needed.
func (c *Cache) statRemote(ctx context.Context, key string) (backend.Object, error) {
	octx, cancel := c.opCtx(ctx)
	defer cancel()
	o, err := c.st.Stat(octx, key)
	c.noteBackend(err)
	return o, err
}
