#!/usr/bin/env bash
# The README's demo: one bucket, two "servers" (two mediafs mounts with
# their own caches), a file written on one and read on the other.
#
#   scripts/demo.sh          # run it, then clean up
#   scripts/demo.sh --keep   # leave everything running until Ctrl-C
#
# It installs what is missing (fuse3 and curl with apt-get, MinIO with
# scripts/install-minio.sh, which builds it the first time), builds mediafs,
# starts MinIO on 127.0.0.1 with throwaway random credentials and a
# temporary data directory, and mounts with scripts/mount.mediafs, the
# fstab helper. Everything lives in one temporary directory, removed on
# exit. Needs root (or a user allowed to use /dev/fuse and fusermount3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:$PATH"

keep=0
case "${1:-}" in
"") ;;
--keep) keep=1 ;;
*)
	echo "usage: $0 [--keep]" >&2
	exit 2
	;;
esac

bold=$'\e[1m' off=$'\e[0m'
[[ -t 1 ]] || bold="" off=""
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$off"; }
run() {
	printf '$ %s\n' "$*"
	"$@"
}
die() {
	printf 'demo: %s\n' "$*" >&2
	exit 1
}

# --- what the demo needs --------------------------------------------------
missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]} > 0)); then
	if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
		step "installing ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	else
		die "missing ${missing[*]}: install them (as root, scripts/test.sh does)"
	fi
fi
command -v go >/dev/null 2>&1 || die "go not found on PATH or in /usr/local/go/bin"
[[ -c /dev/fuse ]] || modprobe fuse >/dev/null 2>&1 || true
[[ -c /dev/fuse ]] || die "/dev/fuse is missing (modprobe fuse, or run the container with --device /dev/fuse)"

# --- cleanup, whatever happens ----------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/mediafs-demo.XXXXXX")
minio_pid=""
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	step "cleaning up"
	local s pid
	for s in a b; do
		if grep -qs " $work/server-$s/media " /proc/self/mountinfo; then
			printf '$ umount %s\n' "$work/server-$s/media"
			umount "$work/server-$s/media" 2>/dev/null || fusermount3 -u "$work/server-$s/media"
		fi
	done
	# After the unmount each daemon uploads what is pending, then exits.
	for s in a b; do
		pid=$(cat "$work/server-$s/mediafs.pid" 2>/dev/null) || continue
		for _ in $(seq 300); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			echo "mediafs of server $s (pid $pid) still running; stopping it"
			kill "$pid"
		fi
	done
	for s in a b; do
		grep -qs " $work/server-$s/media " /proc/self/mountinfo && fusermount3 -uz "$work/server-$s/media"
	done
	if [[ -n $minio_pid ]]; then
		kill "$minio_pid" 2>/dev/null
		wait "$minio_pid" 2>/dev/null
	fi
	if ((rc != 0)); then
		for f in "$work"/server-*/mediafs.log "$work/minio.log"; do
			[[ -s $f ]] && printf -- '--- %s ---\n' "$f" && tail -n 20 "$f"
		done
	fi
	rm -rf "$work"
	echo "removed $work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- MinIO ------------------------------------------------------------------
step "installing MinIO (built once, then cached)"
minio=$(scripts/install-minio.sh)
echo "$minio"

step "building mediafs"
mkdir -p "$work/bin"
run go build -o "$work/bin/mediafs" ./cmd/mediafs
mediafs=$work/bin/mediafs

rand() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
free_port() {
	local p
	for _ in $(seq 50); do
		p=$((20000 + $(rand 2 | sed 's/^/0x/') % 40000))
		# Nothing answers: free (as far as a demo cares).
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	die "no free port found"
}

# Throwaway credentials: in the environment of MinIO and mediafs, never on
# a command line (curl reads them from its standard input).
AWS_ACCESS_KEY_ID="demo-$(rand 6)"
AWS_SECRET_ACCESS_KEY=$(rand 20)
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
unset AWS_SESSION_TOKEN MEDIAFS_ACCESS_KEY_ID MEDIAFS_SECRET_ACCESS_KEY

port=$(free_port)
console=$(free_port)
endpoint=http://127.0.0.1:$port
step "starting MinIO on $endpoint (data in $work/minio-data)"
MINIO_ROOT_USER=$AWS_ACCESS_KEY_ID MINIO_ROOT_PASSWORD=$AWS_SECRET_ACCESS_KEY MINIO_BROWSER=off \
	"$minio" server --address "127.0.0.1:$port" --console-address "127.0.0.1:$console" "$work/minio-data" \
	>"$work/minio.log" 2>&1 &
minio_pid=$!
for i in $(seq 300); do
	curl -sf -o /dev/null "$endpoint/minio/health/ready" && break
	kill -0 "$minio_pid" 2>/dev/null || die "MinIO exited: $(tail -n 5 "$work/minio.log")"
	((i < 300)) || die "MinIO did not start within 30s"
	sleep 0.1
done
echo "ready"

# s3 ARGS...: a signed S3 request with curl, credentials from stdin.
s3() {
	printf 'user = "%s:%s"\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" |
		curl -sS -f -K - --aws-sigv4 "aws:amz:us-east-1:s3" "$@"
}

bucket=demo
step "creating bucket $bucket"
printf '$ curl --aws-sigv4 aws:amz:us-east-1:s3 -X PUT %s/%s\n' "$endpoint" "$bucket"
s3 -X PUT "$endpoint/$bucket"

# --- two servers ------------------------------------------------------------
mount_server() {
	local s=$1 dir=$work/server-$1
	mkdir -p "$dir/media"
	step "server $s: mounting $bucket on $dir/media"
	local opts="endpoint=$endpoint,cache_dir=$dir/cache,writeback_delay=500ms,log_file=$dir/mediafs.log,pid_file=$dir/mediafs.pid"
	printf '$ mount.mediafs %s %s -o %s\n' "$bucket" "$dir/media" "$opts"
	MEDIAFS_BIN=$mediafs scripts/mount.mediafs "$bucket" "$dir/media" -o "$opts"
	grep " $dir/media " /proc/self/mountinfo | awk '{ print "mounted: " $5 " type " $(NF-2) " from " $(NF-1) }'
}
mount_server a
mount_server b
A=$work/server-a/media
B=$work/server-b/media

step "server a: writing files"
run mkdir "$A/photos"
# shellcheck disable=SC2016 # shown, not run
printf '$ echo "hello from server a, $(date)" > %s\n' "$A/hello.txt"
echo "hello from server a, $(date -u '+%Y-%m-%d %H:%M:%S UTC')" >"$A/hello.txt"
printf '$ head -c 3M /dev/urandom > %s\n' "$A/photos/cat.jpg"
head -c 3145728 /dev/urandom >"$A/photos/cat.jpg"
run ls -l "$A" "$A/photos"

step "server a: waiting until the changes are in the bucket"
run "$mediafs" flush --cache-dir "$work/server-a/cache"

step "server b: reading them"
start=$(date +%s%N)
until [[ -f $B/hello.txt ]] && cmp -s "$A/photos/cat.jpg" "$B/photos/cat.jpg" 2>/dev/null; do
	(($(date +%s%N) - start < 15000000000)) || die "server b does not see the files after 15s"
	sleep 0.1
done
printf 'visible on server b after %d ms\n' $((($(date +%s%N) - start) / 1000000))
run cat "$B/hello.txt"
run cmp "$A/photos/cat.jpg" "$B/photos/cat.jpg" && echo "photos/cat.jpg: same bytes on both servers"

step "the bucket, straight from MinIO"
printf '$ curl --aws-sigv4 ... "%s/%s?list-type=2"\n' "$endpoint" "$bucket"
s3 "$endpoint/$bucket?list-type=2" | grep -o '<Key>[^<]*</Key><LastModified>[^<]*</LastModified><ETag>[^<]*</ETag><Size>[0-9]*' |
	sed -E 's|<Key>([^<]*)</Key><LastModified>([^<]*)</LastModified><ETag>[^<]*</ETag><Size>([0-9]*)|  \2  \3 bytes  \1|'
printf '$ curl --aws-sigv4 ... %s/%s/hello.txt\n' "$endpoint" "$bucket"
s3 "$endpoint/$bucket/hello.txt"

step "server b: status"
run "$mediafs" status --cache-dir "$work/server-b/cache"

if ((keep)); then
	trap 'exit 0' INT TERM
	step "running; press Ctrl-C to clean up"
	cat <<EOF
server a: $A
server b: $B
MinIO:    $endpoint (credentials in this script's environment only)
logs:     $work/server-{a,b}/mediafs.log, $work/minio.log
EOF
	# wait, unlike a foreground sleep, lets the trap run at once.
	while :; do
		sleep 3600 &
		wait $!
	done
fi
