package cache

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
)

func isLockErr(err error) bool {
	return err != nil && strings.Contains(err.Error(), "Cannot acquire directory lock")
}

// lru tracks clean data files (c/ records) and evicts the least recently
// used ones when they exceed Options.CacheSize. Dirty data is never in it.
type lru struct {
	c     *Cache
	mu    sync.Mutex
	files map[uint64]*lruFile
	total int64
}

type lruFile struct {
	key  string
	size int64
	used time.Time
}

func newLRU(c *Cache) *lru { return &lru{c: c, files: map[uint64]*lruFile{}} }

// load reads the clean index at start-up and removes data files that no
// record refers to (left by a crash between writing a file and its record).
func (l *lru) load() error {
	live := map[uint64]bool{}
	var bitmaps []string // b/<id> keys, dropped below when no record names the id
	err := l.c.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			k := string(item.Key())
			switch {
			case strings.HasPrefix(k, "c/"):
				var cl Clean
				if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &cl) }); err != nil {
					return err
				}
				live[cl.DataID] = true
				l.files[cl.DataID] = &lruFile{key: k[2:], size: cl.Size, used: time.Now()}
				l.total += cl.Size
			case strings.HasPrefix(k, "j/"):
				var r Record
				if err := item.Value(func(v []byte) error {
					var derr error
					r, derr = decodeRecord(v)
					return derr
				}); err != nil {
					return fmt.Errorf("%s: %w", k, err)
				}
				live[r.DataID] = true
			case strings.HasPrefix(k, "b/"):
				bitmaps = append(bitmaps, k)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reading cache index: %w", err)
	}
	// A block bitmap outlives its file when the file was dropped while
	// partly cached (a replaced version still open, say): drop it.
	for _, k := range bitmaps {
		var id uint64
		if _, err := fmt.Sscanf(k, "b/%x", &id); err == nil && live[id] {
			continue
		}
		if err := l.c.db.Update(func(txn *badger.Txn) error { return txn.Delete([]byte(k)) }); err != nil {
			return fmt.Errorf("dropping the orphan block map %s: %w", k, err)
		}
	}
	ents, err := os.ReadDir(l.c.dataDir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		var id uint64
		if _, err := fmt.Sscanf(e.Name(), "%016x", &id); err != nil || len(e.Name()) != 16 {
			os.Remove(l.c.dataDir + "/" + e.Name())
			continue
		}
		if !live[id] {
			os.Remove(l.c.dataPath(id))
		}
	}
	return nil
}

func (l *lru) add(id uint64, key string, size int64) {
	l.mu.Lock()
	if f, ok := l.files[id]; ok {
		l.total -= f.size
	}
	l.files[id] = &lruFile{key: key, size: size, used: time.Now()}
	l.total += size
	l.mu.Unlock()
	l.evict()
}

func (l *lru) touch(id uint64) {
	l.mu.Lock()
	if f, ok := l.files[id]; ok {
		f.used = time.Now()
	}
	l.mu.Unlock()
}

func (l *lru) forget(id uint64) {
	l.mu.Lock()
	if f, ok := l.files[id]; ok {
		l.total -= f.size
		delete(l.files, id)
	}
	l.mu.Unlock()
}

func (l *lru) usage() (int64, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, len(l.files)
}

// evictBytes evicts clean files until n bytes are freed; it reports
// whether it freed anything.
func (l *lru) evictBytes(n int64) bool {
	l.mu.Lock()
	target := l.total - n
	l.mu.Unlock()
	if target < 0 {
		target = 0
	}
	return l.evictTo(target) > 0
}

// evict removes least recently used clean files until under the cap.
func (l *lru) evict() {
	if limit := l.c.o.CacheSize; limit > 0 {
		l.evictTo(limit)
	}
}

// evictTo removes least recently used clean files until they total at
// most limit bytes, and returns how many it removed. Files held open are
// skipped; a c/ record is dropped only if it still names the file.
func (l *lru) evictTo(limit int64) int {
	removed := 0
	for {
		l.mu.Lock()
		if l.total <= limit {
			l.mu.Unlock()
			return removed
		}
		var victim uint64
		var vf *lruFile
		l.c.mu.Lock()
		open := l.c.openIDsLocked()
		for id, f := range l.files {
			if open[id] || l.c.evicting[id] {
				continue
			}
			if vf == nil || f.used.Before(vf.used) {
				victim, vf = id, f
			}
		}
		if vf != nil {
			// From here no open can pin it (see pinData).
			l.c.evicting[victim] = true
		}
		l.c.mu.Unlock()
		if vf == nil {
			l.mu.Unlock()
			return removed
		}
		delete(l.files, victim)
		l.total -= vf.size
		l.mu.Unlock()
		keepFile := false
		err := l.c.update(func(txn *badger.Txn) error {
			keepFile = false
			if r, ok, err := getRecord(txn, vf.key); err != nil {
				return err
			} else if ok && r.Op == OpPut && r.DataID == victim {
				keepFile = true // dirty again: never evicted
			}
			cl, ok, err := getClean(txn, vf.key)
			if err != nil || !ok || cl.DataID != victim {
				return err
			}
			if cl.Partial {
				if err := txn.Delete(bKey(victim)); err != nil {
					return err
				}
			}
			return txn.Delete(cKey(vf.key))
		})
		if err == nil && !keepFile {
			os.Remove(l.c.dataPath(victim))
			l.c.stats.Evictions.Add(1)
			removed++
		}
		l.c.mu.Lock()
		delete(l.c.evicting, victim)
		l.c.mu.Unlock()
		if err != nil {
			l.c.log.Warn("evicting cache file", "err", err)
		}
	}
}

// openIDsLocked is the set of data files open items hold. Caller holds
// c.mu.
func (c *Cache) openIDsLocked() map[uint64]bool {
	ids := make(map[uint64]bool, len(c.items))
	for _, it := range c.items {
		ids[it.id.Load()] = true
	}
	return ids
}

// pinData makes item it hold data file id, unless eviction is removing
// that file right now (then the caller fetches the object again). Once
// pinned, eviction skips the file while the item is open.
func (c *Cache) pinData(it *Item, id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.evicting[id] {
		return false
	}
	it.id.Store(id)
	return true
}
