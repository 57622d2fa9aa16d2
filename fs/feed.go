package fs

import (
	"strings"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/mediafs/mediafs/cache"
)

// notifyChanges tells the kernel to forget what other machines changed
// (the cache's change hook): the names, so the next access looks them up
// again, the attributes, and a changed file's cached pages.
//
// It runs on the cache's feed goroutine, never inside a FUSE request: a
// notification waits for the kernel's lock on the directory, which a
// request in progress there may hold until the daemon answers it. No lock
// of the file system is held here either.
func (f *FS) notifyChanges(chs []cache.Changed) {
	root := f.root
	if root == nil {
		return
	}
	seen := make(map[string]bool, len(chs))
	for _, ch := range chs {
		if seen[ch.Key] {
			continue
		}
		seen[ch.Key] = true
		p := strings.TrimSuffix(ch.Key, "/")
		dir, name := "", p
		if i := strings.LastIndexByte(p, '/'); i >= 0 {
			dir, name = p[:i], p[i+1:]
		}
		parent := inodeAt(&root.Inode, dir)
		if parent == nil {
			continue // the kernel knows nothing below it
		}
		if child := parent.GetChild(name); child != nil && !ch.Removed {
			child.NotifyContent(contentOffset(child, ch), 0)
		}
		// ENOENT (the kernel has no such entry cached) is the common
		// answer and means there was nothing to forget.
		parent.NotifyEntry(name)
	}
}

// contentOffset is where the kernel's cached pages of child stop being
// good: 0 (all of them) for a file whose version changed, -1 (none; the
// attributes only) otherwise.
func contentOffset(child *gofs.Inode, ch cache.Changed) int64 {
	var fn *fileNode
	switch n := child.Operations().(type) {
	case *fileNode:
		fn = n
	case *linkNode:
		fn = &n.fileNode
	default:
		return -1
	}
	fn.mu.Lock()
	defer fn.mu.Unlock()
	if fn.lastETag != "" && fn.lastETag == ch.ETag {
		return -1
	}
	return 0
}

// inodeAt walks from the root to path ("" is the root), through the
// inodes the kernel knows; nil when one is missing.
func inodeAt(root *gofs.Inode, path string) *gofs.Inode {
	n := root
	if path == "" {
		return n
	}
	for _, seg := range strings.Split(path, "/") {
		if n = n.GetChild(seg); n == nil {
			return nil
		}
	}
	return n
}
