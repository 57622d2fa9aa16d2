package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mediafs/mediafs/backend"
)

// feedStore is the in-memory store with a change feed, as MinIO's: every
// change made through it (the cache's own) comes back as an event, and the
// test sends others' changes and state changes with send.
type feedStore struct {
	backend.Store
	mu     sync.Mutex
	on     func(backend.FeedEvent)
	queued []backend.FeedEvent
}

func (s *feedStore) Watch(ctx context.Context, on func(backend.FeedEvent)) error {
	s.mu.Lock()
	s.on = on
	q := s.queued
	s.queued = nil
	s.mu.Unlock()
	for _, ev := range q {
		on(ev)
	}
	<-ctx.Done()
	return ctx.Err()
}

func (s *feedStore) send(ev backend.FeedEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.on == nil {
		s.queued = append(s.queued, ev)
		return
	}
	s.on(ev)
}

func (s *feedStore) Put(ctx context.Context, key string, r io.ReaderAt, size int64, opts backend.PutOptions) (backend.Object, error) {
	o, err := s.Store.Put(ctx, key, r, size, opts)
	if err == nil {
		o.Metadata = opts.Metadata
		s.send(backend.FeedEvent{Changes: []backend.Change{{Object: o, Event: "s3:ObjectCreated:Put"}}})
	}
	return o, err
}

func (s *feedStore) Copy(ctx context.Context, src, dst string, srcSize int64, opts backend.PutOptions) (backend.Object, error) {
	o, err := s.Store.Copy(ctx, src, dst, srcSize, opts)
	if err == nil {
		s.send(backend.FeedEvent{Changes: []backend.Change{{Object: o, Event: "s3:ObjectCreated:Copy"}}})
	}
	return o, err
}

func (s *feedStore) Delete(ctx context.Context, key string) error {
	err := s.Store.Delete(ctx, key)
	if err == nil {
		s.send(backend.FeedEvent{Changes: []backend.Change{{Object: backend.Object{Key: key}, Removed: true, Event: "s3:ObjectRemoved:Delete"}}})
	}
	return err
}

// newEnvWith is newEnv with the store set up by store before the cache
// opens (the feed is found when it opens).
func newEnvWith(t *testing.T, store func(*testEnv), opt func(*Options)) *testEnv {
	t.Helper()
	e := newEnv(t, opt)
	e.close()
	store(e)
	e.open()
	return e
}

// feedEnv is a cache over a feedStore whose feed is live, with the
// listing TTL so long that only the feed can explain a fresh view.
type feedEnv struct {
	*testEnv
	fs *feedStore

	mu      sync.Mutex
	changed []Changed
}

func newFeedEnv(t *testing.T) *feedEnv {
	t.Helper()
	fe := &feedEnv{}
	var fs *feedStore
	fe.testEnv = newEnvWith(t, func(e *testEnv) {
		fs = &feedStore{Store: e.mem}
		e.st = fs
	}, func(o *Options) {
		o.DirTTL, o.FeedDirTTL = time.Hour, time.Hour
	})
	fe.fs = fs
	fe.c.SetChangeHook(func(chs []Changed) {
		fe.mu.Lock()
		fe.changed = append(fe.changed, chs...)
		fe.mu.Unlock()
	})
	fs.send(backend.FeedEvent{Live: true})
	if err := fe.c.StartFeed(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "feed live", func() bool { return fe.c.FeedStatus().Live })
	return fe
}

// remote makes a change as another machine would: in the store, then its
// event.
func (fe *feedEnv) remotePut(key, data string, md map[string]string) backend.Object {
	fe.t.Helper()
	o := fe.mem.Set(key, []byte(data), "", md)
	o.Metadata = md
	fe.fs.send(backend.FeedEvent{Changes: []backend.Change{{Object: o, Event: "s3:ObjectCreated:Put"}}})
	return o
}

func (fe *feedEnv) remoteDelete(key string) {
	fe.t.Helper()
	if err := fe.mem.Delete(context.Background(), key); err != nil {
		fe.t.Fatal(err)
	}
	fe.fs.send(backend.FeedEvent{Changes: []backend.Change{{Object: backend.Object{Key: key}, Removed: true}}})
}

// waitChanged waits until the hook was told of key and returns that.
func (fe *feedEnv) waitChanged(key string) Changed {
	fe.t.Helper()
	var got Changed
	waitFor(fe.t, 5*time.Second, "hook told of "+key, func() bool {
		fe.mu.Lock()
		defer fe.mu.Unlock()
		for _, c := range fe.changed {
			if c.Key == key {
				got = c
				return true
			}
		}
		return false
	})
	return got
}

func (fe *feedEnv) names(dirKey string) []string {
	fe.t.Helper()
	ents, err := fe.c.List(ctxT(fe.t), dirKey)
	if err != nil {
		fe.t.Fatalf("list %q: %v", dirKey, err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name)
	}
	slices.Sort(out)
	return out
}

// Other machines' creates, overwrites and deletes show in listings,
// lookups and reads at once although the listing TTL is an hour; a new
// key's directories appear, and go with their last file; the kernel hook
// is told of each.
func TestFeedAppliesOtherMachinesChanges(t *testing.T) {
	fe := newFeedEnv(t)
	ctx := ctxT(t)
	if got := fe.names(""); len(got) != 0 {
		t.Fatalf("root = %v, want empty", got)
	}

	o := fe.remotePut("a/b/c.jpg", "first", map[string]string{"mode": "33152", "mtime": "1600000000"})
	fe.waitChanged("a/b/c.jpg")
	if got := fe.names(""); !slices.Equal(got, []string{"a"}) {
		t.Errorf("root after a/b/c.jpg appeared = %v, want [a]", got)
	}
	if got := fe.names("a/b/"); !slices.Equal(got, []string{"c.jpg"}) {
		t.Errorf("a/b/ = %v, want [c.jpg]", got)
	}
	e, err := fe.c.Lookup(ctx, "a/b/c.jpg")
	if err != nil || e.Size != 5 || e.ETag != o.ETag || e.Attr.Mode&0o777 != 0o600 || e.Attr.Mtime.Unix() != 1600000000 {
		t.Fatalf("lookup = %+v, %v; want size 5, etag %s, mode 0600, mtime from the event", e, err, o.ETag)
	}
	if got := fe.read("a/b/c.jpg"); got != "first" {
		t.Fatalf("read = %q", got)
	}

	o2 := fe.remotePut("a/b/c.jpg", "second, longer", nil)
	waitFor(t, 5*time.Second, "overwrite seen", func() bool {
		e, err := fe.c.Lookup(ctx, "a/b/c.jpg")
		return err == nil && e.ETag == o2.ETag
	})
	if got := fe.read("a/b/c.jpg"); got != "second, longer" {
		t.Fatalf("read after overwrite = %q", got)
	}
	if c := fe.waitChanged("a/b/c.jpg"); c.Removed {
		t.Errorf("hook told of a removal for a put")
	}

	fe.remoteDelete("a/b/c.jpg")
	waitFor(t, 5*time.Second, "delete seen", func() bool {
		_, err := fe.c.Lookup(ctx, "a/b/c.jpg")
		return errors.Is(err, ErrNotExist)
	})
	if got := fe.names(""); len(got) != 0 {
		t.Errorf("root after the last file under a/ went = %v, want empty", got)
	}
	if _, err := fe.c.Lookup(ctx, "a"); !errors.Is(err, ErrNotExist) {
		t.Errorf("lookup a after its last file went = %v, want ErrNotExist", err)
	}
	fe.waitChanged("a/b/")
	fe.waitChanged("a/")
}

// A directory's marker removed while files below it remain: the
// directory stays.
func TestFeedMarkerRemovalKeepsAnImpliedDirectory(t *testing.T) {
	fe := newFeedEnv(t)
	fe.remotePut("d/", "", map[string]string{"mode": "16832"})
	fe.remotePut("d/f", "x", nil)
	fe.waitChanged("d/f")
	if got := fe.names(""); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("root = %v", got)
	}
	fe.remoteDelete("d/")
	fe.waitChanged("d/")
	if got := fe.names(""); !slices.Equal(got, []string{"d"}) {
		t.Errorf("root after d/'s marker went (d/f remains) = %v, want [d]", got)
	}
}

// The mount's own uploads, renames and deletes come back through the
// feed: they are recognised and the kernel hook is not told of them.
func TestFeedSkipsOwnChanges(t *testing.T) {
	fe := newFeedEnv(t)
	fe.create("mine.txt", "hello")
	fe.drain()
	if err := fe.c.Rename(ctxT(t), "mine.txt", "moved.txt", fe.lookup("mine.txt")); err != nil {
		t.Fatal(err)
	}
	fe.drain()
	fe.remove("moved.txt")
	fe.drain()
	waitFor(t, 5*time.Second, "own events seen", func() bool { return fe.c.FeedStatus().Own >= 3 })
	time.Sleep(50 * time.Millisecond)
	s := fe.c.FeedStatus()
	fe.mu.Lock()
	defer fe.mu.Unlock()
	if s.Applied != 0 || len(fe.changed) != 0 {
		t.Errorf("own changes applied as others': %d applied, hook told %v", s.Applied, fe.changed)
	}
}

// notLiveFeedEnv is a cache over a feedStore whose feed has started but is
// not live yet, with DirTTL dirTTL and an hour's FeedDirTTL; lists counts
// the store's LISTs.
func notLiveFeedEnv(t *testing.T, dirTTL time.Duration) (e *testEnv, fs *feedStore, lists func() int) {
	t.Helper()
	e = newEnvWith(t, func(e *testEnv) {
		fs = &feedStore{Store: e.mem}
		e.st = fs
	}, func(o *Options) {
		o.DirTTL, o.FeedDirTTL = dirTTL, time.Hour
	})
	if err := e.c.StartFeed(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	return e, fs, func() int { return e.mem.Calls()["List"] }
}

// While the feed is down listings are trusted for DirTTL only; when it is
// live, for FeedDirTTL, but only those started after it became live, since
// changes in the gap were never seen.
func TestFeedLiveSwitchesTheListingTTL(t *testing.T) {
	e, fs, lists := notLiveFeedEnv(t, 20*time.Millisecond)
	e.c.List(ctxT(t), "")
	time.Sleep(100 * time.Millisecond)
	e.c.List(ctxT(t), "")
	e.c.List(ctxT(t), "")
	if lists() < 2 {
		t.Fatalf("feed not live: %d LISTs over 5 TTLs, want a refresh", lists())
	}

	// Made in the gap, without an event: the listing from before the
	// feed became live must not be trusted for FeedDirTTL.
	e.mem.Set("gap.txt", []byte("x"), "", nil)
	fs.send(backend.FeedEvent{Live: true})
	waitFor(t, 5*time.Second, "feed live", func() bool { return e.c.FeedStatus().Live })
	time.Sleep(100 * time.Millisecond)
	if names := entryNames(t, e.c, ""); !slices.Contains(names, "gap.txt") {
		t.Errorf("listing after the feed became live = %v: a listing from before was kept", names)
	}
	n := lists()
	time.Sleep(100 * time.Millisecond)
	e.c.List(ctxT(t), "")
	e.c.List(ctxT(t), "")
	if lists() != n {
		t.Errorf("%d LISTs while the feed is live, within FeedDirTTL; want none", lists()-n)
	}

	fs.send(backend.FeedEvent{Down: true, Err: errors.New("stream dropped")})
	waitFor(t, 5*time.Second, "feed down", func() bool { return !e.c.FeedStatus().Live })
	time.Sleep(100 * time.Millisecond)
	e.c.List(ctxT(t), "")
	waitFor(t, 5*time.Second, "a refresh with the feed down", func() bool { return lists() > n })
	if s := e.c.FeedStatus(); s.State != "down" || s.Gaps != 1 {
		t.Errorf("status = %+v, want down after 1 gap", s)
	}
}

func entryNames(t *testing.T, c *Cache, dirKey string) []string {
	t.Helper()
	ents, err := c.List(ctxT(t), dirKey)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name)
	}
	return out
}

// A store without a change feed, or FeedOff: no feed, DirTTL polling, and
// FeedListen refuses to start.
func TestFeedOffOrUnsupported(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.ChangeFeed = FeedListen })
	if err := e.c.StartFeed(ctxT(t)); err == nil || !strings.Contains(err.Error(), "has none") {
		t.Errorf("StartFeed(listen) on a store without a feed = %v, want an error", err)
	}
	if s := e.c.FeedStatus(); s.State != "off" {
		t.Errorf("state = %q, want off", s.State)
	}
	var fs *feedStore
	off := newEnvWith(t, func(e *testEnv) {
		fs = &feedStore{Store: e.mem}
		e.st = fs
	}, func(o *Options) { o.ChangeFeed = FeedOff })
	if err := off.c.StartFeed(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if s := off.c.FeedStatus(); s.State != "off" {
		t.Errorf("state with FeedOff = %q, want off", s.State)
	}
}

// Noted changes are forgotten once no cached listing could hide them,
// and kept while one could (an old listing served during an outage).
func TestSweepRecentKeepsWhatAnOldListingWouldHide(t *testing.T) {
	e := newEnv(t, nil)
	c := e.c
	e.c.List(ctxT(t), "old/") // a listing that started before the changes
	long := time.Now().Add(-time.Hour)
	c.mu.Lock()
	c.recent["old/"] = map[string]recentChange{"old/f": {at: long}}
	c.recent["gone/"] = map[string]recentChange{"gone/f": {at: long}}
	c.recent["new/"] = map[string]recentChange{"new/f": {at: time.Now()}}
	c.dirs["old/"].started = long.Add(-time.Second)
	c.mu.Unlock()
	c.sweepRecent()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.recent["old/"]["old/f"]; !ok {
		t.Error("a change an old cached listing lacks was forgotten")
	}
	if _, ok := c.recent["gone/"]; ok {
		t.Error("a change of a directory with no cached listing was kept")
	}
	if _, ok := c.recent["new/"]["new/f"]; !ok {
		t.Error("a change made just now was forgotten")
	}
}

// A directory of thousands emptied by another machine, one delete event
// each, while its listing is cached: every event checks whether the
// directory is gone, which must not cost a scan of the whole listing each
// time.
func TestFeedEmptyingABigDirectoryStaysFast(t *testing.T) {
	fe := newFeedEnv(t)
	const n = 5000
	for i := 0; i < n; i++ {
		fe.mem.Set(fmt.Sprintf("big/f%05d", i), []byte("x"), "", nil)
	}
	if got := fe.names("big/"); len(got) != n {
		t.Fatalf("big/ has %d entries, want %d", len(got), n)
	}
	fe.names("")
	start := time.Now()
	for i := 0; i < n; i++ {
		fe.remoteDelete(fmt.Sprintf("big/f%05d", i))
	}
	waitFor(t, 60*time.Second, "all deletes applied", func() bool { return fe.c.FeedStatus().Applied >= n })
	d := time.Since(start)
	t.Logf("%d delete events applied in %v", n, d.Round(time.Millisecond))
	if d > 20*time.Second {
		t.Errorf("%d delete events took %v to apply", n, d)
	}
	if got := fe.names(""); len(got) != 0 {
		t.Errorf("root after big/ was emptied = %v, want empty", got)
	}
}

// A directory listed before the feed went live (right after a mount) is
// listed again in the background when it does, and that listing is then
// trusted for the feed's TTL: before, it was listed again every DirTTL
// until a lookup happened to come after it expired.
func TestFeedGoingLiveRefreshesListingsMadeBefore(t *testing.T) {
	e, fs, lists := notLiveFeedEnv(t, 300*time.Millisecond)
	e.mem.Set("d/a.jpg", []byte("a"), "", nil)
	if names := entryNames(t, e.c, "d/"); len(names) != 1 {
		t.Fatalf("d/ lists %q", names)
	}
	// Made while the feed was not live yet: no event will tell of it.
	e.mem.Set("d/b.jpg", []byte("b"), "", nil)
	fs.send(backend.FeedEvent{Live: true})
	waitFor(t, 5*time.Second, "the refresh at live", func() bool { return lists() == 2 })
	waitFor(t, 5*time.Second, "the refreshed listing", func() bool { return len(entryNames(t, e.c, "d/")) == 2 })
	time.Sleep(700 * time.Millisecond) // past twice DirTTL
	entryNames(t, e.c, "d/")
	entryNames(t, e.c, "d/")
	if n := lists(); n != 2 {
		t.Errorf("%d LISTs of d/; want 2: the refreshed listing is trusted while the feed is live", n)
	}
}
