#!/usr/bin/env python3
"""Does to MEDIA_ROOT what Django's FileSystemStorage.save does, with the
standard library only (no Django needed), so the mediafs e2e tests can run
it against a mount and against a local directory and compare.

Usage: django_storage.py MEDIA_ROOT

It follows django/core/files/storage/filesystem.py (_save, get_available_name,
delete, listdir, size, exists) and django/core/files/move.py (file_move_safe)
and django/core/files/uploadedfile.py (TemporaryUploadedFile): small uploads
are written in chunks to a new file opened O_WRONLY|O_CREAT|O_EXCL under an
exclusive flock; large uploads are first spooled to a NamedTemporaryFile in
FILE_UPLOAD_TEMP_DIR (another directory of the same mount) and moved onto the
final name with os.rename while still open. FILE_UPLOAD_PERMISSIONS (0o644)
is applied with os.chmod. Names are made unique with a suffix as Django's
get_available_name does (deterministic here, so that two runs compare).

It checks what it can on the spot (sizes, listdir, exists) and prints one
JSON object: the names save() returned, in order, and the checks it made.
Any failed check raises, so the exit status is not 0.
"""

import errno
import fcntl
import hashlib
import json
import os
import sys
import tempfile

MEDIA_ROOT = os.path.abspath(sys.argv[1])
FILE_UPLOAD_TEMP_DIR = os.path.join(MEDIA_ROOT, "tmp_uploads")
FILE_UPLOAD_PERMISSIONS = 0o644
FILE_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024  # above it: TemporaryUploadedFile
CHUNK = 64 * 1024  # File.DEFAULT_CHUNK_SIZE


def content(seed, n):
    """Deterministic bytes."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        out += block
        block = hashlib.sha256(block).digest()
    return bytes(out[:n])


def suffix(root, n):
    """Stands in for get_random_string(7): 7 alphanumerics."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    h = hashlib.sha256(("%s/%d" % (root, n)).encode()).digest()
    return "".join(alphabet[b % len(alphabet)] for b in h[:7])


def path(name):
    return os.path.join(MEDIA_ROOT, name)


def exists(name):
    return os.path.lexists(path(name))


def get_available_name(name):
    dir_name, file_name = os.path.split(name)
    if ".." in dir_name.split("/"):
        raise ValueError("Detected path traversal attempt in '%s'" % dir_name)
    file_root, file_ext = os.path.splitext(file_name)
    n = 0
    while exists(name):
        n += 1
        name = os.path.join(dir_name, "%s_%s%s" % (file_root, suffix(file_root, n), file_ext))
    return name


class InMemoryUploadedFile:
    def __init__(self, data):
        self.data = data
        self.size = len(data)

    def chunks(self):
        for i in range(0, len(self.data), CHUNK):
            yield self.data[i:i + CHUNK]


class TemporaryUploadedFile:
    """The upload handler spools the request body to FILE_UPLOAD_TEMP_DIR."""

    def __init__(self, data, name):
        _, ext = os.path.splitext(name)
        self.file = tempfile.NamedTemporaryFile(suffix=".upload" + ext, dir=FILE_UPLOAD_TEMP_DIR)
        for i in range(0, len(data), CHUNK):
            self.file.write(data[i:i + CHUNK])
        self.file.flush()
        self.file.seek(0)
        self.size = len(data)

    def temporary_file_path(self):
        return self.file.name

    def close(self):
        try:
            return self.file.close()
        except FileNotFoundError:
            # The file was moved and we can't delete it: fine.
            pass


def file_move_safe(old_file_name, new_file_name, allow_overwrite=False):
    try:
        if os.path.samefile(old_file_name, new_file_name):
            return
    except OSError:
        pass
    if not allow_overwrite and os.access(new_file_name, os.F_OK):
        raise FileExistsError("Destination file %s exists and allow_overwrite is False." % new_file_name)
    try:
        if allow_overwrite:
            os.replace(old_file_name, new_file_name)
        else:
            os.rename(old_file_name, new_file_name)
        return
    except OSError as e:
        raise AssertionError("rename within one mount failed (Django would copy instead): %r" % e)


def _save(name, content, allow_overwrite=False):
    full_path = path(name)
    directory = os.path.dirname(full_path)
    os.makedirs(directory, exist_ok=True)
    if not os.path.isdir(directory):
        raise IOError("%s exists and is not a directory." % directory)
    while True:
        try:
            if hasattr(content, "temporary_file_path"):
                file_move_safe(content.temporary_file_path(), full_path, allow_overwrite)
            else:
                open_flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0)
                if not allow_overwrite:
                    open_flags |= os.O_EXCL
                else:
                    open_flags |= os.O_TRUNC
                fd = os.open(full_path, open_flags, 0o666)
                _file = None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # django.core.files.locks.lock
                    for chunk in content.chunks():
                        if _file is None:
                            _file = os.fdopen(fd, "wb")
                        _file.write(chunk)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    if _file is not None:
                        _file.close()
                    else:
                        os.close(fd)
        except FileExistsError:
            # A race condition: the name was taken between
            # get_available_name() and the open; pick another.
            name = get_available_name(name)
            full_path = path(name)
        else:
            break
    os.chmod(full_path, FILE_UPLOAD_PERMISSIONS)
    return name.replace("\\", "/")


def save(name, data, allow_overwrite=False):
    """Storage.save(): a unique name, then _save()."""
    if not allow_overwrite:
        name = get_available_name(name)
    if len(data) > FILE_UPLOAD_MAX_MEMORY_SIZE:
        f = TemporaryUploadedFile(data, name)
        try:
            return _save(name, f, allow_overwrite)
        finally:
            f.close()
    return _save(name, InMemoryUploadedFile(data), allow_overwrite)


def delete(name):
    try:
        if os.path.isdir(path(name)):
            os.rmdir(path(name))
        else:
            os.remove(path(name))
    except FileNotFoundError:
        pass


def listdir(p):
    directories, files = [], []
    with os.scandir(path(p)) as entries:
        for entry in entries:
            if entry.is_dir():
                directories.append(entry.name)
            else:
                files.append(entry.name)
    return sorted(directories), sorted(files)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    os.makedirs(FILE_UPLOAD_TEMP_DIR, exist_ok=True)
    os.makedirs(FILE_UPLOAD_TEMP_DIR, exist_ok=True)  # every request does it
    saved = []
    sizes = {}

    def do_save(name, data, **kw):
        got = save(name, data, **kw)
        saved.append(got)
        sizes[got] = len(data)
        check(os.path.getsize(path(got)) == len(data), "size of %s after save" % got)
        return got

    # Small uploads (in memory), the same name three times.
    for i in range(3):
        do_save("avatars/user 1/photo.jpg", content("avatar%d" % i, 1000 + i))
    # An upload_to with a date tree and awkward names.
    do_save("uploads/2024/05/07/résumé #1 (final)+v2.pdf", content("cv", 40000))
    do_save("uploads/2024/05/07/100% done?.txt", content("pct", 10))
    do_save("uploads/2024/05/07/empty.txt", b"")
    # Large uploads (spooled to FILE_UPLOAD_TEMP_DIR, moved while open).
    big1 = do_save("videos/clip.mp4", content("clip", 1 << 20))
    big2 = do_save("videos/clip.mp4", content("clip2", 300 * 1024 + 7))
    check(big1 != big2, "two big uploads got one name")
    # The O_EXCL race: _save() straight onto a taken name retries with a
    # new one, as when another worker took it first.
    raced = _save("avatars/user 1/photo.jpg", InMemoryUploadedFile(content("race", 77)))
    check(raced != "avatars/user 1/photo.jpg", "O_EXCL create onto a taken name did not fail")
    saved.append(raced)
    sizes[raced] = 77
    # Overwriting storages (allow_overwrite=True): replace an existing name,
    # small (O_TRUNC) and large (os.replace of the temp file onto it).
    do_save("documents/report.pdf", content("report1", 5000))
    do_save("documents/report.pdf", content("report2", 3000), allow_overwrite=True)
    do_save("documents/manual.pdf", content("manual1", 100000))
    do_save("documents/manual.pdf", content("manual2", 400000), allow_overwrite=True)
    check(os.path.getsize(path("documents/report.pdf")) == 3000, "report.pdf not replaced")
    check(os.path.getsize(path("documents/manual.pdf")) == 400000, "manual.pdf not replaced")
    # A model's old file deleted after a new one was saved.
    old = do_save("thumbs/t.png", content("thumb-old", 2000))
    new = do_save("thumbs/t.png", content("thumb-new", 2100))
    delete(old)
    saved.append("deleted:" + old)
    del sizes[old]
    check(not exists(old), "deleted file still exists")
    check(exists(new), "new thumb missing")
    # Timestamps set by the app (e.g. a sync job keeping the source's).
    for name, mtime in (("documents/report.pdf", 1262304000), (big1, 1300000000)):
        os.utime(path(name), (mtime, mtime))
        check(int(os.stat(path(name)).st_mtime) == mtime, "utime of %s" % name)

    # What the app reads back.
    dirs, files = listdir("avatars/user 1")
    check(dirs == [] and len(files) == 4, "avatars listing %r %r" % (dirs, files))
    dirs, files = listdir("")
    check(dirs == ["avatars", "documents", "thumbs", "tmp_uploads", "uploads", "videos"], "root dirs %r" % dirs)
    check(listdir("tmp_uploads") == ([], []), "temp files left behind: %r" % (listdir("tmp_uploads"),))
    for name, size in sizes.items():
        check(os.stat(path(name)).st_size == size, "stat size of %s" % name)
        check(os.stat(path(name)).st_mode & 0o7777 == FILE_UPLOAD_PERMISSIONS, "mode of %s" % name)
        with open(path(name), "rb") as f:
            check(len(f.read()) == size, "read size of %s" % name)
    print(json.dumps({"saved": saved, "sizes": sizes}, sort_keys=True))


if __name__ == "__main__":
    main()
