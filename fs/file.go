package fs

import (
	"context"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/mediafs/mediafs/cache"
)

// fileNode is a regular file: one object.
type fileNode struct {
	node
	mu       sync.Mutex
	lastETag string // the version the kernel's page cache holds
	opens    int    // open handles
	// dataID is the data file of the open handles: the kernel serves all
	// passthrough handles of an inode from the first one's file, so a
	// handle on another file (the object was replaced meanwhile) must
	// not be given out on this inode. superseded marks an inode whose
	// name gets a new inode at the next lookup for that reason.
	dataID     uint64
	superseded bool
}

// track counts a new open handle of the inode, or reports that it holds
// another data file than the handles already open. Caller holds f.mu.
func (f *fileNode) trackLocked(h *cache.Handle) bool {
	if f.opens > 0 && h.DataID() != f.dataID {
		f.superseded = true
		return false
	}
	if f.opens == 0 {
		f.dataID, f.superseded = h.DataID(), false
	}
	f.opens++
	return true
}

// replacedWhileOpen reports whether the object is another version than
// the one this inode's open handles hold (changed on another machine):
// new opens then get a new inode, since the kernel serves every
// passthrough handle of one inode from one backing file. Caller holds
// f.mu.
func (f *fileNode) replacedWhileOpenLocked(e cache.Entry) bool {
	if f.opens == 0 {
		return false
	}
	return f.superseded || f.lastETag != "" && !e.Pending && e.ETag != "" && e.ETag != f.lastETag
}

var (
	_ = (gofs.NodeGetattrer)((*fileNode)(nil))
	_ = (gofs.NodeSetattrer)((*fileNode)(nil))
	_ = (gofs.NodeOpener)((*fileNode)(nil))
)

// linkNode is a symlink: an object whose body is the target and whose
// mode has S_IFLNK, as s3fs stores them.
type linkNode struct{ fileNode }

var _ = (gofs.NodeReadlinker)((*linkNode)(nil))

// Getattr implements gofs.NodeGetattrer.
func (f *fileNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := fh.(*fileHandle); ok {
		return h.Getattr(ctx, out)
	}
	e, err := f.entry(ctx, false)
	if err != nil {
		return toErrno(err)
	}
	fillAttr(e, &out.Attr)
	return 0
}

func attrChange(in *fuse.SetAttrIn) (cache.AttrChange, bool) {
	var ch cache.AttrChange
	any := false
	if m, ok := in.GetMode(); ok {
		ch.Mode, any = &m, true
	}
	if u, ok := in.GetUID(); ok {
		ch.UID, any = &u, true
	}
	if g, ok := in.GetGID(); ok {
		ch.GID, any = &g, true
	}
	if t, ok := in.GetMTime(); ok {
		ch.Mtime, any = &t, true
	}
	if t, ok := in.GetATime(); ok {
		ch.Atime = &t
		if ch.Mtime == nil {
			// atime alone is not stored (objects have no atime), but
			// touch -a must still succeed.
			any = any || false
		}
	}
	return ch, any
}

// Setattr implements gofs.NodeSetattrer: truncate, chmod, chown, utimens.
func (f *fileNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) (errno syscall.Errno) {
	defer f.fsys.observe("setattr", time.Now(), &errno)
	key := f.fileKey()
	c := f.fsys.c
	if size, ok := in.GetSize(); ok {
		if h, ok := fh.(*fileHandle); ok && h.h.Writable() {
			if err := h.h.Truncate(int64(size)); err != nil {
				return toErrno(err)
			}
		} else {
			e, err := c.Lookup(ctx, key)
			if err != nil {
				return toErrno(err)
			}
			h, err := c.Open(ctx, key, e, cache.OpenFlags{Write: true, Trunc: size == 0})
			if err != nil {
				return toErrno(err)
			}
			err = h.Truncate(int64(size))
			if err == nil {
				err = h.Flush(ctx)
			}
			h.Release()
			if err != nil {
				return toErrno(err)
			}
		}
	}
	if ch, ok := attrChange(in); ok {
		e, err := c.Lookup(ctx, key)
		if err != nil {
			return toErrno(err)
		}
		if _, err := c.SetAttr(ctx, key, e, ch); err != nil {
			return toErrno(err)
		}
	}
	return f.Getattr(ctx, fh, out)
}

// Open implements gofs.NodeOpener.
func (f *fileNode) Open(ctx context.Context, flags uint32) (fh gofs.FileHandle, fuseFlags uint32, errno syscall.Errno) {
	defer f.fsys.observe("open", time.Now(), &errno)
	key := f.fileKey()
	e, err := f.fsys.c.Lookup(ctx, key)
	if err != nil {
		return nil, 0, toErrno(err)
	}
	if e.Dir {
		return nil, 0, syscall.EISDIR
	}
	f.mu.Lock()
	stale := f.replacedWhileOpenLocked(e)
	f.mu.Unlock()
	if stale {
		// The kernel retries an open that fails with ESTALE once, with a
		// fresh lookup, which gives the name a new inode (inodeFor).
		return nil, 0, syscall.ESTALE
	}
	write := flags&syscall.O_ACCMODE != syscall.O_RDONLY
	h, err := f.fsys.c.Open(ctx, key, e, cache.OpenFlags{Write: write, Trunc: write && flags&syscall.O_TRUNC != 0})
	if err != nil {
		errno = toErrno(err)
		if errno == syscall.EIO {
			f.fsys.log.Warn("open failed", "key", key, "err", err)
		}
		return nil, 0, errno
	}
	// Keep the kernel's page cache while the object is the version it
	// cached; a new ETag (changed here or on another machine) drops it.
	f.mu.Lock()
	if !f.trackLocked(h) {
		f.mu.Unlock()
		h.Release()
		return nil, 0, syscall.ESTALE // as above
	}
	if !write && !e.Pending && e.ETag != "" && e.ETag == f.lastETag {
		fuseFlags |= fuse.FOPEN_KEEP_CACHE
	}
	f.lastETag = e.ETag
	if write || e.Pending {
		f.lastETag = ""
	}
	f.mu.Unlock()
	nh := f.fsys.newHandle(h)
	nh.node = f
	return nh, fuseFlags, 0
}

// Readlink implements gofs.NodeReadlinker.
func (l *linkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	key := l.fileKey()
	e, err := l.fsys.c.Lookup(ctx, key)
	if err != nil {
		return nil, toErrno(err)
	}
	t, err := l.fsys.c.Readlink(ctx, key, e)
	if err != nil {
		return nil, toErrno(err)
	}
	return []byte(t), 0
}

// fileHandle is an open file.
type fileHandle struct {
	fsys *FS
	h    *cache.Handle
	node *fileNode // whose open handles it counts
}

var (
	_ = (gofs.FileReader)((*fileHandle)(nil))
	_ = (gofs.FileWriter)((*fileHandle)(nil))
	_ = (gofs.FileFlusher)((*fileHandle)(nil))
	_ = (gofs.FileReleaser)((*fileHandle)(nil))
	_ = (gofs.FileFsyncer)((*fileHandle)(nil))
	_ = (gofs.FileGetattrer)((*fileHandle)(nil))
	_ = (gofs.FileAllocater)((*fileHandle)(nil))
	_ = (gofs.FilePassthroughFder)((*fileHandle)(nil))
)

func (f *FS) newHandle(h *cache.Handle) *fileHandle { return &fileHandle{fsys: f, h: h} }

// PassthroughFd implements gofs.FilePassthroughFder: a handle whose data
// is whole in its cache file is served by the kernel directly.
func (fh *fileHandle) PassthroughFd() (int, bool) {
	if !fh.fsys.passthrough.Load() {
		return 0, false
	}
	return fh.h.Fd()
}

// Read implements gofs.FileReader.
func (fh *fileHandle) Read(ctx context.Context, dest []byte, off int64) (res fuse.ReadResult, errno syscall.Errno) {
	defer fh.fsys.observe("read", time.Now(), &errno)
	n, err := fh.h.ReadAt(ctx, dest, off)
	if err != nil && n == 0 {
		return nil, toErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Write implements gofs.FileWriter.
func (fh *fileHandle) Write(ctx context.Context, data []byte, off int64) (written uint32, errno syscall.Errno) {
	defer fh.fsys.observe("write", time.Now(), &errno)
	n, err := fh.h.WriteAt(data, off)
	return uint32(n), toErrno(err)
}

// Flush implements gofs.FileFlusher; it runs on every close(2).
func (fh *fileHandle) Flush(ctx context.Context) (errno syscall.Errno) {
	defer fh.fsys.observe("flush", time.Now(), &errno)
	if fh.h.Writable() {
		fh.fsys.c.Foreground()
	}
	return toErrno(fh.h.Flush(ctx))
}

// Release implements gofs.FileReleaser.
func (fh *fileHandle) Release(ctx context.Context) syscall.Errno {
	fh.h.Release()
	if fh.node != nil {
		fh.node.mu.Lock()
		fh.node.opens--
		fh.node.mu.Unlock()
	}
	return 0
}

// Fsync implements gofs.FileFsyncer: data and journal durable on disk.
func (fh *fileHandle) Fsync(ctx context.Context, flags uint32) (errno syscall.Errno) {
	defer fh.fsys.observe("fsync", time.Now(), &errno)
	return toErrno(fh.h.Sync(ctx))
}

// Getattr implements gofs.FileGetattrer: an open file answers from its
// handle, so fstat works even after the name was unlinked.
func (fh *fileHandle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	e := fh.h.Entry()
	fillAttr(e, &out.Attr)
	return 0
}

// Allocate implements gofs.FileAllocater (fallocate).
func (fh *fileHandle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	// Through the data file, whether or not the handle is passthrough.
	return toErrno(fh.h.Allocate(int64(off), int64(size), mode))
}
