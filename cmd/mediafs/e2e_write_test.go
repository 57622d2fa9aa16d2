package main

// End-to-end tests of the write path ("Write-back cache"): the ways
// programs write files, and what the bucket holds once the upload queue
// has drained.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// uploadWait bounds how long a closed file may take to reach the bucket
// with the harness's 200ms write-back delay.
const uploadWait = 20 * time.Second

// metaOf returns one s3fs attribute header (mode, uid, gid, mtime) of an
// object as stored.
func metaOf(info minio.ObjectInfo, name string) string {
	return info.Metadata.Get("X-Amz-Meta-" + name)
}

// waitModeMeta waits until key's x-amz-meta-mode is want (full st_mode).
func (e *env) waitModeMeta(t *testing.T, key string, want uint32, timeout time.Duration) minio.ObjectInfo {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		info, err := e.client().StatObject(context.Background(), e.bucket, key, minio.StatObjectOptions{})
		if err == nil && metaOf(info, "mode") == strconv.FormatUint(uint64(want), 10) {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("bucket object %q: x-amz-meta-mode %q (err %v), want %d (%07o) after %v",
				key, metaOf(info, "mode"), err, want, want, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func openT(t *testing.T, path string, flag int, perm os.FileMode) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, flag, perm)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return f
}

func writeAtT(t *testing.T, f *os.File, b []byte, off int64) {
	t.Helper()
	if n, err := f.WriteAt(b, off); err != nil || n != len(b) {
		t.Fatalf("write %d bytes at %d of %s: %d, %v", len(b), off, f.Name(), n, err)
	}
}

func closeT(t *testing.T, f *os.File) {
	t.Helper()
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", f.Name(), err)
	}
}

func TestNewFilesReachTheBucketWithTypeAndMode(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	if err := os.Mkdir(m.path("uploads"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := seededBytes(11, 300_000)
	f := openT(t, m.path("uploads/avatar.png"), os.O_CREATE|os.O_WRONLY, 0o600)
	for off := 0; off < len(img); off += 64 << 10 {
		if _, err := f.Write(img[off:min(off+64<<10, len(img))]); err != nil {
			t.Fatal(err)
		}
	}
	closeT(t, f)
	cfg := []byte(`{"debug": false}`)
	writeFile(t, m.path("uploads/config.json"), cfg) // 0644

	info := e.waitObject(t, "uploads/avatar.png", img, uploadWait)
	if metaOf(info, "mode") != fmt.Sprint(syscall.S_IFREG|0o600) {
		t.Errorf("avatar.png: x-amz-meta-mode %q, want %d (0100600 from the create mode)", metaOf(info, "mode"), syscall.S_IFREG|0o600)
	}
	if metaOf(info, "uid") != fmt.Sprint(os.Getuid()) || metaOf(info, "gid") != fmt.Sprint(os.Getgid()) {
		t.Errorf("avatar.png: uid/gid metadata %q/%q, want the writer's %d/%d", metaOf(info, "uid"), metaOf(info, "gid"), os.Getuid(), os.Getgid())
	}
	if mt, err := strconv.ParseInt(metaOf(info, "mtime"), 10, 64); err != nil || time.Since(time.Unix(mt, 0)) > time.Minute {
		t.Errorf("avatar.png: x-amz-meta-mtime %q, want about now", metaOf(info, "mtime"))
	}
	info = e.waitObject(t, "uploads/config.json", cfg, uploadWait)
	if metaOf(info, "mode") != fmt.Sprint(syscall.S_IFREG|0o644) {
		t.Errorf("config.json: x-amz-meta-mode %q, want %d", metaOf(info, "mode"), syscall.S_IFREG|0o644)
	}
	// mkdir made a marker, so the directory persists when emptied.
	e.waitObject(t, "uploads/", nil, uploadWait)

	// chmod of an uploaded file reaches the bucket, bytes untouched.
	if err := os.Chmod(m.path("uploads/config.json"), 0o640); err != nil {
		t.Fatal(err)
	}
	e.waitModeMeta(t, "uploads/config.json", syscall.S_IFREG|0o640, uploadWait)
	e.waitObject(t, "uploads/config.json", cfg, time.Second)
	// The mode must not flip back while listings catch up.
	for i := 0; i < 30; i++ {
		if st := statOf(t, m.path("uploads/config.json")); st.Mode != syscall.S_IFREG|0o640 {
			t.Errorf("config.json %v after chmod was uploaded: mode %07o through the mount, want 0100640", time.Duration(i)*100*time.Millisecond, st.Mode)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// chmod of a file still open for writing travels with its upload.
	g := openT(t, m.path("uploads/script.sh"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if _, err := g.Write([]byte("#!/bin/sh\necho hi\n")); err != nil {
		t.Fatal(err)
	}
	if err := g.Chmod(0o755); err != nil {
		t.Fatal(err)
	}
	closeT(t, g)
	e.waitModeMeta(t, "uploads/script.sh", syscall.S_IFREG|0o755, uploadWait)
	e.waitObject(t, "uploads/script.sh", []byte("#!/bin/sh\necho hi\n"), time.Second)
}

func TestContentTypeComesFromTheExtension(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	cases := map[string]string{
		"a.png":        "image/png",
		"b.json":       "application/json",
		"c.jpg":        "image/jpeg",
		"UPPER.PNG":    "image/png",
		"d.pdf":        "application/pdf",
		"e.mp4":        "video/mp4",
		"f.unknownext": "application/octet-stream",
		"noext":        "application/octet-stream",
	}
	for name := range cases {
		writeFile(t, m.path(name), []byte("body of "+name))
	}
	for name, want := range cases {
		info := e.waitObject(t, name, []byte("body of "+name), uploadWait)
		if info.ContentType != want {
			t.Errorf("%s: Content-Type %q, want %q", name, info.ContentType, want)
		}
	}
}

func TestExclusiveCreateRefusesAnExistingName(t *testing.T) {
	e := newEnv(t)
	e.putObject(t, "in-bucket.txt", []byte("already there"), nil)
	m := e.mount(t)

	f, err := os.OpenFile(m.path("lock.pid"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatalf("first O_EXCL create: %v", err)
	}
	if _, err := f.Write([]byte("1234\n")); err != nil {
		t.Fatal(err)
	}
	// A second O_EXCL create while the first is still open, and after.
	if g, err := os.OpenFile(m.path("lock.pid"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); !errors.Is(err, syscall.EEXIST) {
		if g != nil {
			g.Close()
		}
		t.Errorf("second O_EXCL create while open: %v, want EEXIST", err)
	}
	closeT(t, f)
	if g, err := os.OpenFile(m.path("lock.pid"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); !errors.Is(err, syscall.EEXIST) {
		if g != nil {
			g.Close()
		}
		t.Errorf("second O_EXCL create after close: %v, want EEXIST", err)
	}
	if g, err := os.OpenFile(m.path("in-bucket.txt"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); !errors.Is(err, syscall.EEXIST) {
		if g != nil {
			g.Close()
		}
		t.Errorf("O_EXCL create of a name only the bucket has: %v, want EEXIST", err)
	}
	e.waitObject(t, "lock.pid", []byte("1234\n"), uploadWait)
	if g, err := os.OpenFile(m.path("lock.pid"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); !errors.Is(err, syscall.EEXIST) {
		if g != nil {
			g.Close()
		}
		t.Errorf("O_EXCL create after the upload: %v, want EEXIST", err)
	}
	// The refused creates changed nothing.
	e.waitObject(t, "lock.pid", []byte("1234\n"), time.Second)
	e.waitObject(t, "in-bucket.txt", []byte("already there"), time.Second)
	if b := readFile(t, m.path("lock.pid")); string(b) != "1234\n" {
		t.Errorf("lock.pid through the mount: %q", b)
	}
}

func TestWritesAtOffsetsMakeASparseFile(t *testing.T) {
	e := newEnv(t)
	orig := seededBytes(12, 64<<10)
	e.putObject(t, "patch.bin", orig, nil)
	m := e.mount(t)
	f := openT(t, m.path("sparse.bin"), os.O_CREATE|os.O_RDWR, 0o644)
	writeAtT(t, f, []byte("head"), 0)
	writeAtT(t, f, []byte("middle"), 1<<20) // a hole before it
	if _, err := f.Seek(5<<20, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("tail")); err != nil { // seek past the end, then write
		t.Fatal(err)
	}
	writeAtT(t, f, []byte("HE"), 0) // overwrite inside what was written
	closeT(t, f)

	want := make([]byte, 5<<20+4)
	copy(want, "HEad")
	copy(want[1<<20:], "middle")
	copy(want[5<<20:], "tail")
	if st := statOf(t, m.path("sparse.bin")); st.Size != int64(len(want)) {
		t.Errorf("size through the mount %d, want %d", st.Size, len(want))
	}
	if b := readFile(t, m.path("sparse.bin")); !bytes.Equal(b, want) {
		t.Errorf("read back through the mount differs (%d bytes)", len(b))
	}
	e.waitObject(t, "sparse.bin", want, uploadWait)

	// Writes at offsets into an object that is only in the bucket.
	g := openT(t, m.path("patch.bin"), os.O_WRONLY, 0)
	writeAtT(t, g, []byte("XYZ"), 1000)
	writeAtT(t, g, []byte("past-the-end"), 100<<10)
	closeT(t, g)
	want = make([]byte, 100<<10+len("past-the-end"))
	copy(want, orig)
	copy(want[1000:], "XYZ")
	copy(want[100<<10:], "past-the-end")
	e.waitObject(t, "patch.bin", want, uploadWait)
}

func TestAppendAddsToTheEnd(t *testing.T) {
	e := newEnv(t)
	e.putObject(t, "logs/app.log", []byte("line 1\n"), nil)
	m := e.mount(t)
	for i := 2; i <= 4; i++ {
		f := openT(t, m.path("logs/app.log"), os.O_WRONLY|os.O_APPEND, 0)
		// O_APPEND writes at the end whatever the offset says.
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Fprintf(f, "line %d\n", i); err != nil {
			t.Fatal(err)
		}
		closeT(t, f)
	}
	want := []byte("line 1\nline 2\nline 3\nline 4\n")
	if b := readFile(t, m.path("logs/app.log")); !bytes.Equal(b, want) {
		t.Errorf("through the mount: %q, want %q", b, want)
	}
	e.waitObject(t, "logs/app.log", want, uploadWait)

	// A new file created with O_APPEND, appended to by two descriptors.
	a := openT(t, m.path("logs/new.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	b := openT(t, m.path("logs/new.log"), os.O_WRONLY|os.O_APPEND, 0)
	for _, s := range []struct {
		f *os.File
		s string
	}{{a, "a1\n"}, {b, "b1\n"}, {a, "a2\n"}} {
		if _, err := s.f.Write([]byte(s.s)); err != nil {
			t.Fatal(err)
		}
	}
	closeT(t, a)
	closeT(t, b)
	e.waitObject(t, "logs/new.log", []byte("a1\nb1\na2\n"), uploadWait)
}

func TestTruncateShrinksAndGrows(t *testing.T) {
	e := newEnv(t)
	orig := seededBytes(13, 10_000)
	for _, k := range []string{"shrink.bin", "grow.bin", "zero.bin", "open.bin"} {
		e.putObject(t, k, orig, nil)
	}
	m := e.mount(t)

	if err := os.Truncate(m.path("shrink.bin"), 1234); err != nil {
		t.Fatalf("truncate down: %v", err)
	}
	if err := os.Truncate(m.path("grow.bin"), 50_000); err != nil {
		t.Fatalf("truncate up: %v", err)
	}
	if err := os.Truncate(m.path("zero.bin"), 0); err != nil {
		t.Fatalf("truncate to 0: %v", err)
	}
	grown := append(append([]byte{}, orig...), make([]byte, 40_000)...)
	for k, want := range map[string][]byte{"shrink.bin": orig[:1234], "grow.bin": grown, "zero.bin": {}} {
		if st := statOf(t, m.path(k)); st.Size != int64(len(want)) {
			t.Errorf("%s: size %d through the mount, want %d", k, st.Size, len(want))
		}
		if b := readFile(t, m.path(k)); !bytes.Equal(b, want) {
			t.Errorf("%s: read back %d bytes that differ", k, len(b))
		}
	}

	// ftruncate on an open descriptor, then writes around it.
	f := openT(t, m.path("open.bin"), os.O_RDWR, 0)
	if err := f.Truncate(100); err != nil {
		t.Fatalf("ftruncate down: %v", err)
	}
	writeAtT(t, f, []byte("after"), 100)
	if err := f.Truncate(300); err != nil {
		t.Fatalf("ftruncate up: %v", err)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != 300 {
		t.Errorf("fstat after ftruncate: %v, %v; want size 300", fi, err)
	}
	closeT(t, f)
	openWant := make([]byte, 300)
	copy(openWant, orig[:100])
	copy(openWant[100:], "after")

	// A new file truncated through its descriptor before any write.
	g := openT(t, m.path("fresh.bin"), os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err := g.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	closeT(t, g)

	for k, want := range map[string][]byte{"shrink.bin": orig[:1234], "grow.bin": grown, "zero.bin": {},
		"open.bin": openWant, "fresh.bin": make([]byte, 4096)} {
		e.waitObject(t, k, want, uploadWait)
	}
}

func TestOverwriteWithoutTruncKeepsTheOtherBytes(t *testing.T) {
	e := newEnv(t)
	small := seededBytes(14, 3<<20)
	big := seededBytes(15, 20<<20) // above the size fetched whole on open
	e.putObject(t, "small.bin", small, nil)
	e.putObject(t, "big.bin", big, nil)
	m := e.mount(t)

	patch := func(name string, orig []byte, offs ...int64) []byte {
		want := append([]byte{}, orig...)
		f := openT(t, m.path(name), os.O_WRONLY, 0)
		for _, off := range offs {
			p := []byte(fmt.Sprintf("<patch at %d>", off))
			writeAtT(t, f, p, off)
			copy(want[off:], p)
		}
		closeT(t, f)
		return want
	}
	wantSmall := patch("small.bin", small, 0, 1<<20)
	// Read part of the big object first, so only some blocks are local.
	r := openT(t, m.path("big.bin"), os.O_RDONLY, 0)
	buf := make([]byte, 4096)
	if _, err := r.ReadAt(buf, 9<<20); err != nil || !bytes.Equal(buf, big[9<<20:9<<20+4096]) {
		t.Fatalf("partial read of big.bin: %v", err)
	}
	closeT(t, r)
	wantBig := patch("big.bin", big, 5, 10<<20+3, int64(len(big))-30)

	for name, want := range map[string][]byte{"small.bin": wantSmall, "big.bin": wantBig} {
		if st := statOf(t, m.path(name)); st.Size != int64(len(want)) {
			t.Errorf("%s: size %d, want %d (unchanged)", name, st.Size, len(want))
		}
		if b := readFile(t, m.path(name)); sha(b) != sha(want) {
			t.Errorf("%s: read back through the mount differs from old bytes + patches", name)
		}
		e.waitObject(t, name, want, uploadWait)
	}
}

func TestReadYourWritesWhileTheFileIsOpen(t *testing.T) {
	e := newEnv(t)
	orig := seededBytes(16, 200_000)
	e.putObject(t, "existing.bin", orig, nil)
	m := e.mount(t)

	data := seededBytes(17, 2<<20)
	f := openT(t, m.path("new.bin"), os.O_CREATE|os.O_RDWR, 0o644)
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1000)
	if _, err := f.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data[1<<20:1<<20+1000]) {
		t.Errorf("read back through the writing descriptor: %v / differs", err)
	}
	// Another descriptor and stat see the data before close.
	if b := readFile(t, m.path("new.bin")); !bytes.Equal(b, data) {
		t.Errorf("read through another descriptor while open: %d bytes, want %d", len(b), len(data))
	}
	if st := statOf(t, m.path("new.bin")); st.Size != int64(len(data)) {
		t.Errorf("stat while open: size %d, want %d", st.Size, len(data))
	}
	if !hasName(lsNames(t, m.dir), "new.bin") {
		t.Errorf("ls while open does not show new.bin")
	}
	closeT(t, f)

	g := openT(t, m.path("existing.bin"), os.O_RDWR, 0)
	writeAtT(t, g, []byte("CHANGED"), 100)
	want := append([]byte{}, orig...)
	copy(want[100:], "CHANGED")
	if b := readFile(t, m.path("existing.bin")); !bytes.Equal(b, want) {
		t.Errorf("existing.bin through another descriptor while open: differs from the write")
	}
	closeT(t, g)
	e.waitObject(t, "new.bin", data, uploadWait)
	e.waitObject(t, "existing.bin", want, uploadWait)
}

func hasName(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// ls -l reads a directory with READDIRPLUS, whose attributes the daemon
// answers from the listing it made for the read: they must be what stat
// says, for files uploaded, pending, and open and growing.
func TestListingAttributesMatchStat(t *testing.T) {
	e := newEnv(t)
	e.putObject(t, "ls/in-bucket.txt", []byte("from the bucket"), map[string]string{"mode": "33184", "mtime": "1700000000"})
	m := e.mount(t, "--writeback-delay", "1h")
	writeFile(t, m.path("ls/pending.txt"), []byte("written here"))
	if err := os.Chmod(m.path("ls/pending.txt"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(m.path("ls/sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(m.path("ls/growing.log"), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // entry and attribute timeouts: the next stat asks the daemon
	if _, err := f.Write(make([]byte, 500)); err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		size int64
		mode os.FileMode
	}{
		"in-bucket.txt": {15, 0o640},
		"pending.txt":   {12, 0o640},
		"growing.log":   {1500, 0o600},
		"sub":           {0, os.ModeDir | 0o700},
	}
	// Twice: the second read's attributes come from READDIRPLUS after
	// the first read's expired.
	for round := 0; round < 2; round++ {
		ents, err := os.ReadDir(m.path("ls"))
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != len(want) {
			t.Fatalf("ls lists %d entries, want %d", len(ents), len(want))
		}
		for _, de := range ents {
			fi, err := os.Lstat(m.path("ls/" + de.Name()))
			if err != nil {
				t.Fatal(err)
			}
			w, ok := want[de.Name()]
			if !ok {
				t.Fatalf("unexpected entry %s", de.Name())
			}
			if fi.Mode() != w.mode || (!fi.IsDir() && fi.Size() != w.size) {
				t.Errorf("round %d: %s: mode %v size %d, want %v %d", round, de.Name(), fi.Mode(), fi.Size(), w.mode, w.size)
			}
		}
		if round == 0 {
			time.Sleep(1100 * time.Millisecond)
		}
	}
	if fi, err := os.Lstat(m.path("ls/in-bucket.txt")); err != nil || fi.ModTime().Unix() != 1700000000 {
		t.Errorf("in-bucket.txt mtime %v (%v), want 1700000000", fi.ModTime().Unix(), err)
	}
}
