package cache

// This mount's own changes, as the change feed must recognise them: their
// events come back like everyone else's, and applying them would only
// make the kernel drop the pages of files just written. The store is
// wrapped so that every PUT, copy and delete is noted before it is sent
// (its event may arrive before its answer): a PUT by its upload tag, a
// copy by its ETag (or, before the answer, by being a copy to that key),
// a delete by its key. An event that matches consumes the note; notes
// nothing matched are forgotten after ownOpTTL.

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/mediafs/mediafs/backend"
)

// ownOp is a change this mount makes in the bucket, awaiting its event.
type ownOp struct {
	at      time.Time
	removed bool
	copy    bool
	tag     string // the upload tag of a PUT
	etag    string // the resulting ETag, once known
	done    bool   // the call returned
}

// store wraps st so the feed knows this mount's own changes.
func (f *feed) store(st backend.Store) backend.Store { return &ownStore{Store: st, f: f} }

// ownStore notes the changes this mount makes, for the feed to skip
// their events.
type ownStore struct {
	backend.Store
	f *feed
}

func (s *ownStore) Put(ctx context.Context, key string, r io.ReaderAt, size int64, opts backend.PutOptions) (backend.Object, error) {
	op := s.f.expect(key, &ownOp{tag: opts.Metadata[metaUploadTag]})
	o, err := s.Store.Put(ctx, key, r, size, opts)
	s.f.settle(key, op, o.ETag, err)
	return o, err
}

func (s *ownStore) Copy(ctx context.Context, src, dst string, srcSize int64, opts backend.PutOptions) (backend.Object, error) {
	op := s.f.expect(dst, &ownOp{copy: true})
	o, err := s.Store.Copy(ctx, src, dst, srcSize, opts)
	s.f.settle(dst, op, o.ETag, err)
	return o, err
}

func (s *ownStore) Delete(ctx context.Context, key string) error {
	op := s.f.expect(key, &ownOp{removed: true})
	err := s.Store.Delete(ctx, key)
	s.f.settle(key, op, "", err)
	return err
}

func (s *ownStore) DeleteMany(ctx context.Context, keys []string) []error {
	ops := make([]*ownOp, len(keys))
	for i, k := range keys {
		ops[i] = s.f.expect(k, &ownOp{removed: true})
	}
	errs := s.Store.DeleteMany(ctx, keys)
	for i, k := range keys {
		s.f.settle(k, ops[i], "", errs[i])
	}
	return errs
}

// expect notes a change about to be made. Before the call, since its
// event may arrive before its answer.
func (f *feed) expect(key string, op *ownOp) *ownOp {
	now := time.Now()
	op.at = now
	if f.state.Load() == "unsupported" {
		return op // no events will come to match
	}
	f.ownMu.Lock()
	defer f.ownMu.Unlock()
	f.ownOps[key] = append(f.ownOps[key], op)
	if f.ownAdd++; f.ownAdd >= 1024 {
		f.ownAdd = 0
		for k, ops := range f.ownOps {
			ops = liveOps(ops, now)
			if len(ops) == 0 {
				delete(f.ownOps, k)
			} else {
				f.ownOps[k] = ops
			}
		}
	}
	return op
}

func liveOps(ops []*ownOp, now time.Time) []*ownOp {
	out := ops[:0]
	for _, o := range ops {
		if now.Sub(o.at) < ownOpTTL {
			out = append(out, o)
		}
	}
	return out
}

// settle records a change's outcome: a refused one makes no event.
func (f *feed) settle(key string, op *ownOp, etag string, err error) {
	f.ownMu.Lock()
	defer f.ownMu.Unlock()
	op.done = true
	op.etag = strings.Trim(etag, `"`)
	if errors.Is(err, backend.ErrConflict) || errors.Is(err, backend.ErrNotFound) || errors.Is(err, backend.ErrAccessDenied) {
		f.forgetLocked(key, op)
	}
}

func (f *feed) forgetLocked(key string, op *ownOp) {
	ops := f.ownOps[key]
	for i, o := range ops {
		if o == op {
			ops = append(ops[:i], ops[i+1:]...)
			break
		}
	}
	if len(ops) == 0 {
		delete(f.ownOps, key)
	} else {
		f.ownOps[key] = ops
	}
}

// isOwn reports whether ch is the event of one of this mount's changes,
// and if so forgets that change.
func (f *feed) isOwn(ch backend.Change) bool {
	key := ch.Object.Key
	f.ownMu.Lock()
	defer f.ownMu.Unlock()
	now := time.Now()
	for _, op := range f.ownOps[key] {
		if now.Sub(op.at) >= ownOpTTL || op.removed != ch.Removed {
			continue
		}
		match := ch.Removed
		if !ch.Removed {
			tag := ch.Object.Metadata[metaUploadTag]
			match = (op.tag != "" && tag == op.tag) ||
				(op.etag != "" && op.etag == ch.Object.ETag) ||
				(op.copy && !op.done && strings.Contains(ch.Event, "Copy"))
		}
		if match {
			f.forgetLocked(key, op)
			return true
		}
	}
	return false
}
