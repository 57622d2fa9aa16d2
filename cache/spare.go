package cache

// Spare data files. A create needs a new data file, and creating a file
// means an inode allocation in the cache directory: tens of microseconds
// on an idle disk, often several hundred on a busy one (ext4 searching its
// inode bitmaps past recently deleted inodes). That is most of a CREATE's
// latency, and nothing about it depends on the create: a few empty files
// are made ahead of time by a background goroutine and handed out in
// order. Spares are unreferenced by the journal, so the start-up sweep of
// unreferenced data files (lru.go) removes any a crash leaves behind.

import (
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
	case sf := <-s.ch:
		select {
		case s.kick <- struct{}{}:
		default:
		}
		return sf, nil
	default:
		select {
		case s.kick <- struct{}{}:
		default:
		}
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
