package cache

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mediafs/mediafs/backend/backendtest"
)

// While the file system serves requests, at most paceStreams uploads run;
// once it is quiet, every worker does.
func TestUploadsArePacedWhileTheFileSystemIsBusy(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.UploadConcurrency = 8 })
	var inFlight, peakBusy, peakIdle atomic.Int32
	var busyPhase atomic.Bool
	e.mem.SetHook(func(ctx context.Context, c backendtest.Call) error {
		if c.Method != backendtest.Put {
			return nil
		}
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		peak := &peakIdle
		if busyPhase.Load() {
			peak = &peakBusy
		}
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		return nil
	})
	// The application keeps the file system busy while 24 files become due.
	busyPhase.Store(true)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				e.c.Foreground()
				time.Sleep(time.Millisecond)
			}
		}
	}()
	for i := range 24 {
		e.create(fmt.Sprintf("busy/%02d", i), "x")
	}
	waitFor(t, 5*time.Second, "some uploads while busy", func() bool {
		return e.c.stats.Uploads.Load() >= 6
	})
	if p := peakBusy.Load(); p > paceStreams {
		t.Errorf("%d uploads ran at once while the file system was busy, want at most %d", p, paceStreams)
	}
	if got := e.pending(); got == 0 {
		t.Fatalf("all uploads finished while busy: the test did not exercise pacing")
	}
	close(stop)
	wg.Wait()
	busyPhase.Store(false)
	time.Sleep(2 * paceIdle)
	for i := range 24 {
		e.create(fmt.Sprintf("idle/%02d", i), "x")
	}
	e.drain()
	if p := peakIdle.Load(); p < 4 {
		t.Errorf("at most %d uploads ran at once while idle, want up to 8", p)
	}
	for i := range 24 {
		for _, d := range []string{"busy", "idle"} {
			if _, data := e.stored(fmt.Sprintf("%s/%02d", d, i)); data != "x" {
				t.Errorf("%s/%02d in the bucket holds %q", d, i, data)
			}
		}
	}
}

// An upload overdue by paceMaxLag runs however busy the file system is.
func TestPacedUploadsStillGoOnceOverdue(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.UploadConcurrency = 8 })
	release := make(chan struct{})
	e.mem.SetHook(func(ctx context.Context, c backendtest.Call) error {
		if c.Method == backendtest.Put && c.Key[:4] == "slow" {
			<-release // two uploads that never end keep the pace full
		}
		return nil
	})
	defer close(release)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				e.c.Foreground()
				time.Sleep(time.Millisecond)
			}
		}
	}()
	e.create("slow1", "a")
	e.create("slow2", "b")
	waitFor(t, 5*time.Second, "the two slow uploads to start", func() bool {
		return e.mem.Calls()[backendtest.Put] >= 2
	})
	start := time.Now()
	e.create("fast", "c")
	waitFor(t, 10*time.Second, "the paced upload", func() bool {
		_, data, ok := e.mem.Object("fast")
		return ok && string(data) == "c"
	})
	if d := time.Since(start); d < paceMaxLag-200*time.Millisecond {
		t.Errorf("uploaded after %v while two uploads ran and the file system was busy: not paced", d)
	}
}
