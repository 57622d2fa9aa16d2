package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type metric struct {
	key, label, unit string
	lowerBetter      bool
	rawRef           int    // raw column the "vs raw" ratio uses (0: none)
	targetRef        string // "loopback", "raw", "abs" or ""
	targetMin        float64
	targetText       string
}

func (b *bench) metrics() []metric {
	sz := fmt.Sprintf("%d MiB", b.bigSize>>20)
	return []metric{
		{key: "small_write", label: fmt.Sprintf("small-file write: %d × 64 KiB create+write+close", b.smallN), unit: "files/s",
			rawRef: 16, targetRef: "loopback", targetMin: 0.8, targetText: "≥0.8× loopback"},
		{key: "small_in_bucket", label: fmt.Sprintf("all %d small files in the bucket, from the first create", b.smallN), unit: "s",
			lowerBetter: true, rawRef: 16, targetRef: "raw", targetMin: 0.8, targetText: "≤1.25× raw PUT ×16 time"},
		{key: "small_read_cold", label: fmt.Sprintf("small-file read, cold: %d × 64 KiB", b.smallN), unit: "files/s",
			rawRef: 4, targetRef: "raw", targetMin: 0.8, targetText: "≥0.8× raw GET ×4"},
		{key: "seq_write", label: "sequential write " + sz + " (write+close)", unit: "MiB/s",
			rawRef: 4, targetRef: "loopback", targetMin: 0.8, targetText: "≥0.8× loopback"},
		{key: "seq_in_bucket", label: sz + " file in the bucket, from the open", unit: "s",
			lowerBetter: true, rawRef: 4},
		{key: "seq_read_warm", label: "sequential read, warm (the file just written; best of 3)", unit: "MiB/s",
			rawRef: 4, targetRef: "loopback", targetMin: 0.8, targetText: "≥0.8× loopback"},
		{key: "seq_read_cold", label: "sequential read, cold (object put directly; fresh mount)", unit: "MiB/s",
			rawRef: 4, targetRef: "raw", targetMin: 0.8, targetText: "≥0.8× raw GET ×4"},
		{key: "create", label: fmt.Sprintf("create %d empty files (O_CREAT|O_TRUNC)", b.metaN), unit: "ops/s",
			targetRef: "loopback", targetMin: 0.8, targetText: "≥0.8× loopback"},
		{key: "create_excl", label: fmt.Sprintf("create %d empty files with O_EXCL", max(b.metaN/5, 1)), unit: "ops/s",
			targetRef: "loopback", targetMin: 0.8, targetText: "≥0.8× loopback"},
		{key: "stat", label: fmt.Sprintf("stat %d files (attr cache expired)", b.metaN), unit: "ops/s",
			targetRef: "loopback", targetMin: 0.8, targetText: "≥0.8× loopback"},
		{key: "lsl", label: "ls -l of them (readdir + lstat each, attr cache expired)", unit: "entries/s",
			targetRef: "loopback", targetMin: 0.8, targetText: "≥0.8× loopback"},
		{key: "rename", label: fmt.Sprintf("rename %d files", b.metaN), unit: "ops/s",
			targetRef: "loopback", targetMin: 0.8, targetText: "≥0.8× loopback"},
		{key: "unlink", label: fmt.Sprintf("unlink %d files", b.metaN), unit: "ops/s",
			targetRef: "loopback", targetMin: 0.8, targetText: "≥0.8× loopback"},
		{key: "vis_new", label: "cross-mount visibility from A's close (write-back delay included), new file (median)", unit: "s", lowerBetter: true},
		{key: "vis_overwrite", label: "cross-mount visibility from A's close (write-back delay included), overwrite (median)", unit: "s", lowerBetter: true},
		{key: "rss", label: "daemon peak RSS (VmHWM)", unit: "MiB", lowerBetter: true,
			targetRef: "abs", targetMin: 100, targetText: "≤100 MiB"},
	}
}

type notes struct {
	list []string
	idx  map[string]int
}

func (n *notes) ref(s string) string {
	if s == "" {
		return ""
	}
	if n.idx == nil {
		n.idx = map[string]int{}
	}
	i, ok := n.idx[s]
	if !ok {
		n.list = append(n.list, s)
		i = len(n.list)
		n.idx[s] = i
	}
	return fmt.Sprintf(" [%d]", i)
}

func fmtVal(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// perfRatio is how much better mediafs is than other: >1 means mediafs is
// faster (or quicker, or smaller).
func perfRatio(m metric, mediafs, other cell) (float64, bool) {
	if !mediafs.ok || !other.ok || mediafs.v <= 0 || other.v <= 0 {
		return 0, false
	}
	if m.lowerBetter {
		return other.v / mediafs.v, true
	}
	return mediafs.v / other.v, true
}

func (b *bench) report(info *machine, targets []*target, raws map[int]*target, wbDelay time.Duration, extra []string) string {
	byName := map[string]*target{}
	for _, t := range targets {
		byName[t.name] = t
	}
	var nt notes
	cellText := func(t *target, key string, m metric) string {
		c, ok := t.cells[key]
		switch {
		case ok && c.ok:
			s := fmtVal(c.v)
			if strings.HasPrefix(c.note, "partial") || strings.Contains(c.note, "not dropped") || strings.HasPrefix(c.note, "median") || strings.Contains(c.note, "EINTR") {
				s += nt.ref(t.name + ": " + c.note)
			}
			return s
		case ok:
			return "n/a" + nt.ref(t.name+": "+c.note)
		case t.na != "" && t.na != "not run":
			return "n/a" + nt.ref(t.name+": "+t.na)
		case t.na == "not run":
			return "not run"
		}
		return "—"
	}
	var w strings.Builder
	mode := "full"
	if b.quick {
		mode = "quick"
	}
	fmt.Fprintf(&w, "# mediafs benchmarks (%s run, %s)\n\n", mode, info.date)
	fmt.Fprintf(&w, "Generated by `scripts/bench.sh%s`. All columns come from this one run on this machine; ", map[bool]string{true: " --quick", false: ""}[b.quick])
	fmt.Fprintf(&w, "compare within the table, not across runs.\n\n")
	fmt.Fprintf(&w, "## Machine\n\n")
	if info.disk != "" {
		fmt.Fprintf(&w, "- %s\n", info.disk)
	}
	fmt.Fprintf(&w, "- kernel %s, %d cores (%s), %s RAM\n", info.kernel, runtime.NumCPU(), info.cpu, info.mem)
	fmt.Fprintf(&w, "- load average at start %s, at end %s (the machine is shared: figures are noisy)\n", info.loadStart, info.loadEnd)
	fmt.Fprintf(&w, "- mediafs passthrough: %s\n", info.mediafsPassthrough)
	fmt.Fprintf(&w, "- mediafs change feed: %s\n", info.mediafsFeed)
	fmt.Fprintf(&w, "- loopback passthrough: %s\n", info.loopbackPassthrough)
	fmt.Fprintf(&w, "- %s; %s; %s; %s; %s\n", info.mediafs, info.minio, info.rclone, info.s3fs, runtime.Version())
	fmt.Fprintf(&w, "- mediafs flags: `--writeback-delay %v%s`; rclone: `--vfs-cache-mode full --vfs-write-back %v`, defaults otherwise; s3fs: defaults (`use_path_request_style`)\n",
		wbDelay, strings.TrimRight(" "+strings.Join(extra, " "), " "), wbDelay)
	drop := "dropped before every cold read (`echo 3 > /proc/sys/vm/drop_caches`)"
	if !b.dropOK {
		drop = "could not be dropped (" + b.dropErr + "): cold reads of local/loopback are warm"
	}
	fmt.Fprintf(&w, "- page cache %s; mounts are cold via a fresh daemon with a new cache directory\n", drop)
	if fuseReadAheadKB > 0 {
		fmt.Fprintf(&w, "- experiment: kernel read-ahead of every FUSE mount set to %d KiB (`--fuse-read-ahead-kb`)\n", fuseReadAheadKB)
	}
	fmt.Fprintln(&w)

	ms := b.metrics()
	names := []string{"local", "loopback", "mediafs", "rclone", "s3fs"}
	fmt.Fprintf(&w, "## Absolute figures\n\n")
	fmt.Fprintf(&w, "| workload | unit | local dir | go-fuse loopback | **mediafs** | rclone full | s3fs | raw ×1 | raw ×4 | raw ×16 |\n")
	fmt.Fprintf(&w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, m := range ms {
		unit := m.unit
		if m.lowerBetter {
			unit += " ↓"
		}
		fmt.Fprintf(&w, "| %s | %s |", m.label, unit)
		for _, n := range names {
			t := byName[n]
			if t == nil {
				fmt.Fprintf(&w, " — |")
				continue
			}
			if (n == "local" || n == "loopback") && (m.key == "small_in_bucket" || m.key == "seq_in_bucket" || m.key == "vis_new" || m.key == "vis_overwrite") {
				fmt.Fprintf(&w, " — |")
				continue
			}
			if n == "local" && m.key == "rss" {
				fmt.Fprintf(&w, " — |")
				continue
			}
			s := cellText(t, m.key, m)
			if n == "mediafs" {
				s = "**" + s + "**"
			}
			fmt.Fprintf(&w, " %s |", s)
		}
		for _, par := range []int{1, 4, 16} {
			t := raws[par]
			if _, ok := t.cells[m.key]; !ok {
				fmt.Fprintf(&w, " — |")
				continue
			}
			fmt.Fprintf(&w, " %s |", cellText(t, m.key, m))
		}
		fmt.Fprintln(&w)
	}
	fmt.Fprintf(&w, "\n↓ lower is better. raw = minio-go straight to MinIO, N streams: small PUT/GET with N workers; the large PUT is one multipart upload (16 MiB parts, N threads), the large GET N ranged GETs in parallel. Every raw GET in a cold row follows a page-cache drop, as the mounts' cold reads do (\"server cold\": the co-located MinIO reads its disk); the warm sequential read row has the GET with MinIO's data still in memory.\n\n")

	fmt.Fprintf(&w, "## mediafs relative to the others\n\n")
	fmt.Fprintf(&w, "Ratio = how much better mediafs is: mediafs/other for rates, other/mediafs for times and RSS; >1 means mediafs wins, 0.8 means 20%% worse.\n\n")
	fmt.Fprintf(&w, "| workload | vs local dir | vs loopback | vs raw (ref) | vs rclone | vs s3fs | target | met |\n")
	fmt.Fprintf(&w, "|---|---:|---:|---:|---:|---:|---|---|\n")
	mf := byName["mediafs"]
	ratio := func(m metric, other *target) (float64, bool) {
		if mf == nil || other == nil {
			return 0, false
		}
		return perfRatio(m, mf.cells[m.key], other.cells[m.key])
	}
	fr := func(v float64, ok bool) string {
		if !ok {
			return "—"
		}
		return fmt.Sprintf("%.2f", v)
	}
	for _, m := range ms {
		fmt.Fprintf(&w, "| %s |", m.label)
		for _, n := range []string{"local", "loopback"} {
			fmt.Fprintf(&w, " %s |", fr(ratio(m, byName[n])))
		}
		if m.rawRef > 0 {
			v, ok := ratio(m, raws[m.rawRef])
			s := fr(v, ok)
			if ok {
				s += fmt.Sprintf(" (×%d)", m.rawRef)
			}
			fmt.Fprintf(&w, " %s |", s)
		} else {
			fmt.Fprintf(&w, " — |")
		}
		for _, n := range []string{"rclone", "s3fs"} {
			fmt.Fprintf(&w, " %s |", fr(ratio(m, byName[n])))
		}
		met := "—"
		switch m.targetRef {
		case "loopback":
			if v, ok := ratio(m, byName["loopback"]); ok {
				met = yesNo(v >= m.targetMin)
			}
		case "raw":
			if v, ok := ratio(m, raws[m.rawRef]); ok {
				met = yesNo(v >= m.targetMin)
			}
		case "abs":
			if mf != nil && mf.cells[m.key].ok {
				met = yesNo(mf.cells[m.key].v <= m.targetMin)
			}
		}
		tt := m.targetText
		if tt == "" {
			tt = "—"
		}
		fmt.Fprintf(&w, " %s | %s |\n", tt, met)
	}
	b.whereTime(&w, targets, ms)
	if len(nt.list) > 0 {
		fmt.Fprintf(&w, "\n## Notes\n\n")
		for i, s := range nt.list {
			fmt.Fprintf(&w, "%d. %s\n", i+1, s)
		}
	}
	return w.String()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "**NO**"
}

type machine struct {
	date, kernel, cpu, mem                  string
	loadStart, loadEnd                      string
	mediafs, minio, rclone, s3fs            string
	mediafsPassthrough, loopbackPassthrough string
	mediafsFeed                             string
	disk                                    string // a note on the scratch disk, or ""
}

// scratchDiskNote says when dir is on ext4 without a journal: its inode
// allocator then skips every inode deleted in the last minute, reading
// its inode table block each time (recently_deleted() in fs/ext4/ialloc.c),
// so creating files right after mass deletions is far slower, for every
// target alike.
func scratchDiskNote(dir string) string {
	var fs syscall.Statfs_t
	var st syscall.Stat_t
	if syscall.Statfs(dir, &fs) != nil || fs.Type != 0xEF53 || syscall.Stat(dir, &st) != nil {
		return ""
	}
	maj, min := (st.Dev>>8)&0xfff|(st.Dev>>32)&^0xfff, st.Dev&0xff|(st.Dev>>12)&^0xff
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/uevent", maj, min))
	if err != nil {
		return ""
	}
	var dev string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "DEVNAME="); ok {
			dev = v
		}
	}
	if dev == "" {
		return ""
	}
	if _, err := os.Stat("/proc/fs/jbd2/" + dev + "-8"); err == nil {
		return "" // journaled
	}
	return fmt.Sprintf("the scratch disk (%s) is ext4 without a journal: its inode allocator skips every inode deleted in the last minute, so creating files right after thousands were deleted (each target's unlink workload, just before the next target starts; MinIO's own deletes) is up to 10x slower; create-heavy figures depend on what ran before them", dev)
}

func machineInfo(minioBin, mediafsBin, scratch string) *machine {
	m := &machine{date: time.Now().Format("2006-01-02 15:04 MST"), disk: scratchDiskNote(scratch)}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	m.cpu = "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				_, v, _ := strings.Cut(line, ":")
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	m.mem = "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "MemTotal:") {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "MemTotal:")), "%d", &kb)
				m.mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	m.minio = "MinIO " + strings.TrimPrefix(minioVersion(minioBin), "minio version ")
	m.mediafs = "mediafs ?"
	if mediafsBin != "" {
		if out, err := exec.Command(mediafsBin, "version").Output(); err == nil {
			m.mediafs = strings.TrimSpace(firstLine(string(out)))
		}
	}
	m.rclone, m.s3fs = "rclone not installed", "s3fs not installed"
	if out, err := exec.Command("rclone", "version").Output(); err == nil {
		m.rclone = strings.TrimSpace(firstLine(string(out)))
	}
	if out, err := exec.Command("s3fs", "--version").Output(); err == nil {
		l := strings.TrimSpace(firstLine(string(out)))
		if i := strings.Index(l, " V"); i >= 0 {
			l = "s3fs" + strings.Fields(l[i:])[0]
			l = strings.Replace(l, "s3fsV", "s3fs V", 1)
		}
		m.s3fs = l
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// whereTime writes, per target, what each workload cost in FUSE requests
// and S3 calls.
func (b *bench) whereTime(w *strings.Builder, targets []*target, ms []metric) {
	short := map[string]string{
		"small_write": "small-file write", "small_in_bucket": "…until all in the bucket",
		"small_read_cold": "small-file read, cold", "seq_write": "sequential write",
		"seq_in_bucket": "…until in the bucket", "seq_read_warm": "sequential read, warm",
		"seq_read_cold": "sequential read, cold", "create": "create", "stat": "stat",
		"lsl": "ls -l", "rename": "rename", "unlink": "unlink", "create_excl": "create O_EXCL",
	}
	any := false
	for _, t := range targets {
		if len(t.phases) > 0 {
			any = true
		}
	}
	if !any {
		return
	}
	fmt.Fprintf(w, "\n## Where the time goes\n\n")
	fmt.Fprintf(w, "Per workload: wall time; the FUSE requests the kernel sent the daemon (fuse_request_send → fuse_request_end tracepoints on that mount's connection: count × mean latency = total, largest total first; with passthrough, reads and writes of cached files never reach the daemon); the S3 requests MinIO served meanwhile (its per-API counters, the bench's own polling subtracted). Uploads still running from an earlier workload show up in the next one. Daemon VmHWM: its peak RSS so far (a fresh daemon serves the cold reads onwards).\n\n")
	for _, t := range targets {
		if len(t.phases) == 0 {
			continue
		}
		fmt.Fprintf(w, "### %s\n\n", t.name)
		hasS3 := t.bucket != ""
		hasOps := t.isMount() && b.tracer != nil
		hdr := "| workload | wall |"
		sep := "|---|---:|"
		if t.isMount() {
			hdr += " daemon VmHWM |"
			sep += "---:|"
		}
		if hasOps {
			hdr += " FUSE requests |"
			sep += "---|"
		}
		if hasS3 {
			hdr += " S3 requests |"
			sep += "---|"
		}
		fmt.Fprintln(w, hdr)
		fmt.Fprintln(w, sep)
		for _, p := range t.phases {
			name := short[p.phase]
			if name == "" {
				name = p.phase
			}
			fmt.Fprintf(w, "| %s | %s |", name, fmtDur(p.wall))
			if t.isMount() {
				if p.hwm > 0 {
					fmt.Fprintf(w, " %.0f MiB |", float64(p.hwm)/mib)
				} else {
					fmt.Fprintf(w, " — |")
				}
			}
			if hasOps {
				s := fmtOps(p.ops, 6)
				if p.err != "" {
					s = "error: " + p.err
				}
				fmt.Fprintf(w, " %s |", s)
			}
			if hasS3 {
				fmt.Fprintf(w, " %s |", fmtCalls(p.s3))
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w)
	}
}
