#!/usr/bin/env bash
# Benchmarks mediafs side by side with a plain local directory, a go-fuse
# loopback mount (the FUSE ceiling), rclone mount --vfs-cache-mode full and
# s3fs (when installed), and raw minio-go PUT/GET (the object store
# ceiling), all in one run against one MinIO started on 127.0.0.1.
# Prints a markdown table and writes it to bench-results.md.
#
#   scripts/bench.sh                 # full run (1000 small files, 512 MiB, 5000 metadata ops)
#   scripts/bench.sh --quick         # smaller, a few minutes
#   scripts/bench.sh --quick --out /tmp/r.md --writeback-delay 2s \
#       --mediafs-flags "--upload-concurrency 32" --targets raw,loopback,mediafs
#
# Any other flags go to the bench program (go run ./cmd/mediafs-bench -h).
# Needs root (FUSE mounts, drop_caches) and /dev/fuse. Everything it starts
# is stopped and unmounted on exit, failure or Ctrl-C.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:$PATH"

log() { printf 'bench.sh: %s\n' "$*" >&2; }

command -v go >/dev/null 2>&1 || { log "go not found on PATH or in /usr/local/go/bin"; exit 1; }
[[ -c /dev/fuse ]] || { log "/dev/fuse is missing"; exit 1; }
command -v fusermount3 >/dev/null 2>&1 || { log "fusermount3 is missing (apt-get install fuse3)"; exit 1; }
if [[ $(id -u) -ne 0 ]]; then
	log "warning: not root: no FUSE passthrough, no drop_caches; figures will not mean much"
fi

MEDIAFS_MINIO_BIN="$(scripts/install-minio.sh)"
export MEDIAFS_MINIO_BIN
log "using MinIO $MEDIAFS_MINIO_BIN"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/mediafs-bench-bin.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "building mediafs and mediafs-bench"
go build -o "$tmp/mediafs" ./cmd/mediafs
go build -o "$tmp/mediafs-bench" ./cmd/mediafs-bench

# Not exec: the trap above removes the binaries afterwards. The bench
# program unmounts and stops everything it started on SIGINT/SIGTERM; an
# interrupted script passes the signal on and waits for that cleanup.
"$tmp/mediafs-bench" --mediafs "$tmp/mediafs" --minio "$MEDIAFS_MINIO_BIN" "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM HUP
status=0
while :; do
	wait "$pid" && { status=0; break; } || status=$?
	# wait returns >128 when a trapped signal interrupted it; the child may
	# still be cleaning up.
	kill -0 "$pid" 2>/dev/null || break
done
exit "$status"
