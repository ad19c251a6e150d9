"""Decode-once image cache: JPEG -> uint8 array at a model's input spec, memory-mapped.

Layout: ``<cache_dir>/<spec key>/<chunk>.u8`` holds an ``(N, H, W, C)`` uint8 array and
``<chunk>.json`` the content digest of each row. Rows are looked up by the digest of the
source file's bytes, so the cache survives renames and is shared by every run and dataset
using the same spec; changed bytes or a different spec (size, channels, crop, decoder version)
simply miss. Chunks are written to a temporary name and renamed, so a killed build never
leaves a corrupt chunk: the next run decodes only what is still missing. The temporary
(``.<chunk>.p<pid>.u8.tmp``) of a killed build is removed when the cache is next opened.

Several processes may build the same cache at once (the processes of a DDP run, the nodes of a
cluster sharing ``FACEAGE_CACHE`` on a network file system, two runs started side by side).
Builders take an exclusive lock on ``<cache_dir>/<spec key>/.build.lock`` (``flock``; the
kernel drops it when its holder dies, even by SIGKILL), re-read the index, and decode only what
is still missing: the first builder decodes, the others wait and then find every row. Where the
file system has no locks the builders decode side by side; that only costs time: each writes
its own chunk under a fresh name and publishes it by rename, rows are immutable once published,
and the index takes every digest's first complete row, so no row is lost or torn either way.
"""
from __future__ import annotations

import json
import os
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text, owner_tag, remove_stale
from ..preprocess import ImageDecodeError, PreprocessSpec
from .manifest import Sample, SkipReport
from .rows import load_sample


try:
    import fcntl
except ImportError:          # not POSIX: builders decode side by side (still safe, see above)
    fcntl = None

LOCK_NAME = ".build.lock"


def default_cache_dir() -> Path:
    return Path(os.environ.get("FACEAGE_CACHE", Path.home() / ".cache" / "faceage"))


@contextmanager
def build_lock(folder: Path, wait: bool = True, on_wait=None):
    """Hold the exclusive build lock of a cache folder. Yields True when held, None when another
    process holds it and ``wait`` is false, and False where the file system has no locks (the
    caller goes on unlocked: chunks are published atomically, so this only duplicates work).
    ``on_wait()`` is called once before blocking behind another builder."""
    if fcntl is None:
        yield False
        return
    try:
        fh = open(folder / LOCK_NAME, "a+b")
    except OSError:
        yield False
        return
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = None
            if wait:
                if on_wait:
                    on_wait()
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                held = True
        except OSError:       # ENOLCK and the like: a file system without (working) locks
            held = False
        yield held            # closing the file releases the lock


class ImageCache:
    def __init__(self, spec: PreprocessSpec, cache_dir: str | Path | None = None):
        self.spec = spec
        self.dir = Path(cache_dir or default_cache_dir()) / spec.cache_key()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shape = (spec.size, spec.size, spec.channels)
        self._index: dict[str, tuple[str, int]] = {}
        self._arrays: dict[str, np.ndarray] = {}
        # Debris of killed builds: tagged with a process that is gone (or, untagged from older
        # versions, an hour old). Only while no one is building (the lock is free): on a shared
        # file system a temporary's process may be alive on another machine.
        with build_lock(self.dir, wait=False) as held:
            if held is not None:
                self._remove_debris()
        self._scan()

    def _remove_debris(self) -> None:
        remove_stale([*self.dir.glob(".*.u8.tmp"), *self.dir.glob(".*.json.*.tmp")])

    def _scan(self) -> None:
        for meta_path in sorted(self.dir.glob("*.json")):
            chunk = meta_path.stem
            data_path = self.dir / f"{chunk}.u8"
            try:
                digests = json.loads(meta_path.read_text())["digests"]
            except (json.JSONDecodeError, KeyError, OSError):
                continue
            if not data_path.exists() or data_path.stat().st_size != len(digests) * int(np.prod(self.shape)):
                continue  # incomplete or foreign chunk: ignore, rebuild what is missing
            for row, d in enumerate(digests):
                self._index.setdefault(d, (chunk, row))

    def _array(self, chunk: str) -> np.ndarray:
        if chunk not in self._arrays:
            n = len(json.loads((self.dir / f"{chunk}.json").read_text())["digests"])
            self._arrays[chunk] = np.memmap(self.dir / f"{chunk}.u8", dtype=np.uint8, mode="r", shape=(n, *self.shape))
        return self._arrays[chunk]

    def __contains__(self, digest: str) -> bool:
        return digest in self._index

    def missing(self, samples: list[Sample]) -> list[Sample]:
        seen, out = set(), []
        for s in samples:
            if s.digest not in self._index and s.digest not in seen:
                seen.add(s.digest)
                out.append(s)
        return out

    def build(self, samples: list[Sample], report: SkipReport, progress=None) -> list[Sample]:
        """Decode what is not cached yet; return the samples that are now usable."""
        failed: set[str] = set()
        if not self.missing(samples):
            return [s for s in samples if s.digest in self._index]
        # Said even without progress (evaluate, a DDP rank > 0): a process blocked here for minutes
        # should say why.
        with build_lock(self.dir, on_wait=lambda: print(
                f"waiting for another process that is decoding images into {self.dir}", file=sys.stderr, flush=True)) as held:
            if held:
                self._remove_debris()
                self._scan()              # what the builders before us added
            self._decode(self.missing(samples), report, failed, progress)
        return [s for s in samples if s.digest not in failed and s.digest in self._index]

    def _decode(self, todo: list[Sample], report: SkipReport, failed: set[str], progress) -> None:
        if todo:
            chunk = uuid.uuid4().hex[:12]
            tmp_data = self.dir / f".{chunk}.{owner_tag()}.u8.tmp"
            mm = np.memmap(tmp_data, dtype=np.uint8, mode="w+", shape=(len(todo), *self.shape))
            digests = []
            for i, s in enumerate(todo):
                try:
                    mm[len(digests)] = load_sample(s, self.spec)      # a file, or a table row's bytes or array
                    digests.append(s.digest)
                except ImageDecodeError as exc:
                    report.add(exc.reason, s.path, exc.detail)
                    failed.add(s.digest)
                if progress:
                    progress(i + 1, len(todo))
            mm.flush()
            del mm
            if digests:
                size = len(digests) * int(np.prod(self.shape))
                with open(tmp_data, "r+b") as fh:
                    fh.truncate(size)
                os.replace(tmp_data, self.dir / f"{chunk}.u8")
                atomic_write_text(self.dir / f"{chunk}.json", json.dumps({"spec": self.spec.to_dict(), "digests": digests}))
                for row, d in enumerate(digests):
                    self._index[d] = (chunk, row)
            else:
                tmp_data.unlink(missing_ok=True)

    def gather(self, digests: list[str]) -> np.ndarray:
        """Stack cached rows into a ``(B, H, W, C)`` uint8 array."""
        out = np.empty((len(digests), *self.shape), dtype=np.uint8)
        for i, d in enumerate(digests):
            chunk, row = self._index[d]
            out[i] = self._array(chunk)[row]
        return out
