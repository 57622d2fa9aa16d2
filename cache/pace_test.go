package cache

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mediafs/mediafs/backend/backendtest"
)

// keepBusy calls Foreground every millisecond, as the fs layer does while
// an application makes changes, until the returned func is called.
func keepBusy(c *Cache) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
				c.Foreground()
				time.Sleep(time.Millisecond)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// countPuts records how many uploads ran at once at most.
func countPuts(m *backendtest.Mem, d time.Duration) (peak *atomic.Int32) {
	var inFlight atomic.Int32
	peak = &atomic.Int32{}
	m.SetHook(func(ctx context.Context, c backendtest.Call) error {
		if c.Method != backendtest.Put {
			return nil
		}
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(d)
		return nil
	})
	return peak
}

// No upload starts while the application makes changes; once it stops,
// they all go, in parallel.
func TestUploadsWaitWhileTheApplicationWrites(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.UploadConcurrency = 8 })
	peak := countPuts(e.mem, 20*time.Millisecond)
	stop := keepBusy(e.c)
	for i := range 24 {
		e.create(fmt.Sprintf("d/%02d", i), "x")
	}
	time.Sleep(300 * time.Millisecond) // all due (10 ms delay) meanwhile
	if n := e.mem.Calls()[backendtest.Put]; n != 0 {
		t.Errorf("%d uploads started while the application was writing", n)
	}
	stop()
	start := time.Now()
	waitFor(t, 5*time.Second, "all uploads", func() bool { return e.pending() == 0 })
	if d := time.Since(start); d > paceMaxLag/2 {
		t.Errorf("uploads took %v after the application stopped", d)
	}
	if p := peak.Load(); p < 4 {
		t.Errorf("at most %d uploads ran at once once quiet, want up to 8", p)
	}
	for i := range 24 {
		if _, data := e.stored(fmt.Sprintf("d/%02d", i)); data != "x" {
			t.Errorf("d/%02d in the bucket holds %q", i, data)
		}
	}
}

// Holding back is bounded: an upload overdue by paceMaxLag starts however
// busy the file system is, and the data of an O_EXCL create is never held.
func TestHeldBackUploadsStartOnceOverdueAndClaimsAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	countPuts(e.mem, 0)
	stop := keepBusy(e.c)
	defer stop()
	start := time.Now()
	e.create("plain", "a")
	// plain is due first: the claimed file's data, queued behind it,
	// must not wait for it.
	time.Sleep(50 * time.Millisecond)
	h, err := e.c.Create(ctxT(t), "claimed", fileAttr, true)
	if err != nil {
		t.Fatal(err)
	}
	e.write(h, "b", 0)
	e.closeHandle(h)
	waitFor(t, 5*time.Second, "the claimed file's data", func() bool {
		_, data, ok := e.mem.Object("claimed")
		return ok && string(data) == "b"
	})
	if d := time.Since(start); d > paceMaxLag/2 {
		t.Errorf("the claimed file's data went up %v after plain's close: held back", d)
	}
	if _, _, ok := e.mem.Object("plain"); ok {
		t.Errorf("plain was uploaded at once while the application was writing")
	}
	waitFor(t, 10*time.Second, "the held-back upload", func() bool {
		_, data, ok := e.mem.Object("plain")
		return ok && string(data) == "a"
	})
	if d := time.Since(start); d < paceMaxLag-200*time.Millisecond {
		t.Errorf("plain went up after %v while the application was writing, want about %v", d, paceMaxLag)
	}
	// The object is in the bucket a moment before its record goes.
	waitFor(t, 5*time.Second, "plain's record to go", func() bool { return !strings.Contains(e.journal(), "plain") })
}
