package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuProfile runs f; with --profile it records the mediafs daemon with `perf
// record -g` meanwhile and writes a flat report next to the data file.
func (b *bench) cpuProfile(t *target, phase string, f func()) {
	if b.profileDir == "" || t.name != "mediafs" || t.cur == nil || t.cur.exited() {
		f()
		return
	}
	perf, err := exec.LookPath("perf")
	if err != nil {
		logf("profile: perf not installed")
		b.profileDir = ""
		f()
		return
	}
	data := filepath.Join(b.profileDir, "mediafs-"+phase+".data")
	cmd := exec.Command(perf, "record", "-q", "-g", "-F", "499", "-p", strconv.Itoa(t.cur.pid()), "-o", data)
	p, err := spawn("perf", cmd, filepath.Join(b.profileDir, "perf-"+phase+".log"))
	if err != nil {
		logf("profile: %v", err)
		f()
		return
	}
	if !strings.HasSuffix(phase, "_in_bucket") { // timed from the first write
		time.Sleep(300 * time.Millisecond) // let perf attach
	}
	f()
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.kill(time.Second)
	}
	rep, err := exec.Command(perf, "report", "-i", data, "--stdio", "--no-children", "-g", "none",
		"--percent-limit", "1", "--sort", "dso,sym").Output()
	if err != nil {
		logf("profile: perf report %s: %v", data, err)
		return
	}
	os.WriteFile(filepath.Join(b.profileDir, "mediafs-"+phase+".txt"), rep, 0o644)
	logf("profile: %s", filepath.Join(b.profileDir, "mediafs-"+phase+".txt"))
}
