package cache

import "context"

// chanMutex is a mutex whose Lock can be abandoned when a context ends, so
// a FUSE request interrupted by the app does not wait behind a slow fetch.
type chanMutex chan struct{}

func newChanMutex() chanMutex { return make(chanMutex, 1) }

func (m chanMutex) Lock() { m <- struct{}{} }

func (m chanMutex) Unlock() { <-m }

func (m chanMutex) TryLock() bool {
	select {
	case m <- struct{}{}:
		return true
	default:
		return false
	}
}

func (m chanMutex) LockCtx(ctx context.Context) error {
	// A free lock is taken even if ctx is already done: select would pick
	// at random, and an interrupted request would fail for nothing.
	if m.TryLock() {
		return nil
	}
	select {
	case m <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
