"""Images without files of their own: rows of a ``.npz``, Parquet or Arrow table.

A row holds encoded bytes (a JPEG/PNG cell) or a NumPy image and raw label values. Rows become
:class:`Sample` records like files do: labels parsed and checked as in a CSV manifest, exact
duplicates dropped, and a content digest that keys the decode cache (for bytes, the same digest
as the file they came from, so a folder and its Parquet copy share cached pixels).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np

from ..preprocess import PreprocessSpec, check_image, frame_array, load_image, to_rgb
from .manifest import Manifest, Sample, SkipReport
from .readers import _Deduper, file_digest, parse_labels


def content_digest(data) -> str:
    """blake2b-128 of encoded bytes (as :func:`readers.file_digest`), or of a NumPy image's
    dtype, shape and pixels."""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(data, np.ndarray):
        h.update(f"ndarray {data.dtype.str} {data.shape}\n".encode())
        data = np.ascontiguousarray(data)
    h.update(memoryview(data).cast("B"))
    return h.hexdigest()


def rows_manifest(root, kind: str, rows: Iterable[tuple], report: SkipReport,
                  class_names: list[str] | None = None) -> Manifest:
    """``rows``: ``(key, where, image, raw_labels)``; ``image`` is bytes, a NumPy array, a
    :class:`Path` (an image file beside the table) or None; ``where`` names the row in messages."""
    dedupe = _Deduper(report)
    samples = []
    for key, where, image, raw in rows:
        if image is None:
            report.add("missing image", where, "no image bytes in this row")
            continue
        if not isinstance(image, np.ndarray) and (image.stat().st_size if isinstance(image, Path) else len(image)) == 0:
            report.add("empty file", where)
            continue
        labels = parse_labels(raw, where, report)
        if labels is None:
            continue
        digest = dedupe.keep(file_digest(image) if isinstance(image, Path) else content_digest(image), where, labels)
        if digest:
            path, data = (str(image.resolve()), None) if isinstance(image, Path) else (where, image)
            samples.append(Sample(path, key, digest, **labels, data=data))
    return Manifest(str(root), kind, samples, class_names=list(class_names or []))


def _array_image(arr: np.ndarray):
    from ..inference.inputs import array_to_image
    return to_rgb(array_to_image(arr))


def load_sample(s: Sample, spec: PreprocessSpec) -> np.ndarray:
    """A sample's ``(size, size, channels)`` uint8 pixels: the decode cache's one entry point, so
    a table row is framed and resized exactly as a file is (:func:`preprocess.load_image`)."""
    if isinstance(s.data, np.ndarray):
        return frame_array(_array_image(s.data), spec)
    return load_image(s.source, spec)


def check_sample(s: Sample) -> None:
    """What ``data inspect`` checks (:func:`preprocess.check_image`); arrays: that they are images."""
    if isinstance(s.data, np.ndarray):
        _array_image(s.data)
    else:
        check_image(s.source)
