package main

// End-to-end tests of namespace operations as unchanged programs use them:
// unlink, mkdir/rmdir, rename of files and directory trees (also across a
// kill -9), chmod/chown/utimens, symlinks, hard links, statfs, locks and
// awkward names. Every test checks both the mount and the bucket.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/minio/minio-go/v7"
)

// ---- helpers (local to the namespace and tools tests) ----

// nsWaitKeys waits until the bucket's keys under prefix are exactly want.
func (e *env) nsWaitKeys(t *testing.T, prefix string, want []string, timeout time.Duration) {
	t.Helper()
	w := append([]string(nil), want...)
	sort.Strings(w)
	deadline := time.Now().Add(timeout)
	for {
		got := e.keys(t, prefix)
		sort.Strings(got)
		if strings.Join(got, "\x00") == strings.Join(w, "\x00") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bucket keys under %q after %v:\n%s", prefix, timeout, nsKeyDiff(got, w))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nsKeyDiff describes how got differs from want (both sorted).
func nsKeyDiff(got, want []string) string {
	g, w := map[string]bool{}, map[string]bool{}
	for _, k := range got {
		g[k] = true
	}
	for _, k := range want {
		w[k] = true
	}
	var extra, missing []string
	for _, k := range got {
		if !w[k] {
			extra = append(extra, k)
		}
	}
	for _, k := range want {
		if !g[k] {
			missing = append(missing, k)
		}
	}
	short := func(s []string) string {
		if len(s) > 20 {
			return fmt.Sprintf("%q ... (%d)", s[:20], len(s))
		}
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("  got %d keys, want %d\n  unexpected: %s\n  missing: %s", len(got), len(want), short(extra), short(missing))
}

// nsHead is a HEAD straight to MinIO.
func (e *env) nsHead(key string) (minio.ObjectInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return e.client().StatObject(ctx, e.bucket, key, minio.StatObjectOptions{})
}

// nsMeta returns the s3fs attribute headers of an object (mode, uid,
// gid, mtime), as stored.
func nsMeta(info minio.ObjectInfo) map[string]string {
	out := map[string]string{}
	for _, k := range []string{"mode", "uid", "gid", "mtime"} {
		if v := info.Metadata.Get("X-Amz-Meta-" + k); v != "" {
			out[k] = v
		}
	}
	return out
}

// nsWaitMeta waits until key's s3fs headers include want (and returns the
// object's info).
func (e *env) nsWaitMeta(t *testing.T, key string, want map[string]string, timeout time.Duration) minio.ObjectInfo {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		info, err := e.nsHead(key)
		var got map[string]string
		if err == nil {
			got = nsMeta(info)
			ok := true
			for k, v := range want {
				if got[k] != v {
					ok = false
				}
			}
			if ok {
				return info
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("metadata of %q after %v: got %v (err %v), want %v", key, timeout, got, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func nsLstat(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatalf("lstat %s: %v", path, err)
	}
	return &st
}

func nsMkdir(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(path, mode); err != nil {
		t.Fatalf("mkdir %s: %v", path, err)
	}
}

func nsRename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatalf("rename %s -> %s: %v", from, to, err)
	}
}

func nsRun(t *testing.T, dir string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q (in %s): %v\n%s", name, args, dir, err, out)
	}
}

// nsWaitVisible waits until path exists on a mount (written to the bucket
// by someone else: visible once the listing cache catches up).
func nsWaitVisible(t *testing.T, path string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		_, err := os.Lstat(path)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not visible after %v: %v", path, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func nsWantErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want %v (%d)", what, err, want, int(want))
	}
}

// nsBytes is deterministic content for file i.
func nsBytes(i int) []byte {
	return []byte(fmt.Sprintf("file %d %s\n", i, strings.Repeat(strconv.Itoa(i%10), i%97)))
}

// nsWatchKey polls the bucket until stop is closed and reports whether
// key was ever seen.
func (e *env) nsWatchKey(key string, stop <-chan struct{}) func() bool {
	var mu sync.Mutex
	seen := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, err := e.nsHead(key)
			if err == nil {
				mu.Lock()
				seen = true
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() bool {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return seen
	}
}

// ---- unlink, mkdir, rmdir ----

func TestNSUnlink(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	data := []byte("to be deleted")
	writeFile(t, m.path("gone.txt"), data)
	e.waitObject(t, "gone.txt", data, 20*time.Second)
	if err := os.Remove(m.path("gone.txt")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.path("gone.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat after unlink: %v, want ENOENT", err)
	}
	e.waitGone(t, "gone.txt", 20*time.Second)

	// A file unlinked before its upload never reaches the bucket.
	stop := make(chan struct{})
	seen := e.nsWatchKey("brief.txt", stop)
	writeFile(t, m.path("brief.txt"), []byte("short-lived"))
	if err := os.Remove(m.path("brief.txt")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	if seen() {
		t.Errorf("brief.txt was uploaded although it was unlinked before the write-back delay")
	}
	// Unlink of a missing name and of a directory.
	nsWantErrno(t, "unlink missing", os.Remove(m.path("nope.txt")), syscall.ENOENT)
	nsMkdir(t, m.path("adir"), 0o755)
	nsWantErrno(t, "unlink dir", syscall.Unlink(m.path("adir")), syscall.EISDIR)
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "adir" {
		t.Errorf("root lists %v, want only adir", ents)
	}
	e.nsWaitKeys(t, "", []string{"adir/"}, 20*time.Second)
}

func TestNSMkdirMarker(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	nsMkdir(t, m.path("empty"), 0o750)
	nsMkdir(t, m.path("empty/nested"), 0o755)
	nsWantErrno(t, "mkdir existing", os.Mkdir(m.path("empty"), 0o755), syscall.EEXIST)
	st := nsLstat(t, m.path("empty"))
	if st.Mode != syscall.S_IFDIR|0o750 {
		t.Errorf("mode of empty = %o, want %o", st.Mode, syscall.S_IFDIR|0o750)
	}
	e.nsWaitKeys(t, "", []string{"empty/", "empty/nested/"}, 20*time.Second)
	b, info, err := e.getObject("empty/")
	if err != nil || len(b) != 0 {
		t.Fatalf("marker empty/: %d bytes, err %v", len(b), err)
	}
	if got := nsMeta(info)["mode"]; got != strconv.Itoa(syscall.S_IFDIR|0o750) {
		t.Errorf("marker x-amz-meta-mode = %q, want %d", got, syscall.S_IFDIR|0o750)
	}
	// The empty directories persist: a second mount sees them.
	b2 := e.mount(t)
	fi, err := os.Stat(b2.path("empty/nested"))
	if err != nil || !fi.IsDir() {
		t.Fatalf("second mount: empty/nested: %v %v", fi, err)
	}
	if fi, err := os.Stat(b2.path("empty")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("second mount: empty has %v (err %v), want drwxr-x---", fi.Mode(), err)
	}
	ents, err := os.ReadDir(b2.path("empty/nested"))
	if err != nil || len(ents) != 0 {
		t.Errorf("second mount: empty/nested lists %v (err %v)", ents, err)
	}
}

func TestNSRmdir(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	nsMkdir(t, m.path("d"), 0o755)
	writeFile(t, m.path("d/f.txt"), []byte("x"))
	nsMkdir(t, m.path("e"), 0o755)
	e.nsWaitKeys(t, "", []string{"d/", "d/f.txt", "e/"}, 20*time.Second)

	nsWantErrno(t, "rmdir non-empty", syscall.Rmdir(m.path("d")), syscall.ENOTEMPTY)
	if err := syscall.Rmdir(m.path("e")); err != nil {
		t.Fatalf("rmdir empty: %v", err)
	}
	if _, err := os.Stat(m.path("e")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat after rmdir: %v", err)
	}
	nsWantErrno(t, "rmdir missing", syscall.Rmdir(m.path("e")), syscall.ENOENT)
	nsWantErrno(t, "rmdir file", syscall.Rmdir(m.path("d/f.txt")), syscall.ENOTDIR)
	e.waitGone(t, "e/", 20*time.Second)

	// A directory that exists only as a common prefix (no marker).
	e.putObject(t, "implicit/obj.bin", []byte("remote"), nil)
	nsWaitVisible(t, m.path("implicit/obj.bin"), 10*time.Second)
	nsWantErrno(t, "rmdir implicit non-empty", syscall.Rmdir(m.path("implicit")), syscall.ENOTEMPTY)
	if err := os.Remove(m.path("implicit/obj.bin")); err != nil {
		t.Fatal(err)
	}
	e.waitGone(t, "implicit/obj.bin", 20*time.Second)

	// Then d can go once emptied.
	if err := os.Remove(m.path("d/f.txt")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Rmdir(m.path("d")); err != nil {
		t.Fatalf("rmdir emptied d: %v", err)
	}
	e.nsWaitKeys(t, "", nil, 20*time.Second)
}

// Pending local files (not uploaded yet) count as entries.
func TestNSRmdirPendingEntries(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t, "--writeback-delay", "1h")
	nsMkdir(t, m.path("p"), 0o755)
	writeFile(t, m.path("p/local.txt"), []byte("not uploaded"))
	nsMkdir(t, m.path("q"), 0o755)
	nsMkdir(t, m.path("q/sub"), 0o755)
	writeFile(t, m.path("q/sub/deep.txt"), []byte("deep"))
	if ks := e.keys(t, ""); len(ks) != 0 {
		t.Fatalf("bucket has %q with a 1h write-back delay", ks)
	}
	nsWantErrno(t, "rmdir p (pending file)", syscall.Rmdir(m.path("p")), syscall.ENOTEMPTY)
	nsWantErrno(t, "rmdir q (pending subdir)", syscall.Rmdir(m.path("q")), syscall.ENOTEMPTY)
	nsWantErrno(t, "rmdir q/sub (pending file)", syscall.Rmdir(m.path("q/sub")), syscall.ENOTEMPTY)
	// A directory that also exists in the bucket, with a pending file.
	e.putObject(t, "r/", nil, nil)
	nsWaitVisible(t, m.path("r"), 10*time.Second)
	writeFile(t, m.path("r/new.txt"), []byte("pending"))
	nsWantErrno(t, "rmdir r (bucket marker + pending file)", syscall.Rmdir(m.path("r")), syscall.ENOTEMPTY)

	if err := os.Remove(m.path("p/local.txt")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Rmdir(m.path("p")); err != nil {
		t.Fatalf("rmdir p after unlinking its pending file: %v", err)
	}
	m.stop(t)
	e.nsWaitKeys(t, "", []string{"q/", "q/sub/", "q/sub/deep.txt", "r/", "r/new.txt"}, 10*time.Second)
}

// ---- rename of files ----

func TestNSRenamePendingFile(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t, "--writeback-delay", "1h")
	data := bytes.Repeat([]byte("pending rename "), 5000)
	writeFile(t, m.path("old.jpg"), data)
	nsRename(t, m.path("old.jpg"), m.path("new.jpg"))
	if got := readFile(t, m.path("new.jpg")); !bytes.Equal(got, data) {
		t.Fatalf("new.jpg through the mount: %d bytes, want %d", len(got), len(data))
	}
	if _, err := os.Stat(m.path("old.jpg")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("old.jpg after rename: %v", err)
	}
	// Rename twice before upload.
	writeFile(t, m.path("a.txt"), []byte("twice"))
	nsRename(t, m.path("a.txt"), m.path("b.txt"))
	nsRename(t, m.path("b.txt"), m.path("c.txt"))
	if ks := e.keys(t, ""); len(ks) != 0 {
		t.Fatalf("bucket has %q before the drain", ks)
	}
	stop := make(chan struct{})
	seenOld, seenA, seenB := e.nsWatchKey("old.jpg", stop), e.nsWatchKey("a.txt", stop), e.nsWatchKey("b.txt", stop)
	m.stop(t) // drains
	close(stop)
	if seenOld() || seenA() || seenB() {
		t.Errorf("an old name reached the bucket during the drain")
	}
	e.nsWaitKeys(t, "", []string{"new.jpg", "c.txt"}, 5*time.Second)
	info := e.waitObject(t, "new.jpg", data, 5*time.Second)
	if info.ContentType != "image/jpeg" {
		t.Errorf("Content-Type = %q", info.ContentType)
	}
	e.waitObject(t, "c.txt", []byte("twice"), 5*time.Second)
}

func TestNSRenameUploadedFile(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	data := bytes.Repeat([]byte{1, 2, 3, 4, 5}, 40000)
	writeFile(t, m.path("photo.png"), data)
	if err := os.Chmod(m.path("photo.png"), 0o640); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1500000000, 0)
	if err := os.Chtimes(m.path("photo.png"), mt, mt); err != nil {
		t.Fatal(err)
	}
	before := e.nsWaitMeta(t, "photo.png", map[string]string{"mode": strconv.Itoa(syscall.S_IFREG | 0o640), "mtime": "1500000000"}, 20*time.Second)
	e.waitObject(t, "photo.png", data, 5*time.Second)
	nsMkdir(t, m.path("moved"), 0o755)

	nsRename(t, m.path("photo.png"), m.path("moved/photo2.png"))
	if got := readFile(t, m.path("moved/photo2.png")); !bytes.Equal(got, data) {
		t.Fatalf("renamed file through the mount: %d bytes", len(got))
	}
	st := nsLstat(t, m.path("moved/photo2.png"))
	if st.Mode != syscall.S_IFREG|0o640 || st.Mtim.Sec != 1500000000 || st.Size != int64(len(data)) {
		t.Errorf("stat after rename: mode %o mtime %d size %d", st.Mode, st.Mtim.Sec, st.Size)
	}
	e.waitGone(t, "photo.png", 20*time.Second)
	after := e.waitObject(t, "moved/photo2.png", data, 5*time.Second)
	e.nsWaitKeys(t, "", []string{"moved/", "moved/photo2.png"}, 5*time.Second)
	info, err := e.nsHead("moved/photo2.png")
	if err != nil {
		t.Fatal(err)
	}
	bm, am := nsMeta(before), nsMeta(info)
	for _, k := range []string{"mode", "uid", "gid", "mtime"} {
		if bm[k] == "" || bm[k] != am[k] {
			t.Errorf("x-amz-meta-%s: before rename %q, after %q", k, bm[k], am[k])
		}
	}
	if after.ContentType != "image/png" {
		t.Errorf("Content-Type after rename = %q", after.ContentType)
	}
	// Another mount sees only the new name.
	b := e.mount(t)
	waitFile(t, b.path("moved/photo2.png"), data, 5*time.Second)
	if _, err := os.Stat(b.path("photo.png")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("second mount: photo.png: %v", err)
	}
}

func TestNSRenameOverwrite(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	src, dst := []byte("the new content"), []byte("the old target, longer than the source")
	writeFile(t, m.path("src.txt"), src)
	writeFile(t, m.path("dst.txt"), dst)
	e.waitObject(t, "src.txt", src, 20*time.Second)
	e.waitObject(t, "dst.txt", dst, 20*time.Second)

	// An fd open on the old target keeps reading the old bytes (POSIX).
	f, err := os.Open(m.path("dst.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	nsRename(t, m.path("src.txt"), m.path("dst.txt"))
	if got := readFile(t, m.path("dst.txt")); !bytes.Equal(got, src) {
		t.Errorf("dst.txt after rename = %q, want %q", got, src)
	}
	if fi, err := os.Stat(m.path("dst.txt")); err != nil || fi.Size() != int64(len(src)) {
		t.Errorf("stat dst.txt: %v %v", fi, err)
	}
	if _, err := os.Stat(m.path("src.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("src.txt after rename: %v", err)
	}
	old := make([]byte, 100)
	n, _ := f.ReadAt(old, 0)
	if !bytes.Equal(old[:n], dst) {
		t.Errorf("fd opened before the rename reads %q, want the old %q", old[:n], dst)
	}
	e.waitGone(t, "src.txt", 20*time.Second)
	e.waitObject(t, "dst.txt", src, 20*time.Second)

	// A pending file replaces an uploaded one; RENAME_NOREPLACE refuses.
	writeFile(t, m.path("fresh.txt"), []byte("fresh"))
	nsRename(t, m.path("fresh.txt"), m.path("dst.txt"))
	if got := readFile(t, m.path("dst.txt")); string(got) != "fresh" {
		t.Errorf("dst.txt = %q, want fresh", got)
	}
	writeFile(t, m.path("x.txt"), []byte("x"))
	if err := nsRenameat2(m.path("x.txt"), m.path("dst.txt"), 1 /* RENAME_NOREPLACE */); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("RENAME_NOREPLACE onto an existing name: %v, want EEXIST", err)
	}
	// Type mismatches.
	nsMkdir(t, m.path("adir"), 0o755)
	nsWantErrno(t, "rename file onto dir", syscall.Rename(m.path("x.txt"), m.path("adir")), syscall.EISDIR)
	nsWantErrno(t, "rename dir onto file", syscall.Rename(m.path("adir"), m.path("x.txt")), syscall.ENOTDIR)
	e.nsWaitKeys(t, "", []string{"adir/", "dst.txt", "x.txt"}, 20*time.Second)
	e.waitObject(t, "dst.txt", []byte("fresh"), 5*time.Second)
}

func nsRenameat2(from, to string, flags uint) error {
	f, err := syscall.BytePtrFromString(from)
	if err != nil {
		return err
	}
	tt, err := syscall.BytePtrFromString(to)
	if err != nil {
		return err
	}
	const sysRenameat2 = 316 // x86_64
	const atFdcwd = -100
	fd := atFdcwd
	_, _, en := syscall.Syscall6(sysRenameat2, uintptr(fd), uintptr(unsafe.Pointer(f)), uintptr(fd), uintptr(unsafe.Pointer(tt)), uintptr(flags), 0)
	if en != 0 {
		return en
	}
	return nil
}

// ---- rename of directories ----

// nsMakeTree writes n files under root (through a mount): root/s<k>/f<i>.dat
// in subdirectories made with mkdir. It returns file keys and dir markers
// relative to prefix.
func nsMakeTree(t *testing.T, m *mnt, root string, n, perDir int) (files map[string][]byte, markers []string) {
	t.Helper()
	files = map[string][]byte{}
	nsMkdir(t, m.path(root), 0o755)
	markers = append(markers, root+"/")
	for i := 0; i < n; i++ {
		sub := fmt.Sprintf("%s/s%02d", root, i/perDir)
		if i%perDir == 0 {
			nsMkdir(t, m.path(sub), 0o755)
			markers = append(markers, sub+"/")
		}
		k := fmt.Sprintf("%s/f%03d.dat", sub, i)
		files[k] = nsBytes(i)
		writeFile(t, m.path(k), files[k])
	}
	return files, markers
}

func nsKeys(files map[string][]byte, markers []string, from, to string) []string {
	var out []string
	for k := range files {
		out = append(out, to+strings.TrimPrefix(k, from))
	}
	for _, k := range markers {
		out = append(out, to+strings.TrimPrefix(k, from))
	}
	return out
}

func nsCheckBucketTree(t *testing.T, e *env, files map[string][]byte, from, to string) {
	t.Helper()
	for k, want := range files {
		nk := to + strings.TrimPrefix(k, from)
		b, _, err := e.getObject(nk)
		if err != nil || !bytes.Equal(b, want) {
			t.Errorf("bucket %s: %d bytes, err %v; want %d bytes", nk, len(b), err, len(want))
		}
	}
}

func nsCheckMountTree(t *testing.T, m *mnt, files map[string][]byte, from, to string) {
	t.Helper()
	for k, want := range files {
		nk := to + strings.TrimPrefix(k, from)
		b, err := os.ReadFile(m.path(nk))
		if err != nil || !bytes.Equal(b, want) {
			t.Errorf("mount %s: %d bytes, err %v; want %d bytes", nk, len(b), err, len(want))
		}
	}
}

func TestNSRenameDirTree(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	files, markers := nsMakeTree(t, m, "tree", 200, 20)
	e.nsWaitKeys(t, "", nsKeys(files, markers, "", ""), 40*time.Second)

	nsRename(t, m.path("tree"), m.path("tree2"))
	if _, err := os.Stat(m.path("tree")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tree after rename: %v", err)
	}
	nsCheckMountTree(t, m, files, "tree/", "tree2/")
	ents, err := os.ReadDir(m.path("tree2"))
	if err != nil || len(ents) != 10 {
		t.Errorf("tree2 lists %d entries (err %v), want 10", len(ents), err)
	}
	e.nsWaitKeys(t, "", nsKeys(files, markers, "tree/", "tree2/"), 40*time.Second)
	nsCheckBucketTree(t, e, files, "tree/", "tree2/")

	// Another mount sees the same tree.
	b := e.mount(t)
	nsCheckMountTree(t, b, files, "tree/", "tree2/")
	if _, err := os.Stat(b.path("tree")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("second mount: tree: %v", err)
	}
}

// Renaming a directory with pending (not uploaded) files and a mix of
// pending and uploaded entries.
func TestNSRenameDirMixed(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	nsMkdir(t, m.path("mix"), 0o755)
	writeFile(t, m.path("mix/up.txt"), []byte("uploaded"))
	e.waitObject(t, "mix/up.txt", []byte("uploaded"), 20*time.Second)
	e.waitObject(t, "mix/", nil, 20*time.Second)
	writeFile(t, m.path("mix/pend.txt"), []byte("pending"))
	nsRename(t, m.path("mix"), m.path("mixed"))
	nsRename(t, m.path("mixed/up.txt"), m.path("mixed/up2.txt"))
	if got := readFile(t, m.path("mixed/pend.txt")); string(got) != "pending" {
		t.Errorf("mixed/pend.txt = %q", got)
	}
	if got := readFile(t, m.path("mixed/up2.txt")); string(got) != "uploaded" {
		t.Errorf("mixed/up2.txt = %q", got)
	}
	e.nsWaitKeys(t, "", []string{"mixed/", "mixed/pend.txt", "mixed/up2.txt"}, 20*time.Second)
	e.waitObject(t, "mixed/up2.txt", []byte("uploaded"), 5*time.Second)
	e.waitObject(t, "mixed/pend.txt", []byte("pending"), 5*time.Second)
	// Non-empty target directory.
	nsMkdir(t, m.path("other"), 0o755)
	writeFile(t, m.path("other/x"), []byte("x"))
	nsWantErrno(t, "rename onto non-empty dir", syscall.Rename(m.path("mixed"), m.path("other")), syscall.ENOTEMPTY)
	// Into itself.
	nsWantErrno(t, "rename into own subdir", syscall.Rename(m.path("mixed"), m.path("mixed/inner")), syscall.EINVAL)
}

func TestNSRenameDirKill9(t *testing.T) {
	e := newEnv(t)
	w := e.mount(t)
	files, markers := nsMakeTree(t, w, "big", 200, 50)
	e.nsWaitKeys(t, "", nsKeys(files, markers, "", ""), 40*time.Second)
	w.stop(t)

	m := e.mount(t, "--writeback-delay", "1h")
	nsRename(t, m.path("big"), m.path("big2"))
	m.kill9(t)
	// The copies have not run: the bucket still has the old tree.
	if ks := e.keys(t, "big2/"); len(ks) != 0 {
		t.Errorf("%d copies ran before the kill despite --writeback-delay 1h: the test no longer exercises the replay", len(ks))
	}
	if ks := e.keys(t, "big/"); len(ks) != len(files)+len(markers) {
		t.Errorf("old tree has %d keys before the restart, want %d", len(ks), len(files)+len(markers))
	}
	m.args = []string{"--writeback-delay", "200ms"}
	m.restart(t)
	e.nsWaitKeys(t, "", nsKeys(files, markers, "big/", "big2/"), 40*time.Second)
	nsCheckBucketTree(t, e, files, "big/", "big2/")
	nsCheckMountTree(t, m, files, "big/", "big2/")
	if _, err := os.Stat(m.path("big")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("big after restart: %v", err)
	}
}

// ---- attributes ----

const nsMtime = 981173106 // 2001-02-03 04:05:06 UTC

func nsCheckAttrs(t *testing.T, where, path string, mode, uid, gid uint32, mtime int64) {
	t.Helper()
	st := nsLstat(t, path)
	if st.Mode != mode || st.Uid != uid || st.Gid != gid || st.Mtim.Sec != mtime {
		t.Errorf("%s: stat %s: mode %o uid %d gid %d mtime %d; want mode %o uid %d gid %d mtime %d",
			where, filepath.Base(path), st.Mode, st.Uid, st.Gid, st.Mtim.Sec, mode, uid, gid, mtime)
	}
}

func nsSetAttrs(t *testing.T, path string) {
	t.Helper()
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(path, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	nsRun(t, "", "touch", "-d", "@"+strconv.Itoa(nsMtime), path)
}

func nsWantMeta(mode uint32) map[string]string {
	return map[string]string{"mode": strconv.Itoa(int(mode)), "uid": "1234", "gid": "5678", "mtime": strconv.Itoa(nsMtime)}
}

func TestNSAttrsPending(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t, "--writeback-delay", "1h")
	data := []byte("attributes before upload")
	writeFile(t, m.path("p.txt"), data)
	nsMkdir(t, m.path("pd"), 0o755)
	nsSetAttrs(t, m.path("p.txt"))
	nsSetAttrs(t, m.path("pd"))
	nsCheckAttrs(t, "pending", m.path("p.txt"), syscall.S_IFREG|0o600, 1234, 5678, nsMtime)
	nsCheckAttrs(t, "pending", m.path("pd"), syscall.S_IFDIR|0o600, 1234, 5678, nsMtime)
	time.Sleep(1100 * time.Millisecond) // past the kernel attr timeout
	nsCheckAttrs(t, "pending, uncached", m.path("p.txt"), syscall.S_IFREG|0o600, 1234, 5678, nsMtime)
	if ks := e.keys(t, ""); len(ks) != 0 {
		t.Fatalf("bucket has %q before the drain", ks)
	}
	m.stop(t)
	e.nsWaitMeta(t, "p.txt", nsWantMeta(syscall.S_IFREG|0o600), 5*time.Second)
	e.nsWaitMeta(t, "pd/", nsWantMeta(syscall.S_IFDIR|0o600), 5*time.Second)
	e.waitObject(t, "p.txt", data, 5*time.Second)
	b := e.mount(t)
	nsCheckAttrs(t, "second mount", b.path("p.txt"), syscall.S_IFREG|0o600, 1234, 5678, nsMtime)
	nsCheckAttrs(t, "second mount", b.path("pd"), syscall.S_IFDIR|0o600, 1234, 5678, nsMtime)
}

func TestNSAttrsUploaded(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	data := bytes.Repeat([]byte("uploaded attrs "), 1000)
	writeFile(t, m.path("u.txt"), data)
	nsMkdir(t, m.path("ud"), 0o755)
	info0 := e.waitObject(t, "u.txt", data, 20*time.Second)
	e.waitObject(t, "ud/", nil, 20*time.Second)
	// List ud first: its listing (with its own marker) is then cached.
	writeFile(t, m.path("ud/inner.txt"), []byte("i"))
	if ents, err := os.ReadDir(m.path("ud")); err != nil || len(ents) != 1 {
		t.Fatalf("ud lists %v, %v", ents, err)
	}
	e.waitObject(t, "ud/inner.txt", []byte("i"), 20*time.Second)
	nsSetAttrs(t, m.path("u.txt"))
	nsSetAttrs(t, m.path("ud"))
	nsCheckAttrs(t, "at once", m.path("u.txt"), syscall.S_IFREG|0o600, 1234, 5678, nsMtime)
	nsCheckAttrs(t, "at once", m.path("ud"), syscall.S_IFDIR|0o600, 1234, 5678, nsMtime)
	info := e.nsWaitMeta(t, "u.txt", nsWantMeta(syscall.S_IFREG|0o600), 20*time.Second)
	e.nsWaitMeta(t, "ud/", nsWantMeta(syscall.S_IFDIR|0o600), 20*time.Second)
	e.waitObject(t, "u.txt", data, 5*time.Second)
	if info.ContentType != info0.ContentType {
		t.Errorf("Content-Type changed by a metadata copy: %q -> %q", info0.ContentType, info.ContentType)
	}
	time.Sleep(1100 * time.Millisecond)
	nsCheckAttrs(t, "after upload", m.path("u.txt"), syscall.S_IFREG|0o600, 1234, 5678, nsMtime)
	nsCheckAttrs(t, "after upload", m.path("ud"), syscall.S_IFDIR|0o600, 1234, 5678, nsMtime)
	b := e.mount(t)
	nsCheckAttrs(t, "second mount", b.path("u.txt"), syscall.S_IFREG|0o600, 1234, 5678, nsMtime)
	nsCheckAttrs(t, "second mount", b.path("ud"), syscall.S_IFDIR|0o600, 1234, 5678, nsMtime)
	if got := readFile(t, b.path("u.txt")); !bytes.Equal(got, data) {
		t.Errorf("second mount: u.txt has %d bytes", len(got))
	}
	// os.Chtimes with a sub-second time: stored to the second.
	mt := time.Unix(1700000000, 500_000_000)
	if err := os.Chtimes(m.path("u.txt"), mt, mt); err != nil {
		t.Fatal(err)
	}
	e.nsWaitMeta(t, "u.txt", map[string]string{"mtime": "1700000000", "mode": strconv.Itoa(syscall.S_IFREG | 0o600)}, 20*time.Second)
	// touch -a alone must succeed.
	nsRun(t, "", "touch", "-a", m.path("u.txt"))
	e.nsWaitKeys(t, "", []string{"u.txt", "ud/", "ud/inner.txt"}, 5*time.Second)
}

// ---- symlinks, hard links ----

func TestNSSymlink(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	writeFile(t, m.path("real.txt"), []byte("real content"))
	nsMkdir(t, m.path("sub"), 0o755)
	if err := os.Symlink("../real.txt", m.path("sub/link.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/nonexistent/target", m.path("dangling")); err != nil {
		t.Fatal(err)
	}
	check := func(where string, mm *mnt) {
		t.Helper()
		if got, err := os.Readlink(mm.path("sub/link.txt")); err != nil || got != "../real.txt" {
			t.Errorf("%s: readlink = %q, %v", where, got, err)
		}
		if got, err := os.ReadFile(mm.path("sub/link.txt")); err != nil || string(got) != "real content" {
			t.Errorf("%s: read through link = %q, %v", where, got, err)
		}
		st := nsLstat(t, mm.path("sub/link.txt"))
		if st.Mode&syscall.S_IFMT != syscall.S_IFLNK || st.Size != int64(len("../real.txt")) {
			t.Errorf("%s: lstat link: mode %o size %d", where, st.Mode, st.Size)
		}
		if got, err := os.Readlink(mm.path("dangling")); err != nil || got != "/nonexistent/target" {
			t.Errorf("%s: readlink dangling = %q, %v", where, got, err)
		}
	}
	check("pending", m)
	for key, target := range map[string]string{"sub/link.txt": "../real.txt", "dangling": "/nonexistent/target"} {
		e.waitObject(t, key, []byte(target), 20*time.Second)
		info, _ := e.nsHead(key)
		mode, _ := strconv.Atoi(nsMeta(info)["mode"])
		if mode&syscall.S_IFMT != syscall.S_IFLNK {
			t.Errorf("%s: x-amz-meta-mode = %q, want S_IFLNK bits", key, nsMeta(info)["mode"])
		}
	}
	time.Sleep(1100 * time.Millisecond)
	check("uploaded", m)
	b := e.mount(t)
	check("second mount", b)
	ents, _ := os.ReadDir(b.path("sub"))
	if len(ents) != 1 || ents[0].Type() != os.ModeSymlink {
		t.Errorf("second mount: sub lists %v", ents)
	}

	// A symlink written by s3fs reads the same.
	e.putObject(t, "s3fs-link", []byte("real.txt"), map[string]string{"mode": strconv.Itoa(syscall.S_IFLNK | 0o777)})
	nsWaitVisible(t, b.path("s3fs-link"), 10*time.Second)
	if got, err := os.Readlink(b.path("s3fs-link")); err != nil || got != "real.txt" {
		t.Errorf("s3fs symlink: readlink = %q, %v", got, err)
	}
	// Renaming and removing a symlink touch the link, not the target.
	nsRename(t, m.path("sub/link.txt"), m.path("sub/link2.txt"))
	if got, err := os.Readlink(m.path("sub/link2.txt")); err != nil || got != "../real.txt" {
		t.Errorf("renamed link: readlink = %q, %v", got, err)
	}
	if err := os.Remove(m.path("dangling")); err != nil {
		t.Fatal(err)
	}
	e.nsWaitKeys(t, "", []string{"real.txt", "sub/", "sub/link2.txt", "s3fs-link"}, 20*time.Second)
	info, _ := e.nsHead("sub/link2.txt")
	if mode, _ := strconv.Atoi(nsMeta(info)["mode"]); mode&syscall.S_IFMT != syscall.S_IFLNK {
		t.Errorf("renamed link lost S_IFLNK: mode %q", nsMeta(info)["mode"])
	}
	if got := readFile(t, m.path("real.txt")); string(got) != "real content" {
		t.Errorf("real.txt = %q", got)
	}
}

func TestNSHardLinkRefused(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	writeFile(t, m.path("a.txt"), []byte("a"))
	nsWantErrno(t, "link", os.Link(m.path("a.txt"), m.path("b.txt")), syscall.EPERM)
	if _, err := os.Lstat(m.path("b.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("b.txt after refused link: %v", err)
	}
	e.nsWaitKeys(t, "", []string{"a.txt"}, 20*time.Second)
}

// ---- statfs, locks ----

func TestNSStatfs(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	var st syscall.Statfs_t
	if err := syscall.Statfs(m.dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks == 0 || st.Bsize <= 0 || st.Bfree > st.Blocks || st.Bavail > st.Blocks {
		t.Errorf("statfs: blocks %d bfree %d bavail %d bsize %d", st.Blocks, st.Bfree, st.Bavail, st.Bsize)
	}
	if st.Namelen != 255 {
		t.Errorf("statfs namelen = %d, want 255", st.Namelen)
	}
	const fuseSuperMagic = 0x65735546
	if st.Type != fuseSuperMagic {
		t.Errorf("statfs type = %#x, want FUSE", st.Type)
	}
	// df(1) works on it.
	nsRun(t, "", "df", "-P", m.dir)
}

func TestNSLocks(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	p := m.path("lock.db")
	writeFile(t, p, []byte("db"))
	f1, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f1.Close()
	f2, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()

	// flock(2): per open file description.
	if err := syscall.Flock(int(f1.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("flock fd1: %v", err)
	}
	nsWantErrno(t, "flock fd2 while fd1 holds it", syscall.Flock(int(f2.Fd()), syscall.LOCK_EX|syscall.LOCK_NB), syscall.EWOULDBLOCK)
	if err := syscall.Flock(int(f1.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f2.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("flock fd2 after unlock: %v", err)
	}
	syscall.Flock(int(f2.Fd()), syscall.LOCK_UN)

	// fcntl OFD locks (per open file description).
	const fOfdSetlk = 37
	ofd := func(f *os.File, typ int16) error {
		lk := syscall.Flock_t{Type: typ, Whence: 0, Start: 0, Len: 0}
		_, _, en := syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), fOfdSetlk, uintptr(unsafe.Pointer(&lk)))
		if en != 0 {
			return en
		}
		return nil
	}
	if err := ofd(f1, syscall.F_WRLCK); err != nil {
		t.Fatalf("OFD lock fd1: %v", err)
	}
	nsWantErrno(t, "OFD lock fd2 while fd1 holds it", ofd(f2, syscall.F_WRLCK), syscall.EAGAIN)
	if err := ofd(f1, syscall.F_UNLCK); err != nil {
		t.Fatal(err)
	}
	if err := ofd(f2, syscall.F_WRLCK); err != nil {
		t.Fatalf("OFD lock fd2 after unlock: %v", err)
	}
	ofd(f2, syscall.F_UNLCK)

	// Classic POSIX fcntl locks (per process): another process is refused.
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	if err := syscall.FcntlFlock(f1.Fd(), syscall.F_SETLK, &lk); err != nil {
		t.Fatalf("F_SETLK: %v", err)
	}
	py := `import fcntl, sys
f = open(sys.argv[1], "r+b")
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError as e:
    print("locked", e.errno); sys.exit(3)
print("acquired")`
	out, err := exec.Command("python3", "-c", py, p).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Errorf("second process took a POSIX lock held by the first: %v %s", err, out)
	}
	lk.Type = syscall.F_UNLCK
	if err := syscall.FcntlFlock(f1.Fd(), syscall.F_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("python3", "-c", py, p).CombinedOutput(); err != nil {
		t.Errorf("second process after unlock: %v %s", err, out)
	}
}

// ---- names ----

func TestNSNames(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	names := []string{
		"héllo wörld.txt",
		"日本語/写真 1.jpg",
		"a#b.txt",
		"q?x=1&y=2.txt",
		"100%.txt",
		"%2F%20.txt",
		"a+b c.txt",
		"sp ace#?%+ é/in side+.bin",
		"emoji 🎉.png",
		"trailing space ",
		"-dash",
		strings.Repeat("n", 255),
	}
	want := map[string]bool{}
	for i, n := range names {
		if dir := filepath.Dir(n); dir != "." {
			if err := os.MkdirAll(m.path(dir), 0o755); err != nil {
				t.Fatal(err)
			}
			want[dir+"/"] = true
		}
		writeFile(t, m.path(n), nsBytes(i))
		want[n] = true
	}
	long := strings.Repeat("x", 256)
	nsWantErrno(t, "create 256-byte name", os.WriteFile(m.path(long), nil, 0o644), syscall.ENAMETOOLONG)
	nsWantErrno(t, "mkdir 256-byte name", os.Mkdir(m.path(long), 0o755), syscall.ENAMETOOLONG)
	nsWantErrno(t, "rename to 256-byte name", os.Rename(m.path("a#b.txt"), m.path(long)), syscall.ENAMETOOLONG)
	nsWantErrno(t, "symlink 256-byte name", os.Symlink("x", m.path(long)), syscall.ENAMETOOLONG)
	nsWantErrno(t, "256-byte UTF-8 name", os.WriteFile(m.path(strings.Repeat("é", 128)), nil, 0o644), syscall.ENAMETOOLONG)
	if _, err := os.Stat(m.path(long)); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Errorf("stat 256-byte name: %v, want ENAMETOOLONG", err)
	}
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	e.nsWaitKeys(t, "", keys, 30*time.Second)
	for i, n := range names {
		if b, _, err := e.getObject(n); err != nil || !bytes.Equal(b, nsBytes(i)) {
			t.Errorf("bucket %q: %d bytes, err %v", n, len(b), err)
		}
	}
	// Keys written elsewhere with the same characters read back unchanged.
	e.putObject(t, "remote #?%+ ü.txt", []byte("remote"), nil)
	b := e.mount(t)
	for i, n := range names {
		if got, err := os.ReadFile(b.path(n)); err != nil || !bytes.Equal(got, nsBytes(i)) {
			t.Errorf("second mount %q: %v", n, err)
		}
	}
	if got, err := os.ReadFile(b.path("remote #?%+ ü.txt")); err != nil || string(got) != "remote" {
		t.Errorf("second mount: remote key: %q %v", got, err)
	}
	ents, err := os.ReadDir(b.dir)
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, de := range ents {
		listed = append(listed, de.Name())
	}
	for _, n := range names {
		top := strings.SplitN(n, "/", 2)[0]
		found := false
		for _, l := range listed {
			if l == top {
				found = true
			}
		}
		if !found {
			t.Errorf("second mount root does not list %q (lists %q)", top, listed)
		}
	}
	// Rename between awkward names keeps them exact.
	nsRename(t, m.path("a+b c.txt"), m.path("日本語/a+b c?.txt"))
	e.waitGone(t, "a+b c.txt", 20*time.Second)
	e.waitObject(t, "日本語/a+b c?.txt", nsBytes(6), 20*time.Second)
}

// ---- signals ----

// A program that takes signals while it works (a timer, SIGCHLD, the Go
// runtime's preemption) makes the kernel send FUSE INTERRUPTs for its
// requests. Those must not turn a lookup, open or listing that needs the
// bucket into an error.
func TestNSInterruptedRequestsSucceed(t *testing.T) {
	e := newEnv(t)
	const n = 150
	for i := 0; i < n; i++ {
		e.putObject(t, fmt.Sprintf("sig/d%d/f%03d.bin", i%5, i), nsBytes(i), nil)
	}
	m := e.mount(t)
	py := `import os, signal, sys, hashlib
signal.signal(signal.SIGALRM, lambda *a: None)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
root = sys.argv[1]
out = []
try:
    for d in sorted(os.listdir(root)):
        for name in sorted(os.listdir(os.path.join(root, d))):
            p = os.path.join(root, d, name)
            st = os.stat(p)
            with open(p, "rb") as f:
                b = f.read()
            out.append("%s/%s %d %d" % (d, name, st.st_size, len(b)))
finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
print("\n".join(out))`
	out, err := exec.Command("python3", "-c", py, m.path("sig")).CombinedOutput()
	if err != nil {
		t.Fatalf("reader with a 0.5 ms interval timer failed: %v\n%s", err, tail(string(out), 3000))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != n {
		t.Fatalf("read %d files, want %d", len(lines), n)
	}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) != 3 || f[1] != f[2] {
			t.Errorf("size mismatch: %s", l)
		}
	}
}
