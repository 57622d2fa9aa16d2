package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
)

// parallel runs job(0..n-1) on par workers and returns the first error.
func parallel(n, par int, job func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for w := 0; w < par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := job(i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// rawBench measures the object store itself with minio-go, the client
// mediafs uses: the ceiling any mount of it can reach.
func (b *bench) rawBench(raws map[int]*target) error {
	const bucket = "raw"
	if err := b.m.makeBucket(bucket); err != nil {
		return err
	}
	c := b.m.client
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	for _, par := range []int{1, 4, 16} {
		t := raws[par]
		start := time.Now()
		err := parallel(b.smallN, par, func(i int) error {
			buf := smallContent(i, make([]byte, smallSize))
			_, err := c.PutObject(ctx, bucket, fmt.Sprintf("p%d/%s", par, smallName(i)), bytes.NewReader(buf), smallSize,
				minio.PutObjectOptions{ContentType: "application/octet-stream"})
			return err
		})
		if err != nil {
			return fmt.Errorf("raw small PUT x%d: %w", par, err)
		}
		el := time.Since(start)
		t.set("small_write", float64(b.smallN)/el.Seconds(), "PUT")
		t.set("small_in_bucket", el.Seconds(), "PUT")
		logf("raw: %d small PUTs x%d in %.2fs = %.0f/s", b.smallN, par, el.Seconds(), float64(b.smallN)/el.Seconds())
	}
	// The cold rows compare with mounts that read after the page cache
	// was dropped, and the MinIO here keeps its data in that page cache:
	// its cold GETs come after a drop too, or the reference would be
	// served from memory while the mounts wait for the disk.
	cold, note := "GET", "GET"
	if b.dropOK {
		cold = "GET, server cold"
	}
	for _, par := range []int{1, 4, 16} {
		t := raws[par]
		if b.dropOK {
			dropCaches()
		}
		start := time.Now()
		err := parallel(b.smallN, par, func(i int) error {
			o, err := c.GetObject(ctx, bucket, fmt.Sprintf("p16/%s", smallName(i)), minio.GetObjectOptions{})
			if err != nil {
				return err
			}
			defer o.Close()
			n, err := io.Copy(io.Discard, o)
			if err == nil && n != smallSize {
				err = fmt.Errorf("got %d bytes", n)
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("raw small GET x%d: %w", par, err)
		}
		el := time.Since(start)
		t.set("small_read_cold", float64(b.smallN)/el.Seconds(), cold)
		logf("raw: %d small GETs x%d (%s) in %.2fs = %.0f/s", b.smallN, par, cold, el.Seconds(), float64(b.smallN)/el.Seconds())
	}
	for _, par := range []int{1, 4} {
		t := raws[par]
		key := fmt.Sprintf("big-%d.bin", par)
		start := time.Now()
		_, err := c.PutObject(ctx, bucket, key, newRepeatReader(b.bigSize), b.bigSize,
			minio.PutObjectOptions{PartSize: 16 << 20, NumThreads: uint(par), ContentType: "application/octet-stream"})
		if err != nil {
			return fmt.Errorf("raw large PUT x%d: %w", par, err)
		}
		el := time.Since(start)
		r := float64(b.bigSize) / mib / el.Seconds()
		t.set("seq_write", r, "PUT, 16 MiB parts")
		t.set("seq_in_bucket", el.Seconds(), "PUT")
		logf("raw: %d MiB PUT x%d in %.2fs = %.0f MiB/s", b.bigSize>>20, par, el.Seconds(), r)
	}
	for _, run := range []struct {
		par  int
		cold bool
	}{{1, false}, {4, false}, {1, true}, {4, true}} {
		if run.cold && !b.dropOK {
			continue // the warm figure stands in the cold row too
		}
		par, t := run.par, raws[run.par]
		if run.cold {
			dropCaches()
		}
		start := time.Now()
		part := (b.bigSize + int64(par) - 1) / int64(par)
		var total atomic.Int64
		err := parallel(par, par, func(i int) error {
			opts := minio.GetObjectOptions{}
			lo, hi := int64(i)*part, min(int64(i+1)*part, b.bigSize)-1
			if par > 1 {
				if err := opts.SetRange(lo, hi); err != nil {
					return err
				}
			}
			o, err := c.GetObject(ctx, bucket, "big-4.bin", opts)
			if err != nil {
				return err
			}
			defer o.Close()
			n, err := io.CopyBuffer(io.Discard, o, make([]byte, chunk))
			total.Add(n)
			return err
		})
		if err != nil {
			return fmt.Errorf("raw large GET x%d: %w", par, err)
		}
		el := time.Since(start)
		if total.Load() != b.bigSize {
			return fmt.Errorf("raw large GET x%d: %d bytes", par, total.Load())
		}
		r := float64(b.bigSize) / mib / el.Seconds()
		note = "GET"
		if par > 1 {
			note = fmt.Sprintf("%d ranged GETs", par)
		}
		if run.cold {
			note += ", server cold"
		} else {
			t.set("seq_read_warm", r, note)
		}
		t.set("seq_read_cold", r, note)
		logf("raw: %d MiB GET x%d (%s) in %.2fs = %.0f MiB/s", b.bigSize>>20, par, note, el.Seconds(), r)
	}
	return nil
}
