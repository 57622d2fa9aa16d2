package main

// End-to-end tests of bad input in the bucket: keys another tool wrote
// that cannot be paths, and objects whose s3fs metadata is garbage. The
// mount must list what it can, leave the rest out with one log line
// each, never crash, and never touch what it cannot show.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// faultHostileKey is one object seeded straight into the bucket.
type faultHostileKey struct {
	key  string
	data []byte
	meta map[string]string
	// path is where it shows through the mount ("" if it cannot).
	path string
	// skip is the key (or common prefix) the daemon logs as left out.
	skip string
	// why documents the case in failure messages.
	why string
}

// faultSkipLine matches the daemon's "left out of listings" log line and
// captures its key attribute (slog text: bare or Go-quoted).
var faultSkipLine = regexp.MustCompile(`object key cannot be a path.*?\bkey=("(?:[^"\\]|\\.)*"|\S+)`)

// faultSkippedKeys returns how often each key was logged as left out.
func faultSkippedKeys(t *testing.T, log string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, line := range strings.Split(log, "\n") {
		mm := faultSkipLine.FindStringSubmatch(line)
		if mm == nil {
			continue
		}
		k := mm[1]
		if strings.HasPrefix(k, `"`) {
			u, err := strconv.Unquote(k)
			if err != nil {
				t.Errorf("log line with an unparsable key %s: %v", k, err)
				continue
			}
			k = u
		}
		out[k]++
	}
	return out
}

// faultLsLa runs ls -laR on dir and fails the test unless it exits 0
// with nothing on stderr, within a bound.
func faultLsLa(t *testing.T, dir string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ls", "-laR", dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil || stderr.Len() > 0 {
		t.Errorf("ls -laR %s: %v\nstderr:\n%s\nstdout:\n%s", dir, err, stderr.String(), tail(stdout.String(), 3000))
	}
	return stdout.String()
}

func TestFaultHostileKeysInTheBucket(t *testing.T) {
	e := newEnv(t)
	const uid, gid = 1234, 5678
	seg255 := strings.Repeat("s", 255)
	// A 1024-byte key (the S3 maximum) made of legal segments.
	long1024 := "h/long/" + seg255 + "/" + seg255 + "/" + seg255 + "/"
	long1024 += strings.Repeat("f", 1024-len(long1024))
	seg300 := strings.Repeat("x", 300)
	cases := []faultHostileKey{
		{key: "h/plain.txt", data: []byte("plain"), path: "h/plain.txt", why: "control"},
		{key: "h/bad\xffutf8", data: []byte("latin-1"), skip: "h/bad\xffutf8", why: "invalid UTF-8"},
		{key: "h/ctl\x01\x7f.txt", data: []byte("control bytes"), path: "h/ctl\x01\x7f.txt", why: "control bytes in a name"},
		{key: "h/a/../b", data: []byte("dotdot"), skip: "h/a/../", why: "'..' segment"},
		{key: "h/../escape", data: []byte("escape"), skip: "h/../", why: "'..' segment at the top"},
		{key: "./x", data: []byte("dot"), skip: "./", why: "'.' segment"},
		{key: "h/./y", data: []byte("dot"), skip: "h/./", why: "'.' segment"},
		{key: "h/a//b", data: []byte("empty segment"), path: "", skip: "h/a//", why: "empty segment"},
		{key: "h//lead", data: []byte("empty segment"), skip: "h//", why: "empty segment"},
		{key: long1024, data: []byte("a key of exactly 1024 bytes"), path: long1024, why: "1024-byte key"},
		{key: long1024 + "g", data: []byte("1025 bytes"), skip: long1024 + "g", why: "1025-byte key"},
		{key: "h/" + seg300, data: []byte("300-byte name"), skip: "h/" + seg300, why: "300-byte segment"},
		{key: "h/" + seg300 + "/child", data: []byte("under a 300-byte dir"), skip: "h/" + seg300 + "/", why: "300-byte directory segment"},
		{key: "h/both/a", data: []byte("file a"), path: "", why: "file a beside directory a/ (the directory wins)"},
		{key: "h/both/a/b", data: []byte("file a/b"), path: "h/both/a/b", why: "a/b beside a"},
		{key: "h/marker/", data: []byte("a directory marker holding data"), path: "", why: "marker with data"},
		{key: "h/marker/inside.txt", data: []byte("inside"), path: "h/marker/inside.txt", why: "file under a marker with data"},
		{key: "h/emptymarker/", data: nil, path: "", why: "marker without children"},
		{key: "h/meta/banana-mode.txt", data: []byte("mode banana"), path: "h/meta/banana-mode.txt",
			meta: map[string]string{"mode": "banana", "uid": "7", "gid": "8", "mtime": "1500000000"}, why: "mode banana"},
		{key: "h/meta/bad-mtime.txt", data: []byte("mtime -1x"), path: "h/meta/bad-mtime.txt",
			meta: map[string]string{"mtime": "-1x"}, why: "mtime -1x"},
		{key: "h/meta/huge-uid.txt", data: []byte("uid huge"), path: "h/meta/huge-uid.txt",
			meta: map[string]string{"uid": "99999999999999999999", "gid": "-5"}, why: "uid/gid out of range"},
		{key: "h/meta/all-bad.txt", data: []byte("all of it"), path: "h/meta/all-bad.txt",
			meta: map[string]string{"mode": "0x1ff", "uid": "root", "gid": "1e3", "mtime": "99999999999999999999999"}, why: "all broken"},
		{key: "h/meta/dir-mode-file.txt", data: []byte("file with a directory mode"), path: "h/meta/dir-mode-file.txt",
			meta: map[string]string{"mode": strconv.Itoa(syscall.S_IFDIR | 0o755)}, why: "S_IFDIR mode on a file"},
		{key: "h/meta/empty-meta.txt", data: []byte("empty values"), path: "h/meta/empty-meta.txt",
			meta: map[string]string{"mode": "", "uid": "", "mtime": ""}, why: "empty values"},
		{key: "h/odd names/new\nline.txt", data: []byte("newline"), path: "h/odd names/new\nline.txt", why: "newline in a name"},
		{key: "h/odd names/back\\slash%2F.txt", data: []byte("backslash"), path: "h/odd names/back\\slash%2F.txt", why: "backslash and %2F"},
	}

	// Seed what MinIO accepts; note what it refuses.
	var stored []faultHostileKey
	for _, c := range cases {
		_, err := e.client().PutObject(context.Background(), e.bucket, c.key, bytes.NewReader(c.data), int64(len(c.data)),
			minio.PutObjectOptions{UserMetadata: c.meta})
		if err != nil {
			t.Logf("MinIO refused %s (%q...): %v", c.why, faultShort(c.key), err)
			continue
		}
		// Check what MinIO really stored under that key.
		if b, _, gerr := e.getObject(c.key); gerr != nil || !bytes.Equal(b, c.data) {
			t.Logf("MinIO accepted %s (%q) but does not give it back (%v); left out", c.why, faultShort(c.key), gerr)
			continue
		}
		t.Logf("MinIO stored %s (%q)", c.why, faultShort(c.key))
		stored = append(stored, c)
	}
	has := func(key string) bool {
		for _, c := range stored {
			if c.key == key {
				return true
			}
		}
		return false
	}
	listed := map[string]bool{}
	for _, k := range e.keys(t, "") {
		listed[k] = true
	}
	// MinIO stores "a/b" beside an object "a" but never lists it (its
	// one-drive layout keeps "a" as a directory holding both): no client
	// can see it through ListObjects, so the mount shows the file "a".
	for i, c := range stored {
		if !listed[c.key] {
			t.Logf("MinIO does not list %s (%q); the mount cannot see it", c.why, faultShort(c.key))
			stored[i].path = ""
		}
	}
	bucketBefore := map[string]string{}
	for _, k := range e.keys(t, "") {
		b, _, err := e.getObject(k)
		if err != nil {
			t.Fatalf("get %q: %v", faultShort(k), err)
		}
		bucketBefore[k] = faultSHA(b)
	}
	t.Logf("bucket holds %d keys", len(bucketBefore))

	m := e.mount(t, "--uid", strconv.Itoa(uid), "--gid", strconv.Itoa(gid))

	// ls -laR sees everything it can and fails on nothing, twice (the
	// second time after the listing TTL: nothing is logged again).
	out := faultLsLa(t, m.dir)
	time.Sleep(1200 * time.Millisecond)
	faultLsLa(t, m.dir)
	if t.Failed() {
		t.Logf("ls -laR output:\n%s", tail(out, 4000))
	}

	// Every storable path reads back with its bytes.
	for _, c := range stored {
		if c.path == "" {
			continue
		}
		b, err := os.ReadFile(m.path(c.path))
		if err != nil || !bytes.Equal(b, c.data) {
			t.Errorf("%s: read %q through the mount: %v, %q; want %q", c.why, faultShort(c.path), err, faultShort(string(b)), c.data)
		}
	}

	// Skipped keys: one log line each, nothing else logged as skipped.
	time.Sleep(200 * time.Millisecond)
	skipped := faultSkippedKeys(t, m.log())
	wantSkip := map[string]bool{}
	for _, c := range stored {
		if c.skip != "" {
			wantSkip[c.skip] = true
		}
	}
	if len(wantSkip) == 0 {
		t.Logf("MinIO refused every key that cannot be a path, so none is left out here; " +
			"TestKeysThatCannotBePathsAreLeftOutOfListings covers them through a listing proxy")
	}
	for k := range wantSkip {
		if n := skipped[k]; n != 1 {
			t.Errorf("key %q: logged %d times as left out, want once", faultShort(k), n)
		}
	}
	for k, n := range skipped {
		if !wantSkip[k] {
			t.Errorf("key %q logged %d times as left out; it should be listed", faultShort(k), n)
		}
	}

	// Names that cannot be keys are refused with an error, not mangled.
	if _, err := os.Stat(m.path("h/" + seg300)); err == nil || !os.IsNotExist(err) && !strings.Contains(err.Error(), "too long") {
		t.Errorf("stat of a 300-byte name: %v, want ENAMETOOLONG", err)
	}

	// a and a/b: the directory wins when the listing shows both; with
	// MinIO, which lists only "a", the file is shown and a/b is not.
	if has("h/both/a/b") && listed["h/both/a/b"] {
		if st, err := os.Stat(m.path("h/both/a")); err != nil || !st.IsDir() {
			t.Errorf("h/both/a with both a and a/b listed: %v %v, want a directory", st, err)
		}
	} else if has("h/both/a") {
		if b, err := os.ReadFile(m.path("h/both/a")); err != nil || string(b) != "file a" {
			t.Errorf("h/both/a (a/b not listed by the server): %q %v, want the file", b, err)
		}
		if _, err := os.Stat(m.path("h/both/a/b")); !errors.Is(err, syscall.ENOTDIR) {
			t.Errorf("stat h/both/a/b below the file a: %v, want ENOTDIR", err)
		}
	}
	// A 1024-byte key can be written through the mount too; one byte more
	// is refused.
	long2 := long1024[:len(long1024)-1] + "2"
	if err := os.WriteFile(m.path(long2), []byte("made here"), 0o644); err != nil {
		t.Errorf("create a file whose key is 1024 bytes: %v", err)
	} else {
		e.waitObject(t, long2, []byte("made here"), 20*time.Second)
		os.Remove(m.path(long2))
		e.waitGone(t, long2, 20*time.Second)
	}
	if err := os.WriteFile(m.path(long2+"3"), nil, 0o644); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Errorf("create a file whose key is 1025 bytes: %v, want ENAMETOOLONG", err)
	}
	// A directory needs one byte more (its marker ends in "/").
	if err := os.Mkdir(m.path(long2), 0o755); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Errorf("mkdir whose marker key would be 1025 bytes: %v, want ENAMETOOLONG", err)
	}
	// A marker holding data is a directory (its bytes are not shown).
	if has("h/marker/") {
		if st, err := os.Stat(m.path("h/marker")); err != nil || !st.IsDir() {
			t.Errorf("h/marker (a marker object with data): %v %v, want a directory", st, err)
		}
	}
	if has("h/emptymarker/") {
		ents, err := os.ReadDir(m.path("h/emptymarker"))
		if err != nil || len(ents) != 0 {
			t.Errorf("h/emptymarker: %v %v, want an empty directory", ents, err)
		}
	}

	// Broken metadata: each broken field falls back to the default.
	now := time.Now()
	type want struct {
		mode     uint32
		uid, gid uint32
		mtime    func(time.Time) bool
	}
	recent := func(ts time.Time) bool { return ts.After(now.Add(-5*time.Minute)) && ts.Before(now.Add(time.Minute)) }
	wants := map[string]want{
		"h/meta/banana-mode.txt":   {syscall.S_IFREG | 0o644, 7, 8, func(ts time.Time) bool { return ts.Unix() == 1500000000 }},
		"h/meta/bad-mtime.txt":     {syscall.S_IFREG | 0o644, uid, gid, recent},
		"h/meta/huge-uid.txt":      {syscall.S_IFREG | 0o644, uid, gid, recent},
		"h/meta/all-bad.txt":       {syscall.S_IFREG | 0o644, uid, gid, recent},
		"h/meta/dir-mode-file.txt": {syscall.S_IFREG | 0o755, uid, gid, recent},
		"h/meta/empty-meta.txt":    {syscall.S_IFREG | 0o644, uid, gid, recent},
	}
	for p, w := range wants {
		if !has(p) {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(m.path(p), &st); err != nil {
			t.Errorf("stat %s: %v", p, err)
			continue
		}
		mt := time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
		if st.Mode != w.mode || st.Uid != w.uid || st.Gid != w.gid || !w.mtime(mt) {
			t.Errorf("stat %s: mode %07o uid %d gid %d mtime %v; want mode %07o uid %d gid %d and the default mtime",
				p, st.Mode, st.Uid, st.Gid, mt, w.mode, w.uid, w.gid)
		}
	}

	// The daemon survived all of it.
	select {
	case <-m.done:
		t.Fatalf("mediafs exited: %v\n%s", m.exitErr, tail(m.log(), 4000))
	default:
	}
	if strings.Contains(m.log(), "panic") {
		t.Errorf("the daemon log mentions a panic:\n%s", tail(m.log(), 4000))
	}

	// The mount still works around the hostile keys: a write next to them
	// reaches the bucket.
	writeFile(t, m.path("h/after.txt"), []byte("written after"))
	e.waitObject(t, "h/after.txt", []byte("written after"), 20*time.Second)

	// What the mount could not show is left exactly as it was.
	m.stop(t)
	after := map[string]string{}
	for _, k := range e.keys(t, "") {
		b, _, err := e.getObject(k)
		if err != nil {
			t.Fatalf("get %q: %v", faultShort(k), err)
		}
		after[k] = faultSHA(b)
	}
	for k, v := range bucketBefore {
		if after[k] != v {
			t.Errorf("object %q was changed or removed by the mount", faultShort(k))
		}
	}
	for k := range after {
		if _, ok := bucketBefore[k]; !ok && k != "h/after.txt" {
			t.Errorf("the mount added object %q", faultShort(k))
		}
	}
}

// faultShort abbreviates long keys in messages.
func faultShort(s string) string {
	if len(s) > 80 {
		return fmt.Sprintf("%s...(%d bytes)...%s", s[:30], len(s), s[len(s)-20:])
	}
	return s
}

func faultSHA(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }
