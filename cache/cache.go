package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/mediafs/mediafs/backend"
)

// Options configure a Cache.
type Options struct {
	Dir      string // cache directory: db/ and data/ live here
	Store    backend.Store
	Logger   *slog.Logger
	Defaults Defaults
	// DirTTL is how long a bucket listing is trusted.
	DirTTL time.Duration
	// ChangeFeed chooses whether to follow the store's change feed (see
	// feed.go); "" means FeedAuto.
	ChangeFeed FeedMode
	// FeedDirTTL is how long a listing is trusted while the change feed
	// is live.
	FeedDirTTL time.Duration
	// WritebackDelay is how long a closed file waits before its upload, so
	// that rewrites coalesce.
	WritebackDelay time.Duration
	// WritebackMaxWait uploads a file held open for writing from a snapshot
	// once its oldest unuploaded change is this old.
	WritebackMaxWait time.Duration
	// UploadConcurrency is the number of upload workers.
	UploadConcurrency int
	// UploadOnClose makes Flush return only once the object is uploaded.
	UploadOnClose bool
	// OpTimeout bounds a backend call made on behalf of a file system op.
	OpTimeout time.Duration
	// CacheSize caps the bytes of clean cached data (dirty data is never
	// evicted). 0 means no cap.
	CacheSize int64
	// WholeFileLimit: objects up to this size are fetched whole on open and
	// served from the local file; larger ones are read by ranged GETs.
	WholeFileLimit int64
	// Host names this machine in conflict copies.
	Host string
	// LocalExcl makes O_EXCL creates exclusive on this machine only, with
	// no claim object written at create time (see Cache.claim).
	LocalExcl bool
	// SpaceWait is how long a writer waits for cache disk space (uploads
	// making room) before it gets ENOSPC.
	SpaceWait time.Duration
	// ClaimTimeout bounds the claim of an O_EXCL create; past it the
	// create proceeds as exclusive on this machine only.
	ClaimTimeout time.Duration
}

// Cache is the local state of one mount.
type Cache struct {
	o       Options
	log     *slog.Logger
	db      *badger.DB
	seq     *badger.Sequence
	dataDir string
	st      backend.Store

	mu     sync.Mutex // guards items, dirs, recent
	items  map[string]*Item
	dirs   map[string]*dirListing
	recent map[string]map[string]recentChange // dir key -> key -> change
	// recentSwept is when each dir's recent changes were last swept.
	recentSwept map[string]time.Time
	spares      *spares
	trash       *remover
	recs        *recIndex
	// evicting holds the data files eviction is removing (see pinData).
	evicting map[uint64]bool
	// dirMetas caches directory marker attributes (see dirAttr).
	dirMetas map[string]dirMeta
	started  time.Time

	lru  *lru
	up   *uploader
	pf   *prefetcher
	feed *feed // nil without a change feed

	// instance names this cache (random, kept in the journal database):
	// upload tags carry it, since a host name alone does not tell two
	// mounts on one machine apart.
	instance string

	// downAt is when the backend last failed as unavailable (UnixNano),
	// 0 once it answers again.
	downAt atomic.Int64
	// fgAt is when the file system last served an application request
	// (UnixNano; see pace.go).
	fgAt atomic.Int64

	skippedOnce sync.Map
	stats       Stats
	guard       *journalGuard
}

// Stats are counters for metrics and status.
type Stats struct {
	Uploads, UploadBytes, UploadFailures, Deletes, Copies atomic.Int64
	Conflicts, Evictions, CacheHits, CacheMisses          atomic.Int64
	SkippedKeys                                           atomic.Int64
	// Prefetches counts files the directory read-ahead fetched.
	Prefetches atomic.Int64
}

// Open opens (or creates) the cache in o.Dir, replays the journal and
// starts the upload workers. Close stops them.
func Open(o Options) (*Cache, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.DirTTL <= 0 {
		o.DirTTL = time.Second
	}
	if o.ChangeFeed == "" {
		o.ChangeFeed = FeedAuto
	}
	if o.FeedDirTTL <= 0 {
		o.FeedDirTTL = 30 * time.Second
	}
	if o.UploadConcurrency <= 0 {
		o.UploadConcurrency = 16
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = 60 * time.Second
	}
	if o.WritebackMaxWait <= 0 {
		o.WritebackMaxWait = time.Minute
	}
	if o.SpaceWait <= 0 {
		o.SpaceWait = 30 * time.Second
	}
	if o.ClaimTimeout <= 0 {
		o.ClaimTimeout = 5 * time.Second
	}
	if o.WholeFileLimit <= 0 {
		o.WholeFileLimit = 8 << 20
	}
	if o.Host == "" {
		o.Host, _ = os.Hostname()
	}
	c := &Cache{o: o, log: o.Logger, st: o.Store,
		dataDir: filepath.Join(o.Dir, "data"),
		items:   map[string]*Item{}, dirs: map[string]*dirListing{}, recent: map[string]map[string]recentChange{}, recentSwept: map[string]time.Time{},
		dirMetas: map[string]dirMeta{}, started: time.Now(), evicting: map[uint64]bool{}}
	if c.feed = newFeed(c, o.Store); c.feed != nil {
		c.st = c.feed.store(o.Store)
	}
	if err := os.MkdirAll(c.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cache dir: %w", err)
	}
	db, err := openDB(filepath.Join(o.Dir, "db"), func(f string, a ...any) {
		c.log.Warn(fmt.Sprintf(f, a...))
	})
	if err != nil {
		return nil, err
	}
	c.db = db
	c.guard = newJournalGuard(filepath.Join(o.Dir, "db"), c.log)
	c.guard.pass()
	c.seq, err = db.GetSequence([]byte("seq/data"), 256)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("journal sequence: %w", err)
	}
	if crashed, err := c.markRunning(); err != nil {
		c.seq.Release()
		db.Close()
		return nil, err
	} else if crashed {
		// The machine went down while we ran: cached clean data was never
		// fsynced and may be torn. It can be fetched again; drop it.
		n, err := c.dropAllClean()
		if err != nil {
			c.seq.Release()
			db.Close()
			return nil, err
		}
		c.log.Warn("the machine restarted while mediafs was running; dropped cached clean data (pending uploads are kept)", "files", n)
	}
	if c.instance, err = loadInstance(db); err != nil {
		c.seq.Release()
		db.Close()
		return nil, err
	}
	c.recs = newRecIndex()
	if err := c.recs.load(db); err != nil {
		c.seq.Release()
		db.Close()
		return nil, fmt.Errorf("reading the journal: %w", err)
	}
	c.lru = newLRU(c)
	if err := c.lru.load(); err != nil {
		c.seq.Release()
		db.Close()
		return nil, err
	}
	c.trash = newRemover(c)
	c.up = newUploader(c)
	n, bytes, err := c.up.replay()
	if err != nil {
		c.trash.stop()
		c.seq.Release()
		db.Close()
		return nil, err
	}
	if n > 0 {
		c.log.Info("resuming pending uploads from the journal", "count", n, "bytes", bytes)
	}
	c.spares = newSpares(c)
	c.pf = newPrefetcher(c)
	c.up.start()
	c.guard.start()
	return c, nil
}

// Drain uploads everything pending, ignoring the write-back delay, until
// the queue is empty or ctx ends. It returns what is left.
func (c *Cache) Drain(ctx context.Context) (left int, bytes int64) {
	return c.up.drain(ctx)
}

// Close stops the workers and closes the journal. Pending work stays in
// the journal for the next start.
func (c *Cache) Close() error {
	c.pf.stop()
	c.feed.stop()
	c.up.stop()
	c.spares.stop()
	c.guard.stop()
	c.mu.Lock()
	for _, it := range c.items {
		it.mu.Lock()
		if it.blocks != nil {
			it.blocks.stop() // its runs and timer, before the file goes
		}
		if it.f != nil {
			it.f.Close()
			it.f = nil
		}
		it.mu.Unlock()
	}
	c.mu.Unlock()
	c.trash.stop()
	c.seq.Release()
	err := c.db.Close()
	if err == nil {
		os.Remove(filepath.Join(c.o.Dir, "running"))
	}
	return err
}

// loadInstance returns this cache's random id, creating it on first use.
func loadInstance(db *badger.DB) (string, error) {
	var id string
	err := db.Update(func(txn *badger.Txn) error {
		it, err := txn.Get([]byte("meta/instance"))
		if err == nil {
			return it.Value(func(v []byte) error { id = string(v); return nil })
		}
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		id = hex.EncodeToString(b[:])
		return txn.Set([]byte("meta/instance"), []byte(id))
	})
	if err != nil {
		return "", fmt.Errorf("journal: %w", err)
	}
	return id, nil
}

// markRunning writes <dir>/running with the boot id. It reports whether a
// previous run on an earlier boot never closed (a power loss or reboot
// while mounted), as opposed to a daemon crash on this boot, which loses
// nothing the kernel had.
func (c *Cache) markRunning() (bool, error) {
	path := filepath.Join(c.o.Dir, "running")
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	prev, err := os.ReadFile(path)
	crashed := err == nil && len(boot) > 0 && string(prev) != string(boot)
	if err := os.WriteFile(path, boot, 0o600); err != nil {
		return false, fmt.Errorf("cache dir: %w", err)
	}
	return crashed, nil
}

// dropAllClean removes every clean cached file and its records.
func (c *Cache) dropAllClean() (int, error) {
	var keys [][]byte
	var ids []uint64
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().KeyCopy(nil)
			switch {
			case bytes.HasPrefix(k, []byte("c/")):
				var cl Clean
				if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &cl) }); err == nil {
					ids = append(ids, cl.DataID)
				}
				keys = append(keys, k)
			case bytes.HasPrefix(k, []byte("b/")):
				keys = append(keys, k)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	wb := c.db.NewWriteBatch()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			wb.Cancel()
			return 0, err
		}
	}
	if err := wb.Flush(); err != nil {
		return 0, err
	}
	for _, id := range ids {
		os.Remove(c.dataPath(id))
	}
	return len(ids), nil
}

// Sync makes the journal durable on disk.
func (c *Cache) Sync() error { return c.db.Sync() }

// Status is a summary for `mediafs status` and metrics.
type Status struct {
	Pending      int
	PendingBytes int64
	OldestSince  time.Time
	CachedBytes  int64
	CachedFiles  int
}

// Status scans the journal.
func (c *Cache) Status() (Status, error) {
	var s Status
	err := c.db.View(func(txn *badger.Txn) error {
		return scanRecords(txn, "", func(_ string, r Record) error {
			s.Pending++
			if r.Op == OpPut {
				s.PendingBytes += r.Size
			}
			if s.OldestSince.IsZero() || r.Since.Before(s.OldestSince) {
				s.OldestSince = r.Since
			}
			return nil
		})
	})
	s.CachedBytes, s.CachedFiles = c.lru.usage()
	return s, err
}

// StatsRef exposes the counters.
func (c *Cache) StatsRef() *Stats { return &c.stats }

func (c *Cache) dataPath(id uint64) string {
	return filepath.Join(c.dataDir, fmt.Sprintf("%016x", id))
}

func (c *Cache) newDataID() (uint64, error) {
	id, err := c.seq.Next()
	if err != nil {
		return 0, fmt.Errorf("journal sequence: %w", err)
	}
	return id + 1, nil // 0 means "no data file"
}

// update runs fn in a read-write transaction, retrying on conflicts with
// concurrent transactions on the same keys.
func (c *Cache) update(fn func(txn *badger.Txn) error) error {
	for i := 0; ; i++ {
		var ms []*txnMarks
		err := c.db.Update(func(txn *badger.Txn) error {
			m := &txnMarks{idx: c.recs}
			ms = append(ms, m)
			txnHooks.Store(txn, m)
			defer txnHooks.Delete(txn)
			return fn(txn)
		})
		c.recs.end(c.db, ms)
		if errors.Is(err, badger.ErrConflict) && i < 100 {
			continue
		}
		return err
	}
}

func (c *Cache) record(key string) (Record, bool, error) {
	if !c.recs.has(key) {
		return Record{}, false, nil
	}
	return c.recordFromDB(key)
}

// recordFromDB is record without the index.
func (c *Cache) recordFromDB(key string) (Record, bool, error) {
	var r Record
	var ok bool
	err := c.db.View(func(txn *badger.Txn) error {
		var err error
		r, ok, err = getRecord(txn, key)
		return err
	})
	return r, ok, err
}

// opCtx bounds a backend call made for a file system op. The call does not
// end when the FUSE request is interrupted (ctx done): the Go runtime's
// preemption signals, and any signal a program handles, interrupt requests
// routinely; the call may also serve other callers (a shared listing). As
// with libfuse's default, an interrupt is not an error: the op completes
// within OpTimeout.
func (c *Cache) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), c.o.OpTimeout)
}

// dropData removes a data file no record refers to any more, or marks the
// open item that holds it so it goes on its last close.
func (c *Cache) dropData(id uint64) {
	if id == 0 {
		return
	}
	c.mu.Lock()
	for _, it := range c.items {
		if it.id.Load() == id {
			it.dropOnClose.Store(true)
			c.mu.Unlock()
			return
		}
	}
	c.mu.Unlock()
	c.lru.forget(id)
	c.trash.drop(c.dataPath(id))
}

// logSkipped logs a key that cannot be a path, once per key.
func (c *Cache) logSkipped(key, why string) {
	if _, loaded := c.skippedOnce.LoadOrStore(key, true); !loaded {
		c.stats.SkippedKeys.Add(1)
		c.log.Warn("object key cannot be a path; left out of listings", "key", key, "reason", why)
	}
}

// IsDirKey reports whether key names a directory.
func IsDirKey(key string) bool { return key == "" || strings.HasSuffix(key, "/") }

// Dir is the cache directory.
func (c *Cache) Dir() string { return c.o.Dir }
