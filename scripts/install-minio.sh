#!/usr/bin/env bash
# Installs the pinned MinIO server used by the end-to-end tests into a cache
# directory, once, and prints the binary's path on stdout (progress goes to
# stderr). Later runs reuse the binary when it exists and `minio --version`
# works.
#
# The server is the pinned module's source plus one added file,
# cmd/mediafs_flush.go, which gives MinIO's trackingResponseWriter the Flush
# method it lacks upstream. Without it the bucket-notification stream
# (ListenBucketNotification, mediafs's change feed) is never flushed: events
# sit in net/http's buffer until about 4 KiB of them have piled up, so a
# single change reaches a listener seconds or minutes late, or never.
# Nothing else differs from `go install github.com/minio/minio@PIN`.
#
# Environment:
#   MEDIAFS_CACHE        cache root (default $HOME/.cache/mediafs); the binary
#                        is $MEDIAFS_CACHE/bin/minio-PIN-flushfix
#   MEDIAFS_MINIO_PIN    module version to build (default: the pin below)
set -euo pipefail

# MinIO publishes no semver tags for its Go module; a pseudo-version of a
# master commit is the way to pin one. The first build takes a few minutes.
# backend/miniotest looks for the default pin's binary by name: keep its
# defaultPin in step (its tests check).
MINIO_MODULE="github.com/minio/minio"
MINIO_PIN="${MEDIAFS_MINIO_PIN:-v0.0.0-20260212201848-7aac2a2c5b7c}"

cache_dir="${MEDIAFS_CACHE:-${HOME:?HOME is not set}/.cache/mediafs}"
bin_dir="$cache_dir/bin"
# The name carries the pin and the patch, so a machine holding an older
# cached binary (unpatched, or another pin) builds this one instead of
# reusing that.
minio="$bin_dir/minio-$MINIO_PIN-flushfix"

log() { printf 'install-minio: %s\n' "$*" >&2; }

works() { [[ -x "$1" ]] && "$1" --version >/dev/null 2>&1; }

if works "$minio"; then
	printf '%s\n' "$minio"
	exit 0
fi

if ! command -v go >/dev/null 2>&1; then
	export PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
	log "go not found on PATH or in /usr/local/go/bin"
	exit 1
fi

mkdir -p "$bin_dir"

# Two test runs starting at once must not both spend minutes building, nor
# see a half-written binary: hold a lock, build into a private directory and
# rename into place.
exec 9>"$bin_dir/.minio.lock"
if command -v flock >/dev/null 2>&1; then
	flock 9
fi
if works "$minio"; then
	printf '%s\n' "$minio"
	exit 0
fi

tmp_bin="$(mktemp -d "$bin_dir/.minio-build.XXXXXX")"
trap 'chmod -R u+w "$tmp_bin" 2>/dev/null; rm -rf "$tmp_bin"' EXIT

log "building $MINIO_MODULE@$MINIO_PIN with the flush fix (takes a few minutes the first time)"
start=$SECONDS
# Force -mod=mod in case the caller's GOFLAGS ask for vendoring, and build
# outside any workspace: the module's own go.mod and go.sum (both in the
# module zip) choose every dependency, as `go install pkg@version` would.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" GOWORK=off
src_dir="$(
	cd "$tmp_bin"
	go mod download -json "$MINIO_MODULE@$MINIO_PIN" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'
)"
if [[ -z $src_dir || ! -f $src_dir/go.sum ]]; then
	log "go mod download $MINIO_MODULE@$MINIO_PIN gave no source directory with a go.sum"
	exit 1
fi
# The module cache is read-only; build a writable copy.
cp -R "$src_dir" "$tmp_bin/src"
chmod -R u+w "$tmp_bin/src"
if grep -q 'func (w \*trackingResponseWriter) Flush' "$tmp_bin"/src/cmd/*.go; then
	log "$MINIO_MODULE@$MINIO_PIN already has trackingResponseWriter.Flush; building it unchanged"
else
	cat >"$tmp_bin/src/cmd/mediafs_flush.go" <<'GO'
// Added by mediafs's scripts/install-minio.sh: upstream's
// trackingResponseWriter hides the Flush of the writer it wraps, so
// xhttp.Flush is a no-op behind s3APIMiddleware and streamed responses
// (ListenBucketNotification) sit in the server's buffer.

package cmd

import "net/http"

// Flush sends any buffered data to the client, if the wrapped writer can.
func (w *trackingResponseWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
GO
fi
(
	cd "$tmp_bin/src"
	go build -o "$tmp_bin/minio" .
) >&2

if ! works "$tmp_bin/minio"; then
	log "built $tmp_bin/minio but \`minio --version\` fails"
	exit 1
fi
mv -f "$tmp_bin/minio" "$minio"
log "installed $minio in $((SECONDS - start))s"
printf '%s\n' "$minio"
