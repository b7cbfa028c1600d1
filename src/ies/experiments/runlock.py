"""One process per run folder: an exclusive lock held for the run's life, and durable atomic writes.

The lock is ``fcntl.flock`` on ``<folder>/.ies.lock``. The kernel releases it when the
process ends, however it ends (SIGKILL included), so a crashed run never leaves a folder
locked; the file also records the holder's pid and host, which the refusal names. Where
``flock`` is not available (some network filesystems) the recorded pid/host decide: a
holder on this host whose pid is gone is stale and is taken over.

Locks are counted per process: taking a folder this process already holds just counts
up, so ``prepare_out`` can lock the ``--out`` folder and the training of the run inside
it (the same folder for ``ies train``) can lock it again.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

__all__ = ["LOCK_NAME", "RunFolderError", "FolderLocked", "acquire", "release", "release_all", "locked", "holder", "atomic_write_bytes",
           "atomic_write_json", "remove_orphan_tmp"]

LOCK_NAME = ".ies.lock"
_HELD: Dict[str, Tuple[int, int]] = {}  # realpath of the folder -> (fd, count)


class RunFolderError(ValueError):
    """A run folder that cannot be used as it is (locked, damaged, edited): one line, exit 2 in the CLI."""


class FolderLocked(RunFolderError):
    """Another live process holds the folder."""


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def holder(folder: os.PathLike) -> Optional[Dict[str, Any]]:
    """What the lock file says about its holder (``{"pid", "host", "since"}``), or None."""
    try:
        d = json.loads((Path(folder) / LOCK_NAME).read_text() or "null")
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(who: Optional[Dict[str, Any]]) -> bool:
    """Without ``flock``: no holder, this process, or a pid on this host that is gone. A holder on
    another host cannot be checked from here, so it counts as live (the refusal says how to clear it)."""
    if not who:
        return True
    if who.get("host") != socket.gethostname():
        return False
    return who.get("pid") == os.getpid() or not _pid_alive(who.get("pid"))


def _refuse(folder: Path, who: Optional[Dict[str, Any]]) -> FolderLocked:
    if who:
        by = f"process {who.get('pid')} on {who.get('host')} (since {who.get('since')})"
    else:
        by = "another process"
    elsewhere = bool(who) and who.get("host") != socket.gethostname()
    clear = f"; if that run is gone, delete {folder / LOCK_NAME}" if elsewhere else \
        f" (a crashed run's lock is released by the system; {LOCK_NAME} records the holder)"
    return FolderLocked(f"{folder} is in use by {by}; wait for it to finish or stop it, then run again{clear}")


def _flock(fd: int) -> bool:
    """True if locked, False if another process holds it; OSError where ``flock`` is not available."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the recorded holder decides
        raise OSError(errno.ENOSYS, "flock is not available") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def acquire(folder: os.PathLike) -> None:
    """Lock ``folder`` for this process; :class:`FolderLocked` names the live holder otherwise."""
    folder = Path(folder)
    key = _key(folder)
    if key in _HELD:
        fd, n = _HELD[key]
        _HELD[key] = (fd, n + 1)
        return
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunFolderError(f"cannot create the lock file {path}: {e.strerror}; check that {folder} is writable "
                             "and the disk is not full") from None
    try:
        ok = _flock(fd)
    except OSError:  # no flock here: the recorded holder decides
        ok = _stale(holder(folder))
    if not ok:
        who = holder(folder)
        os.close(fd)
        raise _refuse(folder, who)
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
    except OSError as e:
        os.close(fd)
        raise RunFolderError(f"cannot write the lock file {path}: {e.strerror}; check the disk and permissions") from None
    _HELD[key] = (fd, 1)


def release(folder: os.PathLike) -> None:
    """Undo one :func:`acquire`; the last one unlocks (the file stays; an unlocked file is not a lock)."""
    key = _key(Path(folder))
    if key not in _HELD:
        return
    fd, n = _HELD[key]
    if n > 1:
        _HELD[key] = (fd, n - 1)
        return
    del _HELD[key]
    os.close(fd)  # closing the descriptor drops the flock


def release_all() -> None:
    """Unlock every folder this process holds (the CLI calls it when a command ends)."""
    for key in list(_HELD):
        fd, _ = _HELD.pop(key)
        os.close(fd)


@contextmanager
def locked(folder: os.PathLike) -> Iterator[None]:
    acquire(folder)
    try:
        yield
    finally:
        release(folder)


def remove_orphan_tmp(folder: os.PathLike) -> int:
    """Delete ``.*.tmp`` files a killed writer left in ``folder`` (call with the folder locked)."""
    n = 0
    for f in Path(folder).glob(".*.tmp"):
        try:
            f.unlink()
            n += 1
        except OSError:
            pass
    return n


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: os.PathLike, data: bytes, *, sync: bool = True) -> None:
    """``path`` holds either its old bytes or ``data``, never a part: tmp file, rename.

    A killed process cannot tear it (the rename is atomic); ``sync`` also survives a power loss:
    the file is fsynced before the rename and the folder after it (which commits the folder's
    earlier renames too, so a batch of writes needs ``sync`` only on its last).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not stay full of our tmp file
        raise
    if sync:
        _fsync_dir(path.parent)


def atomic_write_json(path: os.PathLike, obj: Any, *, sync: bool = True) -> None:
    from .tables import _clean

    atomic_write_bytes(path, json.dumps(_clean(obj), indent=2, default=str).encode(), sync=sync)
