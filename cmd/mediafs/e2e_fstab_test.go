package main

// End-to-end tests of scripts/mount.mediafs, the mount(8) helper behind
// /etc/fstab lines of type mediafs: called exactly as mount(8) calls it,
// and through a real `mount -T FSTAB MOUNTPOINT` that finds it as
// /sbin/mount.mediafs inside a private mount namespace (so the machine's
// /sbin and mount table are untouched).

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// installHelper copies scripts/mount.mediafs into a new directory as
// mount.mediafs and returns that directory.
func fstabInstallHelper(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "..", "scripts", "mount.mediafs"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mount.mediafs"), src, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fstabSetup is what an administrator prepares for an fstab mount: a
// mountpoint, a cache dir, a root-only credentials file, a log file.
type fstabSetup struct {
	mnt, cacheDir, credFile, logFile, pidFile string
}

func newFstabSetup(t *testing.T, e *env) *fstabSetup {
	t.Helper()
	base := t.TempDir()
	s := &fstabSetup{mnt: filepath.Join(base, "media"), cacheDir: filepath.Join(base, "cache"),
		credFile: filepath.Join(base, "credentials"), logFile: filepath.Join(base, "log", "mediafs.log"),
		pidFile: filepath.Join(base, "mediafs.pid")}
	if err := os.Mkdir(s.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	creds := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", e.minio.AccessKey, e.minio.SecretKey)
	if err := os.WriteFile(s.credFile, []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// options is the -o string of the fstab line: generic options mount(8)
// and systemd use, mediafs flags, and the helper's own options. A long
// writeback delay keeps written files pending until a flush or the drain
// at unmount, so the test sees both at work.
func (s *fstabSetup) options(e *env) string {
	return strings.Join([]string{"_netdev", "allow_other", "nofail", "nosuid", "nodev",
		"cache_dir=" + s.cacheDir, "endpoint=" + e.minio.Endpoint, "credentials_file=" + s.credFile,
		"writeback_delay=1h", "drain_timeout=30s", "log_file=" + s.logFile, "pid_file=" + s.pidFile}, ",")
}

// stopDaemon is for cleanup after a failure: it stops the daemon the helper
// started, if it still runs.
func (s *fstabSetup) stopDaemon() {
	b, err := os.ReadFile(s.pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !fstabProcessAlive(pid) {
		return
	}
	p, _ := os.FindProcess(pid)
	p.Signal(syscall.SIGTERM)
	for i := 0; i < 400 && fstabProcessAlive(pid); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	p.Kill()
}

func (s *fstabSetup) log() string {
	b, _ := os.ReadFile(s.logFile)
	return string(b)
}

// daemonPid reads the pid the helper wrote and checks that it is a running
// mediafs whose command line carries no secret.
func (s *fstabSetup) daemonPid(t *testing.T, e *env) int {
	t.Helper()
	b, err := os.ReadFile(s.pidFile)
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !fstabProcessAlive(pid) {
		t.Fatalf("pid file holds %q: not a running process", b)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if args[0] != binPath || len(args) < 2 || args[1] != "mount" {
		t.Fatalf("pid %d runs %q, not %s mount", pid, args, binPath)
	}
	if bytes.Contains(cmdline, []byte(e.minio.SecretKey)) || bytes.Contains(cmdline, []byte(e.minio.AccessKey)) {
		t.Fatalf("credentials on the daemon's command line: %q", args)
	}
	for _, want := range []string{"--allow-other", "--cache-dir=" + s.cacheDir, "--credentials-file=" + s.credFile, "--writeback-delay=1h"} {
		if !fstabContains(args, want) {
			t.Errorf("daemon args %q lack %q", args, want)
		}
	}
	for _, a := range args {
		if strings.Contains(a, "netdev") || strings.Contains(a, "nofail") || strings.Contains(a, "log-file") ||
			strings.Contains(a, "pid-file") || a == "--rw" || a == "--nosuid" {
			t.Errorf("generic or helper option passed to the daemon: %q", a)
		}
	}
	return pid
}

func fstabContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// processAlive: the process exists and has not exited (a zombie has).
func fstabProcessAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || len(b) < i+3 || b[i+2] != 'Z'
}

// fstabSessionID is field 6 of /proc/PID/stat.
func fstabSessionID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	sid, _ := strconv.Atoi(f[3]) // state ppid pgrp session
	return sid
}

func fstabWaitExit(t *testing.T, pid int, timeout time.Duration, log func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for fstabProcessAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("mediafs (pid %d) still running %v after unmount\n%s", pid, timeout, tail(log(), 4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mountedIn reports whether mountinfo (a /proc/PID/mountinfo or
// /proc/self/mountinfo) lists dir with file system type fuse.mediafs.
func fstabMountedIn(t *testing.T, mountinfo, dir string) bool {
	t.Helper()
	b, err := os.ReadFile(mountinfo)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != dir {
			continue
		}
		for i := 6; i+1 < len(f); i++ {
			if f[i] == "-" {
				return f[i+1] == "fuse.mediafs"
			}
		}
	}
	return false
}

func fstabRun(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("%s did not finish within 90s", name)
	}
}

// helperEnv is the environment of mount(8) on a server: no credentials in
// it (they come from credentials_file), the binary under test.
func fstabHelperEnv() []string {
	return append(cleanEnv(), "MEDIAFS_BIN="+binPath)
}

// TestFstabHelperMountsFlushesAndDrains runs the helper exactly as
// mount(8) does for the fstab line (`mount.mediafs SPEC DIR -o OPTS`).
func TestFstabHelperMountsFlushesAndDrains(t *testing.T) {
	e := newEnv(t)
	helper := filepath.Join(fstabInstallHelper(t), "mount.mediafs")
	s := newFstabSetup(t, e)
	out, err := fstabRun(t, fstabHelperEnv(), helper, "media", s.mnt, "-o", "rw,"+s.options(e))
	if err != nil {
		t.Fatalf("mount.mediafs: %v\n%s\nlog:\n%s", err, out, s.log())
	}
	t.Cleanup(func() {
		if fstabMountedIn(t, "/proc/self/mountinfo", s.mnt) {
			exec.Command("umount", s.mnt).Run()
		}
		s.stopDaemon()
		if t.Failed() {
			t.Logf("mediafs log:\n%s", tail(s.log(), 6000))
		}
	})
	// The helper returns only once the mount is there: no waiting here.
	if !fstabMountedIn(t, "/proc/self/mountinfo", s.mnt) {
		t.Fatalf("mount.mediafs returned but %s is not a fuse.mediafs mount\n%s", s.mnt, out)
	}
	pid := s.daemonPid(t, e)
	if sid := fstabSessionID(t, pid); sid != pid {
		t.Errorf("daemon session id %d, want its own session %d (setsid)", sid, pid)
	}

	// Written, then pushed by `mediafs flush`: in the bucket while mounted.
	first := bytes.Repeat([]byte("fstab "), 5000)
	writeFile(t, filepath.Join(s.mnt, "first.jpg"), first)
	if out, err := fstabRun(t, cleanEnv(), binPath, "flush", "--cache-dir", s.cacheDir, "--timeout", "30s"); err != nil {
		t.Fatalf("mediafs flush: %v\n%s", err, out)
	}
	e.waitObject(t, "first.jpg", first, 5*time.Second)

	// Written just before the unmount: only the drain can upload it.
	second := []byte("written last, uploaded by the drain\n")
	writeFile(t, filepath.Join(s.mnt, "second.txt"), second)
	if _, _, err := e.getObject("second.txt"); err == nil {
		t.Fatalf("second.txt reached the bucket before the unmount despite writeback_delay=1h")
	}
	if out, err := fstabRun(t, cleanEnv(), "umount", s.mnt); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	fstabWaitExit(t, pid, 40*time.Second, s.log)
	if fstabMountedIn(t, "/proc/self/mountinfo", s.mnt) {
		t.Fatalf("still mounted after the daemon exited")
	}
	e.waitObject(t, "second.txt", second, time.Second)
	if !strings.Contains(s.log(), "upload queue drained") {
		t.Errorf("log does not say the queue was drained:\n%s", tail(s.log(), 3000))
	}
}

// TestFstabMountCommand mounts through mount(8) itself: `mount -T FSTAB
// DIR` reads the fstab line and runs /sbin/mount.mediafs. It runs in a
// private mount namespace where a read-only overlay adds mount.mediafs to
// /sbin, so the host's /sbin and mount table never change.
func TestFstabMountCommand(t *testing.T) {
	for _, tool := range []string{"unshare", "nsenter", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required: %v", tool, err)
		}
	}
	e := newEnv(t)
	helperDir := fstabInstallHelper(t)
	s := newFstabSetup(t, e)
	sbin, err := filepath.EvalSymlinks("/sbin") // /usr/sbin on merged-/usr systems
	if err != nil {
		t.Fatal(err)
	}

	// A process holding the namespace; every command below joins it.
	holder := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
		`mount -t overlay mediafs-test -o "lowerdir=$1:$2" "$2" && echo ready && exec sleep 600`, "sh", helperDir, sbin)
	holder.Env = cleanEnv()
	stdout, _ := holder.StdoutPipe()
	var holderErr bytes.Buffer
	holder.Stderr = &holderErr
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	ns := holder.Process.Pid
	t.Cleanup(func() {
		if fstabMountedIn(t, fmt.Sprintf("/proc/%d/mountinfo", ns), s.mnt) {
			exec.Command("nsenter", "-t", strconv.Itoa(ns), "-m", "--", "umount", s.mnt).Run()
		}
		s.stopDaemon()
		holder.Process.Kill()
		holder.Wait()
		if t.Failed() {
			t.Logf("mediafs log:\n%s", tail(s.log(), 6000))
		}
	})
	line := make([]byte, 6)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "ready\n" {
		t.Fatalf("setting up the mount namespace: %v %q\n%s", err, line, holderErr.String())
	}
	inNS := func(args ...string) (string, error) {
		return fstabRun(t, fstabHelperEnv(), "nsenter", append([]string{"-t", strconv.Itoa(ns), "-m", "--"}, args...)...)
	}
	if out, err := inNS("sh", "-c", "test -x /sbin/mount.mediafs"); err != nil {
		t.Fatalf("/sbin/mount.mediafs not visible in the namespace: %v %s", err, out)
	}
	if _, err := os.Stat("/sbin/mount.mediafs"); err == nil {
		t.Logf("note: the host has its own /sbin/mount.mediafs; the namespace's overlay shadows it")
	}

	fstab := filepath.Join(t.TempDir(), "fstab")
	entry := fmt.Sprintf("# test fstab\nmedia %s mediafs %s,x-systemd.requires=network-online.target,defaults 0 0\n", s.mnt, s.options(e))
	if err := os.WriteFile(fstab, []byte(entry), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := inNS("mount", "-T", fstab, s.mnt); err != nil {
		t.Fatalf("mount -T %s %s: %v\n%s\nlog:\n%s", fstab, s.mnt, err, out, s.log())
	}
	if !fstabMountedIn(t, fmt.Sprintf("/proc/%d/mountinfo", ns), s.mnt) {
		t.Fatalf("mount returned but %s is not a fuse.mediafs mount in the namespace", s.mnt)
	}
	if fstabMountedIn(t, "/proc/self/mountinfo", s.mnt) {
		t.Errorf("the mount leaked out of the private namespace")
	}
	pid := s.daemonPid(t, e)

	// The test process sees the namespace's mounts through /proc/PID/root.
	view := fmt.Sprintf("/proc/%d/root%s", ns, s.mnt)
	data := []byte("mounted from fstab\n")
	writeFile(t, filepath.Join(view, "from-fstab.txt"), data)
	if out, err := fstabRun(t, cleanEnv(), binPath, "flush", "--cache-dir", s.cacheDir, "--timeout", "30s"); err != nil {
		t.Fatalf("mediafs flush: %v\n%s", err, out)
	}
	e.waitObject(t, "from-fstab.txt", data, 5*time.Second)
	last := []byte("drained at umount\n")
	writeFile(t, filepath.Join(view, "last.txt"), last)

	if out, err := inNS("umount", s.mnt); err != nil {
		t.Fatalf("umount in the namespace: %v\n%s", err, out)
	}
	fstabWaitExit(t, pid, 40*time.Second, s.log)
	if fstabMountedIn(t, fmt.Sprintf("/proc/%d/mountinfo", ns), s.mnt) {
		t.Fatalf("still mounted after the daemon exited")
	}
	e.waitObject(t, "last.txt", last, time.Second)
	if !strings.Contains(s.log(), "upload queue drained") {
		t.Errorf("log does not say the queue was drained:\n%s", tail(s.log(), 3000))
	}
}

// TestFstabHelperFailures: the helper reports a daemon that cannot mount
// (with the end of its log) and refuses secrets in options.
func TestFstabHelperFailures(t *testing.T) {
	e := newEnv(t)
	helper := filepath.Join(fstabInstallHelper(t), "mount.mediafs")

	t.Run("daemon exits before mounting", func(t *testing.T) {
		s := newFstabSetup(t, e)
		start := time.Now()
		out, err := fstabRun(t, fstabHelperEnv(), helper, "no-such-bucket", s.mnt, "-o", s.options(e))
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 32 {
			t.Fatalf("mount.mediafs = %v, want exit status 32\n%s", err, out)
		}
		if !strings.Contains(out, "exited") || !strings.Contains(out, `bucket "no-such-bucket" does not exist`) {
			t.Errorf("output does not show the daemon's error:\n%s", out)
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("took %v to notice the daemon had exited", d)
		}
		if fstabMountedIn(t, "/proc/self/mountinfo", s.mnt) {
			t.Errorf("mounted anyway")
		}
	})

	t.Run("secret in options", func(t *testing.T) {
		s := newFstabSetup(t, e)
		out, err := fstabRun(t, fstabHelperEnv(), helper, "media", s.mnt, "-o",
			"endpoint="+e.minio.Endpoint+",aws_secret_access_key="+e.minio.SecretKey)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("mount.mediafs = %v, want exit status 1\n%s", err, out)
		}
		if !strings.Contains(out, "credentials_file") {
			t.Errorf("refusal does not point to credentials_file:\n%s", out)
		}
		if _, err := os.Stat(s.logFile); err == nil {
			t.Errorf("a daemon was started")
		}
	})

	t.Run("fake mount prints the command", func(t *testing.T) {
		s := newFstabSetup(t, e)
		out, err := fstabRun(t, fstabHelperEnv(), helper, "media/photos", s.mnt, "-f", "-o",
			"rw,defaults,auto,user,x-systemd.automount,nonempty,uid=33,gid=33,cache_size=80%,"+s.options(e))
		if err != nil {
			t.Fatalf("mount.mediafs -f: %v\n%s", err, out)
		}
		want := fmt.Sprintf("%s mount --allow-non-empty --uid=33 --gid=33 --cache-size=80%% --allow-other --cache-dir=%s", binPath, s.cacheDir)
		if !strings.Contains(out, want) || !strings.HasSuffix(strings.TrimSpace(out), "media/photos "+s.mnt) {
			t.Errorf("mount.mediafs -f printed\n%s\nwant it to contain\n%s", out, want)
		}
		if strings.Contains(out, "automount") || strings.Contains(out, "--rw") || strings.Contains(out, "--user") {
			t.Errorf("generic options passed on:\n%s", out)
		}
		if fstabMountedIn(t, "/proc/self/mountinfo", s.mnt) {
			t.Errorf("-f mounted")
		}
	})
}
