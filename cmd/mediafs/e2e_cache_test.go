package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cacheDiskUse is the space the cache's data files take on disk (allocated
// blocks, so sparse files count only what they hold).
func cacheDiskUse(t *testing.T, dir string) int64 {
	var total int64
	filepath.WalkDir(filepath.Join(dir, "data"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Stat(p, &st) == nil {
			total += st.Blocks * 512
		}
		return nil
	})
	return total
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sumFile(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func TestReadCacheServesRightBytesColdWarmAfterRestartAndEviction(t *testing.T) {
	e := newEnv(t)
	const capBytes = 96 << 20
	big := randomBytes(t, 200<<20) // larger than the cache cap
	mid := [][]byte{randomBytes(t, 30<<20), randomBytes(t, 30<<20), randomBytes(t, 30<<20), randomBytes(t, 30<<20)}
	small := randomBytes(t, 1<<20)
	e.putObject(t, "video/big.mp4", big, nil)
	for i, b := range mid {
		e.putObject(t, "video/mid"+string(rune('0'+i))+".bin", b, nil)
	}
	e.putObject(t, "img/small.jpg", small, nil)
	m := e.mount(t, "--cache-size", "96M")

	// Cold sequential read of a file larger than the cap: right bytes,
	// and the cache stays under its cap all along.
	var peak int64
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			u := cacheDiskUse(t, m.cacheDir)
			mu.Lock()
			if u > peak {
				peak = u
			}
			mu.Unlock()
		}
	}()
	if got := sumFile(t, m.path("video/big.mp4")); got != sha256.Sum256(big) {
		t.Fatalf("cold sequential read of a 200 MiB object: checksum differs")
	}
	close(stop)
	wg.Wait()
	if peak > capBytes {
		t.Errorf("cache data reached %d MiB while reading a 200 MiB file with --cache-size 96M", peak>>20)
	}
	t.Logf("peak cache use while reading 200 MiB with a 96 MiB cap: %d MiB", peak>>20)

	// Random reads, cold for most blocks, warm for some.
	f, err := os.Open(m.path("video/big.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 300<<10)
	for i := 0; i < 100; i++ {
		off := int64(i*7919*4096) % int64(len(big)-len(buf))
		n, err := f.ReadAt(buf, off)
		if err != nil || n != len(buf) || !bytes.Equal(buf[:n], big[off:off+int64(n)]) {
			t.Fatalf("random read %d at %d: n=%d err=%v, bytes differ=%v", i, off, n, err, !bytes.Equal(buf[:n], big[off:off+int64(n)]))
		}
	}
	f.Close()

	// Warm: a second read of the small file and a 30 MiB one.
	for i := 0; i < 2; i++ {
		if got := sumFile(t, m.path("img/small.jpg")); got != sha256.Sum256(small) {
			t.Fatalf("read %d of small.jpg: checksum differs", i)
		}
		if got := sumFile(t, m.path("video/mid0.bin")); got != sha256.Sum256(mid[0]) {
			t.Fatalf("read %d of mid0.bin: checksum differs", i)
		}
	}

	// Eviction: reading 4 x 30 MiB under a 96 MiB cap evicts the oldest;
	// every read is still right, and once closed the cache is under cap.
	for round := 0; round < 2; round++ {
		for i, b := range mid {
			if got := sumFile(t, m.path("video/mid"+string(rune('0'+i))+".bin")); got != sha256.Sum256(b) {
				t.Fatalf("round %d mid%d: checksum differs", round, i)
			}
		}
	}
	if u := cacheDiskUse(t, m.cacheDir); u > capBytes {
		t.Errorf("cache data is %d MiB after reads, over the 96 MiB cap", u>>20)
	}

	// After a restart the cache is kept: with MinIO stopped, the small
	// file and the last 30 MiB one still read right (from the cache).
	m.stop(t)
	m.restart(t)
	if got := sumFile(t, m.path("video/mid3.bin")); got != sha256.Sum256(mid[3]) {
		t.Fatalf("after restart mid3.bin: checksum differs")
	}
	if got := sumFile(t, m.path("img/small.jpg")); got != sha256.Sum256(small) {
		t.Fatalf("after restart small.jpg: checksum differs")
	}
	e.minio.Stop()
	time.Sleep(1200 * time.Millisecond) // past the listing TTL
	if got := sumFile(t, m.path("img/small.jpg")); got != sha256.Sum256(small) {
		t.Fatalf("small.jpg with the object store down: checksum differs")
	}
	e.minio.Restart(t)

	// A changed object is never served stale: overwrite in the bucket,
	// the mount shows the new bytes after the listing TTL.
	small2 := randomBytes(t, 1<<20)
	e.putObject(t, "img/small.jpg", small2, nil)
	waitFile(t, m.path("img/small.jpg"), small2, 10*time.Second)
}
