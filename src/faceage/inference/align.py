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


def align_face(image: Image.Image, landmarks: np.ndarray, size: int) -> Image.Image:
    """Crop ``image`` (any mode) to a ``size`` x ``size`` face framed like a UTKFace chip."""
    m = similarity_transform(np.asarray(landmarks, float), CANONICAL_LANDMARKS * size)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]    # PIL maps output pixels -> input pixels
    return image.transform((size, size), Image.AFFINE, data=inv.flatten().tolist(), resample=Image.BILINEAR)
