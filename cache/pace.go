package cache

import "time"

// Upload pacing. On a machine with few cores, uploads running while the
// application writes compete with it for the CPU (the HTTP client, the
// payload signature, and on a co-located server the server itself): a run
// of 1000 small-file writes measured 0.51x a loopback mount with 16 uploads
// in flight and 0.96x with none, and the uploads all finished sooner when
// they did not contend with the writes. So while the file system is busy
// serving requests, at most paceStreams uploads run; once it has been idle
// for paceIdle, all the workers do. Uploads are paced only for a while:
// one overdue by paceMaxLag runs whatever the load, and a close or drain
// waiting for its upload is never paced.
const (
	paceIdle    = 20 * time.Millisecond
	paceStreams = 2
	paceMaxLag  = 2 * time.Second
)

// Foreground notes that the file system is serving an application
// request (the fs layer calls it for each FUSE operation it serves).
func (c *Cache) Foreground() {
	now := time.Now().UnixNano()
	// A store per millisecond at most: the line is shared by every CPU.
	if now-c.fgAt.Load() > int64(time.Millisecond) {
		c.fgAt.Store(now)
	}
}

// busy reports whether an application request was served within paceIdle
// of now.
func (c *Cache) busy(now time.Time) bool {
	return now.UnixNano()-c.fgAt.Load() < int64(paceIdle)
}

// pacedLocked reports whether the due item top must wait for the
// foreground to go quiet: the file system is busy, paceStreams uploads are
// running, and top is not overdue by paceMaxLag, waited for by a close, or
// part of a drain. u.mu is held.
func (u *uploader) pacedLocked(top dueItem, now time.Time) bool {
	if u.draining || len(u.busy) < paceStreams || len(u.waiters[top.key]) > 0 {
		return false
	}
	return now.Sub(top.at) < paceMaxLag && u.c.busy(now)
}
