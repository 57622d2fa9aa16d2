package cache

// The change feed: other machines' (and other tools') creations and
// removals, pushed by the object store (backend.Watcher), applied to this
// mount's view of the bucket at once instead of waiting out DirTTL.
//
// Each change is noted like one of this mount's own completed changes
// (noteRemote): it overrides any listing fetched before it. A new key's
// missing ancestors, and a removed key's possibly vanished directory, make
// the parent listings concerned refetch. Then the hook the fs layer
// registers tells the kernel to forget the names and, for a new version,
// the cached pages.
//
// While the feed is live, listings are trusted for FeedDirTTL instead of
// DirTTL: a safety net, since MinIO drops events for a listener that
// falls behind, without a word. Only listings started after the feed last
// became live (first connection, reconnection after a drop) are trusted
// that long: older ones may lack the changes made in the gap, so they get
// DirTTL and are refreshed (they are not dropped: an expired listing is
// what the mount serves from during an outage). While the feed is down,
// DirTTL polling is as without a feed.
//
// This mount's own uploads, copies and deletes come back through the feed
// too. They are recognised (the store is wrapped to remember them: the
// upload tag of a PUT, the ETag of a copy, the key of a delete; see
// feedown.go) and skipped, so they do not drop the kernel's pages of a
// file just written.
//
// Events are queued by the watcher's goroutine and applied by another, so
// a slow kernel notification never holds up reading the stream (falling
// behind is what makes MinIO drop events). A queue that overflows is
// treated as a gap, like a reconnection.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mediafs/mediafs/backend"
)

// FeedMode chooses how other machines' changes are learnt of.
type FeedMode string

const (
	// FeedAuto follows the store's change feed when the server offers one
	// and polls listings (DirTTL) otherwise.
	FeedAuto FeedMode = "auto"
	// FeedListen requires the change feed: StartFeed fails if the server
	// refuses it or does not stream.
	FeedListen FeedMode = "listen"
	// FeedOff polls listings only.
	FeedOff FeedMode = "off"
)

const (
	// feedQueueMax bounds the changes waiting to be applied; past it they
	// are dropped and every listing with them.
	feedQueueMax = 100000
	// ownOpTTL is how long one of this mount's changes waits for its
	// event before it is forgotten.
	ownOpTTL = time.Minute
	// feedStartTimeout bounds StartFeed's wait for a live stream in
	// FeedListen mode.
	feedStartTimeout = 20 * time.Second
)

// Changed is a change another machine (or tool) made, as the kernel must
// learn of it.
type Changed struct {
	// Key is a file key, or a directory key (ending in "/").
	Key string
	// Removed is set for a delete.
	Removed bool
	// ETag is the new version of a file created or overwritten.
	ETag string
}

// FeedStatus is the feed's state for status and metrics.
type FeedStatus struct {
	// State is "off", "connecting", "live", "down" or "unsupported".
	State string
	// Live reports whether listings are trusted for FeedDirTTL now.
	Live bool
	// Applied counts changes of others applied; Own counts this mount's
	// own changes seen and skipped; Gaps counts (re)connections and
	// overflows after which every listing was dropped.
	Applied, Own, Gaps int64
}

// feed follows the store's change feed for one Cache.
type feed struct {
	c *Cache
	w backend.Watcher

	live atomic.Bool
	// trustedSince is when the feed last became live or lost events
	// (UnixNano): only listings started after it are trusted longer.
	trustedSince atomic.Int64
	state        atomic.Value // string
	applied      atomic.Int64
	own          atomic.Int64
	gaps         atomic.Int64
	hook         atomic.Pointer[func([]Changed)]

	mu       sync.Mutex
	queue    []backend.FeedEvent
	queued   int // changes in queue
	overflow bool
	wake     chan struct{}

	ownMu  sync.Mutex
	ownOps map[string][]*ownOp
	ownAdd int

	cancel context.CancelFunc
	wg     sync.WaitGroup
	first  chan error // StartFeed's wait: nil once live, or why not
}

// newFeed returns the feed for st, or nil when there is none to follow.
func newFeed(c *Cache, st backend.Store) *feed {
	if c.o.ChangeFeed == FeedOff {
		return nil
	}
	w, ok := st.(backend.Watcher)
	if !ok {
		return nil
	}
	f := &feed{c: c, w: w, wake: make(chan struct{}, 1), ownOps: map[string][]*ownOp{},
		first: make(chan error, 1)}
	f.state.Store("connecting")
	return f
}

// listingTTL is how long listing l is trusted: FeedDirTTL while the feed
// is live, if l was started after the feed became live (an older one may
// lack changes made in the gap, so it gets DirTTL and is refreshed, but
// stays at hand for an outage as any expired listing does).
func (c *Cache) listingTTL(l *dirListing) time.Duration {
	f := c.feed
	if f != nil && f.live.Load() && l.started.UnixNano() > f.trustedSince.Load() {
		return c.o.FeedDirTTL
	}
	return c.o.DirTTL
}

// liveRefreshMax bounds the listings refreshed when the feed goes live.
const liveRefreshMax = 32

// refreshUntrusted refetches, in the background, the most recently
// fetched of the listings made before the feed went live: they are
// trusted only for the short TTL, so right after a mount (the feed is
// live about a second later) a directory being read was listed again
// every second, and each lookup past twice the TTL waited for a LIST.
// Their lookups go on from the old listing meanwhile.
func (c *Cache) refreshUntrusted(n int) {
	since := c.feed.trustedSince.Load()
	type cand struct {
		dir string
		l   *dirListing
	}
	var cs []cand
	c.mu.Lock()
	for d, l := range c.dirs {
		if isDone(l) && l.err == nil && !l.refreshing && l.started.UnixNano() <= since {
			cs = append(cs, cand{d, l})
		}
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].l.fetched.After(cs[j].l.fetched) })
	if len(cs) > n {
		cs = cs[:n]
	}
	for _, x := range cs {
		x.l.refreshing = true
	}
	c.mu.Unlock()
	for _, x := range cs {
		go c.refreshListing(x.dir, x.l)
	}
}

// maxDirTTL is the longest a listing may be trusted, ever.
func (c *Cache) maxDirTTL() time.Duration {
	if c.feed != nil {
		return max(c.o.DirTTL, c.o.FeedDirTTL)
	}
	return c.o.DirTTL
}

// SetChangeHook registers fn to be told of other machines' changes once
// they are applied (the fs layer tells the kernel). fn runs on the feed's
// goroutine, never under a cache lock; it may block, but holds up the
// next changes while it does.
func (c *Cache) SetChangeHook(fn func([]Changed)) {
	if c.feed != nil {
		c.feed.hook.Store(&fn)
	}
}

// FeedStatus reports the change feed's state.
func (c *Cache) FeedStatus() FeedStatus {
	f := c.feed
	if f == nil {
		return FeedStatus{State: "off"}
	}
	return FeedStatus{State: f.state.Load().(string), Live: f.live.Load(),
		Applied: f.applied.Load(), Own: f.own.Load(), Gaps: f.gaps.Load()}
}

// StartFeed starts following the change feed, if there is one. In
// FeedListen mode it waits until the feed is live and fails if the server
// refuses it or ctx ends first; in FeedAuto mode it returns at once and a
// refusal means polling. Close stops the feed.
func (c *Cache) StartFeed(ctx context.Context) error {
	f := c.feed
	if f == nil {
		if c.o.ChangeFeed == FeedListen {
			return errors.New("change feed required (listen) but the store has none")
		}
		return nil
	}
	fctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.wg.Add(2)
	go f.watch(fctx)
	go f.apply(fctx)
	if c.o.ChangeFeed != FeedListen {
		return nil
	}
	wctx, wcancel := context.WithTimeout(ctx, feedStartTimeout)
	defer wcancel()
	select {
	case err := <-f.first:
		if err != nil {
			return fmt.Errorf("change feed required (listen) but not available: %w", err)
		}
		return nil
	case <-wctx.Done():
		return errors.New("change feed required (listen) but the server sent nothing within " +
			feedStartTimeout.String() + " (a MinIO without the stream flush fix of scripts/install-minio.sh sends events late or never)")
	}
}

func (f *feed) stop() {
	if f == nil || f.cancel == nil {
		return
	}
	f.cancel()
	f.wg.Wait()
}

// watch runs the store's Watch until ctx ends or the server refuses.
func (f *feed) watch(ctx context.Context) {
	defer f.wg.Done()
	err := f.w.Watch(ctx, f.enqueue)
	if ctx.Err() != nil {
		return
	}
	f.live.Store(false)
	f.state.Store("unsupported")
	f.report(err)
	if f.c.o.ChangeFeed == FeedListen {
		f.c.log.Error("change feed refused by the server; other machines' changes show up only by polling listings", "ttl", f.c.o.DirTTL, "err", err)
	} else {
		f.c.log.Info("the object store offers no change feed; other machines' changes show up by polling listings", "ttl", f.c.o.DirTTL, "reason", err)
	}
}

// report answers StartFeed's wait, the first time.
func (f *feed) report(err error) {
	select {
	case f.first <- err:
	default:
	}
}

// enqueue is the Watcher's callback: it never blocks.
func (f *feed) enqueue(ev backend.FeedEvent) {
	f.mu.Lock()
	if f.queued+len(ev.Changes) > feedQueueMax {
		// The changes go; the stream's state changes stay.
		f.overflow = true
		kept := f.queue[:0]
		for _, q := range f.queue {
			if len(q.Changes) == 0 {
				kept = append(kept, q)
			}
		}
		f.queue, f.queued = kept, 0
	} else {
		f.queue = append(f.queue, ev)
		f.queued += len(ev.Changes)
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// apply applies queued events in order until ctx ends.
func (f *feed) apply(ctx context.Context) {
	defer f.wg.Done()
	wasDown := false
	sweep := time.NewTicker(time.Minute)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			f.c.sweepRecent()
			continue
		case <-f.wake:
		}
		f.mu.Lock()
		q, overflow := f.queue, f.overflow
		f.queue, f.queued, f.overflow = nil, 0, false
		f.mu.Unlock()
		if overflow {
			f.gaps.Add(1)
			f.trustedSince.Store(time.Now().UnixNano())
			f.c.log.Warn("change feed fell behind and lost changes; cached listings are refreshed", "queued", feedQueueMax)
		}
		var changed []Changed
		for _, ev := range q {
			switch {
			case ev.Live:
				// Before trusting listings longer: one fetched during
				// the gap may lack its changes.
				f.trustedSince.Store(time.Now().UnixNano())
				f.gaps.Add(1)
				f.live.Store(true)
				f.state.Store("live")
				f.report(nil)
				f.c.log.Info("change feed live: other machines' changes show up at once", "reconnected", wasDown, "safety_ttl", f.c.o.FeedDirTTL)
				wasDown = false
				f.c.refreshUntrusted(liveRefreshMax)
			case ev.Down:
				if err := ev.Err; err != nil {
					f.report(err) // FeedListen: not available at the start
				} else {
					f.report(errors.New("stream down"))
				}
				if f.live.Load() || !wasDown {
					f.c.log.Warn("change feed down; polling listings until it is back", "ttl", f.c.o.DirTTL, "err", ev.Err)
				}
				f.live.Store(false)
				f.state.Store("down")
				wasDown = true
			}
			for _, ch := range ev.Changes {
				if f.isOwn(ch) {
					f.own.Add(1)
					continue
				}
				if cd, ok := f.c.applyChange(ch); ok {
					f.applied.Add(1)
					changed = append(changed, cd...)
				}
			}
		}
		if len(changed) > 0 {
			if h := f.hook.Load(); h != nil {
				(*h)(changed)
			}
		}
	}
}

// sweepRecent forgets noted changes no cached listing could hide: the
// directory's listings (the current one and the last good one kept for
// outages) all started after the change, or there is none. With the feed,
// changes all over the bucket are noted, not only this mount's, and most
// directories never reach the size at which noteRemote sweeps them.
func (c *Cache) sweepRecent() {
	now := time.Now()
	keep := 2*c.maxDirTTL() + 10*time.Second
	c.mu.Lock()
	defer c.mu.Unlock()
	for pd, dir := range c.recent {
		l := c.dirs[pd]
		for k, r := range dir {
			if now.Sub(r.at) > keep && newerThan(l, r.at) {
				delete(dir, k)
			}
		}
		if len(dir) == 0 {
			delete(c.recent, pd)
			delete(c.recentSwept, pd)
		}
	}
}

// newerThan reports whether every listing in the chain from l started
// late enough to hold a change made at at (applyChange's rule).
func newerThan(l *dirListing, at time.Time) bool {
	for ; l != nil; l = l.prev {
		if !l.started.After(at.Add(2 * time.Second)) {
			return false
		}
	}
	return true
}

// validKey reports whether every segment of key can be a path, as
// fetchListing requires of what it lists.
func validKey(key string) bool {
	if len(key) > 1024 {
		return false
	}
	for _, seg := range strings.Split(strings.TrimSuffix(key, "/"), "/") {
		if validName(seg) != "" {
			return false
		}
	}
	return true
}

// applyChange applies another machine's change to the cached view and
// returns what the kernel must forget.
func (c *Cache) applyChange(ch backend.Change) ([]Changed, bool) {
	key := ch.Object.Key
	if key == "" || !validKey(key) {
		return nil, false
	}
	out := []Changed{{Key: key, Removed: ch.Removed, ETag: ch.Object.ETag}}
	pd := parentDir(key)
	switch {
	case ch.Removed && IsDirKey(key):
		// A marker removed: the directory may live on implied by what
		// is below it, so it is not noted as gone; its attributes are
		// forgotten and its parent's listing refetched.
		// An earlier event's note that the directory exists goes too.
		c.mu.Lock()
		delete(c.dirMetas, key)
		if l := c.dirs[key]; l != nil && isDone(l) {
			l.self = nil
		}
		delete(c.recent[pd], key)
		delete(c.dirs, pd)
		c.mu.Unlock()
	case ch.Removed:
		c.noteRemote(key, nil)
		// Each directory above may have gone with its last file, unless
		// a cached listing shows it holds something else.
		for d := pd; d != "" && !c.holdsOther(d); d = parentDir(d) {
			c.InvalidateDir(parentDir(d))
			out = append(out, Changed{Key: d, Removed: true})
		}
	default:
		e := entryFromObject(ch.Object, c.o.Defaults)
		c.noteRemote(key, &e)
		// Ancestors new to a cached listing: refetch it. Every level, as
		// a listing of an upper one may be cached while a lower one is
		// not ("a/" listed, "a/b/c/d.jpg" new).
		for d := pd; d != ""; d = parentDir(d) {
			p := parentDir(d)
			c.mu.Lock()
			l := c.dirs[p]
			missing := false
			if l != nil && isDone(l) && l.err == nil {
				if old, ok := l.entries[baseName(d)]; !ok || !old.Dir {
					missing = true
				}
			}
			if missing {
				delete(c.dirs, p)
			}
			c.mu.Unlock()
			if missing {
				out = append(out, Changed{Key: d})
			}
		}
	}
	return out, true
}

// holdsOther reports whether directory dirKey is known to exist still:
// its cached listing, with the changes noted since, has an entry or its
// marker. It stops at the first entry left (listing order is random, so
// that is quick while a directory is being emptied one event at a time).
func (c *Cache) holdsOther(dirKey string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.dirs[dirKey]
	if l == nil || !isDone(l) || l.err != nil {
		return false
	}
	if l.self != nil {
		return true
	}
	rec := c.recent[dirKey]
	noted := func(r recentChange) bool { return !l.started.After(r.at.Add(2 * time.Second)) }
	for name, e := range l.entries {
		k := dirKey + name
		if e.Dir {
			k += "/"
		}
		if r, ok := rec[k]; ok && r.entry == nil && noted(r) {
			continue // removed since the listing
		}
		return true
	}
	for _, r := range rec {
		if r.entry != nil && noted(r) {
			return true
		}
	}
	return false
}

func isDone(l *dirListing) bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}
