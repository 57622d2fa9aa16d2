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

func BenchmarkCreateRelease(b *testing.B) {
	e := benchEnv(b)
	ctx := ctxT(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h, err := e.c.Create(ctx, fmt.Sprintf("d/f%07d", i), fileAttr, false)
		if err != nil {
			b.Fatal(err)
		}
		if err := h.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		h.Release()
	}
}

func BenchmarkLookupPending(b *testing.B) {
	e := benchEnv(b)
	const n = 2000
	for i := 0; i < n; i++ {
		e.create(fmt.Sprintf("d/f%07d", i), "")
	}
	ctx := ctxT(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := e.c.Lookup(ctx, fmt.Sprintf("d/f%07d", i%n)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookupListed(b *testing.B) {
	e := benchEnv(b)
	const n = 2000
	for i := 0; i < n; i++ {
		e.setRemote(fmt.Sprintf("d/f%07d", i), "x")
	}
	ctx := ctxT(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := e.c.Lookup(ctx, fmt.Sprintf("d/f%07d", i%n)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRenameListed(b *testing.B) {
	e := benchEnv(b)
	for i := 0; i < b.N; i++ {
		e.setRemote(fmt.Sprintf("d/f%07d", i), "x")
	}
	ctx := ctxT(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		from := fmt.Sprintf("d/f%07d", i)
		ent, err := e.c.Lookup(ctx, from)
		if err != nil {
			b.Fatal(err)
		}
		if err := e.c.Rename(ctx, from, fmt.Sprintf("d/g%07d", i), ent); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRemoveListed(b *testing.B) {
	e := benchEnv(b)
	for i := 0; i < b.N; i++ {
		e.setRemote(fmt.Sprintf("d/f%07d", i), "x")
	}
	ctx := ctxT(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := e.c.Remove(ctx, fmt.Sprintf("d/f%07d", i)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkList2000(b *testing.B) {
	e := benchEnv(b)
	for i := 0; i < 2000; i++ {
		e.setRemote(fmt.Sprintf("d/f%07d", i), "x")
	}
	ctx := ctxT(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ents, err := e.c.List(ctx, "d/")
		if err != nil || len(ents) != 2000 {
			b.Fatal(len(ents), err)
		}
	}
}

func BenchmarkSmallFileWrite(b *testing.B) {
	e := benchEnv(b)
	ctx := ctxT(b)
	buf := make([]byte, 64<<10)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h, err := e.c.Create(ctx, fmt.Sprintf("d/f%07d", i), fileAttr, false)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := h.WriteAt(buf, 0); err != nil {
			b.Fatal(err)
		}
		if err := h.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		h.Release()
	}
}
