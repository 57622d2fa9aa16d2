package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/mediafs/mediafs/backend"
	"github.com/mediafs/mediafs/cache"
)

// The control socket (<cache-dir>/control.sock, mode 0600) serves status
// and flush to the mediafs CLI over HTTP on a Unix socket.

type statusReply struct {
	Pending        int       `json:"pending"`
	PendingBytes   int64     `json:"pendingBytes"`
	Oldest         time.Time `json:"oldestPending,omitempty"`
	CachedBytes    int64     `json:"cachedBytes"`
	CachedFiles    int       `json:"cachedFiles"`
	Uploads        int64     `json:"uploads"`
	UploadFailures int64     `json:"uploadFailures"`
	Conflicts      int64     `json:"conflicts"`
	SkippedKeys    int64     `json:"skippedKeys"`
	BackendDown    bool      `json:"backendDown"`
	// ChangeFeed is the change feed's state (off, connecting, live,
	// down, unsupported); FeedChanges counts other machines' changes it
	// applied.
	ChangeFeed  string `json:"changeFeed"`
	FeedChanges int64  `json:"feedChanges"`
}

func status(c *cache.Cache) (statusReply, error) {
	s, err := c.Status()
	st := c.StatsRef()
	fs := c.FeedStatus()
	return statusReply{ChangeFeed: fs.State, FeedChanges: fs.Applied, Pending: s.Pending, PendingBytes: s.PendingBytes, Oldest: s.OldestSince,
		CachedBytes: s.CachedBytes, CachedFiles: s.CachedFiles, Uploads: st.Uploads.Load(),
		UploadFailures: st.UploadFailures.Load(), Conflicts: st.Conflicts.Load(),
		SkippedKeys: st.SkippedKeys.Load(), BackendDown: c.BackendDown()}, err
}

type control struct {
	ln  net.Listener
	srv *http.Server
}

func (c *control) Close() { c.srv.Close() }

// startControl serves the control socket. st, if set, is probed when a
// flush times out, to tell an unreachable object store from a slow one.
func startControl(cacheDir string, c *cache.Cache, st *backend.S3, log *slog.Logger) (*control, error) {
	path := filepath.Join(cacheDir, "control.sock")
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		s, err := status(c)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		json.NewEncoder(w).Encode(s)
	})
	mux.HandleFunc("POST /flush", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("timeout"))
		if d <= 0 {
			d = time.Hour
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		fl, _ := w.(http.Flusher)
		done := make(chan struct{})
		var left int
		go func() {
			left, _ = c.Drain(ctx)
			close(done)
		}()
		// Shortly before the deadline, probe the store, so that a timeout
		// can say why without making the caller wait longer.
		lead := min(time.Second, d/3)
		probe := make(chan bool, 1)
		pt := time.AfterFunc(d-lead, func() { probe <- backendUnreachable(c, st, lead) })
		defer pt.Stop()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				s, _ := c.Status()
				state := ""
				if s.Pending > 0 {
					down := c.BackendDown()
					if !down {
						select {
						case down = <-probe:
						case <-time.After(lead + 100*time.Millisecond):
						}
					}
					if down {
						state = " unreachable"
					}
				}
				fmt.Fprintf(w, "%d %d done%s\n", s.Pending, s.PendingBytes, state)
				_ = left
				return
			case <-t.C:
				s, _ := c.Status()
				fmt.Fprintf(w, "%d %d\n", s.Pending, s.PendingBytes)
				if fl != nil {
					fl.Flush()
				}
			}
		}
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	return &control{ln: ln, srv: srv}, nil
}

// backendUnreachable reports whether uploads fail because the object store
// cannot be reached: known from failed uploads, or found by a quick probe
// (the first uploads may still be retrying their connection).
func backendUnreachable(c *cache.Cache, st *backend.S3, timeout time.Duration) bool {
	if c.BackendDown() {
		return true
	}
	if st == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := st.Check(ctx)
	return errors.Is(err, backend.ErrUnavailable) || ctx.Err() != nil
}

func controlClient(cacheDir string) *http.Client {
	path := filepath.Join(cacheDir, "control.sock")
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

func cacheDirFlag(fset *flag.FlagSet) *string {
	def := os.Getenv("MEDIAFS_CACHE_DIR")
	if def == "" {
		def = "/var/cache/mediafs"
	}
	return fset.String("cache-dir", def, "cache directory of the running mount")
}

func runStatus(args []string) error {
	fset := flag.NewFlagSet("status", flag.ContinueOnError)
	dir := cacheDirFlag(fset)
	asJSON := fset.Bool("json", false, "print JSON")
	fset.Usage = func() {
		fmt.Fprint(fset.Output(), "Usage: mediafs status [--cache-dir DIR] [--json]\n\nPending uploads, cache use, failures and conflicts of the mediafs running\nwith that cache dir.\n\n")
		fset.PrintDefaults()
	}
	if help, err := parseArgs(fset, args); help || err != nil {
		return err
	}
	resp, err := controlClient(*dir).Get("http://mediafs/status")
	if err != nil {
		return fmt.Errorf("no mediafs running with cache dir %s: %w", *dir, err)
	}
	defer resp.Body.Close()
	var s statusReply
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(s)
	}
	age := "-"
	if !s.Oldest.IsZero() {
		age = time.Since(s.Oldest).Round(time.Second).String()
	}
	fmt.Printf("pending uploads: %d (%s), oldest %s\ncache: %d files, %s\nuploads: %d, failures: %d, conflicts: %d, skipped keys: %d\n",
		s.Pending, human(s.PendingBytes), age, s.CachedFiles, human(s.CachedBytes),
		s.Uploads, s.UploadFailures, s.Conflicts, s.SkippedKeys)
	if s.BackendDown {
		fmt.Println("object store: unreachable (uploads are retried; see the daemon's log)")
	}
	fmt.Printf("change feed: %s, %d changes of other machines applied\n", s.ChangeFeed, s.FeedChanges)
	return nil
}

func runFlush(args []string) error {
	fset := flag.NewFlagSet("flush", flag.ContinueOnError)
	dir := cacheDirFlag(fset)
	timeout := fset.Duration("timeout", time.Hour, "give up after this long")
	fset.Usage = func() {
		fmt.Fprint(fset.Output(), "Usage: mediafs flush [--cache-dir DIR] [--timeout D]\n\nWait until every pending change of the mediafs running with that cache dir\nis in the bucket. Exits 1 if some are still pending at the timeout.\n\n")
		fset.PrintDefaults()
	}
	if help, err := parseArgs(fset, args); help || err != nil {
		return err
	}
	resp, err := controlClient(*dir).Post("http://mediafs/flush?timeout="+timeout.String(), "", nil)
	if err != nil {
		return fmt.Errorf("no mediafs running with cache dir %s: %w", *dir, err)
	}
	defer resp.Body.Close()
	tty := isTerminal(os.Stdout)
	sc := bufio.NewScanner(resp.Body)
	last := -1
	for sc.Scan() {
		var n int
		var b int64
		var done, state string
		fmt.Sscan(sc.Text(), &n, &b, &done, &state)
		if done == "done" {
			if tty {
				fmt.Print("\r\033[K")
			}
			if n > 0 {
				why := ""
				if state == "unreachable" {
					why = "; the object store is unreachable (see the daemon's log)"
				}
				return fmt.Errorf("flush timed out after %v: %d uploads (%s) still pending%s", *timeout, n, human(b), why)
			}
			fmt.Println("all changes are in the bucket")
			return nil
		}
		if tty {
			fmt.Printf("\r\033[Kflushing: %d pending (%s)", n, human(b))
		} else if n != last {
			fmt.Printf("pending %d (%s)\n", n, human(b))
		}
		last = n
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("connection to the daemon lost during flush")
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func human(b int64) string {
	const u = 1024
	if b < u {
		return strconv.FormatInt(b, 10) + " B"
	}
	div, exp := int64(u), 0
	for n := b / u; n >= u; n /= u {
		div *= u
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
