package fs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/mediafs/mediafs/cache"
)

// Options configure the file system.
type Options struct {
	Cache  *cache.Cache
	Logger *slog.Logger
	// EntryTimeout and AttrTimeout bound how long the kernel trusts a name
	// or attributes; NegativeTimeout how long it trusts "no such file".
	// Another machine may change the bucket at any time, so keep them
	// short.
	EntryTimeout, AttrTimeout, NegativeTimeout time.Duration
	// AllowOther lets other users than the mounting one use the mount.
	AllowOther bool
	// Debug logs every FUSE request.
	Debug bool
	// FsName is shown in /proc/mounts (the bucket).
	FsName string
	// DisablePassthrough serves all reads and writes through the daemon.
	DisablePassthrough bool
	// ReadAhead is the kernel's read-ahead window for files the daemon
	// serves (bytes; 0 leaves the kernel's 128 KiB).
	ReadAhead int64
	// Observe, when set, is called after each FUSE operation served by the
	// daemon with its name, latency and result (for metrics).
	Observe func(op string, d time.Duration, errno syscall.Errno)
}

// FS is one mounted file system.
type FS struct {
	o           Options
	c           *cache.Cache
	log         *slog.Logger
	passthrough atomic.Bool
	server      *fuse.Server
	root        *dirNode
}

// New returns the file system; Mount serves it.
func New(o Options) *FS {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.EntryTimeout == 0 {
		o.EntryTimeout = time.Second
	}
	if o.AttrTimeout == 0 {
		o.AttrTimeout = time.Second
	}
	if o.NegativeTimeout == 0 {
		o.NegativeTimeout = 500 * time.Millisecond
	}
	return &FS{o: o, c: o.Cache, log: o.Logger}
}

// Mount mounts the file system on dir and starts serving it.
func (f *FS) Mount(dir string) (*fuse.Server, error) {
	root := &dirNode{node{fsys: f}}
	opts := &gofs.Options{
		EntryTimeout:    &f.o.EntryTimeout,
		AttrTimeout:     &f.o.AttrTimeout,
		NegativeTimeout: &f.o.NegativeTimeout,
		MountOptions: fuse.MountOptions{
			AllowOther: f.o.AllowOther,
			FsName:     f.o.FsName,
			Name:       "mediafs",
			// The kernel checks modes itself, as on a local disk.
			Options:       []string{"default_permissions"},
			MaxWrite:      1 << 20,
			MaxReadAhead:  1 << 20,
			MaxBackground: 64,
			// Reads are served from buffers, never as a file to splice.
			// With splice on, go-fuse first tries a pipe for every READ
			// reply, and for a 1 MiB one (bigger than the default pipe
			// limit) fails, logs "trySplice" and falls back to writev.
			DisableSplice: true,
			// With ENOSYS the kernel stops asking for security.capability
			// on every write.
			DisableXAttrs: true,
			Debug:         f.o.Debug,
		},
		UID: 0, GID: 0,
	}
	srv, err := gofs.Mount(dir, root, opts)
	if err != nil {
		return nil, err
	}
	f.server = srv
	f.root = root
	f.probePassthrough(srv)
	f.c.SetChangeHook(f.notifyChanges)
	f.setReadAhead(dir)
	return srv, nil
}

// setReadAhead sets the kernel's read-ahead for the mount. With the
// default 128 KiB (MaxReadAhead cannot raise it: the kernel offers its
// default at INIT and takes the smaller) a sequential reader of a file
// the daemon serves gets one 128 KiB READ at a time, each a round trip; a
// larger window makes the kernel send READs of up to MaxWrite, several at
// once. It is the mount's own backing device, so it changes nothing
// else. Passthrough reads are the cache disk's, not affected.
func (f *FS) setReadAhead(dir string) {
	if f.o.ReadAhead <= 0 {
		return
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		f.log.Info("cannot set the kernel read-ahead of the mount", "err", err)
		return
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(p, []byte(strconv.FormatInt(f.o.ReadAhead>>10, 10)), 0); err != nil {
		f.log.Info("cannot set the kernel read-ahead of the mount; sequential reads of files not yet cached take 128 KiB per round trip", "path", p, "err", err)
		return
	}
	f.log.Debug("kernel read-ahead of the mount set", "path", p, "kib", f.o.ReadAhead>>10)
}

// probePassthrough registers a backing file once, as go-fuse would on the
// first open: if the kernel refuses, go-fuse would silently turn backing
// files off for the mount, so we find out here, log it and serve through
// the daemon.
func (f *FS) probePassthrough(srv *fuse.Server) {
	if f.o.DisablePassthrough {
		f.log.Info("FUSE passthrough disabled by flag; reads and writes go through the daemon")
		return
	}
	if srv.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		f.log.Info("kernel has no FUSE passthrough; reads and writes go through the daemon")
		return
	}
	tmp, err := os.CreateTemp("", "mediafs-probe-")
	if err != nil {
		return
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	id, errno := srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(tmp.Fd())})
	if errno != 0 {
		f.log.Info("FUSE passthrough refused by the kernel (needs CAP_SYS_ADMIN); reads and writes go through the daemon", "errno", errno)
		return
	}
	srv.UnregisterBackingFd(id)
	f.passthrough.Store(true)
	f.log.Info("FUSE passthrough enabled: cached files are read and written by the kernel directly")
}

// observe reports one operation; use as defer f.observe("op", time.Now(), &errno).
func (f *FS) observe(op string, start time.Time, errno *syscall.Errno) {
	switch op {
	case "lookup", "readdir", "open", "read", "flush":
		// (A writer's flush is noted by Flush: a read-only close is no
		// change.)
	default:
		// A change: uploads wait until they stop (cache/pace.go).
		f.c.Foreground()
	}
	if f.o.Observe != nil {
		f.o.Observe(op, time.Since(start), *errno)
	}
	if *errno == syscall.EIO {
		f.log.Debug("fuse op failed", "op", op, "errno", *errno)
	}
}

// Passthrough reports whether FUSE passthrough is in use.
func (f *FS) Passthrough() bool { return f.passthrough.Load() }

// caller returns the uid and gid of the process making the request.
func caller(ctx context.Context) (uint32, uint32) {
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

// fillAttr copies an entry's attributes into a FUSE attr.
func fillAttr(e cache.Entry, out *fuse.Attr) {
	out.Mode = e.Attr.Mode&07777 | typeBits(e)
	out.Size = uint64(e.Size)
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 1 << 16
	out.Uid, out.Gid = e.Attr.UID, e.Attr.GID
	mt := e.Attr.Mtime
	if mt.IsZero() {
		mt = time.Unix(0, 0)
	}
	out.SetTimes(&mt, &mt, &mt)
	out.Nlink = 1
	if e.Dir {
		out.Nlink = 2
	}
}

func typeBits(e cache.Entry) uint32 {
	switch {
	case e.Dir:
		return syscall.S_IFDIR
	case e.Symlink:
		return syscall.S_IFLNK
	}
	return syscall.S_IFREG
}

// node is what every node type shares: its key comes from its path.
type node struct {
	gofs.Inode
	fsys *FS
}

// path is the node's path relative to the mount root ("" for the root).
func (n *node) path() string { return n.Path(nil) }

func (n *node) fileKey() string { return n.path() }

func (n *node) dirKey() string {
	p := n.path()
	if p == "" {
		return ""
	}
	return p + "/"
}

// entry looks up the node's own entry.
func (n *node) entry(ctx context.Context, dir bool) (cache.Entry, error) {
	p := n.path()
	if p == "" {
		e, _ := n.fsys.c.Lookup(ctx, "")
		if a, ok := n.fsys.c.DirAttr(""); ok {
			e.Attr = a
		}
		return e, nil
	}
	return n.fsys.c.Lookup(ctx, p)
}

// inodeFor returns the child inode for an entry, reusing the existing one
// when its type still matches.
// replacedWhileOpen: see fileNode.replacedWhileOpenLocked.
func replacedWhileOpen(ch *gofs.Inode, e cache.Entry) bool {
	var fn *fileNode
	switch n := ch.Operations().(type) {
	case *fileNode:
		fn = n
	case *linkNode:
		fn = &n.fileNode
	default:
		return false
	}
	fn.mu.Lock()
	defer fn.mu.Unlock()
	return fn.replacedWhileOpenLocked(e)
}

func (f *FS) inodeFor(ctx context.Context, parent *gofs.Inode, name string, e cache.Entry) *gofs.Inode {
	mode := typeBits(e)
	if ch := parent.GetChild(name); ch != nil && ch.StableAttr().Mode == mode && !replacedWhileOpen(ch, e) {
		return ch
	}
	var n gofs.InodeEmbedder
	switch mode {
	case syscall.S_IFDIR:
		n = &dirNode{node{fsys: f}}
	case syscall.S_IFLNK:
		n = &linkNode{fileNode{node: node{fsys: f}}}
	default:
		n = &fileNode{node: node{fsys: f}}
	}
	return parent.NewInode(ctx, n, gofs.StableAttr{Mode: mode})
}
