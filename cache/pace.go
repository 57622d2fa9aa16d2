package cache

import "time"

// Upload pacing. On a machine with few cores, uploads running while the
// application writes compete with it for the CPU (the HTTP client, the
// payload signature, and a co-located server the server itself). Measured
// on 2 cores with the server co-located, 1000 files of 64 KiB written while
// their uploads came due: 187-231 files/s with uploads running beside the
// writer (2 or 16 at a time alike), 311-334 files/s with uploads held back
// until the writer paused, and all of them were in the bucket sooner too
// (4.8-5.3 s against 5.5-6.6 s). So no upload starts while the file system
// is serving changes (a create, write, close, rename... within paceIdle);
// the workers all start once it has been quiet that long. Holding back is
// bounded: an upload overdue by paceMaxLag starts whatever the load, and
// one that a close waits for (--upload=close), the data of an O_EXCL
// create (other machines see the claimed name empty until then) and a
// drain are never held back.
const (
	paceIdle   = 20 * time.Millisecond
	paceMaxLag = 2 * time.Second
)

// Foreground notes that the file system is serving a change an
// application makes (the fs layer calls it for each such FUSE operation).
func (c *Cache) Foreground() {
	now := time.Now().UnixNano()
	// A store per millisecond at most: the line is shared by every CPU.
	if now-c.fgAt.Load() > int64(time.Millisecond) {
		c.fgAt.Store(now)
	}
}

// busy reports whether a change was served within paceIdle of now.
func (c *Cache) busy(now time.Time) bool {
	return now.UnixNano()-c.fgAt.Load() < int64(paceIdle)
}

// pacedLocked reports whether the due item top must wait for the file
// system to go quiet. u.mu is held.
func (u *uploader) pacedLocked(top dueItem, now time.Time) bool {
	if u.draining || u.urgent[top.key] || len(u.waiters[top.key]) > 0 {
		return false
	}
	return now.Sub(top.at) < paceMaxLag && u.c.busy(now)
}

// unpacedDueLocked returns a due key that is never held back (see
// pacedLocked) and not being uploaded, or "". u.mu is held.
func (u *uploader) unpacedDueLocked(now time.Time) string {
	ready := func(k string) bool {
		at, ok := u.due[k]
		return ok && !at.After(now) && !u.busy[k]
	}
	for k := range u.urgent {
		if ready(k) {
			return k
		}
	}
	for k := range u.waiters {
		if ready(k) {
			return k
		}
	}
	return ""
}
