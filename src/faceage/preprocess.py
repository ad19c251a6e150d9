"""The one image-preparation routine: file -> uint8 array at a model's input spec.

Training-cache building, evaluation and prediction all call :func:`load_image`, so a model
always sees images framed and resized exactly as it was trained. The spec travels inside every
checkpoint (see ``inference/checkpoint.py``).
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Bump when decoding changes, so cached arrays made by older code are not reused.
DECODE_VERSION = 1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 128
    channels: int = 3                       # 1 = grayscale, 3 = RGB
    # Per-channel normalization applied to float images in [0, 1]; length 1 or 3.
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    # How the face is framed before resizing. "center_square": the largest centred square of
    # the image (identity for UTKFace's aligned 200x200 chips).
    crop: str = "center_square"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)

    def cache_key(self) -> str:
        """Identifies the pixels this spec produces (normalization happens later, on tensors)."""
        text = f"v{DECODE_VERSION}-{self.size}-{self.channels}-{self.crop}"
        return f"{self.size}px-{'rgb' if self.channels == 3 else 'gray'}-" + hashlib.sha1(text.encode()).hexdigest()[:8]


class ImageDecodeError(Exception):
    """Raised with a short reason: 'empty file', 'not an image', 'corrupt or truncated image'."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def open_image(source, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image from a path or bytes, honouring EXIF orientation.

    Pillow's decompression-bomb guard always applies; ``max_pixels`` sets a stricter limit
    (the web service's), checked from the header before any pixel is decoded."""
    try:
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise ImageDecodeError("empty file")
            img = Image.open(io.BytesIO(source))
        else:
            if os.path.getsize(source) == 0:
                raise ImageDecodeError("empty file")
            img = Image.open(source)
        if max_pixels and img.width * img.height > max_pixels:
            raise ImageDecodeError("image too large", f"{img.width}x{img.height} = {img.width * img.height / 1e6:.1f} MP, "
                                                      f"the limit is {max_pixels / 1e6:g} MP")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        return ImageOps.exif_transpose(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image", str(exc)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("image too large", str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError("corrupt or truncated image", str(exc)) from None


def frame(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Apply the spec's crop and resize to a decoded image."""
    img = img.convert("RGB" if spec.channels == 3 else "L")
    if spec.crop == "center_square":
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        if (w, h) != (s, s):
            img = img.crop((left, top, left + s, top + s))
    else:
        raise ValueError(f"unknown crop '{spec.crop}'")
    if img.size != (spec.size, spec.size):
        img = img.resize((spec.size, spec.size), Image.BILINEAR, reducing_gap=2.0)
    return img


def load_image(source, spec: PreprocessSpec) -> np.ndarray:
    """Decode ``source`` (path or bytes) into a ``(size, size, channels)`` uint8 array."""
    img = open_image(source)
    arr = np.asarray(frame(img, spec), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr
