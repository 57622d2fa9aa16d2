package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestExclusiveCreateHasOneWinnerAcrossMounts: 20 concurrent O_EXCL
// creates of one name, split over two mounts of one bucket: exactly one
// succeeds, the others get EEXIST, and the bucket holds the winner's bytes.
func TestExclusiveCreateHasOneWinnerAcrossMounts(t *testing.T) {
	e := newEnv(t)
	a := e.mount(t)
	b := e.mount(t)
	for round := 0; round < 3; round++ {
		name := fmt.Sprintf("uploads/avatar-%d.png", round)
		if err := os.MkdirAll(a.path("uploads"), 0o755); err != nil {
			t.Fatal(err)
		}
		waitDir(t, b.path("uploads"))
		var wg sync.WaitGroup
		var mu sync.Mutex
		var winners []string
		var others []error
		start := make(chan struct{})
		for i := 0; i < 20; i++ {
			m := a
			if i%2 == 1 {
				m = b
			}
			who := fmt.Sprintf("writer-%d", i)
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				f, err := os.OpenFile(m.path(name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
				if err != nil {
					mu.Lock()
					others = append(others, err)
					mu.Unlock()
					return
				}
				_, werr := f.Write([]byte(who))
				cerr := f.Close()
				mu.Lock()
				defer mu.Unlock()
				if werr != nil || cerr != nil {
					others = append(others, fmt.Errorf("winner %s: write %v close %v", who, werr, cerr))
					return
				}
				winners = append(winners, who)
			}()
		}
		close(start)
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("round %d: %d O_EXCL creates succeeded (%v), want exactly 1", round, len(winners), winners)
		}
		for _, err := range others {
			if !errors.Is(err, syscall.EEXIST) {
				t.Errorf("round %d: a losing create failed with %v, want EEXIST", round, err)
			}
		}
		e.waitObject(t, name, []byte(winners[0]), 20*time.Second)
		waitFile(t, b.path(name), []byte(winners[0]), 10*time.Second)
		waitFile(t, a.path(name), []byte(winners[0]), 10*time.Second)
	}
}

func waitDir(t *testing.T, p string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not a directory after 10s", p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestConcurrentOverwritesKeepTheLoserAsSibling: two mounts overwrite one
// existing file at once. The bucket ends with one version whole under the
// name (never a mix) and the other kept as a conflict object beside it.
func TestConcurrentOverwritesKeepTheLoserAsSibling(t *testing.T) {
	e := newEnv(t)
	orig := bytes.Repeat([]byte("o"), 100<<10)
	e.putObject(t, "docs/report.pdf", orig, nil)
	// A long write-back delay on both, so both overwrites are based on the
	// original before either reaches the bucket.
	a := e.mount(t, "--writeback-delay", "2s")
	b := e.mount(t, "--writeback-delay", "2s")
	va := bytes.Repeat([]byte("A"), 300<<10)
	vb := bytes.Repeat([]byte("B"), 200<<10)
	if got := readFile(t, a.path("docs/report.pdf")); !bytes.Equal(got, orig) {
		t.Fatal("mount A does not show the original")
	}
	if got := readFile(t, b.path("docs/report.pdf")); !bytes.Equal(got, orig) {
		t.Fatal("mount B does not show the original")
	}
	writeFile(t, a.path("docs/report.pdf"), va)
	writeFile(t, b.path("docs/report.pdf"), vb)

	deadline := time.Now().Add(30 * time.Second)
	for {
		keys := e.keys(t, "docs/")
		var conflicts []string
		for _, k := range keys {
			if strings.Contains(k, ".conflict-") {
				conflicts = append(conflicts, k)
			}
		}
		if len(conflicts) == 1 {
			main, _, err := e.getObject("docs/report.pdf")
			if err != nil {
				t.Fatal(err)
			}
			sib, _, err := e.getObject(conflicts[0])
			if err != nil {
				t.Fatal(err)
			}
			okA := bytes.Equal(main, va) && bytes.Equal(sib, vb)
			okB := bytes.Equal(main, vb) && bytes.Equal(sib, va)
			if !okA && !okB {
				t.Fatalf("after a conflict the name holds %d bytes and %s %d bytes; want one whole version each", len(main), conflicts[0], len(sib))
			}
			if !strings.HasSuffix(conflicts[0], ".pdf") || !strings.HasPrefix(conflicts[0], "docs/report.conflict-") {
				t.Errorf("conflict object %q should be docs/report.conflict-HOST-TIME.pdf", conflicts[0])
			}
			t.Logf("winner keeps the name (%d bytes); loser kept as %s", len(main), conflicts[0])
			return
		}
		if len(conflicts) > 1 {
			t.Fatalf("%d conflict objects: %v", len(conflicts), conflicts)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no conflict object after 30s; bucket keys %v", keys)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestChangesOnOneMountShowOnTheOther measures, for each kind of change
// made on mount A, how long until mount B sees it (within the TTL bound),
// without the change feed: by polling listings (e2e_feed_test.go has the
// same with the feed).
func TestChangesOnOneMountShowOnTheOther(t *testing.T) {
	e := newEnv(t)
	a := e.mount(t, "--writeback-delay", "0s", "--change-feed", "off")
	b := e.mount(t, "--writeback-delay", "0s", "--change-feed", "off")
	bound := 5 * time.Second
	measure := func(what string, cond func() bool) {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > bound {
				t.Fatalf("%s: not seen on the other mount within %v", what, bound)
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("%-22s seen on B after %v", what, time.Since(start).Round(10*time.Millisecond))
	}
	os.MkdirAll(a.path("d/sub"), 0o755)
	writeFile(t, a.path("d/f.txt"), []byte("one"))
	e.waitObject(t, "d/f.txt", []byte("one"), 10*time.Second)
	measure("create", func() bool { b2, err := os.ReadFile(b.path("d/f.txt")); return err == nil && string(b2) == "one" })

	writeFile(t, a.path("d/f.txt"), []byte("two, longer"))
	e.waitObject(t, "d/f.txt", []byte("two, longer"), 10*time.Second)
	measure("overwrite", func() bool {
		b2, err := os.ReadFile(b.path("d/f.txt"))
		return err == nil && string(b2) == "two, longer"
	})

	if err := os.Chmod(a.path("d/f.txt"), 0o600); err != nil {
		t.Fatal(err)
	}
	mt := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(a.path("d/f.txt"), mt, mt); err != nil {
		t.Fatal(err)
	}
	measure("chmod+utime", func() bool {
		st, err := os.Stat(b.path("d/f.txt"))
		return err == nil && st.Mode().Perm() == 0o600 && st.ModTime().Equal(mt)
	})

	if err := os.Rename(a.path("d/f.txt"), a.path("d/g.txt")); err != nil {
		t.Fatal(err)
	}
	measure("rename", func() bool {
		_, errOld := os.Stat(b.path("d/f.txt"))
		g, errNew := os.ReadFile(b.path("d/g.txt"))
		return os.IsNotExist(errOld) && errNew == nil && string(g) == "two, longer"
	})

	if err := os.Remove(a.path("d/g.txt")); err != nil {
		t.Fatal(err)
	}
	measure("delete", func() bool { _, err := os.Stat(b.path("d/g.txt")); return os.IsNotExist(err) })

	writeFile(t, a.path("d/sub/x.txt"), []byte("x"))
	e.waitObject(t, "d/sub/x.txt", []byte("x"), 10*time.Second)
	if err := os.Rename(a.path("d/sub"), a.path("d/moved")); err != nil {
		t.Fatal(err)
	}
	measure("directory rename", func() bool {
		_, errOld := os.Stat(b.path("d/sub"))
		x, errNew := os.ReadFile(b.path("d/moved/x.txt"))
		return os.IsNotExist(errOld) && errNew == nil && string(x) == "x"
	})
}
