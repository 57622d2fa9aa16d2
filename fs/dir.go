package fs

import (
	"context"
	"sort"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/mediafs/mediafs/cache"
)

// dirNode is a directory: a common prefix or a "dir/" marker object.
type dirNode struct{ node }

var (
	_ = (gofs.NodeLookuper)((*dirNode)(nil))
	_ = (gofs.NodeReaddirer)((*dirNode)(nil))
	_ = (gofs.NodeGetattrer)((*dirNode)(nil))
	_ = (gofs.NodeSetattrer)((*dirNode)(nil))
	_ = (gofs.NodeCreater)((*dirNode)(nil))
	_ = (gofs.NodeMkdirer)((*dirNode)(nil))
	_ = (gofs.NodeRmdirer)((*dirNode)(nil))
	_ = (gofs.NodeUnlinker)((*dirNode)(nil))
	_ = (gofs.NodeRenamer)((*dirNode)(nil))
	_ = (gofs.NodeSymlinker)((*dirNode)(nil))
	_ = (gofs.NodeLinker)((*dirNode)(nil))
	_ = (gofs.NodeStatfser)((*dirNode)(nil))
)

// childKey is the file key of a child name.
func (d *dirNode) childKey(name string) string { return d.dirKey() + name }

// A file key may be 1024 bytes (the S3 maximum); a directory's marker
// key is one longer, so Mkdir and a directory Rename check dirName too.
func (d *dirNode) checkName(name string) (string, syscall.Errno) {
	key := d.childKey(name)
	if err := cache.CheckName(name, key); err != nil {
		return "", toErrno(err)
	}
	return key, 0
}

// dirName checks that key can also be a directory ("key/").
func dirName(name, key string) syscall.Errno {
	return toErrno(cache.CheckName(name, key+"/"))
}

// Lookup implements gofs.NodeLookuper.
func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (child *gofs.Inode, errno syscall.Errno) {
	defer d.fsys.observe("lookup", time.Now(), &errno)
	key, errno := d.checkName(name)
	if errno != 0 {
		return nil, errno
	}
	e, err := d.fsys.c.Lookup(ctx, key)
	if err != nil {
		return nil, toErrno(err)
	}
	fillAttr(e, &out.Attr)
	return d.fsys.inodeFor(ctx, &d.Inode, name, e), 0
}

// Readdir implements gofs.NodeReaddirer.
func (d *dirNode) Readdir(ctx context.Context) (stream gofs.DirStream, errno syscall.Errno) {
	defer d.fsys.observe("readdir", time.Now(), &errno)
	ents, err := d.fsys.c.List(ctx, d.dirKey())
	if err != nil {
		return nil, toErrno(err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name < ents[j].Name })
	out := make([]fuse.DirEntry, 0, len(ents))
	for _, e := range ents {
		out = append(out, fuse.DirEntry{Name: e.Name, Mode: typeBits(e)})
	}
	return gofs.NewListDirStream(out), 0
}

// Getattr implements gofs.NodeGetattrer.
func (d *dirNode) Getattr(ctx context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if d.path() == "" {
		e, err := d.entry(ctx, true)
		if err != nil {
			return toErrno(err)
		}
		fillAttr(e, &out.Attr)
		return 0
	}
	fillAttr(d.fsys.c.DirEntry(ctx, d.dirKey()), &out.Attr)
	return 0
}

// Setattr implements gofs.NodeSetattrer (chmod, chown, utimes of a dir).
func (d *dirNode) Setattr(ctx context.Context, _ gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	e, err := d.entry(ctx, true)
	if err != nil {
		return toErrno(err)
	}
	if ch, ok := attrChange(in); ok && d.path() != "" {
		if e, err = d.fsys.c.SetAttr(ctx, d.dirKey(), e, ch); err != nil {
			return toErrno(err)
		}
	}
	fillAttr(e, &out.Attr)
	return 0
}

func newAttr(ctx context.Context, mode uint32) cache.Attr {
	uid, gid := caller(ctx)
	return cache.Attr{Mode: mode, UID: uid, GID: gid, Mtime: time.Now()}
}

// Create implements gofs.NodeCreater.
func (d *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (child *gofs.Inode, fh gofs.FileHandle, fuseFlags uint32, errno syscall.Errno) {
	defer d.fsys.observe("create", time.Now(), &errno)
	key, errno := d.checkName(name)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	a := newAttr(ctx, syscall.S_IFREG|mode&07777)
	h, err := d.fsys.c.Create(ctx, key, a, flags&syscall.O_EXCL != 0)
	if err != nil {
		return nil, nil, 0, toErrno(err)
	}
	e := cache.Entry{Key: key, Name: name, Attr: a, Pending: true}
	fillAttr(e, &out.Attr)
	fn := &fileNode{node: node{fsys: d.fsys}}
	fn.trackLocked(h) // not shared yet
	ch := d.NewInode(ctx, fn, gofs.StableAttr{Mode: syscall.S_IFREG})
	nh := d.fsys.newHandle(h)
	nh.node = fn
	return ch, nh, 0, 0
}

// Mkdir implements gofs.NodeMkdirer.
func (d *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (child *gofs.Inode, errno syscall.Errno) {
	defer d.fsys.observe("mkdir", time.Now(), &errno)
	key, errno := d.checkName(name)
	if errno == 0 {
		errno = dirName(name, key)
	}
	if errno != 0 {
		return nil, errno
	}
	a := newAttr(ctx, syscall.S_IFDIR|mode&07777)
	if err := d.fsys.c.Mkdir(ctx, key+"/", a); err != nil {
		return nil, toErrno(err)
	}
	fillAttr(cache.Entry{Key: key + "/", Name: name, Dir: true, Attr: a}, &out.Attr)
	return d.NewInode(ctx, &dirNode{node{fsys: d.fsys}}, gofs.StableAttr{Mode: syscall.S_IFDIR}), 0
}

// Rmdir implements gofs.NodeRmdirer.
func (d *dirNode) Rmdir(ctx context.Context, name string) (errno syscall.Errno) {
	defer d.fsys.observe("rmdir", time.Now(), &errno)
	key, errno := d.checkName(name)
	if errno != 0 {
		return errno
	}
	return toErrno(d.fsys.c.Rmdir(ctx, key+"/"))
}

// Unlink implements gofs.NodeUnlinker.
func (d *dirNode) Unlink(ctx context.Context, name string) (errno syscall.Errno) {
	defer d.fsys.observe("unlink", time.Now(), &errno)
	key, errno := d.checkName(name)
	if errno != 0 {
		return errno
	}
	e, err := d.fsys.c.Lookup(ctx, key)
	if err != nil {
		return toErrno(err)
	}
	if e.Dir {
		return syscall.EISDIR
	}
	return toErrno(d.fsys.c.Remove(ctx, key))
}

// Rename implements gofs.NodeRenamer.
func (d *dirNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) (errno syscall.Errno) {
	defer d.fsys.observe("rename", time.Now(), &errno)
	if flags&^uint32(1) != 0 { // only RENAME_NOREPLACE
		return syscall.EINVAL
	}
	key, errno := d.checkName(name)
	if errno != 0 {
		return errno
	}
	np, ok := newParent.(*dirNode)
	if !ok {
		return syscall.EXDEV
	}
	newKey, errno := np.checkName(newName)
	if errno != 0 {
		return errno
	}
	e, err := d.fsys.c.Lookup(ctx, key)
	if err != nil {
		return toErrno(err)
	}
	if t, err := d.fsys.c.Lookup(ctx, newKey); err == nil {
		if flags&1 != 0 {
			return syscall.EEXIST
		}
		if t.Dir != e.Dir {
			if e.Dir {
				return syscall.ENOTDIR
			}
			return syscall.EISDIR
		}
	}
	if e.Dir {
		if errno := dirName(newName, newKey); errno != 0 {
			return errno
		}
		return toErrno(d.fsys.c.Rename(ctx, key+"/", newKey+"/", e))
	}
	return toErrno(d.fsys.c.Rename(ctx, key, newKey, e))
}

// Symlink implements gofs.NodeSymlinker.
func (d *dirNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (child *gofs.Inode, errno syscall.Errno) {
	defer d.fsys.observe("symlink", time.Now(), &errno)
	key, errno := d.checkName(name)
	if errno != 0 {
		return nil, errno
	}
	if len(target) > 4095 {
		return nil, syscall.ENAMETOOLONG
	}
	a := newAttr(ctx, syscall.S_IFLNK|0o777)
	if err := d.fsys.c.Symlink(ctx, key, target, a); err != nil {
		return nil, toErrno(err)
	}
	fillAttr(cache.Entry{Key: key, Name: name, Symlink: true, Size: int64(len(target)), Attr: a}, &out.Attr)
	return d.NewInode(ctx, &linkNode{fileNode{node: node{fsys: d.fsys}}}, gofs.StableAttr{Mode: syscall.S_IFLNK}), 0
}

// Link implements gofs.NodeLinker: objects have one name each, so hard
// links are refused.
func (d *dirNode) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

// Statfs implements gofs.NodeStatfser: the cache disk's space, since that
// is what bounds how much can be written before it is uploaded.
func (d *dirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.fsys.c.Dir(), &st); err != nil {
		return toErrno(err)
	}
	out.FromStatfsT(&st)
	out.NameLen = 255
	return 0
}
