"""Files: writing small ones so that a crash never leaves a half-written one, naming unreadable ones, locking."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import uuid

from facemtl.errors import FacemtlError


def unreadable_reason(path):
    """Why `path` cannot be read as a regular file, or `None` when it can be.

    Distinguishes what "no such file" would hide: a symlink loop, a dangling
    link, a folder, a FIFO (which would block a reader forever), a device or a socket.

    Example:
        >>> unreadable_reason("/dev/null")
        'a character device, not a regular file'
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if exc.errno == errno.ENOENT:
            return "a dangling symbolic link" if os.path.islink(path) else "no such file"
        if exc.errno == errno.EACCES:
            return "permission denied"
        return exc.strerror or str(exc)
    if stat.S_ISREG(mode):
        return None if os.access(path, os.R_OK) else "permission denied"
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{kind}, not a regular file"


def temporary_name(path):
    """A hidden temporary name beside `path` (hidden, so no folder reader takes it for data)."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}")


@contextlib.contextmanager
def replaced_atomically(path):
    """Yields a hidden temporary name beside `path` to write to; it becomes `path` only if the block succeeds.

    The rename replaces `path` in one step (a file, or a folder that does not
    exist yet); on an error the temporary file or folder is removed and `path`
    is left as it was. The name keeps `path`'s ending (`.npz`, `.keras`...),
    which some writers require.

    Example:
        >>> with replaced_atomically("cache/maps.npy") as tmp:
        ...     np.save(tmp, maps)
    """
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)


def content_key(settings, *arrays):
    """A cache's key: 16 hex digits of the SHA-1 of JSON-able `settings` and each array's dtype, shape and bytes.

    Example:
        >>> content_key(["framing", 150], np.zeros((2, 48, 48, 3), np.uint8))
        '206ff17bbb3ad7b2'
    """
    import numpy as np  # only the caches need it

    h = hashlib.sha1(json.dumps(settings, default=str).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:16]


def write_text_atomically(path, text):
    """Writes `text` (UTF-8) atomically: see `write_bytes_atomically`."""
    write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path, data):
    """Writes `data` to a temporary file beside `path`, fsyncs it, then renames it over `path`.

    A crash or an error mid-write leaves the previous file as it was (and no
    temporary file behind).
    """
    with replaced_atomically(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomically(path, data, indent=None):
    """Writes `data` as JSON, atomically (see `write_text_atomically`)."""
    write_text_atomically(path, json.dumps(data, indent=indent))


@contextlib.contextmanager
def file_lock(path):
    """Holds an exclusive lock on the file `path` (made, mode 0600, with its folder) across processes.

    Example:
        >>> with file_lock("/tmp/facemtl-example.lock"):
        ...     pass  # one process at a time here
    """
    import fcntl  # POSIX only: imported where a lock is taken

    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def facemtl_home():
    """`$FACEMTL_HOME`, else `~/.cache/facemtl`: the model cache, and the galleries when it is set."""
    return os.environ.get("FACEMTL_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "facemtl")


def writable_folder(folder, what, variable, mode=0o777):
    """Makes `folder` (and its parents) if needed; a folder that cannot be written is one clear error.

    Args:
        folder: the folder. what: what goes there ("the model cache").
        variable: the environment variable that moves it.

    Raises:
        FacemtlError: naming the folder, why, and the variable.
    """
    try:
        os.makedirs(folder, mode=mode, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError("permission denied")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise FacemtlError(f"{folder}: cannot write {what} there ({reason.lower()}); set {variable} to a writable "
                           "folder") from None
    return folder
