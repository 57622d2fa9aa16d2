package main

// End-to-end tests of the promises of the write-back journal: what close,
// fsync and SIGTERM guarantee when the daemon is killed, when the object
// store goes away, and what a second mount of the bucket sees.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// wantNoKeys fails if the bucket holds any key under prefix.
func (e *env) wantNoKeys(t *testing.T, prefix, why string) {
	t.Helper()
	if ks := e.keys(t, prefix); len(ks) > 0 {
		t.Fatalf("%s: the bucket already holds %d keys (%q...), want none", why, len(ks), ks[0])
	}
}

// wantNoSecretInLog fails if the daemon's log holds the secret key
// (failed requests are logged while the store is down).
func wantNoSecretInLog(t *testing.T, e *env, m *mnt) {
	t.Helper()
	if strings.Contains(m.log(), e.minio.SecretKey) {
		t.Errorf("the daemon's log contains the secret key")
	}
}

// writeBatch writes n small files of varied sizes under dir on m and
// returns their keys and bytes.
func writeBatch(t *testing.T, m *mnt, dir string, n int, seed int64) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("%s/file-%03d.jpg", dir, i)
		data := seededBytes(seed+int64(i), 1+(i*7919)%(64<<10))
		writeFile(t, m.path(key), data)
		files[key] = data
	}
	return files
}

// checkBucketAndMount waits for every file in the bucket and then reads it
// back through m.
func checkBucketAndMount(t *testing.T, e *env, m *mnt, files map[string][]byte, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for k, v := range files {
		e.waitObject(t, k, v, time.Until(deadline))
	}
	for k, v := range files {
		if b := readFile(t, m.path(k)); sha(b) != sha(v) {
			t.Errorf("%s through the mount: %d bytes that differ from what was written (%d)", k, len(b), len(v))
		}
	}
}

func TestCloseThenKillKeepsData(t *testing.T) {
	e := newEnv(t)
	// Nothing is uploaded on its own: whatever reaches the bucket comes
	// from the journal replay after the restart.
	m := e.mount(t, "--writeback-delay", "1h")
	if err := os.Mkdir(m.path("batch"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := writeBatch(t, m, "batch", 50, 1000)
	big := seededBytes(2000, 40<<20)
	writeFile(t, m.path("batch/big.mp4"), big)
	files["batch/big.mp4"] = big

	m.kill9(t)
	e.wantNoKeys(t, "", "after kill -9 with a 1h write-back delay")

	m.restart(t)
	checkBucketAndMount(t, e, m, files, 40*time.Second)
	if got := len(e.keys(t, "batch/")); got != len(files)+1 { // and the marker
		t.Errorf("bucket holds %d keys under batch/, want %d files and the directory marker", got, len(files))
	}
	wantLs(t, m.path("batch"), keysToNames(files, "batch/")...)
	wantNoSecretInLog(t, e, m)
}

func keysToNames(files map[string][]byte, prefix string) []string {
	var out []string
	for k := range files {
		out = append(out, k[len(prefix):])
	}
	return out
}

func TestFsyncThenKillKeepsData(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t, "--writeback-delay", "1h")
	data := seededBytes(3000, 3<<20)
	f := openT(t, m.path("db.sqlite"), os.O_CREATE|os.O_RDWR, 0o644)
	if _, err := f.Write(data[:1<<20]); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	if _, err := f.Write(data[1<<20:]); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("second fsync: %v", err)
	}
	// Killed with the file still open: fsync alone must have made the
	// data and its journal record last.
	m.kill9(t)
	f.Close() // the dead mount's descriptor; its error does not matter
	e.wantNoKeys(t, "", "after kill -9 with a 1h write-back delay")

	m.restart(t)
	checkBucketAndMount(t, e, m, map[string][]byte{"db.sqlite": data}, 30*time.Second)
}

func TestSigtermUploadsEverythingBeforeExit(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t, "--writeback-delay", "1h")
	if err := os.Mkdir(m.path("drain"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := writeBatch(t, m, "drain", 20, 4000)
	mid := seededBytes(5000, 5<<20)
	writeFile(t, m.path("drain/video.mp4"), mid)
	files["drain/video.mp4"] = mid
	if err := os.Mkdir(m.path("drain/empty"), 0o700); err != nil {
		t.Fatal(err)
	}
	e.wantNoKeys(t, "", "before SIGTERM with a 1h write-back delay")

	m.stop(t) // SIGTERM; checks a clean exit and the unmount
	for k, v := range files {
		b, _, err := e.getObject(k)
		if err != nil || !bytes.Equal(b, v) {
			t.Errorf("%s not in the bucket right after exit: %v (%d bytes, want %d)", k, err, len(b), len(v))
		}
	}
	if _, _, err := e.getObject("drain/empty/"); err != nil {
		t.Errorf("directory marker drain/empty/ not in the bucket after exit: %v", err)
	}
}

func TestUploadCloseReturnsOnceTheObjectIsInTheBucket(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t, "--upload", "close", "--writeback-delay", "1h")
	for i, size := range []int{0, 1, 100_000, 20 << 20} {
		key := fmt.Sprintf("sync-%d.bin", i)
		data := seededBytes(int64(6000+i), size)
		writeFile(t, m.path(key), data)
		// No waiting: close has returned, so it is there.
		b, _, err := e.getObject(key)
		if err != nil || !bytes.Equal(b, data) {
			t.Fatalf("%s (%d bytes) right after close: %v, %d bytes", key, size, err, len(b))
		}
	}
	// An overwrite through an open descriptor too.
	f := openT(t, m.path("sync-2.bin"), os.O_WRONLY, 0)
	writeAtT(t, f, []byte("NEW"), 0)
	closeT(t, f)
	b, _, err := e.getObject("sync-2.bin")
	if err != nil || !bytes.HasPrefix(b, []byte("NEW")) || len(b) != 100_000 {
		t.Fatalf("sync-2.bin right after overwrite and close: %v, %d bytes, prefix %q", err, len(b), b[:min(3, len(b))])
	}
}

func TestWritesDuringAnOutageSucceedAndUploadLater(t *testing.T) {
	e := newEnv(t)
	e.putObject(t, "out/existing.txt", []byte("from before\n"), nil)
	m := e.mount(t, "--request-timeout", "3s", "--op-timeout", "5s")
	lsNames(t, m.path("out")) // the mount has seen the directory
	e.minio.Stop()
	// Past the listing TTL: the mount has to find out the store is down.
	time.Sleep(1500 * time.Millisecond)

	files := map[string][]byte{}
	// The first operation that needs the store pays for finding out it
	// is down (bounded by the timeouts); after that, local speed.
	var slow []string
	timed := func(key string, d time.Duration) {
		if d > 8*time.Second {
			t.Errorf("writing %s took %v with the object store down", key, d)
		}
		if d > time.Second {
			slow = append(slow, fmt.Sprintf("%s (%v)", key, d.Round(time.Millisecond)))
		}
	}
	start := time.Now()
	for i := 0; i < 30; i++ {
		key := fmt.Sprintf("out/offline-%02d.jpg", i)
		data := seededBytes(int64(7000+i), 10_000+i*1000)
		t0 := time.Now()
		writeFile(t, m.path(key), data)
		timed(key, time.Since(t0))
		files[key] = data
	}
	big := seededBytes(7100, 12<<20)
	writeFile(t, m.path("out/offline-big.mp4"), big)
	files["out/offline-big.mp4"] = big
	// A new directory and a file in it, while the store is down.
	if err := os.Mkdir(m.path("out/newdir"), 0o755); err != nil {
		t.Errorf("mkdir while the object store is down: %v", err)
	} else {
		for i := 0; i < 5; i++ {
			key := fmt.Sprintf("out/newdir/inside-%d.txt", i)
			t0 := time.Now()
			if err := os.WriteFile(m.path(key), []byte(key), 0o644); err != nil {
				t.Errorf("writing into a directory made during the outage: %v", err)
				break
			}
			timed(key, time.Since(t0))
			files[key] = []byte(key)
		}
	}
	if len(slow) > 1 {
		t.Errorf("%d writes took over 1s with the object store down, want only the first: %q", len(slow), slow)
	}
	t.Logf("wrote %d files with the object store down in %v; over 1s: %q", len(files), time.Since(start), slow)
	// What was written reads back while the store is down.
	for k, v := range files {
		if b := readFile(t, m.path(k)); !bytes.Equal(b, v) {
			t.Errorf("%s read back while the store is down: differs", k)
		}
	}
	time.Sleep(3 * time.Second) // uploads fail and back off meanwhile
	e.minio.Restart(t)
	checkBucketAndMount(t, e, m, files, 40*time.Second)
	wantNoSecretInLog(t, e, m)
	if b, _, err := e.getObject("out/existing.txt"); err != nil || string(b) != "from before\n" {
		t.Errorf("out/existing.txt changed: %q %v", b, err)
	}
}

func TestReadingAnUncachedFileDuringAnOutageFailsInsteadOfHanging(t *testing.T) {
	e := newEnv(t)
	e.putObject(t, "cold/small.txt", []byte("never read before"), nil)
	e.putObject(t, "cold/large.bin", seededBytes(8000, 20<<20), nil)
	m := e.mount(t, "--request-timeout", "3s", "--op-timeout", "5s")
	lsNames(t, m.path("cold")) // names known, bytes never fetched
	e.minio.Stop()

	for _, name := range []string{"cold/small.txt", "cold/large.bin"} {
		type result struct {
			err error
			d   time.Duration
		}
		done := make(chan result, 1)
		go func() {
			t0 := time.Now()
			_, err := os.ReadFile(m.path(name))
			done <- result{err, time.Since(t0)}
		}()
		select {
		case r := <-done:
			if !errors.Is(r.err, syscall.EIO) {
				t.Errorf("reading %s with the store down: %v after %v, want EIO", name, r.err, r.d)
			} else {
				t.Logf("reading %s with the store down: %v after %v", name, r.err, r.d)
			}
			// The kernel retries a failed read once or twice, each bounded
			// by the 5s op timeout.
			if r.d > 25*time.Second {
				t.Errorf("reading %s took %v to fail, want within the daemon's timeouts (5s op timeout)", name, r.d)
			}
		case <-time.After(40 * time.Second):
			t.Fatalf("reading %s with the store down still hangs after 40s", name)
		}
	}
	// Once the store is back, the same reads work.
	e.minio.Restart(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(m.path("cold/small.txt"))
		if err == nil && string(b) == "never read before" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cold/small.txt after the store is back: %q %v", b, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestSecondMountSeesWritesAndDeletes(t *testing.T) {
	e := newEnv(t)
	a := e.mount(t)
	b := e.mount(t)
	// b has looked before: its cached "no such file" must not stick.
	if _, err := os.Stat(b.path("shared/report.pdf")); !os.IsNotExist(err) {
		t.Fatalf("stat before the write: %v", err)
	}
	if err := os.MkdirAll(a.path("shared"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := seededBytes(9000, 1<<20)
	writeFile(t, a.path("shared/report.pdf"), data)
	took := waitFile(t, b.path("shared/report.pdf"), data, 10*time.Second)
	t.Logf("write on A readable on B after %v", took)
	wantLs(t, b.path("shared"), "report.pdf")

	// A rewrite on A replaces what B reads (close-to-open).
	v2 := seededBytes(9001, 600_000)
	writeFile(t, a.path("shared/report.pdf"), v2)
	took = waitFile(t, b.path("shared/report.pdf"), v2, 10*time.Second)
	t.Logf("rewrite on A readable on B after %v", took)

	// Concurrent small files from both sides.
	var wg sync.WaitGroup
	for side, m := range map[string]*mnt{"a": a, "b": b} {
		wg.Add(1)
		go func(side string, m *mnt) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				os.WriteFile(m.path(fmt.Sprintf("shared/%s-%d.txt", side, i)), []byte(side+fmt.Sprint(i)), 0o644)
			}
		}(side, m)
	}
	wg.Wait()
	for _, side := range []string{"a", "b"} {
		for i := 0; i < 10; i++ {
			name := fmt.Sprintf("shared/%s-%d.txt", side, i)
			want := []byte(side + fmt.Sprint(i))
			waitFile(t, a.path(name), want, 10*time.Second)
			waitFile(t, b.path(name), want, 10*time.Second)
		}
	}

	if err := os.Remove(a.path("shared/report.pdf")); err != nil {
		t.Fatal(err)
	}
	e.waitGone(t, "shared/report.pdf", 20*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := os.Stat(b.path("shared/report.pdf"))
		if os.IsNotExist(err) && !hasName(lsNames(t, b.path("shared")), "report.pdf") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shared/report.pdf still visible on B 10s after the delete reached the bucket (stat: %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.ReadFile(b.path("shared/report.pdf")); !os.IsNotExist(err) {
		t.Errorf("read on B after the delete: %v, want ENOENT", err)
	}
}
