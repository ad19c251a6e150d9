"""Everything a caller may hand to the predictor, turned into 8-bit RGB PIL images.

Photos: a path, bytes, a PIL image or a NumPy array (RGB by default; ``channels="bgr"`` for
arrays from ``cv2.imread``). Videos: frames sampled every N seconds with OpenCV.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import FaceageError
from ..preprocess import UnsupportedArrayError, open_image, to_rgb

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv"}
# Inputs that are encoded (a path or file bytes), decoded here; anything else is pixels already.
ENCODED = (str, Path, bytes, bytearray, memoryview)


def to_rgb_image(image, max_pixels: int | None = None, channels: str = "rgb", *,
                 reduce_to_fit: bool = False, at_least: int | None = None) -> Image.Image:
    """Path, bytes, PIL image or NumPy array -> 8-bit RGB PIL image (EXIF orientation applied).

    Files and bytes are decoded under the pixel limit (``max_pixels``; None: the default,
    ``$FACEAGE_MAX_MEGAPIXELS`` or 50 MP; see :func:`faceage.preprocess.open_image`, also for
    ``reduce_to_fit`` and ``at_least``, which may decode a JPEG at a reduced scale). NumPy
    arrays follow the rules of :func:`array_to_image` (RGB order unless ``channels="bgr"``).
    A bad input raises a subclass of :class:`ImageDecodeError` (arrays: UnsupportedArrayError,
    also a ValueError) or TypeError."""
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"channels must be 'rgb' or 'bgr', not {channels!r}")
    if isinstance(image, ENCODED):
        img = open_image(Path(image) if isinstance(image, str) else image, max_pixels=max_pixels,
                         reduce_to_fit=reduce_to_fit, at_least=at_least)
        original_size = img.info.get("faceage_original_size")
        rgb = to_rgb(img, release=True)
        if rgb is not img:
            img.close()                      # the decoded original: give its memory back now
            if original_size:
                rgb.info["faceage_original_size"] = original_size
        return rgb
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        return to_rgb(array_to_image(image, channels))
    raise TypeError(f"unsupported image type {type(image).__name__}: give a path, bytes, PIL image or NumPy array")


ARRAY_RULES = ("expected an image array: (H, W) gray, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, or channels "
               "first (1|3|4, H, W); dtype uint8, uint16 (0-65535 scaled to 0-255), other integers within 0-255, "
               "or float within 0-1 or 0-255")


def array_to_image(arr: np.ndarray, channels: str = "rgb") -> Image.Image:
    """A NumPy image -> PIL image, accepting what can only mean one thing and refusing the rest
    with :class:`UnsupportedArrayError` (a ValueError) that says what is expected.

    Shape: (H, W) gray; (H, W, 1); (H, W, 3) RGB; (H, W, 4) RGBA. Channels first, (1|3|4, H, W),
    is read as such when the last axis cannot be channels (its length is not 1, 3 or 4).
    2 channels (gray+alpha? two bands?), 5 or more, 1-D and 4-D arrays are refused.
    Values: uint8 as they are; uint16 scaled from 0-65535 (value / 257); other integer types
    when every value is within 0-255; float (any width) with every value finite and within
    0-255: if the maximum is at most 1.0 the image is taken as 0-1 and multiplied by 255, else
    as 0-255; then rounded. bool, complex, object and out-of-range values are refused."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected a NumPy array, not {type(arr).__name__}")
    shape = tuple(arr.shape)
    if arr.ndim not in (2, 3):
        raise UnsupportedArrayError(detail=f"array of shape {shape} has {arr.ndim} dimension(s); {ARRAY_RULES}")
    if arr.ndim == 3 and shape[2] not in (1, 3, 4):
        if shape[0] in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)                   # channels first -> last
        else:
            raise UnsupportedArrayError(detail=f"array of shape {shape}: {shape[2]} channels; {ARRAY_RULES}")
    if arr.size == 0:
        raise UnsupportedArrayError(detail=f"array of shape {shape} has no pixels")
    arr = _to_uint8(arr, shape)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if channels == "bgr" and arr.ndim == 3:   # BGR(A) -> RGB(A)
        arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
    return Image.fromarray(np.ascontiguousarray(arr))      # uint8: (H, W) -> L, 3 -> RGB, 4 -> RGBA


_array_to_image = array_to_image          # the former private name


def _to_uint8(arr: np.ndarray, shape: tuple) -> np.ndarray:
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        return arr
    if kind == "b":
        raise UnsupportedArrayError(detail=f"a bool array of shape {shape} is a mask, not a photo: give uint8 "
                                           "(e.g. mask.astype(np.uint8) * 255)")
    if kind == "u" and arr.dtype.itemsize == 2:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)       # 65535 -> 255, rounded
    if kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise UnsupportedArrayError(detail=f"{arr.dtype} values {lo}..{hi} are outside 0-255; {ARRAY_RULES}")
        return arr.astype(np.uint8)
    if kind == "f":
        if not np.isfinite(arr).all():
            raise UnsupportedArrayError(detail=f"{arr.dtype} array with NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            raise UnsupportedArrayError(detail=f"{arr.dtype} values {lo:g}..{hi:g} are outside 0-1 and 0-255 "
                                               "(normalized input? undo the normalization first)")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.rint(arr.astype(np.float32) * scale).clip(0, 255).astype(np.uint8)
    raise UnsupportedArrayError(detail=f"dtype {arr.dtype} is not an image; {ARRAY_RULES}")


def is_video(path) -> bool:
    return isinstance(path, (str, Path)) and Path(path).suffix.lower() in VIDEO_SUFFIXES


class VideoError(FaceageError):
    """A video file that OpenCV cannot open or decode."""


def video_frames(path, every: float = 1.0) -> Iterator[tuple[float, Image.Image]]:
    """``(seconds, RGB frame)`` for the first frame and then one frame every ``every`` seconds.

    Frames are read in order and only the sampled ones are converted, so memory stays one frame."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video not found: {path}")
    if every <= 0:
        raise ValueError("every must be a positive number of seconds")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"cannot open video {path} (not a video, or a codec OpenCV lacks)")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        next_t, index, yielded = 0.0, 0, 0
        while cap.grab():                     # grab() skips the colour conversion of unsampled frames
            # The container's timestamp when it has one; else frame index / fps.
            t = index / fps if fps > 0 else cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            index += 1
            if t + 1e-6 < next_t:
                continue
            ok, bgr = cap.retrieve()
            if not ok:
                break
            yielded += 1
            yield round(t, 3), Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            next_t = (math.floor(t / every + 1e-6) + 1) * every   # the next multiple of `every` after t
        if yielded == 0:
            raise VideoError(f"no frame could be decoded from {path}")
    finally:
        cap.release()


def parse_interval(text: str) -> float:
    """'1s', '0.5s', '2', '500ms', '1m' -> seconds (for ``--every``)."""
    t = text.strip().lower()
    try:
        if t.endswith("ms"):
            v = float(t[:-2]) / 1000
        elif t.endswith("s"):
            v = float(t[:-1])
        elif t.endswith("m"):
            v = float(t[:-1]) * 60
        else:
            v = float(t)
    except ValueError:
        raise ValueError(f"not a time interval: {text!r} (e.g. 1s, 500ms, 2m)") from None
    if v <= 0:
        raise ValueError(f"the interval must be positive: {text!r}")
    return v
