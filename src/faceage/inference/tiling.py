"""Scales, tiles and box merging for finding faces of any size in photos of any size.

The detector network finds a face reliably only when it is some tens of pixels wide in the
network's input, whatever the photo's size. So a photo is looked at on a short pyramid of copies
(coarse to fine) and a copy larger than one tile is cut into overlapping tiles; boxes from all
tiles and scales are merged with one non-maximum suppression.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from PIL import Image


def pyramid(first_scale: float, finest_scale: float, ratio: float) -> list[float]:
    """``first_scale``, then about ``ratio`` times finer each step, ending at ``finest_scale``.
    A last step of under 1.5x is folded into the one before it: not worth a whole pass."""
    scales = [first_scale]
    while scales[-1] * 1.05 < finest_scale:
        nxt = scales[-1] * ratio
        scales.append(finest_scale if nxt * 1.5 >= finest_scale else nxt)
    return scales


def spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) of as few tiles as cover ``length`` px with tiles of at most ``tile`` px that
    overlap by at least ``overlap`` px (so any object up to ``overlap`` px long lies whole in
    some tile), evenly spaced and no longer than needed (the network's time grows with area)."""
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (n - 1) * overlap) / n)
    return [(round(i * (length - size) / (n - 1)), round(i * (length - size) / (n - 1)) + size) for i in range(n)]


def tiles(image: Image.Image, scale: float, tile: int, overlap: int) -> Iterator[tuple[Image.Image, int, int]]:
    """(tile, x0, y0) covering ``image`` resized by ``scale``; x0, y0 are in the resized copy's px.

    Downscaled copies are made once (uint8, at most the photo's size); upscaled tiles are made
    one at a time from their own source region, so no copy larger than the photo (and never a
    float copy of it) exists."""
    w, h = image.size
    lw, lh = max(1, round(w * scale)), max(1, round(h * scale))
    level = None
    if scale < 1:
        level = image.resize((lw, lh), Image.BILINEAR, reducing_gap=2.0)
    elif scale == 1:
        level = image
    for y0, y1 in spans(lh, tile, overlap):
        for x0, x1 in spans(lw, tile, overlap):
            if level is not None:
                crop = level if (x1 - x0, y1 - y0) == level.size else level.crop((x0, y0, x1, y1))
            else:
                crop = image.resize((x1 - x0, y1 - y0), Image.BILINEAR,
                                    box=(x0 / scale, y0 / scale, min(w, x1 / scale), min(h, y1 / scale)))
            yield crop, x0, y0


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (IoU > ``threshold`` is a duplicate)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = iw * ih
        order = rest[inter / np.maximum(area[i] + area[rest] - inter, 1e-9) <= threshold]
    return np.array(keep, dtype=np.int64)
