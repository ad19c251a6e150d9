"""THE face crop for detected faces: a similarity transform from 5 landmarks to one template.

``CANONICAL_LANDMARKS`` is UTKFace's own framing, measured by ``bench/calibrate_crop.py``
(mean detector landmarks over 400 aligned 200x200 chips, as fractions of the side). A face
aligned to it is framed like the chips the models were trained on, so a model trained on
UTKFace crops sees the same framing in wild photos.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# left eye, right eye, nose tip, left mouth corner, right mouth corner (x, y) / side
CANONICAL_LANDMARKS = np.array([[0.2939, 0.2875], [0.6874, 0.2861], [0.483, 0.5192], [0.3166, 0.6774], [0.6654, 0.6762]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``
    (Umeyama 1991). Returns a 2x3 matrix."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1
    rot = u @ fix @ vt
    scale = np.trace(np.diag(sig) @ fix) / s.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


# Faces in real photos are often several times larger than the crop. A bilinear warp straight to
# ``size`` reads only the 2x2 input pixels around each output pixel and skips the rest: no low-pass
# filter, so skin texture aliases into patterns that read as wrinkles. When the warp would shrink by
# more than MAX_WARP_SHRINK, only the part of the photo the crop needs is first reduced to the
# crop's scale with Pillow's antialiased resize (Lanczos; reducing_gap=2 box-reduces by an integer
# factor first: ~2x faster than plain Lanczos at 6x), and the warp runs on that.
MAX_WARP_SHRINK = 1.5


def _crop_to_photo(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 affine map from the crop's pixels to the photo's (as PIL's transform wants it)."""
    m = similarity_transform(np.asarray(landmarks, float), CANONICAL_LANDMARKS * size)
    return np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]


def photo_px_per_crop_px(landmarks: np.ndarray, size: int) -> float:
    """How many of the photo's pixels one pixel of the ``size`` px crop spans (< 1: the crop
    would be upsampled from the photo)."""
    return float(np.hypot(*_crop_to_photo(landmarks, size)[:, 0]))


def align_face(image: Image.Image, landmarks: np.ndarray, size: int) -> Image.Image:
    """Crop ``image`` (any mode) to a ``size`` x ``size`` face framed like a UTKFace chip."""
    inv = _crop_to_photo(landmarks, size)                  # PIL maps output pixels -> input pixels
    shrink = float(np.hypot(*inv[:, 0]))                   # input pixels per output pixel
    if shrink > MAX_WARP_SHRINK:
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]]) @ inv.T
        pad = 2 * shrink                                   # context for the warp's bilinear filter
        x0, y0 = np.maximum(corners.min(0) - pad, 0)
        x1, y1 = np.minimum(corners.max(0) + pad, image.size)
        if x1 > x0 and y1 > y0:                            # else the crop lies off the photo: all fill
            w, h = max(1, round((x1 - x0) / shrink)), max(1, round((y1 - y0) / shrink))
            gap = None if image.mode.startswith("I;16") else 2.0       # Image.reduce lacks I;16
            image = image.resize((w, h), Image.LANCZOS, box=(x0, y0, x1, y1), reducing_gap=gap)
            inv = np.diag([w / (x1 - x0), h / (y1 - y0)]) @ (inv - [[0, 0, x0], [0, 0, y0]])
    return image.transform((size, size), Image.AFFINE, data=inv.flatten().tolist(), resample=Image.BILINEAR)
