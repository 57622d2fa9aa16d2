#!/usr/bin/env python3
"""Two Django instances sharing one MEDIA_ROOT, each through its own mount
of the bucket (standard library only; Django is not needed).

Usage: django_two_instances.py ROOT_A ROOT_B [UPLOADS_EACH]

Each instance is a process that saves uploads the way Django's
FileSystemStorage.save does (see django_storage.py for the details
followed): get_available_name() with a random 7-character suffix while the
name exists, then the file opened O_WRONLY|O_CREAT|O_EXCL under flock and
written in 64 KiB chunks, a new available name on EEXIST (another worker,
here on the other machine, took it first), then chmod 0644. Every upload
takes that path (all are under FILE_UPLOAD_MAX_MEMORY_SIZE, Django's 2.5
MB default): a spooled upload is moved onto its name by file_move_safe,
an os.access check then os.rename, which is not exclusive even between
two workers on one local disk, so no storage can make it safe. Most
uploads use a handful of file names, so the two instances race for the
same names all the time. Both start together (a barrier).

Then each instance reads every upload of the other back through its own
mount until the bytes are right (bounded), and both list the whole tree
until the listings agree (bounded). It prints one JSON object: each
instance's saved names with sizes and SHA-256, the slowest read-back, and
whether the listings agreed. A failed check raises (exit status not 0).
"""

import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import random
import string
import sys
import time

CHUNK = 64 * 1024
FILE_UPLOAD_PERMISSIONS = 0o644
READ_BACK_BOUND = 20.0  # seconds
NAMES = [
    "avatars/photo.jpg",
    "avatars/photo.jpg",
    "avatars/photo.jpg",
    "uploads/2024/05/07/scan.pdf",
    "uploads/2024/05/07/scan.pdf",
    "uploads/2024/05/07/résumé (final).pdf",
    "videos/clip.mp4",
]


def get_random_string(n, rng):
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


class Storage:
    def __init__(self, root, rng):
        self.root = root
        self.rng = rng
        self.eexist = 0

    def path(self, name):
        return os.path.join(self.root, name)

    def exists(self, name):
        return os.path.lexists(self.path(name))

    def get_available_name(self, name):
        dir_name, file_name = os.path.split(name)
        file_root, file_ext = os.path.splitext(file_name)
        while self.exists(name):
            name = os.path.join(dir_name, "%s_%s%s" % (file_root, get_random_string(7, self.rng), file_ext))
        return name

    def _save(self, name, data):
        full_path = self.path(name)
        os.makedirs(os.path.dirname(full_path), exist_ok=True)
        while True:
            try:
                fd = os.open(full_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                # The name was taken between get_available_name() and
                # the open: pick another.
                self.eexist += 1
                name = self.get_available_name(name)
                full_path = self.path(name)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # django.core.files.locks.lock
                with os.fdopen(fd, "wb", closefd=False) as f:
                    for i in range(0, len(data), CHUNK):
                        f.write(data[i:i + CHUNK])
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            break
        os.chmod(full_path, FILE_UPLOAD_PERMISSIONS)
        return name

    def save(self, name, data):
        return self._save(self.get_available_name(name), data)


def walk(root):
    """The tree as an instance sees it: (path, size) of every file."""
    out = []
    for d, dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out.append((os.path.relpath(p, root), os.stat(p).st_size))
    return sorted(out)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def instance(who, root, n, barrier, to_peer, from_peer, results):
    rng = random.Random()
    st = Storage(root, rng)
    barrier.wait()
    saved = {}
    for i in range(n):
        name = NAMES[i % len(NAMES)]
        size = rng.choice([0, 1, 1000, 70000, 300000]) + rng.randrange(100)
        data = os.urandom(size)
        got = st.save(name, data)
        check(got not in saved, "%s: save() returned %s twice" % (who, got))
        check(os.path.getsize(st.path(got)) == size, "%s: size of %s right after save" % (who, got))
        saved[got] = {"size": size, "sha256": hashlib.sha256(data).hexdigest()}
    done_at = time.time()
    to_peer.put(saved)
    theirs = from_peer.get()
    # Read the other instance's uploads back through this mount.
    slowest = 0.0
    for name, want in sorted(theirs.items()):
        start = time.time()
        while True:
            try:
                with open(st.path(name), "rb") as f:
                    b = f.read()
                if len(b) == want["size"] and hashlib.sha256(b).hexdigest() == want["sha256"]:
                    break
                last = "%d bytes, want %d" % (len(b), want["size"])
            except OSError as e:
                last = repr(e)
            check(time.time() - start < READ_BACK_BOUND,
                  "%s: the other instance's %s not readable with its bytes after %ss: %s" % (who, name, READ_BACK_BOUND, last))
            time.sleep(0.01)
        slowest = max(slowest, time.time() - max(start, done_at))
    results.put({"who": who, "saved": saved, "slowest_read_back": slowest, "eexist_retries": st.eexist})


def main():
    root_a, root_b = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    a_to_b, b_to_a, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=instance, args=("A", root_a, n, barrier, a_to_b, b_to_a, results)),
        ctx.Process(target=instance, args=("B", root_b, n, barrier, b_to_a, a_to_b, results)),
    ]
    for p in procs:
        p.start()
    out = {}
    for _ in procs:
        r = results.get(timeout=600)
        out[r["who"]] = r
    for p in procs:
        p.join()
        check(p.exitcode == 0, "an instance failed (exit %s)" % p.exitcode)
    a, b = out["A"]["saved"], out["B"]["saved"]
    both = set(a) & set(b)
    check(not both, "names saved by both instances (one upload lost): %r" % sorted(both))
    # Both sides list the same tree, every upload of both in it.
    want = sorted([(k, v["size"]) for k, v in list(a.items()) + list(b.items())])
    start = time.time()
    while True:
        la, lb = walk(root_a), walk(root_b)
        if la == lb == want:
            break
        check(time.time() - start < READ_BACK_BOUND,
              "listings differ after %ss:\nA-only %r\nB-only %r\nmissing %r" % (
                  READ_BACK_BOUND, sorted(set(la) - set(lb)), sorted(set(lb) - set(la)),
                  sorted(set(want) - set(la) - set(lb))))
        time.sleep(0.05)
    print(json.dumps({
        "a": a, "b": b,
        "slowest_read_back": max(out["A"]["slowest_read_back"], out["B"]["slowest_read_back"]),
        "eexist_retries": out["A"]["eexist_retries"] + out["B"]["eexist_retries"],
        "listings_equal_after": time.time() - start,
    }, sort_keys=True))


if __name__ == "__main__":
    main()
