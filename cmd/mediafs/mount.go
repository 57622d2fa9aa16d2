package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/mediafs/mediafs/backend"
	"github.com/mediafs/mediafs/cache"
	"github.com/mediafs/mediafs/fs"
)

type mountConfig struct {
	endpoint, region, cacheDir, credFile, config string
	uid, gid                                     uint
	fileMode, dirMode                            modeFlag
	dirTTL, wbDelay, wbMaxWait, drainTimeout     time.Duration
	opTimeout, reqTimeout, spaceWait             time.Duration
	uploadConc                                   int
	upload                                       string
	cacheSize                                    sizeFlag
	allowOther, insecure, noPassthrough          bool
	debugFuse, nonEmpty                          bool
	logFormat, logLevel, metricsAddr             string
	excl, changeFeed                             string
	feedDirTTL                                   time.Duration
	partSize, readAhead                          sizeFlag
}

func mountFlags(cfg *mountConfig) *flag.FlagSet {
	fset := flag.NewFlagSet("mount", flag.ContinueOnError)
	fset.StringVar(&cfg.endpoint, "endpoint", "https://s3.amazonaws.com", "S3 endpoint URL; http:// means no TLS")
	fset.StringVar(&cfg.region, "region", os.Getenv("AWS_REGION"), "bucket region (default $AWS_REGION)")
	fset.StringVar(&cfg.cacheDir, "cache-dir", "/var/cache/mediafs", "local cache directory (journal and data); one mediafs per directory")
	fset.StringVar(&cfg.credFile, "credentials-file", "", "file with aws_access_key_id / aws_secret_access_key lines")
	fset.StringVar(&cfg.config, "config", "", "config file of \"name = value\" lines, names as the flags")
	fset.UintVar(&cfg.uid, "uid", uint(os.Getuid()), "owner of objects without s3fs metadata")
	fset.UintVar(&cfg.gid, "gid", uint(os.Getgid()), "group of objects without s3fs metadata")
	cfg.fileMode, cfg.dirMode = 0o644, 0o755
	fset.Var(&cfg.fileMode, "file-mode", "permissions of files without s3fs metadata (octal)")
	fset.Var(&cfg.dirMode, "dir-mode", "permissions of directories without metadata (octal)")
	fset.DurationVar(&cfg.dirTTL, "dir-ttl", time.Second, "how long a bucket listing is trusted (without a live change feed)")
	fset.StringVar(&cfg.changeFeed, "change-feed", "auto", "learn of other machines' changes from bucket notifications: auto (when the server offers them, else poll with --dir-ttl), listen (required: the mount fails without), off (poll)")
	fset.DurationVar(&cfg.feedDirTTL, "feed-dir-ttl", 30*time.Second, "how long a bucket listing is trusted while the change feed is live (a safety net for lost events)")
	fset.DurationVar(&cfg.wbDelay, "writeback-delay", 2*time.Second, "wait after close before uploading, so rewrites coalesce")
	fset.DurationVar(&cfg.wbMaxWait, "writeback-max-wait", time.Minute, "upload a file held open for writing from a snapshot after this long")
	fset.DurationVar(&cfg.drainTimeout, "drain-timeout", time.Minute, "on SIGTERM/unmount, how long to keep uploading before exiting (the rest stays in the journal)")
	fset.DurationVar(&cfg.opTimeout, "op-timeout", 30*time.Second, "bound on a backend call made for a file system operation")
	fset.DurationVar(&cfg.reqTimeout, "request-timeout", 15*time.Second, "a request that makes no progress for this long is retried")
	fset.IntVar(&cfg.uploadConc, "upload-concurrency", 16, "parallel uploads")
	fset.DurationVar(&cfg.spaceWait, "cache-full-wait", 30*time.Second, "when the cache disk is full of data not yet uploaded, how long a new writer waits before ENOSPC")
	fset.StringVar(&cfg.excl, "excl", "claim", "O_EXCL creates: claim (exclusive across machines: an empty object is written at create) or local (exclusive on this machine; cheaper for tar -x)")
	fset.StringVar(&cfg.upload, "upload", "writeback", "writeback: close returns once data is safe locally; close: once it is in the bucket")
	cfg.cacheSize.percent = 0
	cfg.cacheSize.bytes = 10 << 30
	fset.Var(&cfg.cacheSize, "cache-size", "cap on clean cached data (10G, 512M, 80%); dirty data is never evicted")
	cfg.partSize.bytes = 16 << 20
	fset.Var(&cfg.partSize, "part-size", "multipart upload part size")
	cfg.readAhead.bytes = 4 << 20
	fset.Var(&cfg.readAhead, "read-ahead", "kernel read-ahead window for files not yet whole in the cache (0: the kernel's 128K)")
	fset.BoolVar(&cfg.allowOther, "allow-other", false, "let other users use the mount (needs user_allow_other for non-root)")
	fset.BoolVar(&cfg.insecure, "insecure-skip-verify", false, "do not verify the endpoint's TLS certificate")
	fset.BoolVar(&cfg.noPassthrough, "no-passthrough", false, "serve reads and writes through the daemon even where FUSE passthrough works")
	fset.BoolVar(&cfg.debugFuse, "debug-fuse", false, "log every FUSE request")
	fset.BoolVar(&cfg.nonEmpty, "allow-non-empty", false, "mount over a directory that is not empty")
	fset.StringVar(&cfg.logFormat, "log-format", "text", "text or json")
	fset.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn, error")
	fset.StringVar(&cfg.metricsAddr, "metrics-addr", "", "serve /metrics, /healthz, /readyz on this local address (e.g. 127.0.0.1:9464)")
	fset.Usage = func() {
		fmt.Fprintf(fset.Output(), "Usage: mediafs mount [flags] BUCKET[/PREFIX] MOUNTPOINT\n\nEvery flag can also be set as MEDIAFS_<FLAG> (e.g. MEDIAFS_CACHE_DIR) or in --config.\nPrecedence: flag > environment > config file > default.\n\n")
		fset.PrintDefaults()
		fmt.Fprint(fset.Output(), mountExamples)
	}
	return fset
}

func newLogger(format, level string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", format)
}

// gcPercent is the daemon's GOGC unless the environment sets one. The
// default 100 lets the heap grow to twice what is live before a
// collection; most of what the daemon allocates (requests, records,
// listings) is short-lived, and at 50 its peak RSS in the benchmark's
// metadata workloads went from 100 to 67 MiB for the same CPU time.
const gcPercent = 50

func runMount(args []string) error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	var cfg mountConfig
	fset := mountFlags(&cfg)
	if help, err := parseArgs(fset, args); help || err != nil {
		return err
	}
	if fset.NArg() != 2 {
		return usageError{errors.New("need BUCKET[/PREFIX] and MOUNTPOINT (see mediafs mount --help)")}
	}
	if cfg.config == "" {
		cfg.config = os.Getenv("MEDIAFS_CONFIG")
	}
	if err := applyEnvAndFile(fset, cfg.config); err != nil {
		return err
	}
	log, err := newLogger(cfg.logFormat, cfg.logLevel, os.Stderr)
	if err != nil {
		return err
	}
	if cfg.excl != "claim" && cfg.excl != "local" {
		return fmt.Errorf("--excl must be claim or local, not %q", cfg.excl)
	}
	switch cache.FeedMode(cfg.changeFeed) {
	case cache.FeedAuto, cache.FeedListen, cache.FeedOff:
	default:
		return fmt.Errorf("--change-feed must be auto, listen or off, not %q", cfg.changeFeed)
	}
	if cfg.upload != "writeback" && cfg.upload != "close" {
		return fmt.Errorf("--upload must be writeback or close, not %q", cfg.upload)
	}
	bucket, prefix, _ := strings.Cut(strings.Trim(fset.Arg(0), "/"), "/")
	if bucket == "" {
		return errors.New("bucket name is empty")
	}
	if prefix != "" {
		prefix += "/"
	}
	mnt, err := filepath.Abs(fset.Arg(1))
	if err != nil {
		return err
	}
	if err := prepareMountpoint(mnt, cfg.nonEmpty, log); err != nil {
		return err
	}
	ak, sk, tok, err := credentials(cfg.credFile)
	if err != nil {
		return err
	}
	if cfg.config != "" && (ak == "" || sk == "") {
		kv, _ := readKV(cfg.config)
		ak, sk = kv["aws_access_key_id"], kv["aws_secret_access_key"]
	}
	st, err := backend.NewS3(backend.S3Options{
		Endpoint: cfg.endpoint, Bucket: bucket, Prefix: prefix, Region: cfg.region,
		AccessKey: ak, SecretKey: sk, SessionToken: tok,
		InsecureSkipVerify: cfg.insecure, CABundle: os.Getenv("AWS_CA_BUNDLE"),
		RequestTimeout: cfg.reqTimeout, PartSize: cfg.partSize.bytes, PartConcurrency: 4,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.reqTimeout)
	err = st.Check(ctx)
	cancel()
	if err != nil {
		_, dbErr := os.Stat(filepath.Join(cfg.cacheDir, "db"))
		if !errors.Is(err, backend.ErrUnavailable) || dbErr != nil {
			return checkError(err, bucket, cfg.endpoint)
		}
		// A cache that was used before: serve what it knows and upload
		// when the backend is back.
		log.Warn("object store unreachable; starting from the local cache, uploads resume when it is back",
			"endpoint", cfg.endpoint, "err", err)
	}
	if err := os.MkdirAll(cfg.cacheDir, 0o700); err != nil {
		return fmt.Errorf("cache dir: %w", err)
	}
	host, _ := os.Hostname()
	c, err := cache.Open(cache.Options{
		Dir: cfg.cacheDir, Store: st, Logger: log,
		Defaults: cache.Defaults{UID: uint32(cfg.uid), GID: uint32(cfg.gid),
			FileMode: uint32(cfg.fileMode), DirMode: uint32(cfg.dirMode)},
		DirTTL: cfg.dirTTL, ChangeFeed: cache.FeedMode(cfg.changeFeed), FeedDirTTL: cfg.feedDirTTL,
		WritebackDelay: cfg.wbDelay, WritebackMaxWait: cfg.wbMaxWait,
		UploadConcurrency: cfg.uploadConc, UploadOnClose: cfg.upload == "close",
		OpTimeout: cfg.opTimeout, CacheSize: cfg.cacheSize.resolve(cfg.cacheDir), Host: host,
		LocalExcl: cfg.excl == "local", SpaceWait: cfg.spaceWait,
	})
	if err != nil {
		return err
	}
	if err := c.StartFeed(context.Background()); err != nil {
		c.Close()
		return fmt.Errorf("--change-feed=listen: %w", err)
	}
	fo := fs.Options{Cache: c, Logger: log, AllowOther: cfg.allowOther,
		Debug: cfg.debugFuse, FsName: bucket + "/" + prefix, DisablePassthrough: cfg.noPassthrough,
		ReadAhead:    cfg.readAhead.bytes,
		EntryTimeout: time.Second, AttrTimeout: time.Second, NegativeTimeout: 500 * time.Millisecond}
	if cfg.metricsAddr != "" {
		fo.Observe = observeOp
	}
	fsys := fs.New(fo)
	srv, err := fsys.Mount(mnt)
	if err != nil {
		c.Close()
		return fmt.Errorf("mount %s: %w", mnt, err)
	}
	ctl, err := startControl(cfg.cacheDir, c, st, log)
	if err != nil {
		log.Warn("control socket not available; status and flush will not work", "err", err)
	}
	var mx *metricsServer
	if cfg.metricsAddr != "" {
		if mx, err = startMetrics(cfg.metricsAddr, c, fsys, st, mnt, log); err != nil {
			srv.Unmount()
			c.Close()
			return err
		}
	}
	log.Info("mounted", "bucket", bucket, "prefix", prefix, "mountpoint", mnt, "cache", cfg.cacheDir,
		"upload", cfg.upload, "passthrough", fsys.Passthrough())
	sdNotify("READY=1")

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	served := make(chan struct{})
	go func() { srv.Wait(); close(served) }()
	signalled := false
	select {
	case s := <-sigs:
		signalled = true
		log.Info("signal: unmounting and draining the upload queue", "signal", s.String(), "deadline", cfg.drainTimeout)
		sdNotify("STOPPING=1")
		unmount(srv, mnt, log)
	case <-served:
		log.Info("unmounted; draining the upload queue", "deadline", cfg.drainTimeout)
	}
	<-served
	dctx, dcancel := context.WithTimeout(context.Background(), cfg.drainTimeout)
	go func() {
		// A second signal stops the drain at once. When the mount was
		// unmounted first (umount, systemd stopping a .mount unit), the
		// first signal only says so: the drain goes on.
		need := 1
		if !signalled {
			need = 2
		}
		for i := 0; i < need; i++ {
			select {
			case <-sigs:
				if i+1 < need {
					log.Info("draining the upload queue; send the signal again to stop now")
				}
			case <-dctx.Done():
				return
			}
		}
		dcancel()
	}()
	left, bytes := c.Drain(dctx)
	dcancel()
	if left > 0 {
		log.Warn("stopping with uploads still pending; they stay in the journal and resume at the next start",
			"pending", left, "bytes", bytes)
	} else {
		log.Info("upload queue drained")
	}
	if ctl != nil {
		ctl.Close()
	}
	if mx != nil {
		mx.Close()
	}
	return c.Close()
}

// checkError explains why the bucket could not be used.
func checkError(err error, bucket, endpoint string) error {
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return fmt.Errorf("bucket %q does not exist at %s", bucket, endpoint)
	case errors.Is(err, backend.ErrAccessDenied):
		return fmt.Errorf("the credentials were refused for bucket %q at %s (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): %w", bucket, endpoint, err)
	case errors.Is(err, backend.ErrUnavailable):
		return fmt.Errorf("cannot reach the object store at %s: %w", endpoint, err)
	}
	return fmt.Errorf("bucket %q at %s: %w", bucket, endpoint, err)
}

// prepareMountpoint checks that mnt is an empty directory, clearing a
// stale FUSE mount ("transport endpoint is not connected") left by a
// killed daemon.
func prepareMountpoint(mnt string, nonEmpty bool, log *slog.Logger) error {
	_, err := os.Stat(mnt)
	if errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED) {
		log.Warn("clearing a stale mount left by a previous mediafs", "mountpoint", mnt)
		if out, uerr := exec.Command("fusermount3", "-uz", mnt).CombinedOutput(); uerr != nil {
			if err2 := syscall.Unmount(mnt, syscall.MNT_DETACH); err2 != nil {
				return fmt.Errorf("mountpoint %s has a stale mount that could not be cleared: %s %v", mnt, strings.TrimSpace(string(out)), err2)
			}
		}
		_, err = os.Stat(mnt)
	}
	if err != nil {
		return fmt.Errorf("mountpoint: %w", err)
	}
	st, _ := os.Stat(mnt)
	if !st.IsDir() {
		return fmt.Errorf("mountpoint %s is not a directory", mnt)
	}
	if isMountedMediafs(mnt) {
		return fmt.Errorf("mountpoint %s already has a mediafs mounted", mnt)
	}
	if !nonEmpty {
		f, err := os.Open(mnt)
		if err != nil {
			return fmt.Errorf("mountpoint: %w", err)
		}
		names, _ := f.Readdirnames(1)
		f.Close()
		if len(names) > 0 {
			return fmt.Errorf("mountpoint %s is not empty (use --allow-non-empty to mount over it)", mnt)
		}
	}
	return nil
}

func isMountedMediafs(mnt string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == mnt && strings.Contains(line, "fuse.mediafs") {
			return true
		}
	}
	return false
}

// unmount unmounts, retrying while busy, then detaches lazily.
func unmount(srv interface{ Unmount() error }, mnt string, log *slog.Logger) {
	for i := 0; i < 20; i++ {
		if err := srv.Unmount(); err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	log.Warn("mount still busy; detaching it lazily", "mountpoint", mnt)
	if err := exec.Command("fusermount3", "-uz", mnt).Run(); err != nil {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
}

// sdNotify tells systemd (Type=notify) about our state; a no-op elsewhere.
func sdNotify(state string) {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return
	}
	if sock[0] == '@' {
		sock = "\x00" + sock[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	conn.Write([]byte(state))
}
