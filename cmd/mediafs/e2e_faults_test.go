package main

// End-to-end tests of faults: the object store down or hung under a write
// load, the daemon killed at random moments, the cache disk full. What
// they prove is the README's "nothing acknowledged is lost" and "uploads
// retry for as long as the object store is down", plus the bound
// --op-timeout puts on every operation that needs the store: it fails
// with EIO in time, it never hangs.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// Timeouts the fault tests mount with, and the bounds they enforce.
const (
	faultOpTimeout  = 3 * time.Second
	faultReqTimeout = 2 * time.Second
	// faultBound is how long an operation that needs the store may take
	// to fail: the op timeout plus slack for a loaded machine.
	faultBound = faultOpTimeout + 3*time.Second
	// faultLocal is how long an operation served from the cache may take
	// while the store is down or hung ("local speed", on a shared box).
	faultLocal = time.Second
)

var faultTimeoutFlags = []string{"--op-timeout", faultOpTimeout.String(), "--request-timeout", faultReqTimeout.String()}

// faultBytes returns n reproducible pseudo-random bytes.
func faultBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// faultOps times file system operations and reports the slow ones.
type faultOps struct {
	mu    sync.Mutex
	start time.Time
	limit time.Duration
	durs  map[string][]time.Duration
	slow  []string
	errs  []string
	total int
}

func newFaultOps(limit time.Duration) *faultOps {
	return &faultOps{start: time.Now(), limit: limit, durs: map[string][]time.Duration{}}
}

// do runs fn as operation op and records its duration; an error is
// recorded as a failure of the op unless ok says it is expected.
func (o *faultOps) do(op string, fn func() error) error {
	t0 := time.Now()
	err := fn()
	d := time.Since(t0)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.total++
	o.durs[op] = append(o.durs[op], d)
	if d > o.limit {
		o.slow = append(o.slow, fmt.Sprintf("%s took %v (started at +%v)", op, d.Round(time.Millisecond), t0.Sub(o.start).Round(time.Millisecond)))
	}
	if err != nil {
		o.errs = append(o.errs, fmt.Sprintf("%s: %v", op, err))
	}
	return err
}

// check fails the test for slow or failed ops and logs the latencies.
func (o *faultOps) check(t *testing.T, what string) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	var names []string
	for k := range o.durs {
		names = append(names, k)
	}
	sort.Strings(names)
	var sum []string
	for _, k := range names {
		ds := append([]time.Duration(nil), o.durs[k]...)
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		p99 := ds[(len(ds)-1)*99/100]
		sum = append(sum, fmt.Sprintf("%s n=%d p50=%v p99=%v max=%v", k, len(ds),
			ds[len(ds)/2].Round(time.Microsecond), p99.Round(time.Microsecond), ds[len(ds)-1].Round(time.Microsecond)))
	}
	t.Logf("%s: %d ops\n  %s", what, o.total, strings.Join(sum, "\n  "))
	if len(o.slow) > 0 {
		t.Errorf("%s: %d of %d ops took over %v, want all at local speed: %s", what, len(o.slow), o.total, o.limit,
			strings.Join(o.slow[:min(len(o.slow), 20)], "; "))
	}
	if len(o.errs) > 0 {
		t.Errorf("%s: %d ops failed: %s", what, len(o.errs), strings.Join(o.errs[:min(len(o.errs), 20)], "; "))
	}
}

// faultBounded runs fn and waits at most bound for it. It returns fn's
// error and how long it took, or fails the test if fn hangs.
func faultBounded(t *testing.T, what string, bound time.Duration, fn func() error) (error, time.Duration) {
	t.Helper()
	type res struct {
		err error
		d   time.Duration
	}
	ch := make(chan res, 1)
	t0 := time.Now()
	go func() {
		err := fn()
		ch <- res{err, time.Since(t0)}
	}()
	select {
	case r := <-ch:
		if r.d > bound {
			t.Errorf("%s took %v, want within %v (op timeout %v)", what, r.d, bound, faultOpTimeout)
		}
		return r.err, r.d
	case <-time.After(bound + 20*time.Second):
		t.Fatalf("%s still hangs after %v, want a result within %v", what, bound+20*time.Second, bound)
		return nil, 0
	}
}

// faultWantEIO checks that an operation needing the store fails with EIO
// within the bound.
func faultWantEIO(t *testing.T, what string, fn func() error) {
	t.Helper()
	err, d := faultBounded(t, what, faultBound, fn)
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("%s with the object store unreachable: %v after %v, want EIO", what, err, d)
	} else {
		t.Logf("%s with the object store unreachable: EIO after %v", what, d.Round(time.Millisecond))
	}
}

// faultCheckBucket waits until the bucket holds exactly want under prefix
// (keys and bytes; dir markers listed in dirs).
func faultCheckBucket(t *testing.T, e *env, prefix string, want map[string][]byte, dirs []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for k, v := range want {
		e.waitObject(t, k, v, time.Until(deadline))
	}
	wantKeys := map[string]bool{}
	for k := range want {
		wantKeys[k] = true
	}
	for _, d := range dirs {
		wantKeys[d] = true
	}
	for {
		got := e.keys(t, prefix)
		var extra, missing []string
		gotSet := map[string]bool{}
		for _, k := range got {
			gotSet[k] = true
			if !wantKeys[k] {
				extra = append(extra, k)
			}
		}
		for k := range wantKeys {
			if !gotSet[k] {
				missing = append(missing, k)
			}
		}
		if len(extra) == 0 && len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			sort.Strings(extra)
			sort.Strings(missing)
			t.Fatalf("bucket under %q after %v: %d keys not expected %q, %d keys missing %q", prefix, timeout,
				len(extra), extra[:min(len(extra), 20)], len(missing), missing[:min(len(missing), 20)])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// faultTree reads every regular file under root on a mount, keyed by its
// path relative to root, and lists directories separately.
func faultTree(t *testing.T, root string) (map[string][]byte, []string) {
	t.Helper()
	files := map[string][]byte{}
	var dirs []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if fi.IsDir() {
			if rel != "." {
				dirs = append(dirs, rel)
			}
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files[rel] = b
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	return files, dirs
}

// faultAlive fails the test if the daemon has exited.
func faultAlive(t *testing.T, m *mnt) {
	t.Helper()
	select {
	case <-m.done:
		t.Fatalf("mediafs exited: %v\n%s", m.exitErr, faultCrash(m.log()))
	default:
	}
}

// faultCrash returns the start of a Go crash report in a daemon log (or
// its end if there is none).
func faultCrash(log string) string {
	for _, w := range []string{"panic:", "fatal error:", "unexpected fault", "SIGBUS", "SIGSEGV"} {
		if i := strings.Index(log, w); i >= 0 {
			return log[max(0, i-2000):min(len(log), i+5000)]
		}
	}
	return tail(log, 6000)
}

// faultLoad is a write load on one directory of a mount, with the model
// of what every successful operation left there.
type faultLoad struct {
	t    *testing.T
	m    *mnt
	dir  string
	tag  string // names of this load's files start with it
	ops  *faultOps
	seed int64

	mu      sync.Mutex
	files   map[string][]byte // key -> bytes, of every acknowledged write
	gone    map[string]bool   // keys renamed away or deleted
	pending []string          // keys written during this load
	n       int
}

func newFaultLoad(t *testing.T, m *mnt, dir, tag string, ops *faultOps, seed int64) *faultLoad {
	return &faultLoad{t: t, m: m, dir: dir, tag: tag, ops: ops, seed: seed, files: map[string][]byte{}, gone: map[string]bool{}}
}

// step runs one operation of the mix: create, O_EXCL create, overwrite,
// rename of a pending file, delete, stat, listing.
func (l *faultLoad) step(r *rand.Rand) {
	l.mu.Lock()
	l.n++
	i := l.n
	var victim string
	if len(l.pending) > 0 {
		victim = l.pending[r.Intn(len(l.pending))]
	}
	l.mu.Unlock()
	key := fmt.Sprintf("%s/%sf-%04d.jpg", l.dir, l.tag, i)
	data := faultBytes(l.seed+int64(i), 1+r.Intn(200<<10))
	switch k := r.Intn(10); {
	case k < 4 || victim == "":
		if l.ops.do("create+write+close", func() error { return os.WriteFile(l.m.path(key), data, 0o644) }) == nil {
			l.add(key, data)
		}
	case k < 5:
		// Django's FileSystemStorage: O_CREAT|O_EXCL, then write.
		err := l.ops.do("excl-create+write+close", func() error {
			f, err := os.OpenFile(l.m.path(key), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				return err
			}
			if _, err := f.Write(data); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		})
		if err == nil {
			l.add(key, data)
		}
	case k < 6:
		if l.ops.do("overwrite", func() error { return os.WriteFile(l.m.path(victim), data, 0o644) }) == nil {
			l.add(victim, data)
		}
	case k < 7:
		to := fmt.Sprintf("%s/%srenamed-%04d.jpg", l.dir, l.tag, i)
		if l.ops.do("rename-pending", func() error { return os.Rename(l.m.path(victim), l.m.path(to)) }) == nil {
			l.mu.Lock()
			l.files[to] = l.files[victim]
			delete(l.files, victim)
			l.gone[victim] = true
			delete(l.gone, to)
			l.replacePending(victim, to)
			l.mu.Unlock()
		}
	case k < 8:
		if l.ops.do("unlink-pending", func() error { return os.Remove(l.m.path(victim)) }) == nil {
			l.mu.Lock()
			delete(l.files, victim)
			l.gone[victim] = true
			l.replacePending(victim, "")
			l.mu.Unlock()
		}
	case k < 9:
		l.mu.Lock()
		want, ok := l.files[victim]
		l.mu.Unlock()
		err := l.ops.do("stat+read-pending", func() error {
			b, err := os.ReadFile(l.m.path(victim))
			if err == nil && ok && !bytes.Equal(b, want) {
				return fmt.Errorf("%s: %d bytes that differ from the %d written", victim, len(b), len(want))
			}
			return err
		})
		_ = err
	default:
		l.ops.do("readdir", func() error {
			_, err := os.ReadDir(l.m.path(l.dir))
			return err
		})
	}
}

func (l *faultLoad) add(key string, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.files[key]; !ok {
		l.pending = append(l.pending, key)
	}
	l.files[key] = data
	delete(l.gone, key)
}

// replacePending swaps old for new ("" drops it). Caller holds l.mu.
func (l *faultLoad) replacePending(old, new string) {
	for i, k := range l.pending {
		if k == old {
			if new == "" {
				l.pending = append(l.pending[:i], l.pending[i+1:]...)
			} else {
				l.pending[i] = new
			}
			return
		}
	}
}

// run steps the load until stop is closed.
func (l *faultLoad) run(stop <-chan struct{}, seed int64) {
	r := rand.New(rand.NewSource(seed))
	for {
		select {
		case <-stop:
			return
		default:
		}
		l.step(r)
	}
}

// faultCachedReader stats and reads files cached before the fault.
func faultCachedReader(m *mnt, ops *faultOps, warm map[string][]byte, stop <-chan struct{}) {
	keys := make([]string, 0, len(warm))
	for k := range warm {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		k := keys[i%len(keys)]
		ops.do("stat-cached", func() error {
			fi, err := os.Stat(m.path(k))
			if err == nil && fi.Size() != int64(len(warm[k])) {
				return fmt.Errorf("%s: size %d, want %d", k, fi.Size(), len(warm[k]))
			}
			return err
		})
		ops.do("read-cached", func() error {
			b, err := os.ReadFile(m.path(k))
			if err == nil && !bytes.Equal(b, warm[k]) {
				return fmt.Errorf("%s: %d bytes that differ from the object", k, len(b))
			}
			return err
		})
	}
}

// faultSeedWarm puts objects in the bucket and reads them through the
// mount, so they are cached before a fault.
func faultSeedWarm(t *testing.T, e *env, m *mnt, n int) map[string][]byte {
	t.Helper()
	warm := map[string][]byte{}
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("warm/w-%02d.png", i)
		warm[k] = faultBytes(int64(100+i), 1000+i*37_000)
		e.putObject(t, k, warm[k], nil)
	}
	// One object over the whole-file limit: cached block by block.
	warm["warm/big.mp4"] = faultBytes(199, 12<<20+12345)
	e.putObject(t, "warm/big.mp4", warm["warm/big.mp4"], nil)
	for k, v := range warm {
		if b := readFile(t, m.path(k)); !bytes.Equal(b, v) {
			t.Fatalf("%s through the mount before the fault: differs", k)
		}
	}
	return warm
}

// faultOutageSetup mounts with the fault timeouts and prepares what an
// outage test needs: cached objects (warm), a directory load/ with files
// already uploaded, objects never read (cold/) and a directory never
// listed (unlisted/).
func faultOutageSetup(t *testing.T, e *env) (m *mnt, warm, before map[string][]byte) {
	t.Helper()
	e.putObject(t, "cold/never-read.txt", []byte("never read before the outage"), nil)
	e.putObject(t, "cold/never-read-big.bin", faultBytes(7, 10<<20), nil)
	e.putObject(t, "unlisted/inside.txt", []byte("in a directory never listed"), nil)
	m = e.mount(t, faultTimeoutFlags...)
	warm = faultSeedWarm(t, e, m, 8)
	if err := os.Mkdir(m.path("load"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.waitObject(t, "load/", nil, 20*time.Second)
	before = map[string][]byte{}
	for i := 0; i < 5; i++ {
		k := fmt.Sprintf("load/uploaded-%d.txt", i)
		before[k] = []byte(k)
		writeFile(t, m.path(k), before[k])
		e.waitObject(t, k, before[k], 20*time.Second)
	}
	if _, err := os.ReadDir(m.path("cold")); err != nil { // names known, bytes not
		t.Fatal(err)
	}
	if _, err := os.ReadDir(m.dir); err != nil { // "unlisted" is a known name
		t.Fatal(err)
	}
	return m, warm, before
}

// faultOutageUnderLoad runs, while the store is unreachable (the caller
// stopped or froze it), a write load on load/ and a reader of the cached
// files, and beside them the operations that need the store. Every load
// operation must run at local speed; every operation needing the store
// must fail with EIO within the bound. It returns the files load/ must
// hold once the store is back.
func faultOutageUnderLoad(t *testing.T, m *mnt, warm, before map[string][]byte, what string) map[string][]byte {
	t.Helper()
	// The first operation that needs the store finds out it is
	// unreachable, within the op timeout; from then on the mount knows.
	// (A stat may be served from the kernel's or the daemon's caches and
	// never ask: the read of an uncached object always does.)
	faultWantEIO(t, "the first read of an uncached object", func() error {
		_, err := os.ReadFile(m.path("cold/never-read.txt"))
		return err
	})
	time.Sleep(1200 * time.Millisecond) // past the listing TTL
	faultBounded(t, "the first stat after the store became unreachable", faultBound, func() error {
		_, err := os.Stat(m.path("load/uploaded-0.txt"))
		return err
	})
	faultBounded(t, "the first listing after the store became unreachable", faultBound, func() error {
		_, err := os.ReadDir(m.path("load"))
		return err
	})

	// Two writers and a reader of cached files, for ~15-20 s.
	ops := newFaultOps(faultLocal)
	// Each writer works on its own names, so that one never renames or
	// deletes what the other just did.
	loads := []*faultLoad{newFaultLoad(t, m, "load", "a-", ops, 1000), newFaultLoad(t, m, "load", "b-", ops, 2000)}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w, load := range loads {
		wg.Add(1)
		go func(w int, load *faultLoad) {
			defer wg.Done()
			load.run(stop, int64(w))
		}(w, load)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		faultCachedReader(m, ops, warm, stop)
	}()
	// A directory made during the outage, and files in it.
	offline := map[string][]byte{}
	if err := ops.do("mkdir", func() error { return os.Mkdir(m.path("load/newdir"), 0o755) }); err == nil {
		for i := 0; i < 10; i++ {
			k := fmt.Sprintf("load/newdir/n-%d.txt", i)
			if ops.do("create-in-new-dir", func() error { return os.WriteFile(m.path(k), []byte(k), 0o644) }) == nil {
				offline[k] = []byte(k)
			}
		}
	}
	for round := 0; round < 2; round++ {
		faultWantEIO(t, "reading an uncached object", func() error {
			_, err := os.ReadFile(m.path("cold/never-read.txt"))
			return err
		})
		faultWantEIO(t, "reading an uncached large object", func() error {
			f, err := os.Open(m.path("cold/never-read-big.bin"))
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.ReadAt(make([]byte, 4096), 5<<20)
			return err
		})
		faultWantEIO(t, "listing a directory never listed", func() error {
			_, err := os.ReadDir(m.path("unlisted"))
			return err
		})
		time.Sleep(4 * time.Second)
	}
	close(stop)
	waitCh := make(chan struct{})
	go func() { wg.Wait(); close(waitCh) }()
	select {
	case <-waitCh:
	case <-time.After(faultBound + 10*time.Second):
		t.Fatalf("the load did not stop: an operation hangs")
	}
	ops.check(t, what)
	faultAlive(t, m)

	want := map[string][]byte{}
	for k, v := range before {
		want[k] = v
	}
	for _, load := range loads {
		load.mu.Lock()
		for k, v := range load.files {
			want[k] = v
		}
		load.mu.Unlock()
	}
	for k, v := range offline {
		want[k] = v
	}
	return want
}

// faultAfterOutage checks, once the store is back, that load/ reached the
// bucket exactly and that what needed the store works again.
func faultAfterOutage(t *testing.T, e *env, m *mnt, want map[string][]byte) {
	t.Helper()
	t.Logf("%d files under load/ to reach the bucket", len(want))
	dirs := []string{"load/"}
	if _, ok := want["load/newdir/n-0.txt"]; ok {
		dirs = append(dirs, "load/newdir/")
	}
	faultCheckBucket(t, e, "load/", want, dirs, 60*time.Second)
	got, _ := faultTree(t, m.path("load"))
	for k, v := range want {
		if b, ok := got[strings.TrimPrefix(k, "load/")]; !ok || !bytes.Equal(b, v) {
			t.Errorf("%s through the mount after the outage: present %v, %d bytes, want %d", k, ok, len(b), len(v))
		}
	}
	if len(got) != len(want) {
		t.Errorf("the mount shows %d files under load/, want %d", len(got), len(want))
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(m.path("cold/never-read.txt"))
		_, lerr := os.ReadDir(m.path("unlisted"))
		if err == nil && string(b) == "never read before the outage" && lerr == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the outage: cold/never-read.txt %q %v; listing unlisted/: %v", b, err, lerr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if b := readFile(t, m.path("unlisted/inside.txt")); string(b) != "in a directory never listed" {
		t.Errorf("unlisted/inside.txt after the outage: %q", b)
	}
}

func TestFaultBackendDownUnderLoad(t *testing.T) {
	e := newEnv(t)
	m, warm, before := faultOutageSetup(t, e)
	e.minio.Stop()
	want := faultOutageUnderLoad(t, m, warm, before, "load with the object store down")
	e.minio.Restart(t)
	faultAfterOutage(t, e, m, want)
}

func TestFaultBackendHungUnderLoad(t *testing.T) {
	e := newEnv(t)
	m, warm, before := faultOutageSetup(t, e)
	pid := e.minio.PID()
	if pid == 0 {
		t.Fatal("MinIO is not running")
	}
	// A frozen server: connections are accepted by the kernel, requests
	// are sent, nothing ever answers.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	want := faultOutageUnderLoad(t, m, warm, before, "load with the object store hung")
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	faultAfterOutage(t, e, m, want)
}

// faultRunMount runs `mediafs mount` in the foreground with a deadline and
// returns its combined output and error (for mounts that must fail).
func faultRunMount(t *testing.T, e *env, timeout time.Duration, args ...string) (string, error, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, append([]string{"mount"}, args...)...)
	cmd.Env = append(cleanEnv(), e.minio.Env()...)
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	return string(out), err, time.Since(t0)
}

func TestFaultMountWithAFreshCacheFailsWhileTheStoreIsDown(t *testing.T) {
	e := newEnv(t)
	e.minio.Stop()
	base := t.TempDir()
	mp := filepath.Join(base, "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err, d := faultRunMount(t, e, 60*time.Second, "--endpoint", e.minio.Endpoint, "--cache-dir", filepath.Join(base, "cache"),
		"--request-timeout", "2s", e.bucket, mp)
	if err == nil {
		t.Fatalf("mount with a fresh cache dir and the store down succeeded:\n%s", out)
	}
	if isMounted(mp) {
		exec.Command("fusermount3", "-uz", mp).Run()
		t.Fatalf("the mountpoint is mounted although mediafs failed")
	}
	if !strings.Contains(out, "cannot reach") || !strings.Contains(out, e.minio.Endpoint) {
		t.Errorf("mount failed after %v without saying it cannot reach %s:\n%s", d, e.minio.Endpoint, out)
	}
	if strings.Contains(out, e.minio.SecretKey) || strings.Contains(out, e.minio.AccessKey) {
		t.Errorf("the error output shows the credentials")
	}
	if d > 20*time.Second {
		t.Errorf("mount took %v to fail, want about the request timeout", d)
	}
	t.Logf("mount failed after %v: %s", d.Round(time.Millisecond), strings.TrimSpace(tail(out, 400)))
	if _, err := os.Stat(filepath.Join(base, "cache", "db")); err == nil {
		t.Errorf("a failed mount left a journal in the fresh cache dir: the next start would take it for a used one")
	}
}

func TestFaultMountStartsFromAUsedCacheWhileTheStoreIsDown(t *testing.T) {
	e := newEnv(t)
	flags := append([]string{"--drain-timeout", "2s"}, faultTimeoutFlags...)
	m := e.mount(t, flags...)
	warm := faultSeedWarm(t, e, m, 4)
	if err := os.Mkdir(m.path("docs"), 0o755); err != nil {
		t.Fatal(err)
	}
	uploaded := []byte("uploaded before the outage")
	writeFile(t, m.path("docs/uploaded.txt"), uploaded)
	e.waitObject(t, "docs/uploaded.txt", uploaded, 20*time.Second)

	// The store goes away; more is written, and the daemon stops with it
	// still pending (the drain gives up after 2s).
	e.minio.Stop()
	pending := map[string][]byte{}
	for i := 0; i < 10; i++ {
		k := fmt.Sprintf("docs/pending-%d.pdf", i)
		pending[k] = faultBytes(int64(500+i), 30_000+i)
		writeFile(t, m.path(k), pending[k])
	}
	m.stop(t)
	if !strings.Contains(m.log(), "uploads still pending") {
		t.Errorf("the daemon did not say it stopped with uploads pending:\n%s", tail(m.log(), 3000))
	}

	// Restart with the store still down: it mounts from the cache.
	t0 := time.Now()
	m.restart(t)
	t.Logf("mounted from the used cache with the store down in %v", time.Since(t0).Round(time.Millisecond))
	if !strings.Contains(m.log(), "starting from the local cache") {
		t.Errorf("the daemon did not log that it starts from the local cache")
	}
	ops := newFaultOps(faultBound)
	for k, v := range pending {
		err := ops.do("read-pending", func() error {
			b, err := os.ReadFile(m.path(k))
			if err == nil && !bytes.Equal(b, v) {
				return fmt.Errorf("%s differs", k)
			}
			return err
		})
		if err != nil {
			t.Errorf("reading pending %s from the cache with the store down: %v", k, err)
		}
	}
	for k, v := range warm {
		err := ops.do("read-cached", func() error {
			b, err := os.ReadFile(m.path(k))
			if err == nil && !bytes.Equal(b, v) {
				return fmt.Errorf("%s differs", k)
			}
			return err
		})
		if err != nil {
			t.Errorf("reading cached %s with the store down after a restart: %v", k, err)
		}
	}
	ops.check(t, "serving from the cache after an offline start")
	// With no listing of docs/ since the restart, the mount cannot tell
	// what else the bucket holds there: a listing, or a name it has not
	// cached, may fail (EIO, at once), but never hangs or lies.
	more := []byte("written after the offline restart")
	for i := 0; i < 2; i++ {
		err, d := faultBounded(t, "listing docs/ after the offline start", faultBound, func() error {
			_, err := os.ReadDir(m.path("docs"))
			return err
		})
		t.Logf("listing docs/ after the offline start: %v after %v", err, d.Round(time.Millisecond))
		if err != nil && !errors.Is(err, syscall.EIO) {
			t.Errorf("listing docs/ after the offline start: %v, want success or EIO", err)
		}
		err, d = faultBounded(t, "creating a new file after the offline start", faultBound, func() error {
			return os.WriteFile(m.path("docs/after-restart.txt"), more, 0o644)
		})
		t.Logf("creating docs/after-restart.txt after the offline start: %v after %v", err, d.Round(time.Millisecond))
		if err == nil {
			pending["docs/after-restart.txt"] = more
		} else if !errors.Is(err, syscall.EIO) {
			t.Errorf("creating a file after the offline start: %v, want success or EIO", err)
		}
		if _, err := os.Stat(m.path("docs/never-existed.txt")); err != nil && !errors.Is(err, syscall.EIO) && !os.IsNotExist(err) {
			t.Errorf("stat of an unknown name after the offline start: %v", err)
		}
	}
	faultAlive(t, m)

	// The store comes back: everything pending reaches it.
	e.minio.Restart(t)
	pending["docs/uploaded.txt"] = uploaded
	faultCheckBucket(t, e, "docs/", pending, []string{"docs/"}, 60*time.Second)
}

// faultModel is what a workload was told is stored: every operation that
// returned success. An operation cut short by kill -9 is in doubt: its
// keys are set aside and checked at the end against what it may have
// left (see faultDoubt).
type faultModel struct {
	files  map[string][]byte // acknowledged files
	dirs   map[string]bool   // acknowledged directories (marker keys, "x/")
	doubts []faultDoubt
	held   map[string]bool // keys of doubts: no later operation uses them
}

// faultDoubt is one operation in flight when the daemon was killed.
type faultDoubt struct {
	what string
	keys []string
	// ok says whether what the keys hold (absent: ok false) is a state
	// the operation may have left: not started, done, or (for a write)
	// cut short.
	ok func(get func(key string) ([]byte, bool)) bool
}

func newFaultModel() *faultModel {
	return &faultModel{files: map[string][]byte{}, dirs: map[string]bool{}, held: map[string]bool{}}
}

func (fm *faultModel) doubt(what string, ok func(get func(string) ([]byte, bool)) bool, keys ...string) {
	fm.doubts = append(fm.doubts, faultDoubt{what: what, keys: keys, ok: ok})
	for _, k := range keys {
		fm.held[k] = true
		delete(fm.files, k)
		delete(fm.dirs, k)
	}
}

// pick returns a random acknowledged file under dir ("" if none).
func (fm *faultModel) pick(r *rand.Rand, dir string) string {
	var ks []string
	for k := range fm.files {
		if strings.HasPrefix(k, dir) && !strings.Contains(k[len(dir):], "/") {
			ks = append(ks, k)
		}
	}
	if len(ks) == 0 {
		return ""
	}
	sort.Strings(ks)
	return ks[r.Intn(len(ks))]
}

// faultPlausibleWrite reports whether got may be what a write of want
// over old left when it was cut short.
func faultPlausibleWrite(got []byte, gotOK bool, old []byte, oldOK bool, want []byte) bool {
	if !gotOK {
		return !oldOK
	}
	return oldOK && bytes.Equal(got, old) || bytes.HasPrefix(want, got)
}

// faultIsDead reports whether the daemon has exited (waiting a little for
// the kill to land).
func faultIsDead(m *mnt) bool {
	select {
	case <-m.done:
		return true
	case <-time.After(3 * time.Second):
		return false
	}
}

func TestFaultKill9AtRandomMoments(t *testing.T) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("MEDIAFS_FAULT_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d (rerun with MEDIAFS_FAULT_SEED=%d for the same schedule)", seed, seed)
	r := rand.New(rand.NewSource(seed))
	e := newEnv(t)
	m := e.mount(t, "--drain-timeout", "50s")
	fm := newFaultModel()

	// Before any kill: the top directory and a tree of 50 files to be
	// renamed as a whole.
	if err := os.Mkdir(m.path("chaos"), 0o755); err != nil {
		t.Fatal(err)
	}
	fm.dirs["chaos/"] = true
	tree := "chaos/tree-0/"
	if err := os.Mkdir(m.path(tree), 0o755); err != nil {
		t.Fatal(err)
	}
	fm.dirs[tree] = true
	for i := 0; i < 50; i++ {
		k := fmt.Sprintf("%sleaf-%02d.txt", tree, i)
		fm.files[k] = faultBytes(int64(i), 100+i*200)
		writeFile(t, m.path(k), fm.files[k])
	}
	treeGen := 0
	bigs := 0
	// written maps the hash of everything written to what it was, to
	// explain a mismatch.
	written := map[string]string{}
	for k, v := range fm.files {
		written[faultSHA(v)] = k
	}
	var history []string
	defer func() {
		if t.Failed() {
			t.Logf("operations:\n  %s", strings.Join(history, "\n  "))
		}
	}()
	ack := func(key string, data []byte, n int) {
		fm.files[key] = data
		written[faultSHA(data)] = fmt.Sprintf("%s (op %d)", key, n)
	}

	get := func(key string) ([]byte, bool) {
		if strings.HasSuffix(key, "/") {
			st, err := os.Stat(m.path(key))
			return nil, err == nil && st.IsDir()
		}
		b, err := os.ReadFile(m.path(key))
		if err != nil {
			if !os.IsNotExist(err) {
				t.Errorf("reading %s through the mount: %v", key, err)
			}
			return nil, false
		}
		return b, true
	}

	const rounds = 5
	n := 0
	for round := 0; round < rounds; round++ {
		killAt := time.Duration(200+r.Intn(2300)) * time.Millisecond
		t.Logf("round %d: kill -9 after %v", round, killAt)
		proc := m.cmd.Process
		killed := time.AfterFunc(killAt, func() { proc.Kill() })
		ops := 0
		for {
			n++
			ops++
			var what string
			var err error
			var onOK func()
			var onDoubt func()
			switch k := r.Intn(20); {
			case k == 0 && bigs < 3 || ops == 3 && round == 1:
				// A 40 MiB file: uploaded in parts.
				key := fmt.Sprintf("chaos/big-%03d.mp4", n)
				data := faultBytes(int64(n)*7919, 40<<20)
				bigs++
				what = "write 40 MiB " + key
				err = os.WriteFile(m.path(key), data, 0o644)
				onOK = func() { ack(key, data, n) }
				onDoubt = func() {
					fm.doubt(what, func(get func(string) ([]byte, bool)) bool {
						b, ok := get(key)
						return faultPlausibleWrite(b, ok, nil, false, data)
					}, key)
				}
			case k == 1 || ops == 2 && round == 2:
				// Rename the tree of 50 files: all or nothing.
				if tree == "" {
					continue
				}
				from := tree
				to := fmt.Sprintf("chaos/tree-%d/", treeGen+1)
				var moved []string
				for f := range fm.files {
					if strings.HasPrefix(f, from) {
						moved = append(moved, f[len(from):])
					}
				}
				what = "rename directory " + from + " -> " + to
				err = os.Rename(m.path(strings.TrimSuffix(from, "/")), m.path(strings.TrimSuffix(to, "/")))
				onOK = func() {
					for _, f := range moved {
						fm.files[to+f] = fm.files[from+f]
						delete(fm.files, from+f)
					}
					delete(fm.dirs, from)
					fm.dirs[to] = true
					tree, treeGen = to, treeGen+1
				}
				onDoubt = func() {
					contents := map[string][]byte{}
					var keys []string
					for _, f := range moved {
						contents[f] = fm.files[from+f]
						keys = append(keys, from+f, to+f)
					}
					keys = append(keys, from, to)
					fm.doubt(what, func(get func(string) ([]byte, bool)) bool {
						side := func(dir string) int { // files of the tree found under dir
							c := 0
							for _, f := range moved {
								if b, ok := get(dir + f); ok {
									if !bytes.Equal(b, contents[f]) {
										return -1
									}
									c++
								}
							}
							return c
						}
						a, b := side(from), side(to)
						_, fromDir := get(from)
						_, toDir := get(to)
						good := a == len(moved) && b == 0 && fromDir || a == 0 && b == len(moved) && toDir && !fromDir
						if !good {
							var where []string
							for _, f := range moved {
								_, x := get(from + f)
								_, y := get(to + f)
								where = append(where, fmt.Sprintf("%s:%v/%v", f, x, y))
							}
							t.Logf("%s: %d of %d files under the old name, %d under the new; old dir %v, new dir %v; file:old/new %s",
								what, a, len(moved), b, fromDir, toDir, strings.Join(where, " "))
						}
						return good
					}, keys...)
					tree = "" // no more tree renames
				}
			case k < 9:
				key := fmt.Sprintf("chaos/new-%04d.jpg", n)
				data := faultBytes(int64(n), 1+r.Intn(300<<10))
				what = "create " + key
				err = os.WriteFile(m.path(key), data, 0o644)
				onOK = func() { ack(key, data, n) }
				onDoubt = func() {
					fm.doubt(what, func(get func(string) ([]byte, bool)) bool {
						b, ok := get(key)
						return faultPlausibleWrite(b, ok, nil, false, data)
					}, key)
				}
			case k < 13:
				key := fm.pick(r, "chaos/")
				if key == "" {
					continue
				}
				old := fm.files[key]
				data := faultBytes(int64(n)+1e6, 1+r.Intn(300<<10))
				what = "overwrite " + key
				err = os.WriteFile(m.path(key), data, 0o644)
				onOK = func() { ack(key, data, n) }
				onDoubt = func() {
					fm.doubt(what, func(get func(string) ([]byte, bool)) bool {
						b, ok := get(key)
						return faultPlausibleWrite(b, ok, old, true, data)
					}, key)
				}
			case k < 17:
				key := fm.pick(r, "chaos/")
				if key == "" {
					continue
				}
				to := fmt.Sprintf("chaos/moved-%04d.jpg", n)
				data := fm.files[key]
				what = "rename " + key + " -> " + to
				err = os.Rename(m.path(key), m.path(to))
				onOK = func() {
					fm.files[to] = data
					delete(fm.files, key)
				}
				onDoubt = func() {
					fm.doubt(what, func(get func(string) ([]byte, bool)) bool {
						a, aok := get(key)
						b, bok := get(to)
						return aok && !bok && bytes.Equal(a, data) || !aok && bok && bytes.Equal(b, data)
					}, key, to)
				}
			default:
				key := fm.pick(r, "chaos/")
				if key == "" {
					continue
				}
				data := fm.files[key]
				what = "delete " + key
				err = os.Remove(m.path(key))
				onOK = func() { delete(fm.files, key) }
				onDoubt = func() {
					fm.doubt(what, func(get func(string) ([]byte, bool)) bool {
						b, ok := get(key)
						return !ok || bytes.Equal(b, data)
					}, key)
				}
			}
			if err == nil {
				onOK()
				history = append(history, fmt.Sprintf("round %d op %d: %s", round, n, what))
				continue
			}
			if !faultIsDead(m) {
				t.Errorf("round %d: %s failed with the daemon running: %v", round, what, err)
			}
			t.Logf("round %d: after %d ops, %s was cut short: %v", round, ops, what, err)
			onDoubt()
			history = append(history, fmt.Sprintf("round %d op %d: %s (cut short)", round, n, what))
			break
		}
		killed.Stop()
		m.kill9(t)
		m.restart(t)
		// Right after the restart the mount shows every acknowledged
		// file, and each doubt in one of its possible states.
		for k, v := range fm.files {
			if b, ok := get(k); !ok || !bytes.Equal(b, v) {
				t.Errorf("round %d: %s after the restart: present %v, %d bytes, want the %d acknowledged; %s",
					round, k, ok, len(b), len(v), faultWhose(e, b, written))
			}
		}
		for _, d := range fm.doubts {
			if !d.ok(get) {
				t.Errorf("round %d: after the restart, %s (cut short) left a state it cannot have left", round, d.what)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}

	// A clean stop drains everything; the bucket then holds exactly the
	// acknowledged state (and each doubt in one possible state).
	m.stop(t)
	bget := func(key string) ([]byte, bool) {
		b, _, err := e.getObject(key)
		if err != nil {
			return nil, false
		}
		return b, true
	}
	want := map[string]bool{}
	for k := range fm.files {
		want[k] = true
	}
	for k := range fm.dirs {
		want[k] = true
	}
	for _, d := range fm.doubts {
		if !d.ok(bget) {
			t.Errorf("in the bucket, %s (cut short) left a state it cannot have left", d.what)
		}
		for _, k := range d.keys {
			if _, ok := bget(k); ok {
				want[k] = true
			}
		}
	}
	got := map[string]bool{}
	for _, k := range e.keys(t, "chaos/") {
		got[k] = true
		if !want[k] {
			t.Errorf("the bucket holds %s, which no acknowledged operation left", k)
		}
	}
	for k := range want {
		if !got[k] {
			t.Errorf("the bucket lacks %s", k)
		}
	}
	for k, v := range fm.files {
		if b, ok := bget(k); !ok || !bytes.Equal(b, v) {
			t.Errorf("bucket %s: present %v, %d bytes, want the %d acknowledged", k, ok, len(b), len(v))
		}
	}
	t.Logf("%d acknowledged files, %d directories, %d operations in doubt", len(fm.files), len(fm.dirs), len(fm.doubts))

	// And a fresh start of the mount shows the same.
	m.restart(t)
	files, dirs := faultTree(t, m.dir)
	for k, v := range fm.files {
		if b, ok := files[k]; !ok || !bytes.Equal(b, v) {
			t.Errorf("mount %s: present %v, %d bytes, want the %d acknowledged", k, ok, len(b), len(v))
		}
	}
	for k := range files {
		if !want[k] {
			t.Errorf("the mount shows %s, which no acknowledged operation left", k)
		}
	}
	shown := map[string]bool{}
	for _, d := range dirs {
		shown[d+"/"] = true
		if want[d+"/"] {
			continue
		}
		if ents, _ := os.ReadDir(m.path(d)); len(ents) == 0 && len(e.keys(t, d+"/")) == 0 && !want[d] {
			// MinIO (one drive) can leave the data of an object written
			// and deleted around a kill -9 without its xl.meta; it then
			// lists that path as an empty common prefix, though no
			// object is below it. Not the mount's doing.
			t.Logf("MinIO lists an empty common prefix %s/ with no object below it; %s", d, faultServerView(t, e, d))
			continue
		}
		t.Errorf("the mount shows directory %s, which no acknowledged operation left; %s", d, faultServerView(t, e, d))
	}
	for k := range want {
		if strings.HasSuffix(k, "/") && !shown[k] {
			t.Errorf("the mount lacks directory %s", k)
		}
	}
}

// faultTmpfs mounts a tmpfs of size bytes and unmounts it when the test
// ends (after the daemon using it, whose cleanup is registered later).
func faultTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		for i := 0; i < 20; i++ {
			if exec.Command("umount", dir).Run() == nil {
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
		exec.Command("umount", "-l", dir).Run()
	})
	return dir
}

// faultWriteAll creates path and writes data in 1 MiB writes; it reports
// the first error and whether close succeeded.
func faultWriteAll(path string, data []byte) (written int, closeErr, err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, nil, err
	}
	for written < len(data) {
		n, werr := f.Write(data[written:min(len(data), written+1<<20)])
		written += n
		if werr != nil {
			err = werr
			break
		}
	}
	closeErr = f.Close()
	if err == nil {
		err = closeErr
	}
	return written, closeErr, err
}

func TestFaultCacheDiskFull(t *testing.T) {
	e := newEnv(t)
	cacheDir := faultTmpfs(t, "64m")
	const wait = 2 * time.Second
	m := e.mount(t, append([]string{"--cache-dir", cacheDir, "--cache-full-wait", wait.String(), "--drain-timeout", "5s"}, faultTimeoutFlags...)...)
	if err := os.Mkdir(m.path("full"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.waitObject(t, "full/", nil, 20*time.Second)
	if _, err := os.ReadDir(m.path("full")); err != nil { // the mount knows it
		t.Fatal(err)
	}
	// Nothing can be uploaded, so nothing written can be evicted.
	e.minio.Stop()

	acked := map[string][]byte{}
	bound := wait + 5*time.Second
	var sawENOSPC bool
	// 4 MiB files until the cache refuses.
	fails := 0
	for i := 0; i < 30 && fails < 2; i++ {
		k := fmt.Sprintf("full/f-%02d.bin", i)
		data := faultBytes(int64(i), 4<<20)
		var err error
		_, d := faultBounded(t, "writing "+k+" to a full cache", bound, func() error {
			_, _, err = faultWriteAll(m.path(k), data)
			return err
		})
		switch {
		case err == nil:
			acked[k] = data
		case errors.Is(err, syscall.ENOSPC):
			sawENOSPC = true
			fails++
			t.Logf("%s: ENOSPC after %v", k, d.Round(time.Millisecond))
		default:
			t.Errorf("writing %s to a full cache: %v, want success or ENOSPC", k, err)
			fails++
		}
		faultAlive(t, m)
	}
	if !sawENOSPC {
		t.Fatalf("wrote %d files of 4 MiB to a 64 MiB cache with the store down and never got ENOSPC", len(acked))
	}
	t.Logf("%d files of 4 MiB acknowledged before ENOSPC", len(acked))

	// A writer that opened while there was room and writes far more than
	// fits: its write fails with ENOSPC, the daemon lives on.
	// Room for one open: two files are deleted (never uploaded, they
	// free their space at once).
	for _, k := range []string{"full/f-00.bin", "full/f-01.bin"} {
		if err := os.Remove(m.path(k)); err != nil {
			t.Fatal(err)
		}
		delete(acked, k)
	}
	var bigWritten int
	var bigErr, bigClose error
	bigOpened := false
	big := faultBytes(99, 80<<20)
	faultBounded(t, "writing 80 MiB into the full cache", bound+10*time.Second, func() error {
		bigWritten, bigClose, bigErr = faultWriteAll(m.path("full/huge.bin"), big)
		_, serr := os.Stat(m.path("full/huge.bin"))
		bigOpened = serr == nil
		return bigErr
	})
	t.Logf("80 MiB writer: opened %v, %d bytes written, err %v, close %v", bigOpened, bigWritten, bigErr, bigClose)
	if bigErr == nil {
		t.Errorf("writing 80 MiB into a 64 MiB cache succeeded")
	} else if !errors.Is(bigErr, syscall.ENOSPC) {
		t.Errorf("writing 80 MiB into a 64 MiB cache: %v, want ENOSPC", bigErr)
	}
	faultAlive(t, m)
	// Still full: a new file waits, then ENOSPC; nothing hangs.
	err, d := faultBounded(t, "creating a file in the full cache", bound, func() error {
		return os.WriteFile(m.path("full/one-more.bin"), []byte("x"), 0o644)
	})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("creating a file in the full cache: %v after %v, want ENOSPC", err, d)
	}
	faultAlive(t, m)
	// Every file whose close succeeded is intact, and stat works.
	for k, v := range acked {
		if b, err := os.ReadFile(m.path(k)); err != nil || !bytes.Equal(b, v) {
			t.Errorf("%s (acknowledged) read back from the full cache: %v, %d bytes", k, err, len(b))
		}
	}
	if _, err := os.ReadDir(m.path("full")); err != nil {
		t.Errorf("listing the full cache's directory: %v", err)
	}
	if strings.Contains(m.log(), "panic") || strings.Contains(m.log(), "SIGBUS") {
		t.Fatalf("the daemon log shows a crash:\n%s", faultCrash(m.log()))
	}

	// The store comes back: uploads drain, space frees, and new writes
	// succeed again without a restart.
	e.minio.Restart(t)
	for k, v := range acked {
		e.waitObject(t, k, v, 60*time.Second)
	}
	if bigOpened && bigClose == nil {
		// Closed with what fitted: it is uploaded as it was left.
		deadline := time.Now().Add(60 * time.Second)
		for {
			b, _, err := e.getObject("full/huge.bin")
			if err == nil && len(b) > 0 && bytes.HasPrefix(big, b) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("full/huge.bin (closed after ENOSPC) in the bucket: %v, %d bytes; want a prefix of what was written", err, len(b))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	after := map[string][]byte{}
	for i := 0; i < 20; i++ { // 80 MiB: more than the whole cache disk
		k := fmt.Sprintf("full/after-%02d.bin", i)
		data := faultBytes(int64(1000+i), 4<<20)
		var err error
		_, d := faultBounded(t, "writing "+k+" after the store came back", bound+10*time.Second, func() error {
			_, _, err = faultWriteAll(m.path(k), data)
			return err
		})
		if err != nil {
			t.Fatalf("writing %s after the store came back: %v after %v", k, err, d)
		}
		after[k] = data
	}
	for k, v := range after {
		e.waitObject(t, k, v, 60*time.Second)
	}
	// Everything still reads back (evicted files come from the bucket).
	for _, set := range []map[string][]byte{acked, after} {
		for k, v := range set {
			if b, err := os.ReadFile(m.path(k)); err != nil || !bytes.Equal(b, v) {
				t.Errorf("%s read back after the cache filled and drained: %v, %d bytes", k, err, len(b))
			}
		}
	}
	faultAlive(t, m)
	if n := strings.Count(m.log(), "cache disk full"); n == 0 {
		t.Errorf("the daemon never logged that the cache disk was full")
	}
}

// faultWhose explains bytes found where others were expected.
func faultWhose(e *env, b []byte, written map[string]string) string {
	if w, ok := written[faultSHA(b)]; ok {
		return "they are the bytes written as " + w
	}
	return fmt.Sprintf("bytes not written by any acknowledged op (sha %s...)", faultSHA(b)[:12])
}

// faultServerView describes what the server holds at key, to explain a
// surprise: its one-level listing from key, and MinIO's files for it.
func faultServerView(t *testing.T, e *env, key string) string {
	key = strings.TrimSuffix(key, "/")
	var out []string
	for o := range e.client().ListObjects(context.Background(), e.bucket, minio.ListObjectsOptions{Prefix: key}) {
		out = append(out, fmt.Sprintf("listed %q size %d etag %q err %v", o.Key, o.Size, o.ETag, o.Err))
	}
	if pid := e.minio.PID(); pid != 0 {
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
			args := strings.Split(string(cmdline), "\x00")
			if len(args) > 2 {
				p := filepath.Join(args[2], e.bucket, key)
				fout, _ := exec.Command("find", p, "-ls").CombinedOutput()
				out = append(out, "MinIO files:\n"+string(fout))
			}
		}
	}
	return strings.Join(out, "\n")
}

// Renaming a directory again and again, faster than the uploader copies
// it, must not lose a file: each rename moves the pending copies on, and
// the delete of the original waits for the copy that reads it now (it
// once checked that copy and its own record apart, so a rename in between
// let it delete the source of the moved copy: "copy source vanished").
func TestFaultRapidDirectoryRenamesKeepEveryFile(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	if err := os.MkdirAll(m.path("c/tree-0"), 0o755); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for i := 0; i < 30; i++ {
		k := fmt.Sprintf("leaf-%02d.txt", i)
		want[k] = faultBytes(int64(i), 100+i*200)
		writeFile(t, m.path("c/tree-0/"+k), want[k])
	}
	for k, v := range want {
		e.waitObject(t, "c/tree-0/"+k, v, 30*time.Second)
	}
	gen := 0
	for round := 0; round < 20; round++ {
		time.Sleep(time.Duration(round%5) * 40 * time.Millisecond)
		from, to := fmt.Sprintf("c/tree-%d", gen), fmt.Sprintf("c/tree-%d", gen+1)
		if err := os.Rename(m.path(from), m.path(to)); err != nil {
			t.Fatalf("rename %s -> %s: %v", from, to, err)
		}
		gen++
		if round == 12 {
			m.kill9(t)
			m.restart(t)
		}
	}
	final := fmt.Sprintf("c/tree-%d/", gen)
	m.stop(t)
	files := map[string][]byte{}
	for k, v := range want {
		files[final+k] = v
	}
	faultCheckBucket(t, e, "c/", files, []string{"c/", final}, 30*time.Second)
	if n := strings.Count(m.log(), "copy source vanished"); n > 0 {
		t.Errorf("%d renames were dropped (copy source vanished)", n)
	}
}

// A file renamed (or deleted) while its upload is in flight: the object
// the upload leaves under the old name must be deleted, even when the
// daemon is killed right after (the journal must know an upload of that
// key was sent before it is sent, not only once it is answered).
func TestFaultRenameDuringUploadLeavesNoGhost(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	if err := os.Mkdir(m.path("p"), 0o755); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for i := 0; i < 6; i++ {
		big := faultBytes(int64(i), 40<<20)
		small := faultBytes(int64(i)+100, 77962)
		k := fmt.Sprintf("p/big-%d.mp4", i)
		writeFile(t, m.path(k), big)
		time.Sleep(time.Duration(i%3) * 300 * time.Millisecond) // upload in flight, or done
		writeFile(t, m.path(k), small)
		to := fmt.Sprintf("p/moved-%d.jpg", i)
		if i%2 == 0 {
			time.Sleep(300 * time.Millisecond)
		}
		if err := os.Rename(m.path(k), m.path(to)); err != nil {
			t.Fatal(err)
		}
		want[to] = small
		if b, err := os.ReadFile(m.path(to)); err != nil || !bytes.Equal(b, small) {
			t.Errorf("%s right after the rename: %v, %d bytes", to, err, len(b))
		}
		if i%2 == 0 {
			m.kill9(t)
			m.restart(t)
		}
	}
	m.stop(t)
	faultCheckBucket(t, e, "p/", want, []string{"p/"}, 60*time.Second)
}
