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
from ..preprocess import ImageDecodeError, open_image

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv"}


def to_rgb_image(image, max_pixels: int | None = None, channels: str = "rgb") -> Image.Image:
    """Path, bytes, PIL image or NumPy array -> 8-bit RGB PIL image (EXIF orientation applied).

    NumPy arrays are (H, W), (H, W, 3) or (H, W, 4) uint8 in RGB order unless ``channels="bgr"``
    (OpenCV's order). A bad input raises a subclass of :class:`ImageDecodeError` or TypeError."""
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"channels must be 'rgb' or 'bgr', not {channels!r}")
    if isinstance(image, (str, Path, bytes, bytearray)):
        img = open_image(Path(image) if isinstance(image, str) else image, max_pixels=max_pixels)
    elif isinstance(image, Image.Image):
        img = image
    elif isinstance(image, np.ndarray):
        img = _array_to_image(image, channels)
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}: give a path, bytes, PIL image or NumPy array")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):          # 16-bit / float: scale to 8 bit
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / max(arr.max(), 1.0) * 255.0
        img = Image.fromarray(arr.astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img.convert("RGBA"), mask=img.convert("RGBA").split()[-1])
        return bg
    return img.convert("RGB")


def _array_to_image(arr: np.ndarray, channels: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageDecodeError("not an image", f"array of shape {arr.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    if channels == "bgr" and arr.ndim == 3:   # BGR(A) -> RGB(A)
        arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
    return Image.fromarray(np.ascontiguousarray(arr))


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
