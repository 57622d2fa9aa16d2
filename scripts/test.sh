#!/usr/bin/env bash
# Runs the whole test suite the way CI does, on a fresh Debian machine as
# root: installs what is missing (FUSE, MinIO), then `go vet` and `go test`.
#
#   scripts/test.sh                          # everything: ./...
#   scripts/test.sh -v -run X ./cmd/mediafs  # arguments go to `go test`
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:$PATH"

log() { printf 'test.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

command -v go >/dev/null 2>&1 || die "go not found on PATH or in /usr/local/go/bin"

# Debian packages the end-to-end tests need, keyed by a command each provides.
declare -A pkg_for=(
	[fusermount3]=fuse3
	[python3]=python3
	[rsync]=rsync
	[curl]=curl
)
missing=()
for cmd in "${!pkg_for[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_for[$cmd]}")
done
if ((${#missing[@]} > 0)); then
	command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	sudo=()
	if [[ $(id -u) -ne 0 ]]; then
		command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]}: run as root or install them"
		sudo=(sudo --preserve-env=DEBIAN_FRONTEND)
	fi
	"${sudo[@]}" apt-get update -q
	"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The fuse module is built in on most kernels and modprobe may be absent in
# a container; only /dev/fuse itself matters.
if [[ ! -e /dev/fuse ]]; then
	modprobe fuse >/dev/null 2>&1 || true
fi
[[ -c /dev/fuse ]] || die "/dev/fuse is missing: load the fuse module (modprobe fuse) or run the container with --device /dev/fuse"

MEDIAFS_MINIO_BIN="$(scripts/install-minio.sh)"
export MEDIAFS_MINIO_BIN
log "using MinIO $MEDIAFS_MINIO_BIN"

if (($# == 0)); then
	set -- ./...
fi

go vet ./...
go test -count=1 -timeout 60m "$@"
