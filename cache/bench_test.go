package cache

import (
	"fmt"
	"testing"
)

// Benchmarks of the per-operation cost of the namespace paths the FUSE
// layer calls, over the in-memory store, with uploads held back (the
// cost measured is the foreground one). scripts/bench.sh measures the
// whole mount; these isolate the cache's share.

func benchEnv(b *testing.B) *testEnv {
	return newEnv(b, func(o *Options) { o.WritebackDelay = never })
}

func benchKey(i int) string { return fmt.Sprintf("d/f%07d", i) }

// listed puts n objects in the bucket, as another machine would.
func listed(e *testEnv, n int) {
	for i := 0; i < n; i++ {
		e.setRemote(benchKey(i), "x")
	}
}

// benchWrite times create, write of data (if any), close, as
// `cp` of small files does.
func benchWrite(b *testing.B, data []byte) {
	e := benchEnv(b)
	ctx := ctxT(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h, err := e.c.Create(ctx, benchKey(i), fileAttr, false)
		if err != nil {
			b.Fatal(err)
		}
		if len(data) > 0 {
			if _, err := h.WriteAt(data, 0); err != nil {
				b.Fatal(err)
			}
		}
		if err := h.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		h.Release()
	}
}

// benchLookups times lookups of the n keys of e, round robin.
func benchLookups(b *testing.B, e *testEnv, n int) {
	ctx := ctxT(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := e.c.Lookup(ctx, benchKey(i%n)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCreateRelease(b *testing.B)  { benchWrite(b, nil) }
func BenchmarkSmallFileWrite(b *testing.B) { benchWrite(b, make([]byte, 64<<10)) }

func BenchmarkLookupPending(b *testing.B) {
	e := benchEnv(b)
	const n = 2000
	for i := 0; i < n; i++ {
		e.create(benchKey(i), "")
	}
	benchLookups(b, e, n)
}

func BenchmarkLookupListed(b *testing.B) {
	e := benchEnv(b)
	const n = 2000
	listed(e, n)
	benchLookups(b, e, n)
}

func BenchmarkRenameListed(b *testing.B) {
	e := benchEnv(b)
	listed(e, b.N)
	ctx := ctxT(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ent, err := e.c.Lookup(ctx, benchKey(i))
		if err != nil {
			b.Fatal(err)
		}
		if err := e.c.Rename(ctx, benchKey(i), fmt.Sprintf("d/g%07d", i), ent); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRemoveListed(b *testing.B) {
	e := benchEnv(b)
	listed(e, b.N)
	ctx := ctxT(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := e.c.Remove(ctx, benchKey(i)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkList2000(b *testing.B) {
	e := benchEnv(b)
	listed(e, 2000)
	ctx := ctxT(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ents, err := e.c.List(ctx, "d/")
		if err != nil || len(ents) != 2000 {
			b.Fatal(len(ents), err)
		}
	}
}
