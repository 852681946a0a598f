"""Write folders atomically: fill a hidden sibling folder, then swap it into place.

A destination ``parent/name`` has these hidden siblings:

- ``.name.tmp-PID-HOST-RANDOM``: a folder being filled by process PID on host HOST (a
  hash of the host name and process-id namespace), or, just after a swap, the old
  folder about to be deleted;
- ``.name.old-PID-HOST-RANDOM``: the old folder renamed aside (where the file system
  cannot swap two folders in one step), deleted once the new one is in place;
- ``.name.lock``: an empty file locked while a writer puts its folder in place, deleted
  when it is done (a writer that finds the file replaced after it waited for the lock
  takes the new one, so deleting it is safe).

Folders of a process that no longer runs (killed while writing) are cleaned up the next
time any folder is written into the same parent.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from genbound.errors import GenboundError, input_error

try:
    import fcntl
except ImportError:  # not POSIX: filelock (a dependency of torch) locks the file instead
    fcntl = None

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_LEFTOVER = re.compile(
    r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-f]{8}$"
)
_AT_FDCWD = -100  # Linux: a path relative to the working directory
_RENAME_EXCHANGE = 2  # Linux renameat2 flag: swap the two paths


@contextmanager
def atomic_directory(dest: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``dest``; on success it replaces ``dest`` whole.

    Readers see either the complete old ``dest`` or the complete new one. On Linux the
    two are swapped in one step; where the file system cannot do that, the old folder is
    renamed aside and the new one renamed in, so ``dest`` is absent for the moment
    between the two renames (a process killed in that moment leaves the old folder
    aside, and the next write into the same parent puts it back). Concurrent writers of
    the same ``dest`` take turns (a lock file beside it): the last to finish wins, whole.

    On any error in the block the folder is removed and ``dest`` is left as it was. The
    folder is created with the permissions the umask allows, as ``mkdir`` would. Where
    ``dest`` is a symbolic link, the folder it points to is replaced and the link kept.

    Raises:
        GenboundError: ``dest`` exists and is not a folder.
    """
    dest = Path(dest).absolute()
    if dest.is_symlink():
        dest = dest.resolve()
    _check_replaceable(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(dest.parent)
    tmp = _new_private_dir(dest, "tmp")
    try:
        yield tmp
        with _locked(dest):
            _check_replaceable(dest)
            _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write ``tensors`` (contiguous, on the CPU) to a safetensors file at ``path`` with
    the permissions the umask allows (safetensors itself writes through a temporary file
    readable by its owner only)."""
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path))
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process's file-creation mask, read without changing it where the system
    allows (changing it briefly would affect files other threads create meanwhile)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def remove_leftovers(parent: Path) -> None:
    """Delete the hidden folders of writers into ``parent`` that were killed on this
    host (in this process-id namespace); an old folder renamed aside whose destination
    is missing is put back. Folders of writers elsewhere are left alone."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        m = _LEFTOVER.match(entry.name)
        if m is None or not entry.is_dir(follow_symlinks=False):
            continue
        if m["host"] != _host_tag() or _process_alive(int(m["pid"])):
            continue
        path = Path(entry.path)
        if m["kind"] == "old":
            dest = parent / m["name"]
            with _locked(dest):
                if path.exists() and not os.path.lexists(dest):
                    log.warning("restoring %s, left aside by a writer that was killed", dest)
                    os.rename(path, dest)
                    continue
        log.info("removing %s, left by a writer that was killed", path)
        _remove_tree(path)


# ---------------------------------------------------------------------------- internals
def _check_replaceable(dest: Path) -> None:
    if os.path.lexists(dest) and not dest.is_dir():
        raise input_error(
            dest,
            "cannot write a folder here",
            expected="a folder or nothing",
            found="a file",
            hint="choose another output folder or remove it",
            cls=GenboundError,
        )


def _new_private_dir(dest: Path, kind: str) -> Path:
    """A new empty folder ``.NAME.KIND-PID-HOST-RANDOM`` beside ``dest``."""
    while True:
        path = _private_name(dest, kind)
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path


def _private_name(dest: Path, kind: str) -> Path:
    name = f".{dest.name}.{kind}-{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}"
    return dest.with_name(name)


@cache
def _host_tag() -> str:
    """Eight hex digits naming where this process's id is meaningful: the host and, on
    Linux, the process-id namespace (containers on one host may share a host name)."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{namespace}".encode()).hexdigest()[:8]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return True  # cannot tell: leave its folders alone
    return True


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``dest``: ``.NAME.lock`` beside it, deleted on release."""
    lock_path = dest.with_name(f".{dest.name}.lock")
    if fcntl is None:
        from filelock import FileLock

        with FileLock(lock_path):
            yield
        return
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_same_file(fd, lock_path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder deleted this file before releasing it: take the new one
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)  # releases the lock


def _is_same_file(fd: int, path: Path) -> bool:
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)


def _publish(tmp: Path, dest: Path) -> None:
    """Put the complete folder ``tmp`` at ``dest`` (the caller holds the lock)."""
    if not os.path.lexists(dest):
        os.rename(tmp, dest)
    elif _exchange(tmp, dest):
        _remove_tree(tmp)  # now the old folder
    else:
        aside = _private_name(dest, "old")
        os.rename(dest, aside)
        try:
            os.rename(tmp, dest)
        except BaseException:
            os.rename(aside, dest)
            raise
        _remove_tree(aside)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the system cannot (anything but
    Linux 3.15+ with glibc 2.28+, or a file system without the operation)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@cache
def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _remove_tree(path: Path) -> None:
    """Delete a replaced or abandoned folder; a failure leaves it for a later cleanup."""
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning(
            "could not remove %s; a write into the same folder will, once this process ends", path
        )
