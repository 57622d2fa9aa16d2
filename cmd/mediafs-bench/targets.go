package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// target is one place the workloads run: a directory, possibly a FUSE
// mount served by a daemon, possibly backed by a bucket.
type target struct {
	name   string
	dir    string // where the workload's files go
	bucket string // "" when no object store is behind it
	// start starts a fresh instance of the daemon on mnt with scratch as
	// its private state (cache dir); nil for the plain local directory.
	start func(mnt, scratch string) (*daemon, error)

	base     string // the target's scratch root
	cur      *daemon
	second   *daemon // the second mount of the visibility test
	gen      int
	hwm      int64
	logs     []string // daemon log files, for the passthrough line
	na       string   // why the whole target is unavailable
	cells    map[string]cell
	notes    []string
	coldNote string
	phases   []phaseStat
}

type cell struct {
	v    float64
	ok   bool
	note string // shown next to the value ("partial", "n/a: ...")
}

func (t *target) set(key string, v float64, note string) {
	t.cells[key] = cell{v: v, ok: true, note: note}
}

func (t *target) setNA(key, why string) { t.cells[key] = cell{note: why} }

func (t *target) isMount() bool { return t.start != nil }

// mount starts a fresh daemon instance on t.dir with new private state.
func (t *target) mount() error {
	t.gen++
	scratch := filepath.Join(t.base, fmt.Sprintf("state-%d", t.gen))
	if err := mkdirs(scratch, t.dir); err != nil {
		return err
	}
	d, err := t.start(t.dir, scratch)
	if err != nil {
		return err
	}
	t.cur = d
	t.logs = append(t.logs, d.logPath)
	setReadAhead(t.dir)
	return nil
}

// fuseReadAheadKB, when set (--fuse-read-ahead-kb), replaces the kernel's
// read-ahead for every FUSE mount of the run (it is 128 KiB by default,
// whatever the daemon's MaxReadAhead): a tuning experiment, off by default.
var fuseReadAheadKB int

func setReadAhead(mnt string) {
	if fuseReadAheadKB <= 0 {
		return
	}
	var st syscall.Stat_t
	if err := syscall.Stat(mnt, &st); err != nil {
		return
	}
	d := st.Dev
	major := ((d >> 8) & 0xfff) | ((d >> 32) &^ 0xfff)
	minor := (d & 0xff) | ((d >> 12) &^ 0xff)
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", major, minor)
	if err := os.WriteFile(p, []byte(fmt.Sprint(fuseReadAheadKB)), 0); err != nil {
		logf("set %s: %v", p, err)
	}
}

// remount stops the running instance and starts a fresh one (cold caches).
func (t *target) remount() error {
	t.stopCur()
	return t.mount()
}

func (t *target) stopCur() {
	if t.cur == nil {
		return
	}
	t.cur.stop(120 * time.Second)
	if t.cur.hwm > t.hwm {
		t.hwm = t.cur.hwm
	}
	t.cur = nil
}

func (t *target) curHWM() int64 {
	h := t.hwm
	for _, d := range []*daemon{t.cur, t.second} {
		if d != nil && !d.exited() {
			if x := vmHWM(d.pid()); x > h {
				h = x
			}
		}
	}
	return h
}

// mountSecond starts a second instance on another mount point (same
// bucket), for the cross-mount visibility test.
func (t *target) mountSecond() (string, error) {
	mnt := filepath.Join(t.base, "mnt-b")
	scratch := filepath.Join(t.base, "state-b")
	if err := mkdirs(mnt, scratch); err != nil {
		return "", err
	}
	d, err := t.start(mnt, scratch)
	if err != nil {
		return "", err
	}
	t.second = d
	t.logs = append(t.logs, d.logPath)
	return mnt, nil
}

func (t *target) stopSecond() {
	if t.second == nil {
		return
	}
	t.second.stop(120 * time.Second)
	t.second = nil
}

func (t *target) stopAll() {
	t.stopSecond()
	t.stopCur()
}

// grepLogs returns the first line of the daemon logs containing s.
func (t *target) grepLogs(s string) string {
	for _, p := range t.logs {
		b, _ := os.ReadFile(p)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, s) {
				return line
			}
		}
	}
	return ""
}

func newTarget(name, base string) *target {
	return &target{name: name, base: base, cells: map[string]cell{}}
}

func localTarget(base string) *target {
	t := newTarget("local", base)
	t.dir = filepath.Join(base, "dir")
	if err := mkdirs(t.dir); err != nil {
		t.na = err.Error()
	}
	return t
}

// loopbackTarget is a go-fuse loopback mount of a local directory, served
// by this same binary in a child process (`mediafs-bench __loopback SRC
// MNT`) with the mount options mediafs uses.
func loopbackTarget(base, self string) *target {
	t := newTarget("loopback", base)
	t.dir = filepath.Join(base, "mnt")
	src := filepath.Join(base, "src")
	if err := mkdirs(src); err != nil {
		t.na = err.Error()
	}
	t.start = func(mnt, scratch string) (*daemon, error) {
		cmd := exec.Command(self, "__loopback", src, mnt)
		cmd.Env = cleanEnv()
		return startDaemon("loopback", cmd, mnt, filepath.Join(scratch, "loopback.log"), 30*time.Second)
	}
	return t
}

type mediafsConfig struct {
	bin, endpoint string
	env           []string
	wbDelay       time.Duration
	extra         []string
}

func mediafsTarget(base, bucket string, c mediafsConfig) *target {
	t := newTarget("mediafs", base)
	t.dir = filepath.Join(base, "mnt")
	t.bucket = bucket
	t.start = func(mnt, scratch string) (*daemon, error) {
		args := []string{"mount", "--endpoint", c.endpoint, "--cache-dir", filepath.Join(scratch, "cache"),
			"--writeback-delay", c.wbDelay.String(), "--drain-timeout", "90s"}
		args = append(args, c.extra...)
		args = append(args, bucket, mnt)
		cmd := exec.Command(c.bin, args...)
		// Credentials only in the environment, never in argv.
		cmd.Env = append(cleanEnv(), c.env...)
		return startDaemon("mediafs", cmd, mnt, filepath.Join(scratch, "mediafs.log"), 60*time.Second)
	}
	return t
}

// rcloneTarget is `rclone mount --vfs-cache-mode full`, configured only by
// environment variables, with the same write-back delay as mediafs.
func rcloneTarget(base, bucket string, m *minioServer, wbDelay time.Duration) *target {
	t := newTarget("rclone", base)
	t.dir = filepath.Join(base, "mnt")
	t.bucket = bucket
	bin, err := exec.LookPath("rclone")
	if err != nil {
		t.na = "rclone not installed"
		return t
	}
	t.start = func(mnt, scratch string) (*daemon, error) {
		cmd := exec.Command(bin, "mount", "minio:"+bucket, mnt,
			"--vfs-cache-mode", "full",
			"--cache-dir", filepath.Join(scratch, "cache"),
			"--vfs-write-back", wbDelay.String(),
			"--log-level", "INFO")
		cmd.Env = append(cleanEnv(),
			"RCLONE_CONFIG="+filepath.Join(scratch, "rclone.conf"), // absent: env only
			"RCLONE_CONFIG_MINIO_TYPE=s3",
			"RCLONE_CONFIG_MINIO_PROVIDER=Minio",
			"RCLONE_CONFIG_MINIO_ENDPOINT="+m.endpoint,
			"RCLONE_CONFIG_MINIO_ACCESS_KEY_ID="+m.access,
			"RCLONE_CONFIG_MINIO_SECRET_ACCESS_KEY="+m.secret,
		)
		return startDaemon("rclone", cmd, mnt, filepath.Join(scratch, "rclone.log"), 60*time.Second)
	}
	return t
}

// s3fsTarget is s3fs-fuse in the foreground (so its pid is ours), with a
// 0600 password file in its scratch directory.
func s3fsTarget(base, bucket string, m *minioServer) *target {
	t := newTarget("s3fs", base)
	t.dir = filepath.Join(base, "mnt")
	t.bucket = bucket
	bin, err := exec.LookPath("s3fs")
	if err != nil {
		t.na = "s3fs not installed"
		return t
	}
	t.start = func(mnt, scratch string) (*daemon, error) {
		pw := filepath.Join(scratch, "passwd-s3fs")
		if err := os.WriteFile(pw, []byte(m.access+":"+m.secret+"\n"), 0o600); err != nil {
			return nil, err
		}
		cmd := exec.Command(bin, bucket, mnt, "-f",
			"-o", "url="+m.endpoint+",use_path_request_style,passwd_file="+pw)
		cmd.Env = cleanEnv()
		return startDaemon("s3fs", cmd, mnt, filepath.Join(scratch, "s3fs.log"), 60*time.Second)
	}
	return t
}

// runLoopback is the child process of the loopback target: a go-fuse
// loopback of src on mnt with mediafs's mount options (MaxWrite 1 MiB,
// 1 s entry/attr timeouts, 0.5 s negative timeout, MaxBackground 64,
// default_permissions, no xattrs). go-fuse's LoopbackFile implements
// FilePassthroughFder, so passthrough is used whenever the kernel allows.
func runLoopback(src, mnt string) error {
	root, err := gofs.NewLoopbackRoot(src)
	if err != nil {
		return err
	}
	one, neg := time.Second, 500*time.Millisecond
	opts := &gofs.Options{
		EntryTimeout: &one, AttrTimeout: &one, NegativeTimeout: &neg,
		MountOptions: fuse.MountOptions{
			FsName:        "bench-loopback",
			Name:          "loopback",
			Options:       []string{"default_permissions"},
			MaxWrite:      1 << 20,
			MaxReadAhead:  1 << 20,
			MaxBackground: 64,
			DisableXAttrs: true,
		},
	}
	srv, err := gofs.Mount(mnt, root, opts)
	if err != nil {
		return err
	}
	// The same probe mediafs makes: go-fuse turns backing files off
	// silently if the kernel refuses one.
	switch {
	case srv.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0:
		fmt.Fprintln(os.Stderr, "loopback: kernel has no FUSE passthrough")
	default:
		tmp, err := os.CreateTemp("", "bench-probe-")
		if err == nil {
			id, errno := srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(tmp.Fd())})
			if errno == 0 {
				srv.UnregisterBackingFd(id)
				fmt.Fprintln(os.Stderr, "loopback: FUSE passthrough enabled")
			} else {
				fmt.Fprintln(os.Stderr, "loopback: FUSE passthrough refused:", errno)
			}
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		srv.Unmount()
	}()
	srv.Wait()
	return nil
}
