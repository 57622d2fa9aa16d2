package main

// End-to-end tests of the read side ("Mount a bucket as a directory"):
// objects put straight into the bucket, as another tool or machine would,
// and what a program sees of them through the mount. Also how the daemon
// refuses to mount when it cannot work.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// seededBytes returns n reproducible pseudo-random bytes.
func seededBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func sha(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// lstat returns the raw stat of path on the mount.
func statOf(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return &st
}

// names lists a directory on the mount, sorted.
func lsNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ls %s: %v", dir, err)
	}
	out := make([]string, 0, len(ents))
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func wantLs(t *testing.T, dir string, want ...string) {
	t.Helper()
	got := lsNames(t, dir)
	sort.Strings(want)
	if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
		t.Errorf("ls %s = %q, want %q", dir, got, want)
	}
}

func TestBucketObjectsAppearAsFilesAndDirectories(t *testing.T) {
	e := newEnv(t)
	files := map[string][]byte{
		"top.txt":                []byte("top level\n"),
		"photos/2024/beach.jpg":  seededBytes(1, 70_000),
		"photos/2024/city.jpg":   seededBytes(2, 1234),
		"photos/cover.png":       seededBytes(3, 99),
		"docs/deep/a/b/c/d.json": []byte(`{"deep":true}`),
	}
	for k, v := range files {
		e.putObject(t, k, v, nil)
	}
	// Explicit directory markers: one empty, one over existing files.
	e.putObject(t, "empty/", nil, nil)
	e.putObject(t, "photos/", nil, nil)
	m := e.mount(t)

	wantLs(t, m.dir, "docs", "empty", "photos", "top.txt")
	wantLs(t, m.path("photos"), "2024", "cover.png")
	wantLs(t, m.path("photos/2024"), "beach.jpg", "city.jpg")
	wantLs(t, m.path("empty"))
	wantLs(t, m.path("docs/deep/a/b/c"), "d.json")
	for _, d := range []string{"empty", "photos", "photos/2024", "docs", "docs/deep/a/b"} {
		if st := statOf(t, m.path(d)); st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			t.Errorf("%s is not a directory: mode %07o", d, st.Mode)
		}
	}
	for k, v := range files {
		st := statOf(t, m.path(k))
		if st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Size != int64(len(v)) {
			t.Errorf("%s: mode %07o size %d, want a regular file of %d bytes", k, st.Mode, st.Size, len(v))
		}
		if got := readFile(t, m.path(k)); sha(got) != sha(v) {
			t.Errorf("%s: read %d bytes that differ from the object (%d bytes)", k, len(got), len(v))
		}
	}
	if _, err := os.Stat(m.path("photos/nope.jpg")); !os.IsNotExist(err) {
		t.Errorf("stat of a missing name: %v, want ENOENT", err)
	}
}

func TestS3fsMetadataIsHonouredAndDefaultsApplyWithout(t *testing.T) {
	e := newEnv(t)
	mtime := time.Date(2020, 9, 13, 12, 26, 40, 0, time.UTC)
	e.putObject(t, "meta/private.bin", []byte("secret-ish"), map[string]string{
		"mode":  fmt.Sprint(syscall.S_IFREG | 0o600),
		"uid":   "1234",
		"gid":   "5678",
		"mtime": fmt.Sprint(mtime.Unix()),
	})
	// s3fs also writes mode as permission bits only; sub-second mtime.
	e.putObject(t, "meta/exec.sh", []byte("#!/bin/sh\n"), map[string]string{
		"mode":  "493", // 0755
		"mtime": fmt.Sprintf("%d.500000000", mtime.Unix()),
	})
	e.putObject(t, "meta/dir/", nil, map[string]string{
		"mode": fmt.Sprint(syscall.S_IFDIR | 0o700), "uid": "42", "gid": "43",
	})
	e.putObject(t, "plain/file.txt", []byte("no metadata"), nil)
	e.putObject(t, "plain/marker/", nil, nil)
	m := e.mount(t, "--uid", "4321", "--gid", "8765", "--file-mode", "0640", "--dir-mode", "0750")

	st := statOf(t, m.path("meta/private.bin"))
	if st.Mode != syscall.S_IFREG|0o600 || st.Uid != 1234 || st.Gid != 5678 {
		t.Errorf("private.bin: mode %07o uid %d gid %d, want %07o 1234 5678", st.Mode, st.Uid, st.Gid, syscall.S_IFREG|0o600)
	}
	if got := time.Unix(st.Mtim.Unix()); !got.Equal(mtime) {
		t.Errorf("private.bin: mtime %v, want %v (x-amz-meta-mtime)", got, mtime)
	}
	st = statOf(t, m.path("meta/exec.sh"))
	if st.Mode != syscall.S_IFREG|0o755 {
		t.Errorf("exec.sh: mode %07o, want %07o", st.Mode, syscall.S_IFREG|0o755)
	}
	// Object metadata without uid/gid: the mount's defaults fill in.
	if st.Uid != 4321 || st.Gid != 8765 {
		t.Errorf("exec.sh: uid %d gid %d, want the defaults 4321 8765", st.Uid, st.Gid)
	}
	if got := time.Unix(st.Mtim.Unix()); !got.Equal(mtime.Add(500 * time.Millisecond)) {
		t.Errorf("exec.sh: mtime %v, want %v", got, mtime.Add(500*time.Millisecond))
	}
	// The marker's attributes show once its parent is listed or it is
	// stat'ed; either way stat must give them.
	lsNames(t, m.path("meta"))
	lsNames(t, m.path("meta/dir"))
	st = statOf(t, m.path("meta/dir"))
	if st.Mode != syscall.S_IFDIR|0o700 || st.Uid != 42 || st.Gid != 43 {
		t.Errorf("meta/dir: mode %07o uid %d gid %d, want %07o 42 43", st.Mode, st.Uid, st.Gid, syscall.S_IFDIR|0o700)
	}

	st = statOf(t, m.path("plain/file.txt"))
	if st.Mode != syscall.S_IFREG|0o640 || st.Uid != 4321 || st.Gid != 8765 {
		t.Errorf("file without metadata: mode %07o uid %d gid %d, want %07o 4321 8765", st.Mode, st.Uid, st.Gid, syscall.S_IFREG|0o640)
	}
	_, info, err := e.getObject("plain/file.txt")
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Unix(st.Mtim.Unix()).Sub(info.LastModified); d < -time.Second || d > time.Second {
		t.Errorf("file without metadata: mtime %v, want LastModified %v", time.Unix(st.Mtim.Unix()), info.LastModified)
	}
	for _, d := range []string{"plain", "plain/marker"} {
		st = statOf(t, m.path(d))
		if st.Mode != syscall.S_IFDIR|0o750 || st.Uid != 4321 || st.Gid != 8765 {
			t.Errorf("%s without metadata: mode %07o uid %d gid %d, want %07o 4321 8765", d, st.Mode, st.Uid, st.Gid, syscall.S_IFDIR|0o750)
		}
	}
}

func TestLargeObjectReadsSequentiallyAndAtRandomOffsets(t *testing.T) {
	e := newEnv(t)
	const size = 100 << 20
	src := seededBytes(100, size)
	e.putObject(t, "video/big.mp4", src, nil)
	m := e.mount(t)

	if st := statOf(t, m.path("video/big.mp4")); st.Size != size {
		t.Fatalf("size %d, want %d", st.Size, size)
	}
	openR := func() *os.File {
		t.Helper()
		f, err := os.Open(m.path("video/big.mp4"))
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	r := rand.New(rand.NewSource(7))
	randomReads := func(f *os.File, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			off := r.Int63n(size)
			ln := 1 + r.Intn(256<<10)
			if i%20 == 0 {
				off = size - int64(ln/2) // straddles the end
			}
			buf := make([]byte, ln)
			got, err := f.ReadAt(buf, off)
			if err != nil && err != io.EOF {
				t.Fatalf("read %d bytes at %d: %v", ln, off, err)
			}
			if !bytes.Equal(buf[:got], src[off:min(off+int64(ln), size)]) {
				t.Fatalf("read %d bytes at %d: got %d bytes that differ from the object", ln, off, got)
			}
		}
	}
	sequential := func(f *os.File) {
		t.Helper()
		h := sha256.New()
		n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
		if err != nil {
			t.Fatalf("sequential read: %v after %d bytes", err, n)
		}
		if n != size || fmt.Sprintf("%x", h.Sum(nil)) != sha(src) {
			t.Fatalf("sequential read: %d bytes, sha256 differs from the object", n)
		}
	}

	// Random reads first, while nothing is cached: ranged GETs.
	g := openR()
	start := time.Now()
	randomReads(g, 200)
	t.Logf("200 random reads, uncached: %v", time.Since(start))

	// A sequential reader beside it (g stays open), then a third
	// descriptor once the file is whole locally: every open must work
	// whatever the others are doing.
	f := openR()
	start = time.Now()
	sequential(f)
	t.Logf("sequential read of 100 MiB: %v", time.Since(start))
	randomReads(openR(), 20)
	randomReads(g, 20)

	// Reopened after all closed: served from the cache, same bytes.
	g.Close()
	f.Close()
	sequential(openR())
}

func TestEmptyObjectIsAnEmptyFile(t *testing.T) {
	e := newEnv(t)
	e.putObject(t, "empty.txt", nil, nil)
	e.putObject(t, "d/zero.bin", []byte{}, nil)
	m := e.mount(t)
	for _, p := range []string{"empty.txt", "d/zero.bin"} {
		st := statOf(t, m.path(p))
		if st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Size != 0 {
			t.Errorf("%s: mode %07o size %d, want an empty regular file", p, st.Mode, st.Size)
		}
		if b := readFile(t, m.path(p)); len(b) != 0 {
			t.Errorf("%s: read %d bytes, want 0", p, len(b))
		}
	}
	wantLs(t, m.path("d"), "zero.bin")
}

// s3Proxy sits between mediafs and MinIO: it counts requests and can add
// entries to listings, to stand for keys that MinIO itself refuses to
// store but other S3 servers hold (a//b, ./x, 300-byte segments).
type s3Proxy struct {
	URL   string
	heads atomic.Int64
	lists atomic.Int64
	// injected counts listing answers that got extra entries.
	injected atomic.Int64
	// inject maps a listed prefix to raw XML added to its ListObjectsV2
	// answer (keys URL-encoded, as in MinIO's encoding-type=url answers).
	inject map[string]string
}

func newS3Proxy(t *testing.T, e *env, inject map[string]string) *s3Proxy {
	t.Helper()
	target, err := url.Parse(e.minio.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := &s3Proxy{inject: inject}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		q := resp.Request.URL.Query()
		extra, ok := p.inject[q.Get("prefix")]
		if !ok || q.Get("list-type") != "2" || q.Get("continuation-token") != "" || resp.StatusCode != http.StatusOK {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		body = bytes.Replace(body, []byte("</ListBucketResult>"), []byte(extra+"</ListBucketResult>"), 1)
		p.injected.Add(1)
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			p.heads.Add(1)
		}
		if r.Method == http.MethodGet && r.URL.Query().Has("list-type") {
			p.lists.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func xmlObject(key string, size int) string {
	return fmt.Sprintf("<Contents><Key>%s</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified>"+
		"<ETag>&#34;%032x&#34;</ETag><Size>%d</Size><StorageClass>STANDARD</StorageClass></Contents>",
		url.QueryEscape(key), size, size)
}

func xmlPrefix(p string) string {
	return "<CommonPrefixes><Prefix>" + url.QueryEscape(p) + "</Prefix></CommonPrefixes>"
}

func TestKeysThatCannotBePathsAreLeftOutOfListings(t *testing.T) {
	e := newEnv(t)
	long := strings.Repeat("x", 300)
	longest := strings.Repeat("y", 255)
	good := map[string][]byte{
		"odd/ok.txt":     []byte("fine"),
		"odd/sub/fine":   []byte("also fine"),
		"odd/" + longest: []byte("longest legal name"),
	}
	for k, v := range good {
		e.putObject(t, k, v, nil)
	}
	// MinIO refuses such keys itself; check that, then have the proxy
	// list them as an S3 server that stores them would.
	for _, k := range []string{"odd/a//b", "odd/" + long, "odd/./x"} {
		_, err := e.client().PutObject(context.Background(), e.bucket, k, strings.NewReader("bad"), 3, minio.PutObjectOptions{})
		if err == nil {
			t.Logf("MinIO stored key %q", k)
		}
	}
	bad := []string{"odd/" + long, "odd/nul\x00byte", "odd/bad\xffutf8"}
	p := newS3Proxy(t, e, map[string]string{
		// odd/a//b lists as the (valid) directory odd/a/ and, inside it,
		// the prefix odd/a// with an empty segment.
		"odd/": xmlPrefix("odd/a/") + xmlPrefix("odd/./") + xmlPrefix("odd/"+long+"/") + xmlPrefix("odd/../") +
			xmlObject(bad[0], 3) + xmlObject(bad[1], 3) + xmlObject(bad[2], 3),
		"odd/a/": xmlPrefix("odd/a//") + xmlObject("odd/a/.", 1),
		"":       xmlPrefix("./"),
	})
	m := e.mount(t, "--endpoint", p.URL)

	wantLs(t, m.dir, "odd")
	for i := 0; i < 2; i++ { // the second time must not log again
		wantLs(t, m.path("odd"), "a", "ok.txt", "sub", longest)
		wantLs(t, m.path("odd/a"))
	}
	for k, v := range good {
		if b := readFile(t, m.path(k)); !bytes.Equal(b, v) {
			t.Errorf("%s: got %q, want %q", k, b, v)
		}
	}
	// A name that cannot be a key is refused, not truncated.
	if _, err := os.Stat(m.path("odd/" + long)); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Errorf("stat of a 300-byte name: %v, want ENAMETOOLONG", err)
	}
	if p.injected.Load() < 3 {
		t.Fatalf("the proxy added entries to %d listings, want at least 3: the test tested nothing", p.injected.Load())
	}
	// Each skipped key is logged once.
	time.Sleep(100 * time.Millisecond)
	log := m.log()
	if n := strings.Count(log, "left out of listings"); n != 9 {
		t.Errorf("%d log lines about skipped keys, want 9 (one per key):\n%s", n, log)
	}
}

func TestFileAndDirectoryOfOneNameShowTheDirectory(t *testing.T) {
	e := newEnv(t)
	// A file object and a directory marker of the same name. (MinIO on
	// one drive will not list keys below an object "a" at all, so "a"
	// plus "a/b" cannot be set up with it; a marker "a/" can.)
	e.putObject(t, "clash/", nil, nil)
	e.putObject(t, "clash", []byte("I am a file"), nil)
	e.putObject(t, "sub/x", []byte("file x"), nil)
	e.putObject(t, "sub/x/", nil, nil)
	e.putObject(t, "sub/y", []byte("file y"), nil)
	m := e.mount(t)

	wantLs(t, m.dir, "clash", "sub")
	wantLs(t, m.path("sub"), "x", "y")
	for _, d := range []string{"clash", "sub/x"} {
		if st := statOf(t, m.path(d)); st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			t.Errorf("%s: mode %07o, want a directory (the directory wins)", d, st.Mode)
		}
		wantLs(t, m.path(d))
	}
	if b := readFile(t, m.path("sub/y")); string(b) != "file y" {
		t.Errorf("sub/y = %q", b)
	}
	// The directory is usable: a file written into it reaches the bucket.
	writeFile(t, m.path("clash/new.txt"), []byte("new"))
	e.waitObject(t, "clash/new.txt", []byte("new"), 20*time.Second)
	// The file objects are left alone in the bucket.
	for k, v := range map[string]string{"clash": "I am a file", "sub/x": "file x"} {
		if b, _, err := e.getObject(k); err != nil || string(b) != v {
			t.Errorf("bucket object %s: %q, %v; want it untouched", k, b, err)
		}
	}
}

func TestListingOfFiveThousandKeysReturnsAllNames(t *testing.T) {
	e := newEnv(t)
	const n = 5000
	want := make([]string, n)
	objs := make(chan minio.SnowballObject, n)
	for i := range want {
		want[i] = fmt.Sprintf("img_%05d.jpg", i)
		body := []byte(want[i])
		objs <- minio.SnowballObject{Key: "many/" + want[i], Size: int64(len(body)), ModTime: time.Now(),
			Content: bytes.NewReader(body)}
	}
	close(objs)
	// One tar upload that the server unpacks: 5,000 PUTs would take
	// longer than the test is worth.
	if err := e.client().PutObjectsSnowball(context.Background(), e.bucket, minio.SnowballOptions{InMemory: true}, objs); err != nil {
		t.Fatalf("snowball upload: %v", err)
	}
	if got := len(e.keys(t, "many/")); got != n {
		t.Fatalf("bucket holds %d keys, want %d", got, n)
	}
	p := newS3Proxy(t, e, nil)
	m := e.mount(t, "--endpoint", p.URL)
	p.heads.Store(0) // the mount's own bucket check
	p.lists.Store(0)
	start := time.Now()
	got := lsNames(t, m.path("many"))
	t.Logf("listing %d names: %v", len(got), time.Since(start))
	sort.Strings(want)
	if len(got) != n {
		t.Fatalf("ls many: %d names, want %d", len(got), n)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("ls many: name %d is %q, want %q", i, got[i], want[i])
		}
	}
	// ls -l: a stat of every name answers from the listing, without a
	// HEAD request per entry.
	start = time.Now()
	for _, nm := range want {
		if st := statOf(t, m.path("many/"+nm)); st.Size != int64(len(nm)) {
			t.Fatalf("%s: size %d, want %d", nm, st.Size, len(nm))
		}
	}
	t.Logf("stat of %d names: %v; %d LIST and %d HEAD requests in all", n, time.Since(start), p.lists.Load(), p.heads.Load())
	// At most the directory's own marker is looked up, never an entry.
	if h := p.heads.Load(); h > 2 {
		t.Errorf("%d HEAD requests for ls and stat of %d names, want none per entry (one LIST with metadata)", h, n)
	}
}

// runMountCmd runs `mediafs mount` to completion (it is expected to fail)
// and returns its combined output and exit error.
func runMountCmd(t *testing.T, env []string, args ...string) (string, error, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, append([]string{"mount"}, args...)...)
	cmd.Env = env
	start := time.Now()
	out, err := cmd.CombinedOutput()
	return string(out), err, time.Since(start)
}

func TestMountFailsFastWithAClearMessage(t *testing.T) {
	e := newEnv(t)
	creds := e.minio.Env()
	closedPort := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return "http://" + addr
	}()
	const wrongSecret = "wrong-secret-0123456789abcdef"
	cases := []struct {
		name     string
		env      []string
		endpoint string
		bucket   string
		nonEmpty bool
		want     string
	}{
		{name: "missing bucket", env: creds, endpoint: e.minio.Endpoint, bucket: "no-such-bucket", want: "does not exist"},
		{name: "wrong secret key", env: []string{"AWS_ACCESS_KEY_ID=" + e.minio.AccessKey, "AWS_SECRET_ACCESS_KEY=" + wrongSecret},
			endpoint: e.minio.Endpoint, bucket: e.bucket, want: "credentials were refused"},
		{name: "unreachable endpoint", env: creds, endpoint: closedPort, bucket: e.bucket, want: "cannot reach"},
		{name: "non-empty mountpoint", env: creds, endpoint: e.minio.Endpoint, bucket: e.bucket, nonEmpty: true, want: "not empty"},
		{name: "no credentials", env: nil, endpoint: e.minio.Endpoint, bucket: e.bucket, want: "no credentials"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			base := t.TempDir()
			mp := filepath.Join(base, "mnt")
			if err := os.Mkdir(mp, 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.nonEmpty {
				writeFile(t, filepath.Join(mp, "already-here"), []byte("x"))
			}
			out, err, took := runMountCmd(t, append(cleanEnv(), tc.env...),
				"--endpoint", tc.endpoint, "--cache-dir", filepath.Join(base, "cache"), tc.bucket, mp)
			if isMounted(mp) {
				exec.Command("fusermount3", "-uz", mp).Run()
				t.Fatalf("mounted although it should have failed; output:\n%s", out)
			}
			if err == nil {
				t.Fatalf("exit status 0, want non-zero; output:\n%s", out)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() <= 0 {
				t.Fatalf("did not exit by itself (%v); output:\n%s", err, out)
			}
			if took > 15*time.Second {
				t.Errorf("took %v to fail, want well under 15s", took)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("output does not say %q:\n%s", tc.want, out)
			}
			for _, secret := range []string{e.minio.SecretKey, wrongSecret} {
				if strings.Contains(out, secret) {
					t.Errorf("output contains a secret key:\n%s", out)
				}
			}
			if n := strings.Count(strings.TrimSpace(out), "\n"); n > 5 {
				t.Errorf("%d lines of output for one error; want a short message:\n%s", n+1, out)
			}
			t.Logf("%v: %s", took.Round(time.Millisecond), strings.TrimSpace(out))
		})
	}
}

// A program reading a directory's files in order (a thumbnailer, rsync, a
// backup) gets the next small files fetched ahead; what it reads is still
// each object's bytes, and a file replaced in the bucket after it was read
// ahead shows its new bytes.
func TestReadingADirectoryInOrderReadsAheadAndStaysCorrect(t *testing.T) {
	e := newEnv(t)
	const n = 40
	want := make([][]byte, n)
	for i := range want {
		want[i] = seededBytes(int64(i), 20000+i*100)
		e.putObject(t, fmt.Sprintf("album/img%03d.jpg", i), want[i], nil)
	}
	addr := opsFreeAddr(t)
	m := e.mount(t, "--metrics-addr", addr)
	opsWaitCode(t, "http://"+addr+"/healthz", 200, 5*time.Second)
	names := lsNames(t, m.path("album"))
	if len(names) != n {
		t.Fatalf("album lists %d names, want %d", len(names), n)
	}
	for i, name := range names {
		if name != fmt.Sprintf("img%03d.jpg", i) {
			t.Fatalf("name %d is %s", i, name)
		}
		if got := readFile(t, m.path("album/"+name)); !bytes.Equal(got, want[i]) {
			t.Fatalf("%s: %d bytes (sha %s), want %d (sha %s)", name, len(got), sha(got)[:12], len(want[i]), sha(want[i])[:12])
		}
		if i == 10 {
			// Read ahead by now (the window is 8 files): replace one
			// further on, as another machine would.
			want[15] = []byte("replaced by another machine")
			e.putObject(t, "album/img015.jpg", want[15], nil)
		}
		if i == 14 {
			// The change reaches this mount through the change feed or
			// the listing's expiry; until then the old version is what
			// it knows of. Then the new bytes, not the read-ahead copy.
			waitFile(t, m.path("album/img015.jpg"), want[15], 10*time.Second)
		}
	}
	fams, _ := opsScrape(t, addr)
	pf, _ := opsValue(fams, "mediafs_cache_prefetches_total")
	miss, _ := opsValue(fams, "mediafs_cache_misses_total")
	if pf < 8 {
		t.Errorf("%v files read ahead, %v fetched by opens; want most ahead", pf, miss)
	}
	// Each object was fetched once, ahead or by its open, except the
	// replaced one (twice at most: the old version may have been ahead).
	if pf+miss < n || pf+miss > n+1 {
		t.Errorf("%v read ahead + %v fetched by opens for %d objects", pf, miss, n)
	}
	m.stop(t)
}
