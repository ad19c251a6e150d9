"""THE face crop: faces many times larger than the crop are low-pass filtered before the warp,
so a face warped from a large photo equals the same face warped from a pre-shrunk copy."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from faceage.inference.align import CANONICAL_LANDMARKS, align_face, similarity_transform

SIZE = 128


def naive_warp(image: Image.Image, landmarks: np.ndarray, size: int) -> Image.Image:
    """The old crop: one bilinear warp from the photo straight to ``size``, no low-pass filter."""
    m = similarity_transform(np.asarray(landmarks, float), CANONICAL_LANDMARKS * size)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    return image.transform((size, size), Image.AFFINE, data=inv.flatten().tolist(), resample=Image.BILINEAR)


def textured(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth shading plus stripes of period < 3 px and pixel noise: detail far above the crop's
    Nyquist limit, which a warp without low-pass filtering aliases into visible patterns."""
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    base = 60 + 120 * xx / w + 40 * np.sin(6 * yy / h)
    fine = 40 * np.sin(2 * np.pi * (0.37 * xx + 0.11 * yy))
    noise = np.random.default_rng(seed).normal(0, 20, (h, w))
    g = np.clip(base + fine + noise, 0, 255)
    return Image.fromarray(np.dstack([g, 0.8 * g + 30, 255 - g]).astype(np.uint8))


def rotated_landmarks(side: float, angle_deg: float, center) -> np.ndarray:
    """The canonical landmarks of a face ``side`` px across, rotated about its centre, placed at ``center``."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (CANONICAL_LANDMARKS - 0.5) * side @ rot.T + np.asarray(center, float)


def mad(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


# (photo size, face side, rotation, face centre): faces 5-6x the crop, centred, rotated, and
# partly off the photo (the reduced region is clamped to the photo).
CASES = [((800, 800), 640, 0, (400, 400)), ((1100, 900), 700, 25, (560, 430)),
         ((900, 700), 768, -15, (380, 330))]


@pytest.mark.parametrize("photo, face, angle, center", CASES)
def test_large_face_equals_face_from_preshrunk_copy(photo, face, angle, center):
    big = textured(*photo)
    lm = rotated_landmarks(face, angle, center)
    # The reference: the whole photo shrunk with Lanczos so the face is 1.25x the crop, where the
    # warp alone (shrink < 1.5) needs no low-pass filter; landmarks scaled by the exact size ratios.
    f = 1.25 * SIZE / face
    small = big.resize((round(photo[0] * f), round(photo[1] * f)), Image.LANCZOS)
    fx, fy = small.width / big.width, small.height / big.height
    ref = align_face(small, lm * [fx, fy], SIZE)
    assert mad(align_face(big, lm, SIZE), ref) < 2.0          # measured: 0.90-1.15 gray levels
    assert mad(naive_warp(big, lm, SIZE), ref) > 8            # the old warp: 14.5-26.5 (aliasing)


def test_rotated_face_lands_on_the_template():
    """Bright dots at the 5 landmarks of a 5x, 30-degree-rotated face land on the template's points."""
    side, angle = 640, 30
    lm = rotated_landmarks(side, angle, (500, 450))
    arr = np.full((900, 1000), 40, np.uint8)
    yy, xx = np.mgrid[0:900, 0:1000]
    for x, y in lm:
        arr[(xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= 12 ** 2] = 255   # dots ~2.4 output px across
    crop = np.asarray(align_face(Image.fromarray(arr), lm, SIZE), float) - 40
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    for tx, ty in CANONICAL_LANDMARKS * SIZE:
        near = (np.hypot(xs - tx, ys - ty) < 6) * crop
        assert near.sum() > 0
        cx, cy = (near * xs).sum() / near.sum(), (near * ys).sum() / near.sum()
        assert np.hypot(cx - tx, cy - ty) < 0.3, (cx, cy, tx, ty)


@pytest.mark.parametrize("face", [64, 128, 180])             # up to 1.4x the crop: shrink < 1.5
def test_small_face_is_the_plain_warp(face):
    big = textured(400, 300)
    lm = rotated_landmarks(face, 12, (200, 150))
    out = align_face(big, lm, SIZE)
    assert out.size == (SIZE, SIZE) and out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(naive_warp(big, lm, SIZE)))


def test_grayscale_photo():
    big = textured(900, 800)
    lm = rotated_landmarks(700, -20, (450, 420))
    out = align_face(big.convert("L"), lm, SIZE)
    assert out.mode == "L" and out.size == (SIZE, SIZE)
    assert mad(out, align_face(big, lm, SIZE).convert("L")) < 1.0
    small = big.convert("L").resize((200, 178), Image.LANCZOS)
    ref = align_face(small, lm * [200 / 900, 178 / 800], SIZE)
    assert mad(out, ref) < 2.0
    assert mad(naive_warp(big.convert("L"), lm, SIZE), ref) > 5


@pytest.mark.parametrize("mode", ["RGBA", "I", "F", "I;16"])
def test_other_modes_keep_their_mode_and_values(mode):
    gray = textured(900, 800).convert("L")
    lm = rotated_landmarks(700, 10, (450, 420))
    im = gray.convert("I").convert("I;16") if mode == "I;16" else gray.convert(mode)
    out = align_face(im, lm, SIZE)
    assert out.mode == mode and out.size == (SIZE, SIZE)
    if mode == "I;16":
        return      # Pillow's bilinear affine transform garbles I;16 values, the old warp's too
    first_band = np.asarray(out, float)[..., 0] if mode == "RGBA" else np.asarray(out, float)
    assert np.abs(first_band - np.asarray(align_face(gray, lm, SIZE), float)).mean() < 1.0


def test_face_off_the_photo_is_fill():
    """A detection whose crop lies entirely outside the photo gives the warp's black fill, no error."""
    lm = rotated_landmarks(640, 0, (-2000, -2000))
    out = align_face(textured(300, 200), lm, SIZE)
    assert out.size == (SIZE, SIZE) and not np.asarray(out).any()
