package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Where the time goes: per workload phase, the FUSE requests the kernel
// sent the daemon (from the fuse:fuse_request_send/end tracepoints,
// filtered to the mount's connection) and the S3 calls MinIO served (its
// request counters, minus the bench's own polling).

type opStat struct {
	name  string
	n     int
	total time.Duration
}

type callStat struct {
	name string
	n    float64
}

type phaseStat struct {
	phase string
	wall  time.Duration
	ops   []opStat
	s3    []callStat
	err   string
}

// ownCalls counts the S3 requests the bench itself makes while a phase is
// measured (polling), so they can be subtracted.
var ownCalls struct {
	list, head atomic.Int64
}

// s3Counts scrapes MinIO's per-API request counters.
func (b *bench) s3Counts() map[string]float64 {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(b.m.endpoint + "/minio/metrics/v3/api/requests")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "minio_api_requests_total{") {
			continue
		}
		i := strings.Index(line, `name="`)
		if i < 0 {
			continue
		}
		name := line[i+6:]
		name = name[:strings.IndexByte(name, '"')]
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			out[name] += v
		}
	}
	return out
}

// fuseConn is the kernel's FUSE connection id of the mount at dir: the
// superblock's dev_t in the kernel's encoding (major<<20 | minor).
func fuseConn(dir string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return 0, err
	}
	d := st.Dev
	major := ((d >> 8) & 0xfff) | ((d >> 32) &^ 0xfff)
	minor := (d & 0xff) | ((d >> 12) &^ 0xff)
	return major<<20 | minor, nil
}

type fuseTracer struct {
	p    *proc
	data string
}

func startFuseTrace(dir, data string) (*fuseTracer, error) {
	conn, err := fuseConn(dir)
	if err != nil {
		return nil, err
	}
	filter := fmt.Sprintf("connection == %d", conn)
	cmd := exec.Command("perf", "record", "-q", "-a", "-m", "4096",
		"-e", "fuse:fuse_request_send", "--filter", filter,
		"-e", "fuse:fuse_request_end", "--filter", filter,
		"-o", data)
	p, err := spawn("perf", cmd, data+".log")
	if err != nil {
		return nil, err
	}
	// perf has no "ready" signal; it is attached well within this.
	time.Sleep(500 * time.Millisecond)
	if p.exited() {
		return nil, fmt.Errorf("perf record exited: %s", lastLines(p.logTail(500), 3))
	}
	return &fuseTracer{p: p, data: data}, nil
}

var (
	reSend = regexp.MustCompile(`^\s*(\d+\.\d+):\s+fuse:fuse_request_send:.*req (\d+) opcode \d+ \((\w+)\)`)
	reEnd  = regexp.MustCompile(`^\s*(\d+\.\d+):\s+fuse:fuse_request_end:.*req (\d+)`)
)

// stop ends the recording and sums request latency per opcode.
func (f *fuseTracer) stop() ([]opStat, error) {
	f.p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-f.p.done:
	case <-time.After(30 * time.Second):
		f.p.kill(time.Second)
	}
	defer os.Remove(f.data)
	cmd := exec.Command("perf", "script", "-i", f.data, "-F", "time,event,trace")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = io.Discard
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("perf script: %w", err)
	}
	type pend struct {
		op string
		at float64
	}
	inflight := map[string]pend{}
	stats := map[string]*opStat{}
	sc := bufio.NewScanner(&out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := reSend.FindStringSubmatch(line); m != nil {
			at, _ := strconv.ParseFloat(m[1], 64)
			op := strings.TrimPrefix(m[3], "FUSE_")
			inflight[m[2]] = pend{op: op, at: at}
			if stats[op] == nil {
				stats[op] = &opStat{name: op}
			}
			stats[op].n++
			continue
		}
		if m := reEnd.FindStringSubmatch(line); m != nil {
			if p, ok := inflight[m[2]]; ok {
				at, _ := strconv.ParseFloat(m[1], 64)
				stats[p.op].total += time.Duration((at - p.at) * float64(time.Second))
				delete(inflight, m[2])
			}
		}
	}
	var res []opStat
	for _, s := range stats {
		res = append(res, *s)
	}
	sort.Slice(res, func(i, j int) bool {
		if res[i].total != res[j].total {
			return res[i].total > res[j].total
		}
		return res[i].n > res[j].n
	})
	return res, nil
}

// prof runs one workload phase f on t, recording where its time goes:
// FUSE requests (with --trace, FUSE targets), S3 calls (bucket targets)
// and, with --profile, a CPU profile of the mediafs daemon.
func (b *bench) prof(t *target, phase string, f func()) {
	var ft *fuseTracer
	var ferr string
	// Waiting for uploads is timed from the first write: no tracer start-up
	// delay there (the FUSE side is idle anyway).
	waiting := strings.HasSuffix(phase, "_in_bucket")
	if b.trace && !waiting && t.isMount() && t.cur != nil && !t.cur.exited() {
		var err error
		ft, err = startFuseTrace(t.dir, filepath.Join(t.base, "trace-"+phase+".data"))
		if err != nil {
			ferr = err.Error()
			logf("%s: FUSE trace: %v", t.name, err)
		}
	}
	var before map[string]float64
	var ownL, ownH int64
	if t.bucket != "" {
		before = b.s3Counts()
		ownL, ownH = ownCalls.list.Load(), ownCalls.head.Load()
	}
	start := time.Now()
	b.cpuProfile(t, phase, f)
	ps := phaseStat{phase: phase, wall: time.Since(start), err: ferr}
	if before != nil {
		after := b.s3Counts()
		own := map[string]float64{
			"ListObjectsV2": float64(ownCalls.list.Load() - ownL),
			"HeadObject":    float64(ownCalls.head.Load() - ownH),
		}
		for k, v := range after {
			if d := v - before[k] - own[k]; d > 0 {
				ps.s3 = append(ps.s3, callStat{name: k, n: d})
			}
		}
		sort.Slice(ps.s3, func(i, j int) bool { return ps.s3[i].n > ps.s3[j].n })
	}
	if ft != nil {
		ops, err := ft.stop()
		if err != nil {
			ps.err = err.Error()
		}
		ps.ops = ops
	}
	t.phases = append(t.phases, ps)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
}

func fmtOps(ops []opStat, max int) string {
	var parts []string
	for i, o := range ops {
		if i == max {
			parts = append(parts, fmt.Sprintf("+%d more", len(ops)-max))
			break
		}
		mean := time.Duration(0)
		if o.n > 0 {
			mean = o.total / time.Duration(o.n)
		}
		if o.total == 0 {
			parts = append(parts, fmt.Sprintf("%s %d", o.name, o.n))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d×%s=%s", o.name, o.n, fmtDur(mean), fmtDur(o.total)))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func fmtCalls(cs []callStat) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s %.0f", c.name, c.n))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
