package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
)

const (
	smallSize = 64 << 10
	chunk     = 1 << 20
	mib       = float64(1 << 20)
)

// pattern is 1 MiB of random bytes that all written data is cut from
// (incompressible, so no layer can cheat).
var pattern = func() []byte {
	b := make([]byte, chunk)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}()

// smallContent is the content of small file i: a slice of pattern with i
// stamped at the start, so a read can tell the files apart.
func smallContent(i int, buf []byte) []byte {
	off := (i * 4099) % (chunk - smallSize)
	copy(buf, pattern[off:off+smallSize])
	binary.LittleEndian.PutUint64(buf, uint64(i)+0x5eed)
	return buf[:smallSize]
}

func smallName(i int) string { return fmt.Sprintf("f%05d.bin", i) }

// dropCaches writes back dirty pages and drops the page, dentry and inode
// caches, so the next read comes from below (disk, daemon, bucket).
func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}

// budget stops a loop that takes too long (a slow peer), so one run always
// ends; a figure from a stopped loop is marked partial.
type budget struct {
	deadline time.Time
}

func newBudget(d time.Duration) budget { return budget{deadline: time.Now().Add(d)} }
func (b budget) over() bool            { return time.Now().After(b.deadline) }

// rate returns n/elapsed and a note when the loop stopped early.
func rate(done, want int, el time.Duration) (float64, string) {
	note := ""
	if done < want {
		note = fmt.Sprintf("partial: %d of %d in budget", done, want)
	}
	if done == 0 {
		return 0, note
	}
	return float64(done) / el.Seconds(), note
}

// ---- small files -------------------------------------------------------

func (b *bench) smallWrite(t *target) (start time.Time, n int, err error) {
	dir := filepath.Join(t.dir, "small")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return time.Time{}, 0, err
	}
	buf := make([]byte, smallSize)
	bud := newBudget(b.phaseBudget)
	start = time.Now()
	for n = 0; n < b.smallN && !bud.over(); n++ {
		f, err := os.OpenFile(filepath.Join(dir, smallName(n)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return start, n, err
		}
		if _, err := f.Write(smallContent(n, buf)); err != nil {
			f.Close()
			return start, n, err
		}
		if err := f.Close(); err != nil {
			return start, n, fmt.Errorf("close: %w", err)
		}
	}
	el := time.Since(start)
	r, note := rate(n, b.smallN, el)
	t.set("small_write", r, note)
	logf("%s: small write: %d files in %.2fs = %.0f files/s (%.1f MiB/s)", t.name, n, el.Seconds(), r, r*smallSize/mib)
	return start, n, nil
}

func (b *bench) smallRead(t *target, n int) error {
	dir := filepath.Join(t.dir, "small")
	buf := make([]byte, smallSize)
	bud := newBudget(b.phaseBudget)
	start := time.Now()
	i := 0
	for ; i < n && !bud.over(); i++ {
		got, err := os.ReadFile(filepath.Join(dir, smallName(i)))
		if err != nil {
			return err
		}
		if !bytes.Equal(got, smallContent(i, buf)) {
			return fmt.Errorf("%s: %d bytes, wrong content", smallName(i), len(got))
		}
	}
	el := time.Since(start)
	r, note := rate(i, n, el)
	if t.coldNote != "" {
		note = strings.TrimPrefix(note+"; "+t.coldNote, "; ")
	}
	t.set("small_read_cold", r, note)
	logf("%s: small read (cold): %d files in %.2fs = %.0f files/s", t.name, i, el.Seconds(), r)
	return nil
}

// waitSmallInBucket polls ListObjects until n objects of the right size are
// under small/, and records the time since the first create.
func (b *bench) waitSmallInBucket(t *target, start time.Time, n int) error {
	deadline := time.Now().Add(b.bucketTimeout)
	for {
		cnt, err := b.countObjects(t.bucket, "small/f", smallSize)
		if err != nil {
			return err
		}
		if cnt >= n {
			el := time.Since(start)
			t.set("small_in_bucket", el.Seconds(), "")
			logf("%s: all %d small files in the bucket %.2fs after the first create", t.name, n, el.Seconds())
			return nil
		}
		if time.Now().After(deadline) {
			t.setNA("small_in_bucket", fmt.Sprintf("only %d of %d after %v", cnt, n, b.bucketTimeout))
			return fmt.Errorf("only %d of %d small files in the bucket after %v", cnt, n, b.bucketTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *bench) countObjects(bucket, prefix string, size int64) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n, seen := 0, 0
	defer func() { ownCalls.list.Add(int64(seen/1000 + 1)) }() // pages of 1000
	for o := range b.m.client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return 0, o.Err
		}
		seen++
		if o.Size == size {
			n++
		}
	}
	return n, nil
}

// ---- sequential --------------------------------------------------------

func (b *bench) seqWrite(t *target, name string) (time.Time, error) {
	p := filepath.Join(t.dir, name)
	start := time.Now()
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return start, err
	}
	for off := int64(0); off < b.bigSize; off += chunk {
		if _, err := f.Write(pattern); err != nil {
			f.Close()
			return start, err
		}
	}
	if err := f.Close(); err != nil {
		return start, fmt.Errorf("close: %w", err)
	}
	el := time.Since(start)
	r := float64(b.bigSize) / mib / el.Seconds()
	t.set("seq_write", r, "")
	logf("%s: sequential write %d MiB in %.2fs = %.0f MiB/s", t.name, b.bigSize>>20, el.Seconds(), r)
	return start, nil
}

func (b *bench) waitObject(t *target, key string, start time.Time) error {
	deadline := time.Now().Add(b.bucketTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		st, err := b.m.client.StatObject(ctx, t.bucket, key, minio.StatObjectOptions{})
		ownCalls.head.Add(1)
		cancel()
		if err == nil && st.Size == b.bigSize {
			el := time.Since(start)
			t.set("seq_in_bucket", el.Seconds(), "")
			logf("%s: %s in the bucket %.2fs after the write started", t.name, key, el.Seconds())
			return nil
		}
		if time.Now().After(deadline) {
			t.setNA("seq_in_bucket", fmt.Sprintf("not in the bucket after %v", b.bucketTimeout))
			return fmt.Errorf("%s not in the bucket after %v (last: %v)", key, b.bucketTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// seqRead reads the file to the end in 1 MiB reads and checks its size and
// first block.
func (b *bench) seqRead(t *target, name, key, note string) error {
	p := filepath.Join(t.dir, name)
	buf := make([]byte, chunk)
	start := time.Now()
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	var total int64
	first := true
	for {
		n, err := io.ReadFull(f, buf)
		if first && n > 0 {
			if !bytes.Equal(buf[:min(n, 4096)], pattern[:min(n, 4096)]) {
				return fmt.Errorf("%s: wrong content", name)
			}
			first = false
		}
		total += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return err
		}
	}
	el := time.Since(start)
	if total != b.bigSize {
		return fmt.Errorf("%s: read %d bytes, want %d", name, total, b.bigSize)
	}
	r := float64(total) / mib / el.Seconds()
	t.set(key, r, note)
	logf("%s: sequential read (%s) %d MiB in %.2fs = %.0f MiB/s", t.name, key, total>>20, el.Seconds(), r)
	return nil
}

// putCold uploads the cold-read object straight to the target's bucket.
func (b *bench) putCold(t *target, key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, err := b.m.client.PutObject(ctx, t.bucket, key, newRepeatReader(b.bigSize), b.bigSize,
		minio.PutObjectOptions{PartSize: 16 << 20, NumThreads: 4, ContentType: "application/octet-stream"})
	return err
}

// ---- metadata ----------------------------------------------------------

func (b *bench) meta(t *target) error {
	dir := filepath.Join(t.dir, "meta")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	n := b.metaN
	name := func(p string, i int) string { return filepath.Join(dir, fmt.Sprintf("%s%05d", p, i)) }
	phase := func(key, what string, want int, op0 func(i int) error) (int, error) {
		var (
			i     int
			el    time.Duration
			opErr error
			eintr int
		)
		// EINTR is retried (as Go's os package and Python, PEP 475, do)
		// and counted: a file system should not return it for a signal
		// that was not meant to interrupt the call.
		op := func(i int) error {
			for {
				err := op0(i)
				if err != syscall.EINTR {
					return err
				}
				eintr++
			}
		}
		b.prof(t, key, func() {
			bud := newBudget(b.phaseBudget)
			start := time.Now()
			for ; i < want && !bud.over(); i++ {
				if err := op(i); err != nil {
					opErr = fmt.Errorf("%s #%d: %w", what, i, err)
					return
				}
			}
			el = time.Since(start)
		})
		if opErr != nil {
			return i, opErr
		}
		r, note := rate(i, want, el)
		if eintr > 0 {
			note = strings.TrimPrefix(note+fmt.Sprintf("; %d× EINTR (retried)", eintr), "; ")
			logf("%s: %s: got EINTR %d times", t.name, what, eintr)
		}
		t.set(key, r, note)
		logf("%s: %s: %d in %.2fs = %.0f ops/s", t.name, what, i, el.Seconds(), r)
		return i, nil
	}
	// create as touch(1) and most programs do it: O_CREAT|O_TRUNC.
	created, err := phase("create", "create", n, func(i int) error {
		fd, err := syscall.Open(name("e", i), syscall.O_CREAT|syscall.O_TRUNC|syscall.O_WRONLY|syscall.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		return syscall.Close(fd)
	})
	if err != nil {
		return err
	}
	// stat and ls -l once the kernel's 1 s attribute and entry caches
	// (the same on every FUSE target) have expired, so they measure the
	// file system rather than the kernel's cache.
	time.Sleep(attrExpiry)
	var st syscall.Stat_t
	if _, err := phase("stat", "stat", created, func(i int) error {
		return syscall.Lstat(name("e", i), &st)
	}); err != nil {
		return err
	}
	time.Sleep(attrExpiry)
	// ls -l: read the directory, lstat every entry.
	var (
		names []string
		el    time.Duration
	)
	b.prof(t, "lsl", func() {
		start := time.Now()
		f, err2 := os.Open(dir)
		if err2 != nil {
			err = err2
			return
		}
		names, err = f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return
		}
		for _, nm := range names {
			if err = syscall.Lstat(filepath.Join(dir, nm), &st); err != nil {
				err = fmt.Errorf("ls -l: lstat %s: %w", nm, err)
				return
			}
		}
		el = time.Since(start)
	})
	if err != nil {
		return err
	}
	note := ""
	if len(names) != created {
		note = fmt.Sprintf("listed %d of %d", len(names), created)
	}
	t.set("lsl", float64(len(names))/el.Seconds(), note)
	logf("%s: ls -l: %d entries in %.2fs = %.0f entries/s", t.name, len(names), el.Seconds(), float64(len(names))/el.Seconds())

	renamed, err := phase("rename", "rename", created, func(i int) error {
		return syscall.Rename(name("e", i), name("r", i))
	})
	if err != nil {
		return err
	}
	if _, err = phase("unlink", "unlink", renamed, func(i int) error {
		return syscall.Unlink(name("r", i))
	}); err != nil {
		return err
	}
	// O_CREAT|O_EXCL, as Django's FileSystemStorage and mkstemp do: a
	// name that must not exist anywhere, on any machine.
	xn := max(n/5, 1)
	made, err := phase("create_excl", "create O_EXCL", xn, func(i int) error {
		fd, err := syscall.Open(name("x", i), syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY|syscall.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		return syscall.Close(fd)
	})
	for i := 0; i < made; i++ {
		syscall.Unlink(name("x", i))
	}
	return err
}

// attrExpiry is a little more than the 1 s entry/attr timeouts.
const attrExpiry = 1200 * time.Millisecond

// ---- cross-mount visibility ---------------------------------------------

// visibility writes a new file on mount A and polls mount B until it reads
// the right bytes; then overwrites it on A (B has it cached now) and polls
// again. Medians over the trials.
func (b *bench) visibility(t *target) error {
	bdir, err := t.mountSecond()
	if err != nil {
		t.setNA("vis_new", "second mount: "+err.Error())
		t.setNA("vis_overwrite", "second mount: "+err.Error())
		return err
	}
	defer t.stopSecond()
	// B has looked at the directory before A writes: the realistic case.
	os.ReadDir(bdir)
	var newT, overT []float64
	timeouts := 0
	buf := make([]byte, smallSize)
	for i := 0; i < b.visTrials && timeouts == 0; i++ {
		nm := fmt.Sprintf("vis-%02d.bin", i)
		for j, list := range []*[]float64{&newT, &overT} {
			want := append([]byte(nil), smallContent(100000+2*i+j, buf)...)
			if err := os.WriteFile(filepath.Join(t.dir, nm), want, 0o644); err != nil {
				return err
			}
			start := time.Now()
			deadline := start.Add(b.visTimeout)
			for {
				got, err := os.ReadFile(filepath.Join(bdir, nm))
				if err == nil && bytes.Equal(got, want) {
					*list = append(*list, time.Since(start).Seconds())
					break
				}
				if time.Now().After(deadline) {
					timeouts++
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			if timeouts > 0 {
				break
			}
		}
	}
	record := func(key string, v []float64) {
		switch {
		case timeouts > 0 && len(v) == 0:
			t.setNA(key, fmt.Sprintf("not visible within %v", b.visTimeout))
		case len(v) == 0:
			t.setNA(key, "no trials")
		default:
			note := fmt.Sprintf("median of %d", len(v))
			if timeouts > 0 {
				note += fmt.Sprintf("; later trial not visible within %v", b.visTimeout)
			}
			t.set(key, median(v), note)
		}
	}
	if timeouts > 0 && len(newT) > len(overT) {
		// The overwrite of the trial that timed out never showed up.
		record("vis_new", newT)
		if len(overT) == 0 {
			t.setNA("vis_overwrite", fmt.Sprintf("not visible within %v", b.visTimeout))
		} else {
			record("vis_overwrite", overT)
		}
	} else {
		record("vis_new", newT)
		record("vis_overwrite", overT)
	}
	logf("%s: visibility new %v overwrite %v (s)", t.name, fmtList(newT), fmtList(overT))
	return nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtList(v []float64) string {
	var parts []string
	for _, x := range v {
		parts = append(parts, fmt.Sprintf("%.3f", x))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// ---- helpers -----------------------------------------------------------

// repeatReader is size bytes of pattern, repeated; it is an io.ReaderAt so
// minio-go uploads its parts in parallel without buffering them.
type repeatReader struct {
	size, off int64
}

func newRepeatReader(size int64) *repeatReader { return &repeatReader{size: size} }

func (r *repeatReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off < r.size {
		po := off % chunk
		c := copy(p[n:], pattern[po:])
		if rem := r.size - off; int64(c) > rem {
			c = int(rem)
		}
		n += c
		off += int64(c)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n, err := r.ReadAt(p, r.off)
	r.off += int64(n)
	return n, err
}

func (r *repeatReader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += r.off
	case io.SeekEnd:
		off += r.size
	}
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	r.off = off
	return off, nil
}
