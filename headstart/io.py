"""Crash-safe files: write to a temp file beside the target, fsync, rename; clean up after dead writers.

At the bottom of the package (every layer writes files: features, checkpoints, bundles, run dirs), so it
imports nothing of headstart but ``errors``.

A temp name carries its writer's pid and host, so a later process can tell a leftover of a killed
run (remove it) from a write in progress in another live process (leave it alone).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headstart.errors import ConfigError, HeadstartError, name_file

__all__ = ["LOCK_NAME", "MANIFEST", "DirectoryBusy", "atomic_write", "check_sealed", "check_writable_dir",
           "clean_stale_tmp", "fingerprint", "is_tmp", "lock_dir", "new_run_id", "seal_dir", "tmp_path_for",
           "writer_of"]

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


def is_tmp(p: Path) -> bool:
    """Whether ``p`` is a temp file of ``atomic_write`` (a write in progress or a dead writer's leftover)."""
    return p.name.startswith(_TMP_PREFIX)


# ---- one writer per directory ---------------------------------------------------------------------------

LOCK_NAME = ".headstart.lock"  # inside the directory it guards; left in place (unlinking a held lock file races)
_PID_WAIT_S = 2.0  # the holder writes its pid right after locking: how long a loser waits to read it


class DirectoryBusy(HeadstartError):
    """Another live process holds the directory's lock."""


def new_run_id() -> str:
    """A fresh id stamped on every file of one run (or one extraction), so readers can tell runs apart."""
    return uuid.uuid4().hex[:16]


@contextmanager
def lock_dir(d: str | Path, *, what: str = "--out") -> Iterator[Path]:
    """Hold an exclusive OS lock on directory ``d`` (created if needed) for the ``with`` block.

    A second writer — another process, or this one through another open — fails at once with one line
    naming the holder's PID, instead of interleaving its files with the holder's. The OS drops the lock when
    the holder exits, even on SIGKILL, so a killed run never leaves a stale lock behind.
    """
    d = Path(d)
    check_writable_dir(d, what=what)
    created = not d.exists()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise name_file(e, d) from None
    if os.name != "posix":  # pragma: no cover - fcntl is POSIX only: one writer is then the user's job
        yield d
        return
    import fcntl

    lock = d / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise name_file(e, lock) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryBusy(f"{d} is being written by another headstart process ({_holder(fd)}); "
                                f"wait for it to finish, or choose another {what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield d
    except BaseException:
        if created and [p.name for p in d.iterdir()] == [LOCK_NAME]:  # refused up front: leave no trace
            lock.unlink(missing_ok=True)
            d.rmdir()
        raise
    finally:
        os.close(fd)  # releases the lock


def writer_of(d: str | Path) -> str | None:
    """``"PID n"`` when a live process holds ``d``'s lock (a reader must not trust files being rewritten),
    else None. Takes a shared lock for an instant, so it never blocks and never stops a writer."""
    lock = Path(d) / LOCK_NAME
    if os.name != "posix" or not lock.is_file():
        return None
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            return None if holder == f"PID {os.getpid()}" else holder  # this process writes it: it knows
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """``PID n`` of the lock's holder, read from the lock file (waiting briefly if it is still writing it)."""
    deadline = time.monotonic() + _PID_WAIT_S
    while True:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
        if text and text[0].isdigit():
            host = f" on {text[1]}" if len(text) > 1 and text[1] != socket.gethostname() else ""
            return f"PID {text[0]}{host}"
        if time.monotonic() > deadline:
            return "PID unknown"
        time.sleep(0.02)


# ---- places that cannot hold output -----------------------------------------------------------------------

_PSEUDO_FS = ("/proc", "/sys", "/dev")


def check_writable_dir(d: str | Path, *, what: str = "--out") -> None:
    """Refuse, before any work, a directory that cannot hold output: a file, a path under a file, a
    pseudo file system (/proc, /sys, /dev), or a parent without write permission. One line each."""
    d = Path(d)
    real = os.path.realpath(d)
    top = next((p for p in _PSEUDO_FS if real == p or real.startswith(p + os.sep)), None)
    if top and not real.startswith("/dev/shm"):  # /dev/shm is a real (memory) file system
        raise ConfigError(f"{what} {d} is in {top}, a system folder that cannot hold files; "
                          f"choose a folder on disk for {what}")
    probe = d
    while not probe.exists():  # the nearest existing ancestor must be a writable directory
        if probe.is_symlink():  # a dangling link: mkdir would fail with a confusing FileExistsError
            raise ConfigError(f"{what} {d}: {probe} is a broken symbolic link; choose another {what}")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == d else f"is under {probe}, which is a file"
        raise ConfigError(f"{what} {d} {where}, not a folder; choose a folder for {what}")
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(probe))


# ---- fingerprints: do these files belong together? --------------------------------------------------------

_FULL_HASH_BYTES = 1 << 20  # files up to this size are hashed whole
_SAMPLES, _SAMPLE_BYTES = 64, 4096  # larger ones (codes arrays): size + 64 evenly spaced 4 KB blocks


def fingerprint(file: str | Path) -> str:
    """A digest that tells this file from another run's version of it, cheap even for gigabytes of codes.

    Small files are hashed whole. For large ones, the size and 64 evenly spaced blocks are hashed: another
    extraction's codes differ in every block, and reading 256 KB keeps ``load_codes`` a memory map, not a
    full read. (It is a check that files belong together, not protection against a forger.)
    """
    h = hashlib.sha256()
    with open(file, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode())
        if size <= _FULL_HASH_BYTES:
            h.update(f.read())
        else:
            step = (size - _SAMPLE_BYTES) // (_SAMPLES - 1)
            for i in range(_SAMPLES):
                h.update(os.pread(f.fileno(), _SAMPLE_BYTES, i * step))
    return h.hexdigest()[:32]


# ---- a run directory's manifest: which files belong to one run --------------------------------------------

MANIFEST = "run.json"
_MANIFEST_FORMAT = "headstart.run/1"


def seal_dir(d: str | Path, run_id: str, *, skip: tuple[str, ...] = ()) -> Path:
    """Record ``run_id`` and a fingerprint of every file now in ``d`` (except the lock, temp files and the
    ``skip`` subfolders) in ``d/run.json``, written last: the run is complete, and these files are it."""
    d = Path(d)
    files = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if (p.is_file() and not p.is_symlink() and p.name not in (LOCK_NAME, MANIFEST) and not is_tmp(p)
                and rel.split("/")[0] not in skip):
            files[rel] = fingerprint(p)
    data = {"format": _MANIFEST_FORMAT, "run_id": run_id, "files": files}
    atomic_write(d / MANIFEST, json.dumps(data, indent=1).encode())
    return d / MANIFEST


def check_sealed(d: str | Path, names: tuple[str, ...]) -> str | None:
    """Refuse to read ``names`` (paths relative to ``d``) when they do not belong to the run ``d/run.json``
    records, or while another process is writing ``d``. Returns the run id (None: a run written before
    manifests existed, or one whose first run was cut short — its files came from one run then).

    Checks only what the caller reads: a rerun of the same command rewrites files identically."""
    d = Path(d)
    if holder := writer_of(d):
        raise HeadstartError(f"{d} is being written by another headstart process ({holder}); wait for it to "
                             "finish, then try again")
    m = d / MANIFEST
    if not m.is_file():
        return None
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
        run_id, files = str(data["run_id"]), dict(data["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HeadstartError(f"{m} is damaged ({type(e).__name__}); re-run `headstart fit` into this "
                             "folder with --overwrite") from None
    for name in names:
        file = d / name
        if not file.is_file():
            if name in files:
                raise HeadstartError(f"{file} is missing: run {run_id} is incomplete; re-run `headstart fit` "
                                     "with --overwrite")
            continue
        if files.get(name) != fingerprint(file):
            raise HeadstartError(f"{file} does not belong to run {run_id} that {m} records (another run, or an "
                                 "interrupted rerun, wrote it); its figures would be wrong: re-run `headstart "
                                 "fit` into this folder with --overwrite, or use another run directory")
    return run_id
