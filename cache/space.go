package cache

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Cache disk space. Writes land on the cache disk before they are
// uploaded, and the journal itself needs room to grow: when free space
// falls under a reserve, clean cached files are evicted first, then new
// writers wait for uploads (which turn dirty files into evictable clean
// ones) and get ENOSPC if none frees space in time. Data already written
// is never evicted before it is in the bucket.

// reserve is the free space kept on the cache disk: 10% of it, between
// 4 MiB and 256 MiB.
func reserve(total int64) int64 {
	r := total / 10
	if r < 4<<20 {
		r = 4 << 20
	}
	if r > 256<<20 {
		r = 256 << 20
	}
	return r
}

func (c *Cache) diskFree() (free, total int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(c.o.Dir, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Bavail) * st.Bsize, int64(st.Blocks) * st.Bsize, nil
}

// makeRoom evicts clean cached files until n more bytes fit above the
// reserve. A read calls it before it fills a cache file: clean data must
// never make a fetch fail with ENOSPC (only data not yet uploaded may).
// It does not wait; if the disk is full of dirty data, the fetch fails.
func (c *Cache) makeRoom(n int64) {
	for i := 0; i < 64; i++ {
		free, total, err := c.diskFree()
		if err != nil {
			return
		}
		need := reserve(total) + n
		if free >= need || !c.lru.evictBytes(need-free) {
			return
		}
	}
}

// EnsureSpace is called before a file is created or opened for writing.
func (c *Cache) EnsureSpace(ctx context.Context) error {
	deadline := time.Now().Add(c.o.SpaceWait)
	for {
		free, total, err := c.diskFree()
		if err != nil {
			return nil // cannot tell; let the write itself fail if it must
		}
		need := reserve(total)
		if free >= need {
			return nil
		}
		if c.lru.evictBytes(need - free) {
			continue
		}
		if time.Now().After(deadline) {
			c.log.Warn("cache disk full of data not yet uploaded; refusing new writes", "free", free, "reserve", need)
			return syscall.ENOSPC
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// journalGuard keeps the journal's write-ahead log backed by disk blocks.
// Badger writes its log through a shared memory mapping of a sparse file;
// if the cache disk fills up (an app writing through FUSE passthrough,
// which the daemon cannot refuse), touching a page of that file with no
// block behind it is a SIGBUS that kills the daemon. The guard allocates
// every log file (*.mem) as soon as it appears, so a full disk means
// ENOSPC for the apps, not a crash. Badger also writes new tables through
// mappings when it flushes a full memtable or compacts; that is rare, and
// left to the free-space reserve.
type journalGuard struct {
	dir    string
	log    *slog.Logger
	done   map[string]int64 // allocated files and their sizes
	warned bool
	quit   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

func newJournalGuard(dir string, log *slog.Logger) *journalGuard {
	return &journalGuard{dir: dir, log: log, done: map[string]int64{}, quit: make(chan struct{})}
}

// pass allocates the log files not allocated yet.
func (g *journalGuard) pass() {
	ents, err := os.ReadDir(g.dir)
	if err != nil {
		return
	}
	seen := map[string]bool{}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".mem") {
			continue
		}
		seen[name] = true
		fi, err := e.Info()
		if err != nil || g.done[name] == fi.Size() {
			continue
		}
		f, err := os.OpenFile(filepath.Join(g.dir, name), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		err = syscall.Fallocate(int(f.Fd()), 0, 0, fi.Size())
		f.Close()
		switch {
		case err == nil:
			g.done[name] = fi.Size()
		case !g.warned:
			g.warned = true
			g.log.Warn("cannot allocate the journal's log file; a full cache disk may crash the daemon", "file", name, "err", err)
		}
	}
	for name := range g.done {
		if !seen[name] {
			delete(g.done, name)
		}
	}
}

// start allocates new log files as they appear, until stop.
func (g *journalGuard) start() {
	g.wg.Add(1)
	go g.run()
}

func (g *journalGuard) run() {
	defer g.wg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-g.quit:
			return
		case <-t.C:
			g.pass()
		}
	}
}

func (g *journalGuard) stop() {
	g.once.Do(func() { close(g.quit) })
	g.wg.Wait()
}
