package cache

// Spare data files, and data files removed in the background. A create needs a new data file, and creating a file
// means an inode allocation in the cache directory: tens of microseconds
// on an idle disk, often several hundred on a busy one (ext4 searching its
// inode bitmaps past recently deleted inodes). That is most of a CREATE's
// latency, and nothing about it depends on the create: a few empty files
// are made ahead of time by a background goroutine and handed out in
// order. Removing a file (an unlink, a replaced version) costs as much,
// so dropped data files are removed by another goroutine. Spares and
// dropped files are unreferenced by the journal, so the start-up sweep of
// unreferenced data files (lru.go) removes any a crash leaves behind.

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// spareCount is how many empty data files are kept ready: enough to
// absorb a burst (tar x, a loop of creates) while the filler catches up.
const spareCount = 32

type spareFile struct {
	id uint64
	f  *os.File
}

type spares struct {
	c    *Cache
	ch   chan spareFile
	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

func newSpares(c *Cache) *spares {
	s := &spares{c: c, ch: make(chan spareFile, spareCount), kick: make(chan struct{}, 1), done: make(chan struct{})}
	s.wg.Add(1)
	go s.fill()
	return s
}

// fill keeps the channel full, stopping while file creation fails (a full
// disk, say) until the next take asks again.
func (s *spares) fill() {
	defer s.wg.Done()
	for {
		for len(s.ch) < cap(s.ch) {
			sf, err := s.c.createDataFile()
			if err != nil {
				break
			}
			select {
			case s.ch <- sf:
			case <-s.done:
				s.discard(sf)
				return
			}
		}
		select {
		case <-s.kick:
		case <-time.After(time.Minute):
		case <-s.done:
			return
		}
	}
}

// take returns an empty data file: a spare if one is ready, else a new one.
func (s *spares) take() (spareFile, error) {
	select {
	case s.kick <- struct{}{}: // one taken or missing: refill
	default:
	}
	select {
	case sf := <-s.ch:
		return sf, nil
	default:
		return s.c.createDataFile()
	}
}

// stop ends the filler and removes the spares not handed out.
func (s *spares) stop() {
	close(s.done)
	s.wg.Wait()
	for {
		select {
		case sf := <-s.ch:
			s.discard(sf)
		default:
			return
		}
	}
}

func (s *spares) discard(sf spareFile) {
	sf.f.Close()
	os.Remove(sf.f.Name())
}

// createDataFile makes a new empty data file under a fresh id.
func (c *Cache) createDataFile() (spareFile, error) {
	id, err := c.newDataID()
	if err != nil {
		return spareFile{}, err
	}
	f, err := os.OpenFile(c.dataPath(id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return spareFile{}, fmt.Errorf("cache file: %w", err)
	}
	return spareFile{id: id, f: f}, nil
}

// removeQueue bounds the dropped data files waiting for removal; past it,
// the dropping call removes its file itself.
const removeQueue = 4096

// remover removes dropped data files in the background.
type remover struct {
	c      *Cache
	ch     chan string
	done   chan struct{}
	mu     sync.Mutex
	closed bool
}

func newRemover(c *Cache) *remover {
	r := &remover{c: c, ch: make(chan string, removeQueue), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for p := range r.ch {
			r.remove(p)
		}
	}()
	return r
}

func (r *remover) remove(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.c.log.Warn("removing cache file", "err", err)
	}
}

// drop queues path for removal (or removes it now when the queue is full).
func (r *remover) drop(path string) {
	r.mu.Lock()
	if !r.closed {
		select {
		case r.ch <- path:
			r.mu.Unlock()
			return
		default:
		}
	}
	r.mu.Unlock()
	r.remove(path)
}

// stop removes what is queued and ends the goroutine; later drops remove
// their file at once.
func (r *remover) stop() {
	r.mu.Lock()
	r.closed = true
	close(r.ch)
	r.mu.Unlock()
	<-r.done
}
