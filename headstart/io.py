"""Crash-safe files: write to a temp file beside the target, fsync, rename; clean up after dead writers.

At the bottom of the package (every layer writes files: features, checkpoints, bundles, run dirs), so it
imports nothing of headstart but ``errors``.

A temp name carries its writer's pid and host, so a later process can tell a leftover of a killed
run (remove it) from a write in progress in another live process (leave it alone).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

from headstart.errors import name_file

__all__ = ["atomic_write", "clean_stale_tmp", "tmp_path_for"]

_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 24 * 3600  # temp files of other hosts (shared cache dirs) are only removed when this old


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def tmp_path_for(final: Path) -> Path:
    """A temp path next to ``final`` that ``clean_stale_tmp`` removes once its writer is dead."""
    # Pid and host in the name let a later process tell a dead writer's leftovers from a live write.
    return final.with_name(f"{_TMP_PREFIX}{os.getpid()}-{_host_tag()}-{uuid.uuid4().hex[:8]}-{final.name}")


def atomic_write(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` so that it is either absent or complete, even after SIGKILL or power loss."""
    tmp = tmp_path_for(final)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            name_file(e, final)  # ENOSPC from write/fsync names no file: say where the disk was full
        raise
    _fsync_dir(final.parent)


def _fsync_dir(d: Path) -> None:
    """Persist the rename itself; not possible (nor needed) on Windows."""
    if os.name != "posix":
        return
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale_tmp(d: Path) -> None:
    """Remove temp files (and dirs) of writers that died: this host's when the pid is gone, any after a day."""
    if not d.is_dir():
        return
    host = _host_tag()
    for p in d.glob(f"{_TMP_PREFIX}*"):
        try:
            pid, owner, _ = p.name[len(_TMP_PREFIX):].split("-", 2)
            old = time.time() - p.stat().st_mtime > _STALE_TMP_SECONDS
            if old or (owner == host and not _pid_alive(int(pid))):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        except (ValueError, IndexError, OSError):
            continue


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows: rely on the age there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True
