package cache

import (
	"context"
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
