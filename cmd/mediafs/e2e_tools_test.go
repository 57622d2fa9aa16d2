package main

// End-to-end tests with unchanged programs: cp -a, tar x, rsync -a, mv,
// rm -rf and a Django-like storage (testdata/django_storage.py) each run on
// a mount and on a local directory must produce the same tree, and once
// the queue drains the bucket must mirror it (keys, bytes, s3fs metadata)
// and a second mount must show the same tree.

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tEntry is what a tree comparison looks at for one name.
type tEntry struct {
	Mode     uint32 // full st_mode
	UID, GID uint32
	Size     int64 // files and symlinks
	Mtime    int64 // seconds
	Sum      string
	Link     string
}

func (e tEntry) isDir() bool  { return e.Mode&syscall.S_IFMT == syscall.S_IFDIR }
func (e tEntry) isLink() bool { return e.Mode&syscall.S_IFMT == syscall.S_IFLNK }

// snapTree walks root without following symlinks. The root itself is "."
// unless skipRoot.
func snapTree(t *testing.T, root string) map[string]tEntry {
	t.Helper()
	out := map[string]tEntry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		e := tEntry{Mode: st.Mode, UID: st.Uid, GID: st.Gid, Mtime: st.Mtim.Sec}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.Size, e.Sum = int64(len(b)), fmt.Sprintf("%x", sha256.Sum256(b))
		case syscall.S_IFLNK:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.Size, e.Link = st.Size, l
		}
		out[filepath.ToSlash(rel)] = e
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

type cmpOpts struct {
	fileMtimes bool // regular files and symlinks
	dirMtimes  bool
}

// sameTree reports every difference between got (on the mount) and want
// (local).
func sameTree(t *testing.T, what string, got, want map[string]tEntry, o cmpOpts) {
	t.Helper()
	var names []string
	for n := range want {
		names = append(names, n)
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	bad := 0
	for _, n := range names {
		w, okw := want[n]
		g, okg := got[n]
		var diffs []string
		switch {
		case !okg:
			diffs = append(diffs, "missing")
		case !okw:
			diffs = append(diffs, "unexpected")
		default:
			if g.Mode != w.Mode {
				diffs = append(diffs, fmt.Sprintf("mode %o, want %o", g.Mode, w.Mode))
			}
			if g.UID != w.UID || g.GID != w.GID {
				diffs = append(diffs, fmt.Sprintf("owner %d:%d, want %d:%d", g.UID, g.GID, w.UID, w.GID))
			}
			if !w.isDir() && g.Size != w.Size {
				diffs = append(diffs, fmt.Sprintf("size %d, want %d", g.Size, w.Size))
			}
			if g.Sum != w.Sum {
				diffs = append(diffs, "content differs")
			}
			if g.Link != w.Link {
				diffs = append(diffs, fmt.Sprintf("link %q, want %q", g.Link, w.Link))
			}
			if (w.isDir() && o.dirMtimes || !w.isDir() && o.fileMtimes) && g.Mtime != w.Mtime {
				diffs = append(diffs, fmt.Sprintf("mtime %d, want %d", g.Mtime, w.Mtime))
			}
		}
		if len(diffs) > 0 {
			bad++
			if bad <= 30 {
				t.Errorf("%s: %q: %s", what, n, strings.Join(diffs, "; "))
			}
		}
	}
	if bad > 30 {
		t.Errorf("%s: %d names differ in all", what, bad)
	}
}

// bucketMirrors waits until the keys under prefix are exactly the tree
// snap (dirs as "d/" markers; the snapshot's root "." is prefix itself when
// withRoot), then checks every object's bytes and s3fs metadata.
func bucketMirrors(t *testing.T, e *env, prefix string, snap map[string]tEntry, timeout time.Duration) {
	t.Helper()
	keyOf := func(rel string, en tEntry) string {
		k := prefix + rel
		if rel == "." {
			k = prefix
		}
		if en.isDir() && !strings.HasSuffix(k, "/") {
			k += "/"
		}
		return k
	}
	var want []string
	for rel, en := range snap {
		if k := keyOf(rel, en); k != "" {
			want = append(want, k)
		}
	}
	deadline := time.Now().Add(timeout)
	e.nsWaitKeys(t, prefix, want, timeout)
	// Later generations may still be uploading: each object is polled
	// until it matches, within the same deadline.
	for rel, en := range snap {
		k := keyOf(rel, en)
		if k == "" {
			continue
		}
		var why string
		for {
			why = objectDiff(e, k, en)
			if why == "" || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if why != "" {
			t.Errorf("bucket %q: %s", k, why)
		}
	}
}

// objectDiff says how object k differs from tree entry en ("" if not).
func objectDiff(e *env, k string, en tEntry) string {
	b, info, err := e.getObject(k)
	if err != nil {
		return err.Error()
	}
	md := nsMeta(info)
	var diffs []string
	switch {
	case en.isDir():
		if len(b) != 0 {
			diffs = append(diffs, fmt.Sprintf("marker has %d bytes", len(b)))
		}
	case en.isLink():
		if string(b) != en.Link {
			diffs = append(diffs, fmt.Sprintf("symlink object holds %q, want %q", b, en.Link))
		}
	default:
		if fmt.Sprintf("%x", sha256.Sum256(b)) != en.Sum {
			diffs = append(diffs, fmt.Sprintf("%d bytes, content differs from the file (%d bytes)", len(b), en.Size))
		}
	}
	if md["mode"] != strconv.Itoa(int(en.Mode)) {
		diffs = append(diffs, fmt.Sprintf("x-amz-meta-mode %q, want %d (%o)", md["mode"], en.Mode, en.Mode))
	}
	if md["uid"] != strconv.Itoa(int(en.UID)) || md["gid"] != strconv.Itoa(int(en.GID)) {
		diffs = append(diffs, fmt.Sprintf("x-amz-meta-uid/gid %q/%q, want %d/%d", md["uid"], md["gid"], en.UID, en.GID))
	}
	if !en.isDir() && md["mtime"] != strconv.FormatInt(en.Mtime, 10) {
		diffs = append(diffs, fmt.Sprintf("x-amz-meta-mtime %q, want %d", md["mtime"], en.Mtime))
	}
	return strings.Join(diffs, "; ")
}

// srcTree builds the local tree the tools copy: modes, owners, an empty
// dir, an empty file, a symlink, awkward names, a 1 MiB file, fixed mtimes.
func srcTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "src")
	dirs := []struct {
		p    string
		mode os.FileMode
	}{{"", 0o755}, {"a", 0o755}, {"a/b", 0o750}, {"a/b/c", 0o700}, {"empty dir", 0o755}, {"ünï #?%+", 0o775}}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d.p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := []struct {
		p    string
		mode os.FileMode
		size int
	}{
		{"top.txt", 0o644, 100},
		{"a/one.txt", 0o644, 1000},
		{"a/b/two.bin", 0o600, 100 << 10},
		{"a/b/c/three.jpg", 0o755, 1 << 20},
		{"a/zero.dat", 0o644, 0},
		{"ünï #?%+/ä b+c#d?.png", 0o640, 5000},
		{"a/b/setuid-ish", 0o4755, 10},
	}
	for i, f := range files {
		p := filepath.Join(root, f.p)
		if err := os.WriteFile(p, seeded(i, f.size), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
		mt := time.Unix(1600000000+int64(i)*1000, 0)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(root, "a/one.txt"), 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(root, "a/b"), 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("b/c/three.jpg", filepath.Join(root, "a/link")); err != nil {
		t.Fatal(err)
	}
	toolRun(t, root, "touch", "-h", "-d", "@1590000000", "a/link")
	// Directory modes and times last (deepest first), as a restore would.
	for i := len(dirs) - 1; i >= 0; i-- {
		p := filepath.Join(root, dirs[i].p)
		if err := os.Chmod(p, dirs[i].mode); err != nil {
			t.Fatal(err)
		}
		mt := time.Unix(1500000000+int64(i)*1000, 0)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func seeded(seed, n int) []byte {
	out := make([]byte, 0, n+32)
	h := sha256.Sum256([]byte(strconv.Itoa(seed)))
	for len(out) < n {
		out = append(out, h[:]...)
		h = sha256.Sum256(h[:])
	}
	return out[:n]
}

func toolRun(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q (in %s): %v\n%s", name, args, dir, err, tail(string(out), 3000))
	}
}

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is required (scripts/test.sh installs it): %v", name, err)
	}
}

var allMtimes = cmpOpts{fileMtimes: true, dirMtimes: true}

// toolCase runs fn on a local directory and on a mount with the same
// source tree, compares the trees under sub, waits for the bucket to
// mirror the mount and compares a second mount's view. fn may call
// uploaded(prefix, tree) to wait until the bucket mirrors tree under
// prefix (a no-op on the local run).
func toolCase(t *testing.T, sub string, o cmpOpts, fn func(t *testing.T, dst string, uploaded func(prefix, tree string))) {
	t.Helper()
	e := newEnv(t)
	m := e.mount(t)
	local := t.TempDir()
	fn(t, local, func(string, string) {})
	fn(t, m.dir, func(prefix, tree string) {
		t.Helper()
		bucketMirrors(t, e, prefix, snapTree(t, tree), 40*time.Second)
	})
	want := snapTree(t, filepath.Join(local, sub))
	if len(want) < 10 {
		t.Fatalf("local run made only %d names under %s", len(want), sub)
	}
	t.Logf("%d names under %s", len(want), sub)
	sameTree(t, "mount vs local", snapTree(t, m.path(sub)), want, o)
	bucketMirrors(t, e, sub+"/", want, 40*time.Second)
	b := e.mount(t)
	sameTree(t, "second mount vs local", snapTree(t, b.path(sub)), want, o)
	// The first mount still agrees after its uploads (listing from the
	// bucket, no pending records).
	time.Sleep(1100 * time.Millisecond)
	sameTree(t, "mount after upload vs local", snapTree(t, m.path(sub)), want, o)
}

func TestToolsCpA(t *testing.T) {
	src := srcTree(t)
	toolCase(t, "copy", allMtimes, func(t *testing.T, dst string, uploaded func(prefix, tree string)) {
		toolRun(t, dst, "cp", "-a", src, filepath.Join(dst, "copy"))
		// cp -a onto an existing tree overwrites in place.
		toolRun(t, dst, "cp", "-a", src+"/.", filepath.Join(dst, "copy"))
	})
}

func TestToolsTarX(t *testing.T) {
	src := srcTree(t)
	tarball := filepath.Join(t.TempDir(), "src.tar")
	toolRun(t, src, "tar", "-cf", tarball, ".")
	toolCase(t, "untar", allMtimes, func(t *testing.T, dst string, uploaded func(prefix, tree string)) {
		d := filepath.Join(dst, "untar")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		toolRun(t, d, "tar", "-xpf", tarball)
	})
}

func TestToolsRsyncA(t *testing.T) {
	needTool(t, "rsync")
	src := srcTree(t)
	toolCase(t, "mirror", allMtimes, func(t *testing.T, dst string, uploaded func(prefix, tree string)) {
		d := filepath.Join(dst, "mirror")
		toolRun(t, dst, "rsync", "-a", src+"/", d+"/")
		// A second pass after changes: rsync writes .name.XXXXXX temp
		// files and renames them over the old names; --delete unlinks.
		s2 := filepath.Join(t.TempDir(), "src2")
		toolRun(t, dst, "cp", "-a", src, s2)
		if err := os.WriteFile(filepath.Join(s2, "a/one.txt"), []byte("changed, shorter"), 0o644); err != nil {
			t.Fatal(err)
		}
		mt := time.Unix(1650000000, 0)
		os.Chtimes(filepath.Join(s2, "a/one.txt"), mt, mt)
		os.Chtimes(filepath.Join(s2, "a"), mt, mt)
		if err := os.Remove(filepath.Join(s2, "top.txt")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(s2, "added.txt"), seeded(99, 3000), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(filepath.Join(s2, "added.txt"), mt, mt)
		os.Chtimes(s2, mt, mt)
		if err := os.Chmod(filepath.Join(s2, "a/zero.dat"), 0o600); err != nil {
			t.Fatal(err)
		}
		toolRun(t, dst, "rsync", "-a", "--delete", s2+"/", d+"/")
		// A third pass with --inplace: rsync rewrites the changed file
		// in place instead of renaming a temp file over it.
		if err := os.WriteFile(filepath.Join(s2, "a/b/two.bin"), seeded(7, 100<<10), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(filepath.Join(s2, "a/b/two.bin"), mt, mt)
		os.Chtimes(filepath.Join(s2, "a/b"), mt, mt)
		toolRun(t, dst, "rsync", "-a", "--inplace", s2+"/", d+"/")
	})
}

func TestToolsMvDir(t *testing.T) {
	src := srcTree(t)
	// mv changes the mtime of the directories it moves names in and out
	// of; mediafs keeps a directory's mtime as last set (see report), so
	// only file and symlink mtimes are compared here.
	toolCase(t, "moved", cmpOpts{fileMtimes: true}, func(t *testing.T, dst string, uploaded func(prefix, tree string)) {
		toolRun(t, dst, "cp", "-a", src, filepath.Join(dst, "before"))
		uploaded("before/", src)
		// A rename of an uploaded tree (server-side copies) and of a
		// pending one, plus a tree moved in from another file system.
		toolRun(t, dst, "mv", "before", "moved")
		toolRun(t, dst, "cp", "-a", src+"/a", filepath.Join(dst, "moved/pending"))
		toolRun(t, dst, "mv", "moved/pending", "moved/pending2")
		toolRun(t, dst, "mv", "moved/pending2/b", "moved/b-out")
		other := filepath.Join(t.TempDir(), "other")
		toolRun(t, dst, "cp", "-a", src+"/ünï #?%+", other)
		toolRun(t, dst, "mv", other, filepath.Join(dst, "moved/from-other-fs"))
		// mv of a file onto an existing one replaces it.
		toolRun(t, dst, "mv", "-f", "moved/top.txt", "moved/a/one.txt")
	})
}

func TestToolsRmRf(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	src := srcTree(t)
	local := t.TempDir()
	for _, dst := range []string{local, m.dir} {
		toolRun(t, dst, "cp", "-a", src, filepath.Join(dst, "junk"))
		toolRun(t, dst, "cp", "-a", src, filepath.Join(dst, "keep"))
	}
	want := snapTree(t, filepath.Join(local, "keep"))
	bucketMirrors(t, e, "junk/", snapTree(t, filepath.Join(local, "junk")), 40*time.Second)
	for _, dst := range []string{local, m.dir} {
		// Pending files (not uploaded yet) inside the uploaded tree.
		if err := os.WriteFile(filepath.Join(dst, "junk/a/b/c/new.txt"), []byte("new"), 0o644); err != nil {
			t.Fatal(err)
		}
		rmRf(t, e, dst, "junk")
		rmRf(t, e, dst, "keep/a/b")
	}
	delete(want, "a/b")
	for k := range want {
		if strings.HasPrefix(k, "a/b/") {
			delete(want, k)
		}
	}
	for _, p := range []string{m.path("junk"), m.path("keep/a/b")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s after rm -rf: %v", p, err)
		}
	}
	ents, _ := os.ReadDir(m.dir)
	if len(ents) != 1 || ents[0].Name() != "keep" {
		t.Errorf("mount root lists %v, want only keep", ents)
	}
	// a's mtime moved when b went (on both): compare dir times loosely.
	o := cmpOpts{fileMtimes: true}
	gotLocal := snapTree(t, filepath.Join(local, "keep"))
	sameTree(t, "local after rm", gotLocal, want, o)
	sameTree(t, "mount vs local", snapTree(t, m.path("keep")), gotLocal, o)
	e.nsWaitKeys(t, "junk/", nil, 30*time.Second)
	bucketMirrors(t, e, "keep/", want, 30*time.Second)
	b := e.mount(t)
	if _, err := os.Lstat(b.path("junk")); !os.IsNotExist(err) {
		t.Errorf("second mount: junk: %v", err)
	}
	sameTree(t, "second mount vs local", snapTree(t, b.path("keep")), gotLocal, o)
}

// rmRf runs rm -rf dst/rel and, if it fails, says what was left.
func rmRf(t *testing.T, e *env, dst, rel string) {
	t.Helper()
	out, err := exec.Command("rm", "-rf", filepath.Join(dst, rel)).CombinedOutput()
	if err == nil {
		return
	}
	var left []string
	filepath.WalkDir(filepath.Join(dst, rel), func(p string, d fs.DirEntry, err error) error {
		left = append(left, fmt.Sprintf("%s (err %v)", p, err))
		return nil
	})
	t.Fatalf("rm -rf %s in %s: %v\n%s\nleft: %q\nbucket under %s/: %q", rel, dst, err, out, left, rel, e.keys(t, rel+"/"))
}

// ---- Django's FileSystemStorage ----

func python3() string {
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3" // Debian's, as an app image would have
	}
	return "python3"
}

type djangoResult struct {
	Saved []string         `json:"saved"`
	Sizes map[string]int64 `json:"sizes"`
}

func runDjango(t *testing.T, root string) djangoResult {
	t.Helper()
	script, err := filepath.Abs("testdata/django_storage.py")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python3(), script, root)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("django_storage.py on %s: %v\n%s", root, err, tail(stderr.String(), 4000))
	}
	var r djangoResult
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("django_storage.py output: %v\n%s", err, stdout.String())
	}
	return r
}

func TestToolsDjangoFileSystemStorage(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	local := t.TempDir()
	want := runDjango(t, local)
	got := runDjango(t, m.dir)
	if strings.Join(got.Saved, "\n") != strings.Join(want.Saved, "\n") {
		t.Errorf("save() returned other names on the mount:\n got %q\nwant %q", got.Saved, want.Saved)
	}
	o := cmpOpts{} // the app sets mtimes only where it says so (checked below)
	wantTree := snapTree(t, local)
	delete(wantTree, ".")
	gotTree := snapTree(t, m.dir)
	delete(gotTree, ".")
	sameTree(t, "mount vs local", gotTree, wantTree, o)
	for name, mt := range map[string]int64{"documents/report.pdf": 1262304000, "videos/clip.mp4": 1300000000} {
		if gotTree[name].Mtime != mt {
			t.Errorf("mtime of %s = %d, want %d (os.utime)", name, gotTree[name].Mtime, mt)
		}
	}
	// The bucket: exactly the tree (dirs as markers, the temp dir's
	// marker included and no temp file), bytes and modes.
	bucketMirrors(t, e, "", gotTree, 40*time.Second)
	for name, size := range want.Sizes {
		info, err := e.nsHead(name)
		if err != nil || info.Size != size {
			t.Errorf("bucket %q: size %d err %v, want %d", name, info.Size, err, size)
		}
	}
	if info, err := e.nsHead("videos/clip.mp4"); err == nil && info.ContentType != "video/mp4" {
		t.Errorf("videos/clip.mp4 Content-Type = %q", info.ContentType)
	}
	b := e.mount(t)
	second := snapTree(t, b.dir)
	delete(second, ".")
	sameTree(t, "second mount vs local", second, wantTree, o)
	sameTree(t, "second mount vs mount (mtimes too)", second, gotTree, cmpOpts{fileMtimes: true})
}
