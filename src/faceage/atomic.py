"""Atomic file writes: a crash never leaves a half-written result behind.

A result is written to a temporary file beside it, flushed to disk and renamed over the target,
so readers see the old file or the new one, never a mix. Temporary names carry the writing
process's id (``.NAME.p<pid>.<token>.tmp``): what a killed process left behind is recognised
as debris by :func:`remove_stale` (its owner is gone) and removed by the next run, while the
temporaries of a process still writing are left alone.

Files are created with ordinary permissions (``0o666`` less the umask, as ``open`` does), not
the ``0o600`` of :func:`tempfile.mkstemp`.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

_OWNER = re.compile(r"\.p(\d+)\.")


def owner_tag() -> str:
    """``p<pid>``: marks a temporary name as this process's."""
    return f"p{os.getpid()}"


def temp_path(path: str | Path) -> Path:
    """A fresh temporary name beside ``path`` (not created)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{owner_tag()}.{secrets.token_hex(4)}.tmp")


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


def _file_target(path: Path) -> Path:
    """Refuse, in one line, an output path that is a folder (renaming over it would fail after
    the work is done)."""
    from .errors import FaceageError
    if path.is_dir():
        raise FaceageError(f"{path} is a folder: give a file name to write to")
    return path


@contextmanager
def atomic_output(path: str | Path) -> Iterator:
    """``with atomic_output(p) as fh: fh.write(...)``: ``p`` appears complete, or not at all."""
    path = _file_target(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    # O_EXCL: never reuse a name; 0o666 & ~umask, as open() would create it.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_via(path: str | Path, write: Callable[[Path], None]) -> None:
    """For writers that take a file name (``onnx.save``, ``torch.save``): ``write(tmp)`` then
    rename. The writer creates the file itself, so it gets ordinary permissions."""
    path = _file_target(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` an identical file to ``src``, atomically: a hard link when the file system
    allows it (no copy; ``src`` is later *replaced*, never rewritten in place), else a copy."""
    src, dst = Path(src), Path(dst)
    try:
        if os.path.samefile(src, dst):
            return
    except OSError:
        pass
    tmp = temp_path(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
    finally:
        # Also when rename() "did nothing": it does, for two links to one file.
        tmp.unlink(missing_ok=True)


# -- debris of killed processes -------------------------------------------------------------

def owner_pid(name: str) -> int | None:
    """The process id tagged into a temporary name (the last ``.p<pid>.``), if any."""
    found = _OWNER.findall(name)
    return int(found[-1]) if found else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # someone else's live process
        return True
    try:                            # a zombie (killed, not yet reaped) writes nothing more
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale(paths: Iterable[str | Path], unknown_age_s: float = 3600.0) -> list[Path]:
    """Remove temporaries (files or folders) whose writer is gone: tagged with a process id that
    no longer runs, or untagged (older faceage versions) and older than ``unknown_age_s``.
    This process's own temporaries and those of live processes are kept. Returns what was removed."""
    removed = []
    now = time.time()
    for p in paths:
        p = Path(p)
        pid = owner_pid(p.name)
        try:
            if pid is None:
                if now - p.lstat().st_mtime < unknown_age_s:
                    continue
            elif pid == os.getpid() or pid_alive(pid):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        except OSError:
            continue
    return removed
