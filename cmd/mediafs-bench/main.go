// Command mediafs-bench runs the same file workloads, in one run, on a
// plain local directory, a go-fuse loopback mount (the FUSE ceiling), a
// mediafs mount, and the peers (rclone mount --vfs-cache-mode full, s3fs)
// against one MinIO started for the run, plus raw minio-go PUT/GET (the
// object store ceiling), and reports absolute figures and ratios as
// markdown. Run it through scripts/bench.sh.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type bench struct {
	quick         bool
	smallN, metaN int
	bigSize       int64
	visTrials     int
	visTimeout    time.Duration
	phaseBudget   time.Duration
	bucketTimeout time.Duration
	profileDir    string
	tracer        *fuseTracer
	dropOK        bool
	dropErr       string

	m *minioServer
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "__loopback" {
		if err := runLoopback(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "loopback:", err)
			os.Exit(1)
		}
		return
	}

	var (
		quick      = flag.Bool("quick", false, "smaller workloads (200 small files, 128 MiB, 1000 metadata files)")
		out        = flag.String("out", "bench-results.md", "write the markdown report here")
		mediafsBin = flag.String("mediafs", "", "mediafs binary (required)")
		minioBin   = flag.String("minio", os.Getenv("MEDIAFS_MINIO_BIN"), "MinIO server binary (default $MEDIAFS_MINIO_BIN, else the cached build of scripts/install-minio.sh)")
		wbDelay    = flag.Duration("writeback-delay", time.Second, "mediafs --writeback-delay (and rclone --vfs-write-back)")
		mflags     = flag.String("mediafs-flags", "", "extra flags for `mediafs mount`, space-separated")
		only       = flag.String("targets", "raw,local,loopback,mediafs,rclone,s3fs", "comma-separated subset to run")
		smallN     = flag.Int("small-files", 0, "number of 64 KiB files (default 1000, --quick 200)")
		metaN      = flag.Int("meta-files", 0, "number of empty files for create/stat/ls/rename/unlink (default 5000, --quick 1000)")
		seqMiB     = flag.Int("seq-mib", 0, "size of the sequential file in MiB (default 512, --quick 128)")
		visTrials  = flag.Int("vis-trials", 0, "cross-mount visibility trials (default 10, --quick 5)")
		visTimeout = flag.Duration("vis-timeout", 15*time.Second, "give up on one visibility trial after this long")
		budget     = flag.Duration("phase-budget", 0, "stop one workload loop after this long and report it as partial (default 5m, --quick 2m)")
		workdir    = flag.String("workdir", os.TempDir(), "scratch directories go under here")
		keep       = flag.Bool("keep", false, "keep the scratch directory (logs, caches) after the run")
		profile    = flag.String("profile", "", "record `perf` CPU profiles of the mediafs daemon per workload into this directory")
		trace      = flag.Bool("trace", true, "record FUSE requests per workload (fuse tracepoints in a private tracefs instance) for the \"where the time goes\" tables")
	)
	flag.IntVar(&fuseReadAheadKB, "fuse-read-ahead-kb", 0, "experiment: set the kernel read-ahead (/sys/class/bdi/*/read_ahead_kb) of every FUSE mount to this (default: leave the kernel's 128 KiB)")
	flag.Parse()

	b := &bench{quick: *quick, smallN: 1000, metaN: 5000, bigSize: 512 << 20, visTrials: 10,
		visTimeout: *visTimeout, phaseBudget: 5 * time.Minute, bucketTimeout: 10 * time.Minute}
	if b.quick {
		b.smallN, b.metaN, b.bigSize, b.visTrials, b.phaseBudget, b.bucketTimeout = 200, 1000, 128<<20, 5, 2*time.Minute, 5*time.Minute
	}
	if *smallN > 0 {
		b.smallN = *smallN
	}
	if *metaN > 0 {
		b.metaN = *metaN
	}
	if *seqMiB > 0 {
		b.bigSize = int64(*seqMiB) << 20
	}
	if *visTrials > 0 {
		b.visTrials = *visTrials
	}
	if *budget > 0 {
		b.phaseBudget = *budget
	}
	if *profile != "" {
		b.profileDir = abs(*profile)
		if err := mkdirs(b.profileDir); err != nil {
			fatalf("%v", err)
		}
	}
	want := map[string]bool{}
	for _, s := range strings.Split(*only, ",") {
		want[strings.TrimSpace(s)] = true
	}
	if *mediafsBin == "" && want["mediafs"] {
		fatalf("--mediafs is required (scripts/bench.sh builds it)")
	}
	if *minioBin == "" {
		home, _ := os.UserHomeDir()
		// The name scripts/install-minio.sh gives its default pin.
		*minioBin = filepath.Join(home, ".cache", "mediafs", "bin", "minio-v0.0.0-20260212201848-7aac2a2c5b7c-flushfix")
	}
	if !fileExists(*minioBin) {
		fatalf("MinIO binary %s not found: run scripts/install-minio.sh", *minioBin)
	}
	self, err := os.Executable()
	if err != nil {
		fatalf("%v", err)
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		logf("%v: cleaning up (unmounting, stopping daemons and MinIO)", s)
		runCleanups()
		os.Exit(130)
	}()
	defer runCleanups()

	scratch, err := os.MkdirTemp(*workdir, "mediafs-bench-")
	if err != nil {
		fatalf("%v", err)
	}
	if *keep {
		atCleanup(func() { logf("scratch directory kept: %s", scratch) })
	} else {
		atCleanup(func() { removeScratch(scratch) })
	}
	logf("scratch directory %s", scratch)

	if *trace {
		if b.tracer, err = startFuseTracer(); err != nil {
			logf("FUSE requests will not be traced: %v", err)
			b.tracer = nil
		}
	}
	info := machineInfo(*minioBin, *mediafsBin, scratch)
	info.loadStart = loadAvg()

	if err := dropCaches(); err != nil {
		b.dropErr = err.Error()
		logf("cannot drop caches (%v): cold reads of local and loopback are warm", err)
	} else {
		b.dropOK = true
	}

	m, err := startMinio(*minioBin, filepath.Join(scratch, "minio"))
	if err != nil {
		fatalf("%v", err)
	}
	b.m = m
	logf("MinIO on %s", m.endpoint)

	raws := map[int]*target{1: newTarget("raw1", ""), 4: newTarget("raw4", ""), 16: newTarget("raw16", "")}
	if want["raw"] {
		if err := b.rawBench(raws); err != nil {
			logf("raw object store benchmark failed: %v", err)
			for _, t := range raws {
				t.na = err.Error()
			}
		}
	} else {
		for _, t := range raws {
			t.na = "not run"
		}
	}

	var extra []string
	if s := strings.TrimSpace(*mflags); s != "" {
		extra = strings.Fields(s)
	}
	hasFuse := fileExists("/dev/fuse")
	mk := func(name string) *target {
		base := filepath.Join(scratch, name)
		if err := mkdirs(base); err != nil {
			fatalf("%v", err)
		}
		var t *target
		switch name {
		case "local":
			t = localTarget(base)
		case "loopback":
			t = loopbackTarget(base, self)
		case "mediafs":
			t = mediafsTarget(base, "b-mediafs", mediafsConfig{bin: abs(*mediafsBin), endpoint: m.endpoint,
				env: m.env(), wbDelay: *wbDelay, extra: extra})
		case "rclone":
			t = rcloneTarget(base, "b-rclone", m, *wbDelay)
		case "s3fs":
			t = s3fsTarget(base, "b-s3fs", m)
		}
		if !want[name] {
			t.na = "not run"
		} else if t.isMount() && !hasFuse {
			t.na = "/dev/fuse missing"
		}
		if t.bucket != "" && t.na == "" {
			if err := m.makeBucket(t.bucket); err != nil {
				t.na = "bucket: " + err.Error()
			}
		}
		return t
	}
	var targets []*target
	for _, name := range []string{"local", "loopback", "mediafs", "rclone", "s3fs"} {
		t := mk(name)
		targets = append(targets, t)
		b.runTarget(t)
	}
	info.loadEnd = loadAvg()
	for _, t := range targets {
		switch t.name {
		case "mediafs":
			info.mediafsPassthrough = passthroughLine(t, "passthrough")
			info.mediafsFeed = feedLine(t)
		case "loopback":
			info.loopbackPassthrough = passthroughLine(t, "loopback:")
		}
	}
	report := b.report(info, targets, raws, *wbDelay, extra)
	fmt.Println(report)
	if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
		logf("write %s: %v", *out, err)
	} else {
		logf("wrote %s", abs(*out))
	}
}

func passthroughLine(t *target, s string) string {
	if t.na != "" {
		return "n/a"
	}
	line := t.grepLogs(s)
	switch {
	case line == "":
		return "unknown (no line in the log)"
	case strings.Contains(line, "passthrough enabled"):
		return "on (`" + trimLog(line) + "`)"
	default:
		return "off (`" + trimLog(line) + "`)"
	}
}

// feedLine says whether the daemon's change feed was live (other mounts'
// changes pushed) or it polled listings, from its log.
func feedLine(t *target) string {
	if t.na != "" {
		return "n/a"
	}
	if line := t.grepLogs("change feed live"); line != "" {
		return "on (`" + trimLog(line) + "`)"
	}
	if line := t.grepLogs("change feed"); line != "" {
		return "off, TTL polling (`" + trimLog(line) + "`)"
	}
	return "off, TTL polling (no change feed in this build)"
}

func trimLog(s string) string {
	if i := strings.Index(s, "msg="); i >= 0 {
		s = s[i:]
	}
	if len(s) > 140 {
		s = s[:140] + "..."
	}
	return s
}

// runTarget runs every workload on t. A failing workload is reported as
// n/a with its error; the others still run.
func (b *bench) runTarget(t *target) {
	if t.na != "" {
		logf("%s: skipped: %s", t.name, t.na)
		return
	}
	logf("==== %s ====", t.name)
	if t.isMount() {
		if err := t.mount(); err != nil {
			t.na = "mount failed: " + err.Error()
			logf("%s: %s", t.name, t.na)
			return
		}
	}
	defer func() {
		t.stopAll()
		if t.isMount() && t.hwm > 0 {
			t.set("rss", float64(t.hwm)/mib, "")
		}
	}()
	fail := func(err error, keys ...string) {
		msg := err.Error()
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		logf("%s: %v", t.name, err)
		for _, k := range keys {
			if _, ok := t.cells[k]; !ok {
				t.setNA(k, "error: "+msg)
			}
		}
	}
	alive := func() bool {
		if t.cur != nil && t.cur.exited() {
			if t.na == "" {
				t.na = "daemon died: " + lastLines(t.cur.logTail(1500), 4)
			}
			return false
		}
		return true
	}

	var (
		start time.Time
		n     int
		err   error
	)
	b.prof(t, "small_write", func() { start, n, err = b.smallWrite(t) })
	if err != nil {
		fail(err, "small_write", "small_in_bucket", "small_read_cold")
	} else if t.bucket != "" {
		b.prof(t, "small_in_bucket", func() { err = b.waitSmallInBucket(t, start, n) })
		if err != nil {
			fail(err, "small_in_bucket")
		}
	}
	if !alive() {
		return
	}
	var seqStart time.Time
	b.prof(t, "seq_write", func() { seqStart, err = b.seqWrite(t, "big.bin") })
	if err != nil {
		fail(err, "seq_write", "seq_in_bucket", "seq_read_warm")
	} else {
		if t.bucket != "" {
			b.prof(t, "seq_in_bucket", func() { err = b.waitObject(t, "big.bin", seqStart) })
			if err != nil {
				fail(err, "seq_in_bucket")
			}
		}
		// Warm: the page cache (or the daemon's cache) holds it; best of
		// three passes, since one pass of a cached file is short.
		b.prof(t, "seq_read_warm", func() {
			best := 0.0
			for i := 0; i < 3 && err == nil; i++ {
				if err = b.seqRead(t, "big.bin", "seq_read_warm", "best of 3"); err == nil {
					best = max(best, t.cells["seq_read_warm"].v)
				}
			}
			if err == nil {
				t.set("seq_read_warm", best, "best of 3")
			}
		})
		if err != nil {
			fail(err, "seq_read_warm")
		}
	}
	if !alive() {
		return
	}

	// Cold reads: an object put straight into the bucket, a fresh mount
	// (new cache directory), dropped kernel caches.
	coldName := "big.bin"
	if t.bucket != "" {
		coldName = "cold.bin"
		if err := b.putCold(t, coldName); err != nil {
			fail(err, "seq_read_cold")
			coldName = ""
		}
	}
	if t.isMount() {
		if err := t.remount(); err != nil {
			t.na = "remount failed: " + err.Error()
			return
		}
	}
	t.coldNote = ""
	if !b.dropOK {
		t.coldNote = "page cache not dropped"
	}
	if n > 0 {
		dropCaches()
		b.prof(t, "small_read_cold", func() { err = b.smallRead(t, n) })
		if err != nil {
			fail(err, "small_read_cold")
		}
	}
	if coldName != "" {
		dropCaches()
		b.prof(t, "seq_read_cold", func() { err = b.seqRead(t, coldName, "seq_read_cold", t.coldNote) })
		if err != nil {
			fail(err, "seq_read_cold")
		}
	}
	if !alive() {
		return
	}
	err = b.meta(t)
	if err != nil {
		fail(err, "create", "stat", "lsl", "rename", "unlink", "create_excl")
	}
	if !alive() {
		return
	}
	if t.bucket != "" && b.visTrials > 0 {
		if err := b.visibility(t); err != nil {
			fail(err, "vis_new", "vis_overwrite")
		}
	}
}
