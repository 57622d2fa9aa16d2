package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Everything the run starts (daemons, mounts, MinIO, the scratch
// directory) registers an undo here; runCleanups undoes them in reverse
// order, once, on normal exit, on a fatal error and on SIGINT/SIGTERM.
var (
	cleanMu   sync.Mutex
	cleanups  []func()
	cleanOnce sync.Once
	stopping  atomic.Bool // set once cleanup starts: nothing new is started
)

// atCleanup registers f; once cleanup has started, f runs at once.
func atCleanup(f func()) {
	cleanMu.Lock()
	if stopping.Load() {
		cleanMu.Unlock()
		f()
		return
	}
	cleanups = append(cleanups, f)
	cleanMu.Unlock()
}

func runCleanups() {
	cleanOnce.Do(func() {
		cleanMu.Lock()
		stopping.Store(true)
		fs := cleanups
		cleanups = nil
		cleanMu.Unlock()
		for i := len(fs) - 1; i >= 0; i-- {
			fs[i]()
		}
	})
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func fatalf(format string, args ...any) {
	logf("FATAL: "+format, args...)
	runCleanups()
	os.Exit(1)
}

// proc is a child process reaped by one goroutine locked to its OS thread:
// Pdeathsig fires when the thread that forked the child exits, so keeping
// that thread in Wait makes SIGKILL-on-parent-death mean "the bench died".
type proc struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	logPath string
}

func spawn(name string, cmd *exec.Cmd, logPath string) (*proc, error) {
	if stopping.Load() {
		return nil, fmt.Errorf("not starting %s: cleaning up", name)
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), logPath: logPath}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			lf.Close()
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill stops the process: SIGTERM, then SIGKILL after grace.
func (p *proc) kill(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// vmHWM returns the peak resident set size of pid in bytes (VmHWM), or 0.
func vmHWM(pid int) int64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "VmHWM:") {
			fs := strings.Fields(line)
			if len(fs) >= 2 {
				kb, _ := strconv.ParseInt(fs[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// mountFSType returns the file system type of the mount at dir, or "".
func mountFSType(dir string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || unescapeMount(f[4]) != dir {
			continue
		}
		for i := 5; i < len(f); i++ {
			if f[i] == "-" && i+1 < len(f) {
				return f[i+1]
			}
		}
		return "?"
	}
	return ""
}

func isMounted(dir string) bool { return mountFSType(dir) != "" }

// mountsUnder lists mount points at or below dir.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmount unmounts dir: politely (retrying while busy), then lazily.
func unmount(dir string, tries int) error {
	var last error
	for i := 0; i < tries; i++ {
		if !isMounted(dir) {
			return nil
		}
		out, err := exec.Command("fusermount3", "-u", dir).CombinedOutput()
		if err == nil {
			return nil
		}
		last = fmt.Errorf("fusermount3 -u: %v: %s", err, strings.TrimSpace(string(out)))
		time.Sleep(200 * time.Millisecond)
	}
	if !isMounted(dir) {
		return nil
	}
	if out, err := exec.Command("fusermount3", "-uz", dir).CombinedOutput(); err != nil {
		if err2 := syscall.Unmount(dir, syscall.MNT_DETACH); err2 != nil {
			return fmt.Errorf("%v; fusermount3 -uz: %v: %s; umount -l: %v", last, err, strings.TrimSpace(string(out)), err2)
		}
	}
	return last
}

// daemon is a FUSE server process serving one mount point.
type daemon struct {
	*proc
	mnt      string
	hwm      int64 // VmHWM read just before it was stopped
	stopping atomic.Bool
}

// startDaemon spawns cmd and waits until mnt is mounted and answers.
func startDaemon(name string, cmd *exec.Cmd, mnt, logPath string, timeout time.Duration) (*daemon, error) {
	p, err := spawn(name, cmd, logPath)
	if err != nil {
		return nil, err
	}
	d := &daemon{proc: p, mnt: mnt}
	// Registered at once so that a SIGINT while it mounts still cleans up.
	atCleanup(d.forceStop)
	deadline := time.Now().Add(timeout)
	for {
		if isMounted(mnt) {
			if _, err := os.Stat(mnt); err == nil {
				return d, nil
			}
		}
		if p.exited() {
			return nil, fmt.Errorf("%s exited before mounting (%v): %s", name, p.err, lastLines(p.logTail(2000), 6))
		}
		if time.Now().After(deadline) {
			d.stop(5 * time.Second)
			return nil, fmt.Errorf("%s did not mount within %v: %s", name, timeout, lastLines(p.logTail(2000), 6))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// forceStop is the cleanup path (exit, failure, SIGINT): detach the mount
// at once, then SIGTERM, then SIGKILL. A daemon stopped before is left
// alone: its mount point may serve a newer instance by now.
func (d *daemon) forceStop() {
	if !d.stopping.CompareAndSwap(false, true) {
		if d.exited() {
			return
		}
	}
	if !d.exited() {
		exec.Command("fusermount3", "-uz", d.mnt).Run()
		d.kill(5 * time.Second)
	} else if isMounted(d.mnt) {
		exec.Command("fusermount3", "-uz", d.mnt).Run() // killed: stale mount
	}
}

// stop records the daemon's peak RSS, unmounts and waits for it to exit
// (mediafs drains its upload queue on unmount), killing it after grace.
func (d *daemon) stop(grace time.Duration) {
	if d == nil || d.proc == nil {
		return
	}
	if !d.stopping.CompareAndSwap(false, true) {
		return // stopped before, or being stopped by the cleanup
	}
	if !d.exited() {
		if h := vmHWM(d.pid()); h > d.hwm {
			d.hwm = h
		}
	}
	if err := unmount(d.mnt, 10); err != nil {
		logf("%s: unmount %s: %v", d.name, d.mnt, err)
	}
	select {
	case <-d.done:
	case <-time.After(grace):
		logf("%s did not exit within %v of the unmount; killing it", d.name, grace)
		d.kill(5 * time.Second)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// cleanEnv is the environment without credentials and settings that would
// change what a child does.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "AWS_"), strings.HasPrefix(k, "MEDIAFS_") && k != "MEDIAFS_MINIO_BIN",
			strings.HasPrefix(k, "MINIO_"), strings.HasPrefix(k, "RCLONE_"):
			continue
		}
		out = append(out, kv)
	}
	return out
}

// removeScratch removes the scratch directory unless something is still
// mounted below it (removing through a live mount would be wrong).
func removeScratch(dir string) {
	if ms := mountsUnder(dir); len(ms) > 0 {
		for _, m := range ms {
			exec.Command("fusermount3", "-uz", m).Run()
		}
		time.Sleep(200 * time.Millisecond)
		if ms := mountsUnder(dir); len(ms) > 0 {
			logf("not removing %s: still mounted: %s", dir, strings.Join(ms, ", "))
			return
		}
	}
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		logf("remove %s: %v", dir, err)
	}
}

func mkdirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}
