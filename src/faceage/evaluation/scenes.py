"""Synthetic group photos with real faces, for measuring face detection by face and photo size.

Real UTKFace face chips are pasted (scaled, some rotated, with feathered elliptical edges) onto a
real photo from scikit-image's bundled samples, upscaled to 1-50 MP with a little sensor grain.
Each scene records its ground-truth face boxes. Everything is deterministic from the seed.

Ground truth follows the detector's own box convention, so that IoU is meaningful: on UTKFace
chips RetinaFace draws its box at ``FACE_BOX_IN_CHIP`` (median over 200 chips, measured by
``bench/detection_recall.py --calibrate``). UTKFace chips are tight crops: the face box is ~84%
of the chip's width, so a face ``f`` px wide needs a chip of ``f / 0.84`` px.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

# x1, y1, x2, y2 of RetinaFace's box on a UTKFace chip, as fractions of the chip's side (it
# reaches above the chip: the chips cut the forehead).
FACE_BOX_IN_CHIP = (0.073, -0.107, 0.913, 0.975)
FACE_WIDTH_IN_CHIP = FACE_BOX_IN_CHIP[2] - FACE_BOX_IN_CHIP[0]

# Real photos without people in them (astronaut and camera have faces: they would count as
# false positives). Public domain / CC0 samples shipped with scikit-image, no download.
BACKGROUNDS = ("coffee", "chelsea", "rocket", "coins", "stereo_motorcycle", "brick", "gravel",
               "grass", "clock")


@dataclass
class Scene:
    image: Image.Image      # RGB
    boxes: np.ndarray       # (n, 4) ground-truth face boxes x1, y1, x2, y2 in the photo's pixels
    angles: np.ndarray      # (n,) in-plane rotation of each face, degrees (counter-clockwise)
    name: str

    @property
    def widths(self) -> np.ndarray:
        return self.boxes[:, 2] - self.boxes[:, 0]


@lru_cache(maxsize=4)
def _chip_files(data_dir: str) -> tuple[Path, ...]:
    files = tuple(sorted(Path(data_dir).glob("*.chip.jpg")))
    if not files:
        raise FileNotFoundError(f"no UTKFace *.chip.jpg files in {data_dir}")
    return files


@lru_cache(maxsize=len(BACKGROUNDS))
def _background_source(name: str) -> Image.Image:
    from skimage import data            # scikit-image: the 'demo' extra
    arr = getattr(data, name)()
    arr = arr[0] if isinstance(arr, tuple) else arr      # stereo_motorcycle: (left, right, disparity)
    img = Image.fromarray(arr)
    return img.convert("RGB")


def _background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random crop (of the photo's aspect) of one sample photo, upscaled to ``size``, with grain:
    upscaling alone leaves it unnaturally smooth at 50 MP."""
    src = _background_source(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    w, h = size
    sw, sh = src.size
    frac = rng.uniform(0.6, 1.0)
    cw = min(sw, sh * w / h) * frac
    ch = cw * h / w
    x0, y0 = rng.uniform(0, sw - cw), rng.uniform(0, sh - ch)
    if rng.random() < 0.5:
        src = src.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    bg = src.resize(size, Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    noise = Image.effect_noise(size, float(rng.uniform(2.0, 5.0))).convert("RGB")   # mean 128
    return ImageChops.add(bg, noise, scale=1.0, offset=-128)


def _soft_mask(side: int) -> Image.Image:
    """An ellipse over the chip with a blurred rim, so no square chip edge is left to detect."""
    mask = Image.new("L", (side, side), 0)
    m = 0.06 * side
    ImageDraw.Draw(mask).ellipse([m, m * 0.5, side - m, side - m * 0.2], fill=255)
    return mask.filter(ImageFilter.GaussianBlur(max(1.0, 0.04 * side)))


def _face_patch(chip: Image.Image, face_px: float, angle: float, rng: np.random.Generator):
    """The chip scaled so its face is ``face_px`` wide, lit a little differently, rotated.
    Returns (patch, mask, face-box center relative to the patch's center, face-box w, h)."""
    side = max(8, round(face_px / FACE_WIDTH_IN_CHIP))
    patch = chip.resize((side, side), Image.LANCZOS)
    patch = patch.point(lambda v, g=rng.uniform(0.8, 1.15): min(255, int(v * g)))
    mask = _soft_mask(side)
    if angle:
        patch = patch.rotate(angle, Image.BICUBIC, expand=True)
        mask = mask.rotate(angle, Image.BICUBIC, expand=True)
    x1, y1, x2, y2 = (v * side for v in FACE_BOX_IN_CHIP)
    dx, dy = (x1 + x2) / 2 - side / 2, (y1 + y2) / 2 - side / 2
    t = math.radians(angle)             # PIL rotates counter-clockwise; image y points down
    center = (dx * math.cos(t) + dy * math.sin(t), -dx * math.sin(t) + dy * math.cos(t))
    return patch, mask, center, (x2 - x1, y2 - y1)


def make_scene(seed: int, megapixels: float, n_faces: int, face_px: tuple[float, float] = (24, 400),
               max_angle: float = 30.0, rotated_share: float = 0.4, mixed: bool = False,
               data_dir: str | Path | None = None, aspect: float = 4 / 3) -> Scene:
    """A ``megapixels`` photo with up to ``n_faces`` non-overlapping real faces whose widths are
    spread (0.74-1.35x) around one group size drawn log-uniformly from ``face_px``, as in a group
    photo; ``mixed``: each face's width drawn on its own (a crowd at all distances). A share
    ``rotated_share`` of faces are turned by up to ``max_angle`` degrees, the rest by up to 5."""
    if data_dir is None:
        from ..training.fit import default_data_path
        data_dir = default_data_path()
    rng = np.random.default_rng(seed)
    w = int(round(math.sqrt(megapixels * 1e6 * aspect)))
    h = int(round(w / aspect))
    image = _background((w, h), rng)
    chips = _chip_files(str(data_dir))
    lo, hi = face_px
    group = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    boxes, angles, taken = [], [], []
    for _ in range(n_faces):
        if mixed:
            size = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        else:
            size = float(np.clip(group * math.exp(rng.uniform(-0.3, 0.3)), lo, hi))
        size = min(size, 0.45 * min(w, h))
        rotated = rng.random() < rotated_share
        angle = float(rng.uniform(-max_angle, max_angle) if rotated else rng.uniform(-5, 5))
        chip = Image.open(chips[rng.integers(len(chips))]).convert("RGB")
        patch, mask, (cx, cy), (fw, fh) = _face_patch(chip, size, angle, rng)
        pw, ph = patch.size
        for _try in range(100):           # a free spot: footprints (with a margin) must not overlap
            px, py = rng.uniform(0, w - pw), rng.uniform(0, h - ph)
            foot = (px - 0.1 * pw, py - 0.1 * ph, px + 1.1 * pw, py + 1.1 * ph)
            if all(foot[2] <= t[0] or t[2] <= foot[0] or foot[3] <= t[1] or t[3] <= foot[1] for t in taken):
                break
        else:
            continue                       # the photo is full: fewer faces
        taken.append(foot)
        image.paste(patch, (int(px), int(py)), mask)
        fx, fy = int(px) + pw / 2 + cx, int(py) + ph / 2 + cy
        boxes.append([fx - fw / 2, fy - fh / 2, fx + fw / 2, fy + fh / 2])
        angles.append(angle)
    name = f"seed{seed}-{megapixels:g}MP-{len(boxes)}faces{'-mixed' if mixed else ''}"
    return Scene(image, np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(angles), name)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4) -> (n, m)."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def match(gt: np.ndarray, found: np.ndarray, iou: float = 0.4) -> tuple[np.ndarray, int]:
    """One-to-one greedy matching by IoU (best pairs first, a pair counts at IoU >= ``iou``).
    Returns (found-flag per ground-truth face, number of unmatched detections = false positives)."""
    hit = np.zeros(len(gt), dtype=bool)
    if len(gt) == 0 or len(found) == 0:
        return hit, len(found)
    m = box_iou(gt, found)
    used = np.zeros(len(found), dtype=bool)
    for flat in np.argsort(-m, axis=None):
        i, j = np.unravel_index(flat, m.shape)
        if m[i, j] < iou:
            break
        if not hit[i] and not used[j]:
            hit[i] = used[j] = True
    return hit, int((~used).sum())
