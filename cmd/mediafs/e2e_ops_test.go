package main

// End-to-end tests of operating mediafs ("Operate it"): the status and
// flush commands against a live mount, metrics and health endpoints,
// recovery from a stale mount left by a killed daemon, secrets staying out
// of argv, logs and outputs, configuration precedence, the CLI's help and
// exit codes, and one daemon per cache dir.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// opsResult is one finished run of the mediafs CLI.
type opsResult struct {
	stdout, stderr string
	code           int // exit code; -1 if killed by the context
	took           time.Duration
}

func (r opsResult) all() string { return r.stdout + r.stderr }

// opsRun runs the mediafs binary with args and env (nil: the clean test
// environment without credentials) and waits for it, at most timeout.
func opsRun(t *testing.T, env []string, timeout time.Duration, args ...string) opsResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	if env == nil {
		env = cleanEnv()
	}
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := opsResult{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("mediafs %q: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("mediafs %q did not finish within %v; output:\n%s", args, timeout, r.all())
	}
	return r
}

// opsStatus runs `mediafs status --json` and decodes it.
func opsStatus(t *testing.T, cacheDir string) statusReply {
	t.Helper()
	r := opsRun(t, nil, 20*time.Second, "status", "--cache-dir", cacheDir, "--json")
	if r.code != 0 {
		t.Fatalf("status --json: exit %d:\n%s", r.code, r.all())
	}
	var s statusReply
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("status --json output is not JSON: %v\n%s", err, r.stdout)
	}
	return s
}

// opsPlain fails if out has carriage returns or escape sequences (what a
// progress display for a terminal would write).
func opsPlain(t *testing.T, what, out string) {
	t.Helper()
	if strings.ContainsAny(out, "\r\x1b") {
		t.Errorf("%s output (not a terminal) has \\r or ANSI escapes: %q", what, out)
	}
}

// opsFiles writes n files of different sizes at the top of the mount and
// returns them by key, with their total size.
func opsFiles(t *testing.T, m *mnt, prefix string, n int, seed int64) (map[string][]byte, int64) {
	t.Helper()
	files := map[string][]byte{}
	var total int64
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("%s-%02d.bin", prefix, i)
		data := seededBytes(seed+int64(i), 1000+i*37*1024)
		writeFile(t, m.path(key), data)
		files[key] = data
		total += int64(len(data))
	}
	return files, total
}

// opsFreeAddr returns a 127.0.0.1 address with a port free a moment ago.
func opsFreeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// opsGet fetches url and returns the status code and body (code 0 if the
// request itself failed).
func opsGet(url string) (int, string) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// opsScrape fetches /metrics and parses it as Prometheus text.
func opsScrape(t *testing.T, addr string) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	code, body := opsGet("http://" + addr + "/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not valid Prometheus text: %v", err)
	}
	return fams, body
}

// opsValue is the value of an unlabelled counter or gauge; ok is false if
// the metric is missing.
func opsValue(fams map[string]*dto.MetricFamily, name string) (float64, bool) {
	f := fams[name]
	if f == nil || len(f.Metric) == 0 {
		return 0, false
	}
	m := f.Metric[0]
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue(), true
	case m.Gauge != nil:
		return m.Gauge.GetValue(), true
	case m.Untyped != nil:
		return m.Untyped.GetValue(), true
	}
	return 0, false
}

// opsOpSamples sums the histogram sample counts of one FUSE op, over results.
func opsOpSamples(fams map[string]*dto.MetricFamily, op string) uint64 {
	f := fams["mediafs_fuse_op_duration_seconds"]
	if f == nil {
		return 0
	}
	var n uint64
	for _, m := range f.Metric {
		for _, l := range m.Label {
			if l.GetName() == "op" && l.GetValue() == op && m.Histogram != nil {
				n += m.Histogram.GetSampleCount()
			}
		}
	}
	return n
}

// opsWaitCode polls url until it answers with want.
func opsWaitCode(t *testing.T, url string, want int, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		code, body := opsGet(url)
		if code == want {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("GET %s: %d %q, want %d within %v", url, code, strings.TrimSpace(body), want, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestOpsStatusAndFlushWithBacklog(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t, "--writeback-delay", "1h")
	const n = 6
	files, total := opsFiles(t, m, "pending", n, 7000)

	// Text status: the count and human-readable size of the backlog.
	r := opsRun(t, nil, 20*time.Second, "status", "--cache-dir", m.cacheDir)
	if r.code != 0 {
		t.Fatalf("status: exit %d:\n%s", r.code, r.all())
	}
	want := fmt.Sprintf("pending uploads: %d (%s)", n, human(total))
	if !strings.Contains(r.stdout, want) {
		t.Errorf("status output lacks %q:\n%s", want, r.stdout)
	}
	opsPlain(t, "status", r.stdout)
	t.Logf("status:\n%s", r.stdout)
	s := opsStatus(t, m.cacheDir)
	if s.Pending != n || s.PendingBytes != total {
		t.Errorf("status --json: %d pending, %d bytes; want %d, %d", s.Pending, s.PendingBytes, n, total)
	}
	if s.Oldest.IsZero() || time.Since(s.Oldest) > time.Minute {
		t.Errorf("status --json: oldest pending %v, want a moment ago", s.Oldest)
	}
	e.wantNoKeys(t, "", "with a 1h write-back delay")

	// flush while the object store is down: gives up at its timeout, says
	// what is left, exits non-zero.
	e.minio.Stop()
	r = opsRun(t, nil, 30*time.Second, "flush", "--cache-dir", m.cacheDir, "--timeout", "3s")
	t.Logf("flush during outage (%v, exit %d):\n%s", r.took.Round(time.Millisecond), r.code, r.all())
	if r.code == 0 {
		t.Errorf("flush with the object store down exited 0")
	}
	for _, w := range []string{"flush timed out after 3s", fmt.Sprintf("%d uploads (%s) still pending", n, human(total)), "object store is unreachable"} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("flush failure does not say %q:\n%s", w, r.all())
		}
	}
	if r.took < 2500*time.Millisecond || r.took > 5*time.Second {
		t.Errorf("flush --timeout 3s took %v", r.took)
	}
	if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 2 {
		t.Errorf("%d lines of error for one failure:\n%s", n+1, r.stderr)
	}
	opsPlain(t, "flush", r.all())
	if s := opsStatus(t, m.cacheDir); s.Pending != n {
		t.Errorf("after a failed flush: %d pending, want %d", s.Pending, n)
	}
	// status says the store is unreachable once an upload has failed (the
	// first attempts may still be retrying their connection).
	for deadline := time.Now().Add(15 * time.Second); ; {
		r = opsRun(t, nil, 20*time.Second, "status", "--cache-dir", m.cacheDir)
		if strings.Contains(r.stdout, "object store: unreachable") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("status during the outage does not say the object store is unreachable:\n%s", r.all())
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if s := opsStatus(t, m.cacheDir); !s.BackendDown {
		t.Errorf("status --json during the outage: backendDown false")
	}

	// Object store back: flush finishes, everything is in the bucket.
	e.minio.Restart(t)
	r = opsRun(t, nil, 45*time.Second, "flush", "--cache-dir", m.cacheDir)
	t.Logf("flush (%v, exit %d):\n%s", r.took.Round(time.Millisecond), r.code, r.all())
	if r.code != 0 {
		t.Fatalf("flush after the outage: exit %d:\n%s", r.code, r.all())
	}
	if !strings.Contains(r.stdout, "all changes are in the bucket") {
		t.Errorf("flush output does not say it is done:\n%s", r.stdout)
	}
	opsPlain(t, "flush", r.all())
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if line != "all changes are in the bucket" && !strings.HasPrefix(line, "pending ") {
			t.Errorf("unexpected flush output line %q", line)
		}
	}
	for k, v := range files {
		b, _, err := e.getObject(k)
		if err != nil || !bytes.Equal(b, v) {
			t.Errorf("after flush, bucket object %s: %d bytes, err %v; want the %d written", k, len(b), err, len(v))
		}
	}
	if s := opsStatus(t, m.cacheDir); s.Pending != 0 || s.PendingBytes != 0 || s.Uploads < n || s.BackendDown {
		t.Errorf("after flush: %d pending (%d bytes), %d uploads, backend down %v; want 0, 0, >= %d, false",
			s.Pending, s.PendingBytes, s.Uploads, s.BackendDown, n)
	}
	r = opsRun(t, nil, 20*time.Second, "status", "--cache-dir", m.cacheDir)
	if !strings.Contains(r.stdout, "pending uploads: 0 (0 B)") {
		t.Errorf("status after flush:\n%s", r.all())
	}
	m.stop(t)
}

func TestOpsMetricsAndHealth(t *testing.T) {
	e := newEnv(t)
	addr := opsFreeAddr(t)
	m := e.mount(t, "--metrics-addr", addr)
	base := "http://" + addr
	opsWaitCode(t, base+"/healthz", 200, 5*time.Second)
	opsWaitCode(t, base+"/readyz", 200, 5*time.Second)

	const n = 8
	files, total := opsFiles(t, m, "metric", n, 9000)
	for k, v := range files {
		e.waitObject(t, k, v, 30*time.Second)
	}
	// The counters are bumped right after the PUT returns; give them a moment.
	var fams map[string]*dto.MetricFamily
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams, _ = opsScrape(t, addr)
		up, _ := opsValue(fams, "mediafs_uploads_total")
		bl, ok := opsValue(fams, "mediafs_backlog_uploads")
		if up >= n && ok && bl == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the uploads: mediafs_uploads_total %v, mediafs_backlog_uploads %v (present %v); want >= %d and 0", up, bl, ok, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if b, _ := opsValue(fams, "mediafs_upload_bytes_total"); int64(b) != total {
		t.Errorf("mediafs_upload_bytes_total %v, want %d (the bytes written)", b, total)
	}
	if b, ok := opsValue(fams, "mediafs_backlog_bytes"); !ok || b != 0 {
		t.Errorf("mediafs_backlog_bytes %v (present %v), want 0", b, ok)
	}
	if v, ok := opsValue(fams, "mediafs_passthrough"); !ok || (v != 0 && v != 1) {
		t.Errorf("mediafs_passthrough %v (present %v), want 0 or 1", v, ok)
	}
	if v, ok := opsValue(fams, "mediafs_backend_up"); !ok || v != 1 {
		t.Errorf("mediafs_backend_up %v (present %v), want 1", v, ok)
	}
	for _, op := range []string{"lookup", "create", "flush"} {
		if c := opsOpSamples(fams, op); c == 0 {
			t.Errorf("mediafs_fuse_op_duration_seconds has no samples for op=%q", op)
		}
	}
	for _, name := range []string{"mediafs_upload_failures_total", "mediafs_conflicts_total", "mediafs_cache_bytes",
		"mediafs_backlog_oldest_seconds", "go_goroutines", "process_resident_memory_bytes"} {
		if fams[name] == nil {
			t.Errorf("metric %s missing", name)
		}
	}

	// Object store down: /readyz says so within a few seconds, /healthz
	// (the mount answers) stays fine.
	e.minio.Stop()
	took := opsWaitCode(t, base+"/readyz", 503, 8*time.Second)
	t.Logf("/readyz failed %v after MinIO stopped", took.Round(time.Millisecond))
	if code, body := opsGet(base + "/healthz"); code != 200 {
		t.Errorf("/healthz during the outage: %d %s, want 200 (the mount answers)", code, body)
	}
	e.minio.Restart(t)
	opsWaitCode(t, base+"/readyz", 200, 10*time.Second)
	m.stop(t)
}

func TestOpsStaleMountRecovery(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t, "--writeback-delay", "1h")
	files, _ := opsFiles(t, m, "before-crash", 5, 11000)

	// kill -9 and leave the dead mount in place, as a crash does.
	m.cmd.Process.Kill()
	<-m.done
	if !isMounted(m.dir) {
		t.Fatalf("the mount went away with the daemon; cannot test a stale mount")
	}
	_, err := os.Stat(m.dir)
	if !errors.Is(err, syscall.ENOTCONN) || !strings.Contains(err.Error(), "transport endpoint is not connected") {
		t.Fatalf("stat of a dead mount: %v, want ENOTCONN", err)
	}
	e.wantNoKeys(t, "", "after kill -9 with a 1h write-back delay")

	// Start again on the same mountpoint and cache dir, uploading soon.
	m.args = nil
	logBefore := len(m.log())
	m.restart(t) // returns at once: the stale mount is still listed
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-m.done:
			t.Fatalf("mediafs exited instead of clearing the stale mount: %v\n%s", m.exitErr, m.log())
		default:
		}
		if _, err = os.Stat(m.dir); err == nil && strings.Contains(m.log()[logBefore:], "msg=mounted") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mountpoint still not usable 30s after the restart: %v\n%s", err, m.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(m.log()[logBefore:], "clearing a stale mount") {
		t.Errorf("the log does not say a stale mount was cleared:\n%s", tail(m.log(), 3000))
	}
	// Uploaded from the journal, then served by the new mount. (Reading
	// while the uploads land also works, but trips a data race in the
	// cache's listing update under -race: see the report.)
	for k, v := range files {
		e.waitObject(t, k, v, 30*time.Second)
	}
	for k, v := range files {
		if b := readFile(t, m.path(k)); !bytes.Equal(b, v) {
			t.Errorf("%s after the restart: %d bytes, want the %d written before the kill", k, len(b), len(v))
		}
	}
	m.stop(t)
}

func TestOpsSecretsStayOutOfArgvLogsAndOutputs(t *testing.T) {
	e := newEnv(t)
	secret := e.minio.SecretKey // 40 random hex digits
	if len(secret) < 20 {
		t.Fatalf("MinIO secret %d chars: not distinctive enough to search for", len(secret))
	}
	addr := opsFreeAddr(t)
	m := e.mount(t, "--log-level", "debug", "--debug-fuse", "--metrics-addr", addr)
	check := func(what, s string) {
		t.Helper()
		if strings.Contains(s, secret) {
			i := strings.Index(s, secret)
			t.Errorf("%s contains the secret key: ...%s...", what, s[max(0, i-200):min(len(s), i+len(secret)+50)])
		}
	}
	pid := m.cmd.Process.Pid
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	check("/proc/PID/cmdline", string(cmdline))
	if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err == nil && !bytes.Contains(env, []byte(secret)) {
		t.Logf("note: the secret is not in the daemon's environment either")
	}
	if out, err := exec.Command("ps", "-eww", "-o", "pid,args").CombinedOutput(); err == nil {
		check("ps", string(out))
	} else {
		t.Logf("ps: %v", err)
	}

	// Uploads, with every FUSE request and debug line logged.
	files, _ := opsFiles(t, m, "secret-up", 4, 13000)
	for k, v := range files {
		e.waitObject(t, k, v, 30*time.Second)
	}
	// An outage: uploads fail and are retried, errors get logged.
	e.minio.Stop()
	during, _ := opsFiles(t, m, "secret-outage", 3, 14000)
	logBefore := len(m.log())
	r := opsRun(t, nil, 30*time.Second, "flush", "--cache-dir", m.cacheDir, "--timeout", "3s")
	check("flush output during the outage", r.all())
	if r.code == 0 {
		t.Errorf("flush during the outage exited 0")
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		logged := m.log()[logBefore:]
		if strings.Contains(logged, "level=WARN") || strings.Contains(logged, "level=ERROR") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("no warning or error logged while uploads failed:\n%s", tail(logged, 3000))
			break
		}
	}
	r = opsRun(t, nil, 20*time.Second, "status", "--cache-dir", m.cacheDir)
	check("status", r.all())
	_, body := opsScrape(t, addr)
	check("/metrics", body)
	for _, p := range []string{"/healthz", "/readyz"} {
		_, b := opsGet("http://" + addr + p)
		check(p, b)
	}
	e.minio.Restart(t)
	r = opsRun(t, nil, 45*time.Second, "flush", "--cache-dir", m.cacheDir)
	if r.code != 0 {
		t.Errorf("flush after the outage: exit %d:\n%s", r.code, r.all())
	}
	check("flush output", r.all())
	for k, v := range during {
		e.waitObject(t, k, v, 30*time.Second)
	}
	r = opsRun(t, nil, 20*time.Second, "status", "--cache-dir", m.cacheDir, "--json")
	check("status --json", r.all())
	_, body = opsScrape(t, addr)
	check("/metrics", body)
	m.stop(t)
	// --debug-fuse logs every request (go-fuse's "rx N: CREATE ..." lines).
	if l := m.log(); !strings.Contains(l, "CREATE") || !strings.Contains(l, "LOOKUP") {
		t.Errorf("no FUSE request lines in the log with --debug-fuse:\n%s", tail(l, 2000))
	}
	check("the daemon log at --log-level debug --debug-fuse", m.log())

	// Mounts refused for bad credentials, at debug level: the wrong secret
	// is not echoed, from the environment or a credentials file.
	const badSecret = "OpsBadSecret-d41d8cd98f00b204e9800998ecf8427e"
	credFile := filepath.Join(t.TempDir(), "credentials")
	if err := os.WriteFile(credFile, []byte("[default]\naws_access_key_id = "+e.minio.AccessKey+
		"\naws_secret_access_key = "+badSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		env   []string
		flags []string
	}{
		{"env", append(cleanEnv(), "AWS_ACCESS_KEY_ID="+e.minio.AccessKey, "AWS_SECRET_ACCESS_KEY="+badSecret), nil},
		{"mediafs env", append(cleanEnv(), "MEDIAFS_ACCESS_KEY_ID="+e.minio.AccessKey, "MEDIAFS_SECRET_ACCESS_KEY="+badSecret), nil},
		{"credentials file", cleanEnv(), []string{"--credentials-file", credFile}},
		// A cache dir used before: the daemon may start from it while the
		// store is unreachable, but refused credentials still fail.
		{"used cache dir", append(cleanEnv(), "AWS_ACCESS_KEY_ID="+e.minio.AccessKey, "AWS_SECRET_ACCESS_KEY="+badSecret), []string{"--cache-dir", m.cacheDir}},
	} {
		mp := filepath.Join(t.TempDir(), "mnt")
		os.Mkdir(mp, 0o755)
		args := append([]string{"mount", "--endpoint", e.minio.Endpoint, "--cache-dir", filepath.Join(t.TempDir(), "cache"),
			"--log-level", "debug", "--debug-fuse"}, tc.flags...)
		r := opsRun(t, tc.env, 45*time.Second, append(args, e.bucket, mp)...)
		if isMounted(mp) {
			exec.Command("fusermount3", "-uz", mp).Run()
			t.Errorf("%s: mounted with a wrong secret", tc.name)
		}
		if r.code == 0 || !strings.Contains(r.stderr, "credentials were refused") {
			t.Errorf("%s: exit %d, want a refusal:\n%s", tc.name, r.code, r.all())
		}
		if strings.Contains(r.all(), badSecret) || strings.Contains(r.all(), secret) {
			t.Errorf("%s: the mount failure shows the secret key:\n%s", tc.name, r.all())
		}
		t.Logf("%s: %s", tc.name, strings.TrimSpace(r.all()))
	}
}

func TestOpsConfigPrecedence(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	conf := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o755)
	run := func(env []string, args ...string) opsResult {
		t.Helper()
		env = append(append(cleanEnv(), e.minio.Env()...), env...)
		args = append(append([]string{"mount", "--endpoint", e.minio.Endpoint, "--cache-dir", filepath.Join(dir, "cache")}, args...), e.bucket, mp)
		r := opsRun(t, env, 45*time.Second, args...)
		if isMounted(mp) {
			exec.Command("fusermount3", "-uz", mp).Run()
			t.Fatalf("mediafs %q mounted; want it to fail on a setting:\n%s", args, r.all())
		}
		return r
	}

	// Which level's invalid value is reported shows which level won.
	t.Run("errors", func(t *testing.T) {
		file := conf("bad-upload.conf", "# comment\nupload = from-file\n")
		cases := []struct {
			name  string
			env   []string
			flags []string
			want  string
		}{
			{"file", nil, []string{"--config", file}, `not "from-file"`},
			{"env over file", []string{"MEDIAFS_UPLOAD=from-env"}, []string{"--config", file}, `not "from-env"`},
			{"flag over env", []string{"MEDIAFS_UPLOAD=from-env"}, []string{"--config", file, "--upload", "from-flag"}, `not "from-flag"`},
			{"MEDIAFS_CONFIG", []string{"MEDIAFS_CONFIG=" + file}, nil, `not "from-file"`},
			// A bad duration in the file is reported as the file's...
			{"file duration", nil, []string{"--config", conf("bad-delay.conf", "writeback-delay = banana\n")},
				`bad-delay.conf: writeback-delay = "banana"`},
			// ...an env value hides it, and its own bad value is reported as the env's...
			{"env duration", []string{"MEDIAFS_WRITEBACK_DELAY=apple"}, []string{"--config", filepath.Join(dir, "bad-delay.conf")},
				`MEDIAFS_WRITEBACK_DELAY="apple"`},
			// ...and a valid env value overrides the bad file value, so the
			// next problem (the flag's) is the one reported.
			{"valid env hides bad file", []string{"MEDIAFS_WRITEBACK_DELAY=100ms"},
				[]string{"--config", filepath.Join(dir, "bad-delay.conf"), "--upload", "from-flag"}, `not "from-flag"`},
			{"unknown setting", nil, []string{"--config", conf("unknown.conf", "no-such-setting = 1\n")}, `unknown setting "no-such-setting"`},
		}
		for _, tc := range cases {
			r := run(tc.env, tc.flags...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("%s: exit %d, want an error with %q:\n%s", tc.name, r.code, tc.want, r.all())
			}
			for _, other := range []string{"from-file", "from-env", "from-flag", "banana", "apple"} {
				if !strings.Contains(tc.want, other) && strings.Contains(r.stderr, other) {
					t.Errorf("%s: error mentions %q, a value that should have been overridden:\n%s", tc.name, other, r.stderr)
				}
			}
			t.Logf("%s: %s", tc.name, strings.TrimSpace(r.stderr))
		}
	})

	// The same through behaviour: how soon an upload lands.
	t.Run("behaviour", func(t *testing.T) {
		file := conf("slow.conf", "writeback-delay = 1h\n")
		cases := []struct {
			name    string
			env     []string
			flags   []string
			uploads bool
		}{
			{"file 1h", nil, []string{"--config", file}, false},
			{"env 100ms over file 1h", []string{"MEDIAFS_WRITEBACK_DELAY=100ms"}, []string{"--config", file}, true},
			{"flag 100ms over env 1h", []string{"MEDIAFS_WRITEBACK_DELAY=1h"}, []string{"--config", file, "--writeback-delay", "100ms"}, true},
		}
		for i, tc := range cases {
			base := t.TempDir()
			mp, cache := filepath.Join(base, "mnt"), filepath.Join(base, "cache")
			os.Mkdir(mp, 0o755)
			d := opsDaemon(t, e, append(append(cleanEnv(), e.minio.Env()...), tc.env...),
				append([]string{"--endpoint", e.minio.Endpoint, "--cache-dir", cache}, tc.flags...), mp)
			key := fmt.Sprintf("prec-%d.txt", i)
			data := []byte("precedence " + tc.name)
			writeFile(t, filepath.Join(mp, key), data)
			if tc.uploads {
				e.waitObject(t, key, data, 5*time.Second)
			} else {
				time.Sleep(2 * time.Second)
				if _, _, err := e.getObject(key); err == nil {
					t.Errorf("%s: uploaded within 2s, want it held for the file's 1h", tc.name)
				}
				if s := opsStatus(t, cache); s.Pending != 1 {
					t.Errorf("%s: %d pending, want 1", tc.name, s.Pending)
				}
			}
			d.stop(t)
		}
	})
}

// opsProc is a mediafs daemon started by hand (the harness always passes
// its own --writeback-delay flag, which would hide the env and file).
type opsProc struct {
	cmd  *exec.Cmd
	mp   string
	logf string
	done chan struct{}
	err  error
}

func (p *opsProc) log() string { b, _ := os.ReadFile(p.logf); return string(b) }

func opsDaemon(t *testing.T, e *env, envv, flags []string, mp string) *opsProc {
	t.Helper()
	p := &opsProc{mp: mp, logf: mp + ".log", done: make(chan struct{})}
	lf, err := os.Create(p.logf)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(binPath, append(append([]string{"mount"}, flags...), e.bucket, mp)...)
	p.cmd.Env = envv
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); lf.Close(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(40 * time.Second):
				p.cmd.Process.Kill()
				<-p.done
			}
		}
		if isMounted(mp) {
			exec.Command("fusermount3", "-uz", mp).Run()
		}
		if t.Failed() {
			t.Logf("mediafs log (%s):\n%s", mp, tail(p.log(), 4000))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !isMounted(mp) {
		select {
		case <-p.done:
			t.Fatalf("mediafs exited before mounting: %v\n%s", p.err, p.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mediafs did not mount within 30s\n%s", p.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

func (p *opsProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(40 * time.Second):
		t.Fatalf("mediafs did not exit within 40s of SIGTERM\n%s", tail(p.log(), 3000))
	}
	if p.err != nil {
		t.Errorf("mediafs exited with %v\n%s", p.err, tail(p.log(), 3000))
	}
}

func TestOpsHelpVersionAndUnknownCommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"--help"}, 0, []string{"Examples:", "mediafs mount --endpoint", "mediafs status", "mediafs flush"}},
		{[]string{"help"}, 0, []string{"Examples:"}},
		{[]string{"mount", "--help"}, 0, []string{"Examples:", "mediafs mount --endpoint", "-writeback-delay", "MEDIAFS_"}},
		{[]string{"status", "--help"}, 0, []string{"-cache-dir", "-json"}},
		{[]string{"flush", "--help"}, 0, []string{"-cache-dir", "-timeout"}},
		{[]string{"version"}, 0, []string{"mediafs "}},
		{[]string{"--version"}, 0, []string{"mediafs "}},
		{[]string{"frobnicate"}, 2, []string{`unknown command "frobnicate"`, "Usage:"}},
		{nil, 2, []string{"Usage:"}},
		{[]string{"mount", "--no-such-flag", "b", "/mnt"}, 2, []string{"no-such-flag"}},
		{[]string{"mount", "onlyone"}, 2, []string{"need BUCKET[/PREFIX] and MOUNTPOINT"}},
		{[]string{"status", "--cache-dir", t.TempDir()}, 1, []string{"no mediafs running with cache dir"}},
		{[]string{"flush", "--cache-dir", t.TempDir()}, 1, []string{"no mediafs running with cache dir"}},
	} {
		r := opsRun(t, nil, 20*time.Second, tc.args...)
		if r.code != tc.code {
			t.Errorf("mediafs %q: exit %d, want %d:\n%s", tc.args, r.code, tc.code, r.all())
		}
		for _, w := range tc.want {
			if !strings.Contains(r.all(), w) {
				t.Errorf("mediafs %q: output lacks %q:\n%s", tc.args, w, r.all())
			}
		}
		if tc.code == 0 && r.stdout == "" {
			t.Errorf("mediafs %q: nothing on stdout (help and version asked for belong there):\n%s", tc.args, r.all())
		}
	}
	r := opsRun(t, nil, 20*time.Second, "version")
	if v := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(r.stdout), "mediafs")); v == "" {
		t.Errorf("mediafs version printed no version: %q", r.stdout)
	}
}

func TestOpsSecondDaemonOnTheSameCacheDirFails(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t, "--writeback-delay", "1h")
	writeFile(t, m.path("first.txt"), []byte("first"))

	mp := filepath.Join(t.TempDir(), "mnt2")
	os.Mkdir(mp, 0o755)
	r := opsRun(t, append(cleanEnv(), e.minio.Env()...), 45*time.Second,
		"mount", "--endpoint", e.minio.Endpoint, "--cache-dir", m.cacheDir, e.bucket, mp)
	if isMounted(mp) {
		exec.Command("fusermount3", "-uz", mp).Run()
		t.Fatalf("a second daemon mounted on the same cache dir:\n%s", r.all())
	}
	if r.code == 0 || !strings.Contains(r.stderr, "in use by another mediafs") {
		t.Errorf("second daemon: exit %d, want a clear failure:\n%s", r.code, r.all())
	}
	if r.took > 15*time.Second {
		t.Errorf("second daemon took %v to fail", r.took)
	}
	if n := strings.Count(strings.TrimSpace(r.all()), "\n"); n > 3 {
		t.Errorf("%d lines of output for one error:\n%s", n+1, r.all())
	}
	t.Logf("second daemon: %s", strings.TrimSpace(r.all()))

	// The first daemon is untouched: its control socket and mount work.
	if s := opsStatus(t, m.cacheDir); s.Pending != 1 {
		t.Errorf("first daemon's status after the failed second start: %d pending, want 1", s.Pending)
	}
	writeFile(t, m.path("second.txt"), []byte("second"))
	if r := opsRun(t, nil, 30*time.Second, "flush", "--cache-dir", m.cacheDir); r.code != 0 {
		t.Errorf("flush on the first daemon: exit %d:\n%s", r.code, r.all())
	}
	e.waitObject(t, "first.txt", []byte("first"), 5*time.Second)
	e.waitObject(t, "second.txt", []byte("second"), 5*time.Second)
	m.stop(t)
}
