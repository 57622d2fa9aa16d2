package main

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
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
	hwm   int64 // the daemon's VmHWM after the phase
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

// fuseTracer reads the fuse tracepoints from a private tracefs instance
// (so nobody else's tracing is touched) for the whole run. Phases are
// delimited by lines written to the instance's trace_marker, which arrive
// in the same time-ordered stream as the events.
type fuseTracer struct {
	dir     string
	marker  *os.File
	seq     int
	results chan traceResult
}

type traceResult struct {
	id  int
	ops []opStat
}

const tracefs = "/sys/kernel/tracing"

func startFuseTracer() (*fuseTracer, error) {
	if !fileExists(tracefs + "/events/fuse/fuse_request_send") {
		return nil, fmt.Errorf("no fuse tracepoints in %s", tracefs)
	}
	dir := filepath.Join(tracefs, "instances", "mediafs-bench-"+randomHex(4))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tracefs instance: %w", err)
	}
	tr := &fuseTracer{dir: dir, results: make(chan traceResult, 1)}
	atCleanup(tr.close)
	wr := func(file, v string) error { return os.WriteFile(filepath.Join(dir, file), []byte(v), 0) }
	wr("buffer_size_kb", "8192")
	for _, ev := range []string{"fuse_request_send", "fuse_request_end"} {
		if err := wr("events/fuse/"+ev+"/filter", "connection == 0"); err != nil {
			return nil, fmt.Errorf("tracefs filter: %w", err)
		}
		if err := wr("events/fuse/"+ev+"/enable", "1"); err != nil {
			return nil, fmt.Errorf("tracefs enable: %w", err)
		}
	}
	m, err := os.OpenFile(filepath.Join(dir, "trace_marker"), os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	tr.marker = m
	pipe, err := os.Open(filepath.Join(dir, "trace_pipe"))
	if err != nil {
		return nil, err
	}
	go tr.read(pipe)
	return tr, nil
}

var (
	reSend   = regexp.MustCompile(` (\d+\.\d+): fuse_request_send: connection \d+ req (\d+) opcode \d+ \((\w+)\)`)
	reEnd    = regexp.MustCompile(` (\d+\.\d+): fuse_request_end: connection \d+ req (\d+)`)
	reMarker = regexp.MustCompile(`tracing_mark_write: mfsbench (begin|end|quit) (\d+)`)
)

func (tr *fuseTracer) read(pipe *os.File) {
	defer pipe.Close()
	type pend struct {
		op string
		at float64
	}
	var (
		inflight map[string]pend
		stats    map[string]*opStat
		active   bool
	)
	sc := bufio.NewScanner(pipe)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := reMarker.FindStringSubmatch(line); m != nil {
			id, _ := strconv.Atoi(m[2])
			switch m[1] {
			case "begin":
				inflight, stats, active = map[string]pend{}, map[string]*opStat{}, true
			case "end":
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
				active = false
				tr.results <- traceResult{id: id, ops: res}
			case "quit":
				return
			}
			continue
		}
		if !active {
			continue
		}
		if m := reSend.FindStringSubmatch(line); m != nil {
			at, _ := strconv.ParseFloat(m[1], 64)
			op := strings.TrimPrefix(m[3], "FUSE_")
			inflight[m[2]] = pend{op: op, at: at}
			if stats[op] == nil {
				stats[op] = &opStat{name: op}
			}
			stats[op].n++
		} else if m := reEnd.FindStringSubmatch(line); m != nil {
			if p, ok := inflight[m[2]]; ok {
				at, _ := strconv.ParseFloat(m[1], 64)
				stats[p.op].total += time.Duration((at - p.at) * float64(time.Second))
				delete(inflight, m[2])
			}
		}
	}
}

// begin starts counting the requests of the mount at dir.
func (tr *fuseTracer) begin(dir string) (int, error) {
	conn, err := fuseConn(dir)
	if err != nil {
		return 0, err
	}
	f := fmt.Sprintf("connection == %d", conn)
	for _, ev := range []string{"fuse_request_send", "fuse_request_end"} {
		if err := os.WriteFile(filepath.Join(tr.dir, "events/fuse", ev, "filter"), []byte(f), 0); err != nil {
			return 0, err
		}
	}
	tr.seq++
	_, err = fmt.Fprintf(tr.marker, "mfsbench begin %d\n", tr.seq)
	return tr.seq, err
}

// end stops counting and returns the requests per opcode.
func (tr *fuseTracer) end(id int) ([]opStat, error) {
	if _, err := fmt.Fprintf(tr.marker, "mfsbench end %d\n", id); err != nil {
		return nil, err
	}
	timeout := time.After(20 * time.Second)
	for {
		select {
		case r := <-tr.results:
			if r.id == id {
				return r.ops, nil
			}
		case <-timeout:
			return nil, fmt.Errorf("trace reader did not catch up")
		}
	}
}

func (tr *fuseTracer) close() {
	for _, ev := range []string{"fuse_request_send", "fuse_request_end"} {
		os.WriteFile(filepath.Join(tr.dir, "events/fuse", ev, "enable"), []byte("0"), 0)
	}
	if tr.marker != nil {
		fmt.Fprintf(tr.marker, "mfsbench quit 0\n")
		tr.marker.Close()
	}
	// The reader exits on the quit marker and closes the pipe; the
	// instance can be removed once nobody holds it open.
	for i := 0; i < 50; i++ {
		if err := os.Remove(tr.dir); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	logf("could not remove tracefs instance %s", tr.dir)
}

// prof runs one workload phase f on t, recording where its time goes:
// FUSE requests (with --trace, FUSE targets), S3 calls (bucket targets)
// and, with --profile, a CPU profile of the mediafs daemon.
func (b *bench) prof(t *target, phase string, f func()) {
	// Waiting for uploads is timed from the first write and the FUSE side
	// is idle then: not traced.
	traceID := 0
	var ferr string
	if b.tracer != nil && !strings.HasSuffix(phase, "_in_bucket") && t.isMount() && t.cur != nil && !t.cur.exited() {
		id, err := b.tracer.begin(t.dir)
		if err != nil {
			ferr = err.Error()
		} else {
			traceID = id
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
	if t.cur != nil && !t.cur.exited() {
		ps.hwm = vmHWM(t.cur.pid())
	}
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
	if traceID != 0 {
		ops, err := b.tracer.end(traceID)
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
