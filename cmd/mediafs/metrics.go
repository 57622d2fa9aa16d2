package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mediafs/mediafs/backend"
	"github.com/mediafs/mediafs/cache"
	"github.com/mediafs/mediafs/fs"
)

type metricsServer struct{ srv *http.Server }

func (m *metricsServer) Close() { m.srv.Close() }

// readyBacklog is the pending-upload count above which /readyz fails.
const readyBacklog = 10000

// opLatency is the FUSE operation latency histogram; fs reports into it
// through fs.Options.Observe.
var opLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Namespace: "mediafs", Name: "fuse_op_duration_seconds",
	Help:    "Latency of FUSE operations served by the daemon (passthrough reads and writes never reach it).",
	Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
}, []string{"op", "result"})

func observeOp(op string, d time.Duration, errno syscall.Errno) {
	res := "ok"
	if errno != 0 {
		res = errno.Error()
	}
	opLatency.WithLabelValues(op, res).Observe(d.Seconds())
}

func startMetrics(addr string, c *cache.Cache, fsys *fs.FS, st *backend.S3, mnt string, log *slog.Logger) (*metricsServer, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(opLatency)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := c.StatsRef()
	counter := func(name, help string, f func() int64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "mediafs", Name: name, Help: help},
			func() float64 { return float64(f()) }))
	}
	counter("uploads_total", "Objects uploaded.", s.Uploads.Load)
	counter("upload_bytes_total", "Bytes uploaded.", s.UploadBytes.Load)
	counter("upload_failures_total", "Failed upload attempts (retried).", s.UploadFailures.Load)
	counter("deletes_total", "Objects deleted.", s.Deletes.Load)
	counter("copies_total", "Server-side copies (renames, attribute changes).", s.Copies.Load)
	counter("conflicts_total", "Uploads that lost a conflict and were kept as a sibling.", s.Conflicts.Load)
	counter("cache_evictions_total", "Clean cache files evicted.", s.Evictions.Load)
	counter("cache_hits_total", "Opens served from the local cache.", s.CacheHits.Load)
	counter("cache_misses_total", "Opens that fetched from the bucket.", s.CacheMisses.Load)
	counter("cache_prefetches_total", "Small files fetched ahead of a reader going through a directory in order.", s.Prefetches.Load)
	counter("skipped_keys_total", "Object keys left out of listings because they cannot be paths.", s.SkippedKeys.Load)
	counter("feed_events_total", "Other machines' changes applied from the change feed.", func() int64 { return c.FeedStatus().Applied })
	counter("feed_own_events_total", "This mount's own changes seen on the change feed and skipped.", func() int64 { return c.FeedStatus().Own })
	counter("feed_gaps_total", "Change feed (re)connections and overflows after which every cached listing was dropped.", func() int64 { return c.FeedStatus().Gaps })
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "mediafs", Name: "feed_connected",
		Help: "1 while the change feed is live (listings trusted for --feed-dir-ttl)."}, func() float64 {
		if c.FeedStatus().Live {
			return 1
		}
		return 0
	}))
	gauge := func(name, help string, f func(cache.Status) float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "mediafs", Name: name, Help: help},
			func() float64 {
				st, _ := c.Status()
				return f(st)
			}))
	}
	gauge("backlog_uploads", "Pending journal records.", func(s cache.Status) float64 { return float64(s.Pending) })
	gauge("backlog_bytes", "Bytes waiting to be uploaded.", func(s cache.Status) float64 { return float64(s.PendingBytes) })
	gauge("backlog_oldest_seconds", "Age of the oldest pending change.", func(s cache.Status) float64 {
		if s.OldestSince.IsZero() {
			return 0
		}
		return time.Since(s.OldestSince).Seconds()
	})
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "mediafs", Name: "backend_up",
		Help: "0 while the object store is failing as unavailable."}, func() float64 {
		if c.BackendDown() {
			return 0
		}
		return 1
	}))
	gauge("cache_bytes", "Bytes of clean cached data.", func(s cache.Status) float64 { return float64(s.CachedBytes) })
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "mediafs", Name: "passthrough",
		Help: "1 when FUSE passthrough is in use."}, func() float64 {
		if fsys.Passthrough() {
			return 1
		}
		return 0
	}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		done := make(chan error, 1)
		go func() { _, err := os.Stat(mnt); done <- err }()
		select {
		case err := <-done:
			if err != nil {
				http.Error(w, "mount not answering: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		case <-time.After(5 * time.Second):
			http.Error(w, "mount not answering", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := st.Check(ctx); err != nil {
			http.Error(w, "backend unreachable", http.StatusServiceUnavailable)
			return
		}
		if s, _ := c.Status(); s.Pending > readyBacklog {
			http.Error(w, fmt.Sprintf("backlog of %d uploads", s.Pending), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	log.Info("metrics and health endpoints", "addr", ln.Addr().String())
	return &metricsServer{srv: srv}, nil
}
