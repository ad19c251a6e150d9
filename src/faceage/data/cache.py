"""Decode-once image cache: JPEG -> uint8 array at a model's input spec, memory-mapped.

Layout: ``<cache_dir>/<spec key>/<chunk>.u8`` holds an ``(N, H, W, C)`` uint8 array and
``<chunk>.json`` the content digest of each row. Rows are looked up by the digest of the
source file's bytes, so the cache survives renames and is shared by every run and dataset
using the same spec; changed bytes or a different spec (size, channels, crop, decoder version)
simply miss. Chunks are written to a temporary name and renamed, so a killed build never
leaves a corrupt chunk: the next run decodes only what is still missing. The temporary
(``.<chunk>.p<pid>.u8.tmp``) of a killed build is removed when the cache is next opened.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text, owner_tag, remove_stale
from ..preprocess import ImageDecodeError, PreprocessSpec, load_image
from .manifest import Sample, SkipReport


def default_cache_dir() -> Path:
    return Path(os.environ.get("FACEAGE_CACHE", Path.home() / ".cache" / "faceage"))


class ImageCache:
    def __init__(self, spec: PreprocessSpec, cache_dir: str | Path | None = None):
        self.spec = spec
        self.dir = Path(cache_dir or default_cache_dir()) / spec.cache_key()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shape = (spec.size, spec.size, spec.channels)
        self._index: dict[str, tuple[str, int]] = {}
        self._arrays: dict[str, np.ndarray] = {}
        # Debris of killed builds: tagged with a process that is gone (or, untagged from older
        # versions, an hour old). Other live processes' builds are left alone.
        remove_stale(self.dir.glob(".*.u8.tmp"))
        self._scan()

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
        todo = self.missing(samples)
        failed: set[str] = set()
        if todo:
            chunk = uuid.uuid4().hex[:12]
            tmp_data = self.dir / f".{chunk}.{owner_tag()}.u8.tmp"
            mm = np.memmap(tmp_data, dtype=np.uint8, mode="w+", shape=(len(todo), *self.shape))
            digests = []
            for i, s in enumerate(todo):
                try:
                    mm[len(digests)] = load_image(s.path, self.spec)
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
        return [s for s in samples if s.digest not in failed and s.digest in self._index]

    def gather(self, digests: list[str]) -> np.ndarray:
        """Stack cached rows into a ``(B, H, W, C)`` uint8 array."""
        out = np.empty((len(digests), *self.shape), dtype=np.uint8)
        for i, d in enumerate(digests):
            chunk, row = self._index[d]
            out[i] = self._array(chunk)[row]
        return out
