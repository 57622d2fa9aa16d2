package main

// End-to-end tests of the change feed: one real MinIO (built with the
// stream flush fix, see scripts/install-minio.sh), two real mounts with
// separate cache dirs. Delays are measured from the moment the bucket
// holds the change (polled with minio-go) to the moment the other mount
// shows it, and logged; the bound asserted is the 1 s the feed promises
// (the measured figures are tens of milliseconds, so it leaves slack for
// a loaded machine).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// feedBound is what the change feed promises: a change in the bucket is
// seen on every mount within it.
const feedBound = time.Second

// feedMounts starts two mounts that require the change feed (the mount
// fails unless the feed is live) and upload at once.
func feedMounts(t *testing.T, e *env) (a, b *mnt) {
	t.Helper()
	a = e.mount(t, "--change-feed", "listen", "--writeback-delay", "0s")
	b = e.mount(t, "--change-feed", "listen", "--writeback-delay", "0s")
	for _, m := range []*mnt{a, b} {
		if s := opsStatus(t, m.cacheDir); s.ChangeFeed != "live" {
			t.Fatalf("change feed of %s is %q after mounting with --change-feed=listen, want live", m.dir, s.ChangeFeed)
		}
	}
	return a, b
}

// feedMeasure polls the bucket until landed holds and the mount until
// seen holds, and returns how long after landing the mount saw it. The
// mount is polled from the start, so what it cached before the change
// (listings, kernel entries, negative entries) must be invalidated.
func feedMeasure(t *testing.T, what string, landed, seen func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	var landedAt, seenAt time.Time
	for landedAt.IsZero() || seenAt.IsZero() {
		if landedAt.IsZero() && landed() {
			landedAt = time.Now()
		}
		if seenAt.IsZero() && seen() {
			seenAt = time.Now()
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("%s: landed in the bucket %v, seen on the other mount %v, after 30 s",
				what, !landedAt.IsZero(), !seenAt.IsZero())
		}
		time.Sleep(5 * time.Millisecond)
	}
	d := max(seenAt.Sub(landedAt), 0)
	t.Logf("%-28s in the bucket %6v after the call, seen on the other mount %6v later",
		what, landedAt.Sub(start).Round(time.Millisecond), d.Round(time.Millisecond))
	if d > feedBound {
		t.Errorf("%s: seen on the other mount %v after it was in the bucket, want within %v", what, d, feedBound)
	}
	return d
}

func (e *env) hasObject(key string, want []byte) bool {
	b, _, err := e.getObject(key)
	return err == nil && bytes.Equal(b, want)
}

func (e *env) lacksObject(key string) bool {
	_, err := e.client().StatObject(context.Background(), e.bucket, key, minio.StatObjectOptions{})
	return minio.ToErrorResponse(err).Code == "NoSuchKey"
}

func hasFile(path string, want []byte) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Equal(b, want)
}

func lacksFile(path string) bool {
	_, err := os.Lstat(path)
	return errors.Is(err, os.ErrNotExist)
}

// TestFeedShowsChangesOnTheOtherMountWithinASecond: create, overwrite,
// chmod, utime, rename, delete, directory rename on mount A are seen on
// mount B within a second of reaching the bucket, with the right bytes
// and attributes, although B had the old state cached.
func TestFeedShowsChangesOnTheOtherMountWithinASecond(t *testing.T) {
	e := newEnv(t)
	a, b := feedMounts(t, e)
	if err := os.MkdirAll(a.path("d/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	// B lists and looks up before the changes, so it has them cached.
	waitDir(t, b.path("d/sub"))
	lacksFile(b.path("d/f.txt"))

	one := []byte("one")
	writeFile(t, a.path("d/f.txt"), one)
	feedMeasure(t, "create", func() bool { return e.hasObject("d/f.txt", one) },
		func() bool { return hasFile(b.path("d/f.txt"), one) })

	// B has read it twice, so the kernel keeps its pages across opens
	// (FOPEN_KEEP_CACHE) until it learns of a new version.
	readFile(t, b.path("d/f.txt"))
	two := bytes.Repeat([]byte("two, longer "), 1000)
	writeFile(t, a.path("d/f.txt"), two)
	feedMeasure(t, "overwrite", func() bool { return e.hasObject("d/f.txt", two) },
		func() bool { return hasFile(b.path("d/f.txt"), two) })

	if err := os.Chmod(a.path("d/f.txt"), 0o600); err != nil {
		t.Fatal(err)
	}
	feedMeasure(t, "chmod", func() bool {
		_, info, err := e.getObject("d/f.txt")
		return err == nil && info.UserMetadata["Mode"] == fmt.Sprint(0o100600)
	}, func() bool {
		st, err := os.Stat(b.path("d/f.txt"))
		return err == nil && st.Mode().Perm() == 0o600
	})

	mt := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(a.path("d/f.txt"), mt, mt); err != nil {
		t.Fatal(err)
	}
	feedMeasure(t, "utime", func() bool {
		_, info, err := e.getObject("d/f.txt")
		return err == nil && info.UserMetadata["Mtime"] == fmt.Sprint(mt.Unix())
	}, func() bool {
		st, err := os.Stat(b.path("d/f.txt"))
		return err == nil && st.ModTime().Equal(mt) && st.Mode().Perm() == 0o600
	})

	if err := os.Rename(a.path("d/f.txt"), a.path("d/g.txt")); err != nil {
		t.Fatal(err)
	}
	feedMeasure(t, "rename file", func() bool { return e.lacksObject("d/f.txt") && e.hasObject("d/g.txt", two) },
		func() bool { return lacksFile(b.path("d/f.txt")) && hasFile(b.path("d/g.txt"), two) })

	if err := os.Remove(a.path("d/g.txt")); err != nil {
		t.Fatal(err)
	}
	feedMeasure(t, "delete", func() bool { return e.lacksObject("d/g.txt") },
		func() bool { return lacksFile(b.path("d/g.txt")) })

	x := []byte("x")
	writeFile(t, a.path("d/sub/x.txt"), x)
	feedMeasure(t, "create in a subdirectory", func() bool { return e.hasObject("d/sub/x.txt", x) },
		func() bool { return hasFile(b.path("d/sub/x.txt"), x) })
	if err := os.Rename(a.path("d/sub"), a.path("d/moved")); err != nil {
		t.Fatal(err)
	}
	feedMeasure(t, "rename directory", func() bool {
		return e.lacksObject("d/sub/x.txt") && e.lacksObject("d/sub/") && e.hasObject("d/moved/x.txt", x)
	}, func() bool { return lacksFile(b.path("d/sub")) && hasFile(b.path("d/moved/x.txt"), x) })

	if err := os.Chmod(a.path("d/moved"), 0o700); err != nil {
		t.Fatal(err)
	}
	feedMeasure(t, "chmod directory", func() bool {
		_, info, err := e.getObject("d/moved/")
		return err == nil && info.UserMetadata["Mode"] == fmt.Sprint(0o40700)
	}, func() bool {
		st, err := os.Stat(b.path("d/moved"))
		return err == nil && st.IsDir() && st.Mode().Perm() == 0o700
	})

	// B's listing matches the bucket's.
	names := func(m *mnt) string {
		ents, err := os.ReadDir(m.path("d"))
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, e := range ents {
			s = append(s, e.Name())
		}
		return strings.Join(s, ",")
	}
	if got, want := names(b), names(a); got != want || got != "moved" {
		t.Errorf("ls d on B = %q, on A %q, want %q", got, want, "moved")
	}
}

// TestFeedShowsChangesOfOtherToolsWithinASecond: objects written,
// overwritten and deleted in the bucket by another S3 client (minio-go
// here, standing in for a CMS or a sync job) show up on the mount within
// a second, with their bytes and metadata, including keys that need
// escaping in a URL.
func TestFeedShowsChangesOfOtherToolsWithinASecond(t *testing.T) {
	e := newEnv(t)
	_, b := feedMounts(t, e)
	if err := os.MkdirAll(b.path("in"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.waitObject(t, "in/", nil, 10*time.Second)
	lacksFile(b.path("in/a b+c%41é.txt"))
	ents, _ := os.ReadDir(b.path("in"))
	if len(ents) != 0 {
		t.Fatalf("in/ on the mount has %d entries, want 0", len(ents))
	}

	for i, key := range []string{"in/a b+c%41é.txt", "in/new/deep/file.bin"} {
		data := bytes.Repeat([]byte{byte('a' + i)}, 1000+i)
		start := time.Now()
		e.putObject(t, key, data, map[string]string{"mode": fmt.Sprint(0o100640), "mtime": "1600000000"})
		landed := time.Since(start)
		d := waitFile(t, b.path(strings.TrimPrefix(key, "")), data, 30*time.Second)
		t.Logf("%-28s seen on the mount %v after the PUT returned (PUT took %v)", "put "+key, d.Round(time.Millisecond), landed.Round(time.Millisecond))
		if d > feedBound {
			t.Errorf("put %s: seen %v after the PUT, want within %v", key, d, feedBound)
		}
		st, err := os.Stat(b.path(key))
		if err != nil || st.Mode().Perm() != 0o640 || st.ModTime().Unix() != 1600000000 {
			t.Errorf("stat %s = %v, %v; want mode 0640 and mtime 1600000000 from the metadata", key, st, err)
		}
	}

	over := []byte("overwritten by another tool")
	e.putObject(t, "in/a b+c%41é.txt", over, nil)
	d := waitFile(t, b.path("in/a b+c%41é.txt"), over, 30*time.Second)
	t.Logf("%-28s seen on the mount %v after the PUT returned", "overwrite", d.Round(time.Millisecond))
	if d > feedBound {
		t.Errorf("overwrite: seen %v after the PUT, want within %v", d, feedBound)
	}

	if err := e.client().RemoveObject(context.Background(), e.bucket, "in/a b+c%41é.txt", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for !lacksFile(b.path("in/a b+c%41é.txt")) {
		if time.Since(start) > 30*time.Second {
			t.Fatal("deleted object still on the mount after 30 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	d = time.Since(start)
	t.Logf("%-28s seen on the mount %v after the DELETE returned", "delete", d.Round(time.Millisecond))
	if d > feedBound {
		t.Errorf("delete: seen %v after the DELETE, want within %v", d, feedBound)
	}
	// The last object under a directory that has no marker: the
	// directory goes with it.
	if err := e.client().RemoveObject(context.Background(), e.bucket, "in/new/deep/file.bin", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for !lacksFile(b.path("in/new")) {
		if time.Since(start) > 30*time.Second {
			t.Fatal("directory implied by a deleted object still on the mount after 30 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("%-28s seen on the mount %v after the DELETE returned", "implied directory gone", time.Since(start).Round(time.Millisecond))
}

// TestFeedReconnectsAfterTheServerRestarts: MinIO restarts; the mount
// polls while the feed is down, the feed comes back by itself, a change
// made in the gap is not lost, and changes after it are seen at once.
func TestFeedReconnectsAfterTheServerRestarts(t *testing.T) {
	e := newEnv(t)
	a, b := feedMounts(t, e)
	writeFile(t, a.path("before.txt"), []byte("before"))
	waitFile(t, b.path("before.txt"), []byte("before"), 10*time.Second)
	gapsBefore := opsStatus(t, b.cacheDir)

	e.minio.Restart(t)
	// Made before the feed is back: the gap.
	gap := []byte("made while the feed was reconnecting")
	e.putObject(t, "gap.txt", gap, nil)
	d := waitFile(t, b.path("gap.txt"), gap, 30*time.Second)
	t.Logf("change made during the reconnection seen after %v", d.Round(time.Millisecond))

	start := time.Now()
	for opsStatus(t, b.cacheDir).ChangeFeed != "live" {
		if time.Since(start) > 60*time.Second {
			t.Fatalf("change feed not live again 60 s after MinIO restarted (state %q)", opsStatus(t, b.cacheDir).ChangeFeed)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("change feed live again %v after the restart returned", time.Since(start).Round(time.Millisecond))
	if s := opsStatus(t, b.cacheDir); s.FeedChanges < gapsBefore.FeedChanges {
		t.Errorf("feed change counter went back: %d -> %d", gapsBefore.FeedChanges, s.FeedChanges)
	}

	after := []byte("after the restart")
	writeFile(t, a.path("after.txt"), after)
	feedMeasure(t, "create after the restart", func() bool { return e.hasObject("after.txt", after) },
		func() bool { return hasFile(b.path("after.txt"), after) })
}

// TestFeedSkipsTheMountsOwnChanges: the events of a mount's own uploads,
// renames and deletes are recognised and not applied as another
// machine's (which would drop the kernel's pages of files just written);
// the other mount applies every one of them.
func TestFeedSkipsTheMountsOwnChanges(t *testing.T) {
	e := newEnv(t)
	addr := opsFreeAddr(t)
	a := e.mount(t, "--change-feed", "listen", "--writeback-delay", "0s")
	b := e.mount(t, "--change-feed", "listen", "--writeback-delay", "0s", "--metrics-addr", addr)
	for i := 0; i < 5; i++ {
		writeFile(t, a.path(fmt.Sprintf("own-%d.txt", i)), []byte(fmt.Sprint(i)))
	}
	// Uploaded first, so the rename is a copy and a delete in the bucket
	// and the unlink a delete (before the upload they happen in A's
	// journal only, and the bucket never sees them).
	for i := 0; i < 5; i++ {
		e.waitObject(t, fmt.Sprintf("own-%d.txt", i), []byte(fmt.Sprint(i)), 20*time.Second)
	}
	if err := os.Rename(a.path("own-0.txt"), a.path("renamed.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(a.path("own-1.txt")); err != nil {
		t.Fatal(err)
	}
	e.waitObject(t, "renamed.txt", []byte("0"), 20*time.Second)
	e.waitGone(t, "own-0.txt", 20*time.Second)
	e.waitGone(t, "own-1.txt", 20*time.Second)
	waitFile(t, b.path("renamed.txt"), []byte("0"), 10*time.Second)
	time.Sleep(500 * time.Millisecond) // the last events reach both feeds
	sa, sb := opsStatus(t, a.cacheDir), opsStatus(t, b.cacheDir)
	t.Logf("changes applied from the feed: A %d, B %d", sa.FeedChanges, sb.FeedChanges)
	if sa.FeedChanges != 0 {
		t.Errorf("mount A applied %d changes from the feed, all its own; want 0", sa.FeedChanges)
	}
	// 5 creates, a copy and its source's delete, a delete.
	if sb.FeedChanges != 8 {
		t.Errorf("mount B applied %d changes from the feed, want 8", sb.FeedChanges)
	}
	fams, _ := opsScrape(t, addr)
	if v, ok := opsValue(fams, "mediafs_feed_connected"); !ok || v != 1 {
		t.Errorf("mediafs_feed_connected = %v (found %v), want 1", v, ok)
	}
	if v, ok := opsValue(fams, "mediafs_feed_events_total"); !ok || int64(v) != sb.FeedChanges {
		t.Errorf("mediafs_feed_events_total = %v (found %v), want %d as status says", v, ok, sb.FeedChanges)
	}
}

// TestFeedOffMountsPollWithTheTTL: with --change-feed=off the feed is not
// used and changes show up by polling, within the TTL bound.
func TestFeedOffMountsPollWithTheTTL(t *testing.T) {
	e := newEnv(t)
	a := e.mount(t, "--change-feed", "off", "--writeback-delay", "0s")
	b := e.mount(t, "--change-feed", "off", "--writeback-delay", "0s")
	if s := opsStatus(t, b.cacheDir); s.ChangeFeed != "off" {
		t.Fatalf("change feed of B is %q with --change-feed=off", s.ChangeFeed)
	}
	lacksFile(b.path("f.txt"))
	writeFile(t, a.path("f.txt"), []byte("polled"))
	e.waitObject(t, "f.txt", []byte("polled"), 10*time.Second)
	d := waitFile(t, b.path("f.txt"), []byte("polled"), 10*time.Second)
	t.Logf("without the feed, seen on B %v after it was in the bucket", d.Round(time.Millisecond))
	// The listing TTL (1 s), plus one background refresh, plus the
	// kernel's negative entry (0.5 s).
	if d > 4*time.Second {
		t.Errorf("without the feed, seen after %v, want within the TTL bound (4 s)", d)
	}
}

type djangoUpload struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

type djangoPair struct {
	A, B               map[string]djangoUpload
	SlowestReadBack    float64 `json:"slowest_read_back"`
	EEXISTRetries      int     `json:"eexist_retries"`
	ListingsEqualAfter float64 `json:"listings_equal_after"`
}

// TestFeedTwoDjangoInstancesShareOneMediaRoot: two Django-like instances
// (testdata/django_two_instances.py), one per mount, save uploads under
// the same few names at the same time and read each other's back. Every
// upload gets its own name (O_EXCL across machines, retried with a random
// suffix on EEXIST), every byte arrives, both sides list the same tree,
// and the bucket holds exactly those objects and no conflict copies.
func TestFeedTwoDjangoInstancesShareOneMediaRoot(t *testing.T) {
	e := newEnv(t)
	a, b := feedMounts(t, e)
	script, err := filepath.Abs("testdata/django_two_instances.py")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python3(), script, a.dir, b.dir, "40")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("django_two_instances.py: %v\n%s", err, tail(stderr.String(), 6000))
	}
	var r djangoPair
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("django_two_instances.py output: %v\n%s", err, stdout.String())
	}
	t.Logf("%d + %d uploads in %v, %d EEXIST retries; slowest read-back of the other instance's upload %.3fs after it was saved; listings agreed after %.3fs",
		len(r.A), len(r.B), time.Since(start).Round(time.Millisecond), r.EEXISTRetries, r.SlowestReadBack, r.ListingsEqualAfter)
	if len(r.A) != 40 || len(r.B) != 40 {
		t.Fatalf("saved %d and %d uploads, want 40 each", len(r.A), len(r.B))
	}
	all := map[string]int64{}
	for _, side := range []map[string]djangoUpload{r.A, r.B} {
		for name, f := range side {
			if _, dup := all[name]; dup {
				t.Errorf("%s saved by both instances", name)
			}
			all[name] = f.Size
		}
	}
	// The bucket: every upload whole, nothing else but directory markers.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var extra, missing []string
		keys := map[string]bool{}
		for _, k := range e.keys(t, "") {
			keys[k] = true
			if _, ok := all[k]; !ok && !strings.HasSuffix(k, "/") {
				extra = append(extra, k)
			}
		}
		for name := range all {
			if !keys[name] {
				missing = append(missing, name)
			}
		}
		if len(extra) == 0 && len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bucket after 30 s: missing %q, extra %q", missing, extra)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, side := range []map[string]djangoUpload{r.A, r.B} {
		for name, f := range side {
			got, _, err := e.getObject(name)
			if err != nil {
				t.Errorf("bucket %s: %v", name, err)
				continue
			}
			if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != f.SHA256 || int64(len(got)) != f.Size {
				t.Errorf("bucket %s: %d bytes, not the %d the instance saved", name, len(got), f.Size)
			}
		}
	}
}

// A file another machine overwrites while this one holds it open: a new
// open gets the new version (close-to-open), the handle opened before
// keeps reading the version it opened, as with a file replaced by rename
// on a local disk. With passthrough the kernel serves every handle of an
// inode from one backing file, so the new version needs a new inode: the
// open of the old one fails with ESTALE and the kernel retries it after a
// fresh lookup.
func TestFeedOverwriteWhileOpenOnTheOtherMount(t *testing.T) {
	e := newEnv(t)
	a, b := feedMounts(t, e)
	for _, size := range []int{100, 12 << 20} { // fetched whole; block cache
		name := fmt.Sprintf("held-%d.bin", size)
		one := bytes.Repeat([]byte("1"), size)
		two := bytes.Repeat([]byte("2"), size+7)
		writeFile(t, a.path(name), one)
		e.waitObject(t, name, one, 10*time.Second)
		waitFile(t, b.path(name), one, 5*time.Second)
		held, err := os.Open(b.path(name))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 10)
		if _, err := held.ReadAt(buf, 0); err != nil || buf[0] != '1' {
			t.Fatalf("%s: held handle reads %q, %v", name, buf, err)
		}
		writeFile(t, a.path(name), two)
		e.waitObject(t, name, two, 10*time.Second)
		d := waitFile(t, b.path(name), two, 5*time.Second)
		t.Logf("%s: new version read on B %v after it was in the bucket, with the old one held open", name, d)
		got := make([]byte, size+10)
		n, err := held.ReadAt(got, 0)
		if n != size || !bytes.Equal(got[:n], one) {
			t.Errorf("%s: the handle opened before reads %d bytes (%q...), %v; want the %d bytes it opened", name, n, got[:min(n, 8)], err, size)
		}
		held.Close()
		if got := readFile(t, b.path(name)); !bytes.Equal(got, two) {
			t.Errorf("%s: after the old handle closed B reads %d bytes, want the new %d", name, len(got), len(two))
		}
	}
}

// The same with the handle held open since before this mount's own
// version was uploaded (no version known for it then): a read-write open
// after another machine replaced the file must work on the new version,
// and what it writes must reach the bucket.
func TestFeedWriteAfterReplaceWhileOwnVersionIsOpen(t *testing.T) {
	e := newEnv(t)
	a, b := feedMounts(t, e)
	name := "own.txt"
	w, err := os.Create(b.path(name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("mine")); err != nil {
		t.Fatal(err)
	}
	held, err := os.Open(b.path(name)) // while pending
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	e.waitObject(t, name, []byte("mine"), 10*time.Second)
	theirs := []byte("theirs, longer")
	writeFile(t, a.path(name), theirs)
	e.waitObject(t, name, theirs, 10*time.Second)
	waitFile(t, b.path(name), theirs, 5*time.Second)
	f, err := os.OpenFile(b.path(name), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("read-write open after the replace: %v", err)
	}
	got := make([]byte, 64)
	n, _ := f.ReadAt(got, 0)
	if !bytes.Equal(got[:n], theirs) {
		t.Errorf("read-write open reads %q, want %q", got[:n], theirs)
	}
	if _, err := f.WriteAt([]byte("!"), int64(len(theirs))); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, theirs...), '!')
	e.waitObject(t, name, want, 10*time.Second)
	waitFile(t, a.path(name), want, 5*time.Second)
}
