"""The one image-preparation routine: file -> uint8 array at a model's input spec.

Training-cache building, evaluation and prediction all call :func:`load_image`, so a model
always sees images framed and resized exactly as it was trained. The spec travels inside every
checkpoint (see ``inference/checkpoint.py``).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import FaceageError

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


class ImageDecodeError(FaceageError):
    """A photo that cannot be used, with a short ``reason`` ('file not found', 'is a folder',
    'empty file', 'not an image', 'corrupt or truncated image', 'image too large').

    Catch this class for any of them, or a subclass for one; the file-system ones are also
    the matching built-in ``OSError`` so ``except FileNotFoundError`` works as expected."""

    reason = "cannot read image"

    def __init__(self, reason: str | None = None, detail: str = ""):
        self.reason, self.detail = reason or type(self).reason, detail
        super().__init__(self.reason + (f": {detail}" if detail else ""))

    def __str__(self) -> str:
        return self.reason + (f": {self.detail}" if self.detail else "")


class ImageNotFoundError(ImageDecodeError, FileNotFoundError):
    reason = "file not found"


class IsAFolderError(ImageDecodeError, IsADirectoryError):
    reason = "is a folder"


class EmptyImageError(ImageDecodeError):
    reason = "empty file"


class NotAnImageError(ImageDecodeError):
    reason = "not an image"


class CorruptImageError(ImageDecodeError):
    reason = "corrupt or truncated image"


class ImageTooLargeError(ImageDecodeError):
    reason = "image too large"


def _register_heif() -> None:
    """HEIC/HEIF phone photos through the maintained pillow-heif plugin (registered once)."""
    try:
        import pillow_heif
    except ImportError:     # optional at import time: a HEIC file is then 'not an image'
        return
    pillow_heif.register_heif_opener()


_register_heif()


def open_image(source, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image from a path or bytes, honouring EXIF orientation.

    Pillow's decompression-bomb guard always applies; ``max_pixels`` sets a stricter limit
    (the web service's), checked from the header before any pixel is decoded. Raises a
    subclass of :class:`ImageDecodeError` naming what is wrong."""
    try:
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise EmptyImageError()
            img = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if path.is_dir():
                raise IsAFolderError(detail=str(path))
            if not path.exists():
                raise ImageNotFoundError(detail=str(path))
            if path.stat().st_size == 0:
                raise EmptyImageError()
            img = Image.open(path)
        if max_pixels and img.width * img.height > max_pixels:
            raise ImageTooLargeError(detail=f"{img.width}x{img.height} = {img.width * img.height / 1e6:.1f} MP, "
                                            f"the limit is {max_pixels / 1e6:g} MP")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        return ImageOps.exif_transpose(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:    # Pillow's message names a BytesIO object: say it plainly
        raise NotAnImageError(detail="" if isinstance(source, (bytes, bytearray)) else str(source)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(detail=str(exc)) from None
    except PermissionError as exc:
        raise ImageDecodeError("permission denied", str(exc.filename or "")) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(detail=str(exc)) from None


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
