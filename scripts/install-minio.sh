#!/usr/bin/env bash
# Installs the pinned MinIO server used by the end-to-end tests into a cache
# directory, once, and prints the binary's path on stdout (progress goes to
# stderr). Later runs reuse the binary when it exists and `minio --version`
# works.
#
# Environment:
#   MEDIAFS_CACHE        cache root (default $HOME/.cache/mediafs); the binary
#                        is $MEDIAFS_CACHE/bin/minio
#   MEDIAFS_MINIO_PIN    module version to build (default: the pin below)
set -euo pipefail

# MinIO publishes no semver tags for its Go module; a pseudo-version of a
# master commit is the way to pin one. The first build takes a few minutes.
MINIO_MODULE="github.com/minio/minio"
MINIO_PIN="${MEDIAFS_MINIO_PIN:-v0.0.0-20260212201848-7aac2a2c5b7c}"

cache_dir="${MEDIAFS_CACHE:-${HOME:?HOME is not set}/.cache/mediafs}"
bin_dir="$cache_dir/bin"
minio="$bin_dir/minio"

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
trap 'rm -rf "$tmp_bin"' EXIT

log "building $MINIO_MODULE@$MINIO_PIN (takes a few minutes the first time)"
start=$SECONDS
# `go install pkg@version` ignores any go.mod around it; run it from a
# neutral directory anyway, and force -mod=mod in case the caller's GOFLAGS
# ask for vendoring, which a versioned install refuses.
(
	cd "$tmp_bin"
	GOBIN="$tmp_bin" GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" \
		go install "$MINIO_MODULE@$MINIO_PIN"
) >&2

if ! works "$tmp_bin/minio"; then
	log "built $tmp_bin/minio but \`minio --version\` fails"
	exit 1
fi
mv -f "$tmp_bin/minio" "$minio"
log "installed $minio in $((SECONDS - start))s"
printf '%s\n' "$minio"
