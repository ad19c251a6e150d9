"""The one image-preparation routine: file -> uint8 array at a model's input spec.

Training-cache building, evaluation and prediction all call :func:`load_image`, so a model
always sees images framed and resized exactly as it was trained. The spec travels inside every
checkpoint (see ``inference/checkpoint.py``).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, FaceageError

# Bump when decoding changes, so cached arrays made by older code are not reused.
DECODE_VERSION = 1

# One pixel limit for every decode (predict, data inspect, training, the Python API): read from
# the header, before any pixel is decoded. `faceage serve` passes its own --max-megapixels.
DEFAULT_MAX_MEGAPIXELS = 50.0
MAX_MEGAPIXELS_ENV = "FACEAGE_MAX_MEGAPIXELS"

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


class NotAFileError(ImageDecodeError):
    """A device, FIFO or socket: reading it could block forever or never end."""
    reason = "not a regular file"


class UnsupportedImageError(ImageDecodeError, ValueError):
    """An image Pillow opened but faceage cannot turn into 8-bit RGB (an unknown colour mode)."""
    reason = "unsupported image"


class UnsupportedArrayError(ImageDecodeError, ValueError):
    """A NumPy array that is not an image faceage can read unambiguously; the detail says what
    is expected. Also a ``ValueError``, and like every ImageDecodeError a per-input error in batches."""
    reason = "unsupported array"


def _register_heif() -> None:
    """HEIC/HEIF phone photos through the maintained pillow-heif plugin (registered once)."""
    try:
        import pillow_heif
    except ImportError:     # optional at import time: a HEIC file is then 'not an image'
        return
    pillow_heif.register_heif_opener()


_register_heif()


def default_max_pixels() -> int | None:
    """The pixel limit in force when a caller gives none: ``$FACEAGE_MAX_MEGAPIXELS`` (megapixels;
    0 turns faceage's limit off, leaving Pillow's own decompression-bomb guard), else 50 MP."""
    text = os.environ.get(MAX_MEGAPIXELS_ENV, "").strip()
    if not text:
        return int(DEFAULT_MAX_MEGAPIXELS * 1e6)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{MAX_MEGAPIXELS_ENV}={text!r}: expected a number of megapixels, e.g. 50 (0: no limit)")
    return int(value * 1e6) or None


def _too_large(width: int, height: int, limit: int, from_env: bool) -> ImageTooLargeError:
    # Enough digits to see why: "8660x5774 = 50,002,840 pixels (50.003 MP); the limit is 50,000,000 (50 MP)".
    pixels = width * height
    hint = f"; set {MAX_MEGAPIXELS_ENV} to change it" if from_env else ""
    return ImageTooLargeError(detail=f"{width}x{height} = {pixels:,} pixels ({pixels / 1e6:.3f} MP); "
                                     f"the limit is {limit:,} ({limit / 1e6:g} MP){hint}")


# warnings.catch_warnings() swaps a process-wide filter list: threads (the server's workers) must
# not interleave there. Only the header read is under the lock; decoding runs in parallel.
_OPEN_LOCK = threading.Lock()


def _open(fp, limit: int | None) -> Image.Image:
    with _OPEN_LOCK, warnings.catch_warnings():
        # Pillow warns from 89 MP and refuses from 179 MP while reading the header. With faceage's
        # own limit in force that limit decides (Pillow's refusal still stands); without it,
        # Pillow's warning is a refusal.
        warnings.simplefilter("ignore" if limit else "error", Image.DecompressionBombWarning)
        return Image.open(fp)


def _draft_first(img: Image.Image, factors, accept) -> None:
    """Let libjpeg decode a JPEG at 1/k scale for the first k of ``factors`` whose size
    ``accept(width, height)`` takes (DCT scaling: the full image never exists in memory; no-op
    for other formats, or when none is taken)."""
    if img.format != "JPEG":
        return
    for k in factors:
        w, h = math.ceil(img.width / k), math.ceil(img.height / k)
        if accept(w, h):
            img.draft(img.mode, (w, h))
            return


def _draft_to_fit(img: Image.Image, limit: int) -> None:
    """A JPEG over ``limit`` pixels: decode at 1/2, 1/4 or 1/8 scale, the largest that fits."""
    _draft_first(img, (2, 4, 8), lambda w, h: w * h <= limit)


def _draft_at_least(img: Image.Image, side: int) -> None:
    """A JPEG: decode at 1/8, 1/4 or 1/2 scale, the smallest whose longer side is still ``side`` px."""
    _draft_first(img, (8, 4, 2), lambda w, h: max(w, h) >= side)


def _check_size(img: Image.Image, limit: int | None, from_env: bool, reduce_to_fit: bool) -> None:
    """Refuse an empty image, or one over ``limit`` pixels (unless a JPEG reduced while decoding fits)."""
    if img.width * img.height == 0:
        raise EmptyImageError("empty image", f"{img.width}x{img.height} pixels")
    if limit and img.width * img.height > limit:
        original = img.size
        if reduce_to_fit:
            _draft_to_fit(img, limit)
        if img.width * img.height > limit:
            raise _too_large(*original, limit, from_env)


def _decode(img: Image.Image, limit: int | None, from_env: bool, reduce_to_fit: bool,
            at_least: int | None = None) -> Image.Image:
    """Check the header, decode, apply EXIF orientation."""
    original = img.size
    _check_size(img, limit, from_env, reduce_to_fit)
    if at_least and img.size == original:
        _draft_at_least(img, at_least)
    reduced = img.size != original
    img.load()
    orientation = img.getexif().get(0x0112, 1)          # EXIF Orientation
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        out = ImageOps.exif_transpose(img)
        img.close()
    else:
        out = img           # exif_transpose would return a copy: twice the memory for nothing
    if reduced:             # 5-8 turn the photo a quarter: its displayed size is swapped
        out.info["faceage_original_size"] = original[::-1] if orientation in (5, 6, 7, 8) else original
    return out


def open_image(source, max_pixels: int | None = None, *, reduce_to_fit: bool = False,
               at_least: int | None = None) -> Image.Image:
    """Open and fully decode an image from a path or bytes, honouring EXIF orientation.

    ``max_pixels``: the largest image accepted, checked from the header before any pixel is
    decoded; None: :func:`default_max_pixels` (``$FACEAGE_MAX_MEGAPIXELS``, default 50 MP); 0:
    no faceage limit (Pillow's decompression-bomb guard still refuses above 89 MP).
    ``reduce_to_fit``: a JPEG over the limit is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
    scaling, so the full image never exists in memory) instead of being refused; its size before
    reduction (after EXIF rotation) is then in ``img.info["faceage_original_size"]``.
    ``at_least``: a JPEG is decoded at the coarsest of 1/8, 1/4 and 1/2 scale whose longer side is
    still at least this many px (a coarse first look that may spare decoding every pixel; the
    size before reduction is recorded the same way).
    Raises a subclass of :class:`ImageDecodeError` naming what is wrong."""
    from_env = max_pixels is None
    limit = default_max_pixels() if from_env else (int(max_pixels) or None)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not len(source):
                raise EmptyImageError()
            img = _open(io.BytesIO(source), limit)
        else:
            path = Path(source)
            try:
                st = path.stat()
            except FileNotFoundError:
                raise ImageNotFoundError(detail=str(path)) from None
            if stat.S_ISDIR(st.st_mode):
                raise IsAFolderError(detail=str(path))
            if not stat.S_ISREG(st.st_mode):      # /dev/zero never ends; a FIFO blocks
                raise NotAFileError(detail=str(path))
            if st.st_size == 0:
                raise EmptyImageError()
            img = _open(path, limit)
        try:
            return _decode(img, limit, from_env, reduce_to_fit, at_least)
        except BaseException:
            img.close()             # the file handle of a lazily opened path
            raise
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:    # Pillow's message names a BytesIO object: say it plainly
        raise NotAnImageError(detail="" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(detail=str(exc)) from None
    except PermissionError as exc:
        raise ImageDecodeError("permission denied", str(exc.filename or "")) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(detail=str(exc)) from None


def decoded_size(source, max_pixels: int | None = None, *, reduce_to_fit: bool = False) -> tuple[int, int]:
    """The size :func:`open_image` would decode ``source`` (bytes or path) to, from the header
    alone: no pixel is decoded. Raises what ``open_image`` raises for the header's problems
    (not an image, empty, over the pixel limit)."""
    from_env = max_pixels is None
    limit = default_max_pixels() if from_env else (int(max_pixels) or None)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise EmptyImageError()
        fp = io.BytesIO(source)
    else:
        fp = source
    try:
        img = _open(fp, limit)
    except UnidentifiedImageError:
        raise NotAnImageError() from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(detail=str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(detail=str(exc)) from None
    with img:
        _check_size(img, limit, from_env, reduce_to_fit)
        return img.size


# ---- colour modes --------------------------------------------------------------------------
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img.convert(mode)`` for every mode Pillow opens: conversions Pillow lacks (LAB -> L,
    La -> anything) go through RGB or LA. Raises :class:`UnsupportedImageError` when none works."""
    if img.mode == mode:
        return img
    try:
        return img.convert(mode)
    except ValueError:
        pass
    try:
        if img.mode == "La":           # premultiplied gray+alpha: read as plain gray+alpha
            return Image.merge("LA", img.split()).convert(mode)
        return img.convert("RGB").convert(mode)
    except ValueError:
        raise UnsupportedImageError(detail=f"colour mode {img.mode} cannot be converted to {mode}") from None


def _deep_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images -> "L", scaled so the image's maximum is 255
    (negative values and NaN are 0). Read in strips of rows: a 50 MP float image never gets a
    full NumPy copy (it would double its 200 MB)."""
    w, h = img.size
    step = max(1, (1 << 20) // max(1, w))

    def strips():
        for r in range(0, h, step):
            yield r, np.asarray(img.crop((0, r, w, min(h, r + step))))

    top = 0.0
    for _, a in strips():
        if a.size:
            m = float(np.nanmax(a)) if a.dtype.kind == "f" and not np.isnan(a).all() else float(np.max(a))
            top = max(top, m) if math.isfinite(m) else top
    scale = 255.0 / max(top, 1.0)
    out = np.empty((h, w), dtype=np.uint8)
    for r, a in strips():
        block = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=top, neginf=0.0) * scale
        out[r:r + len(a)] = np.clip(block, 0, 255).astype(np.uint8)      # truncates, as before
    return Image.fromarray(out)


def to_rgb(img: Image.Image, *, release: bool = False) -> Image.Image:
    """Any decoded PIL image -> 8-bit RGB: deep (16-bit, integer, float) images are scaled to
    their maximum, transparency is laid over white, other modes are converted. An RGB image
    is returned as it is (no copy). ``release``: ``img`` is ours to close as soon as an
    intermediate copy exists (halves the peak on big deep images). Raises a subclass of
    :class:`ImageDecodeError`."""
    if img.width * img.height == 0:
        raise EmptyImageError("empty image", f"{img.width}x{img.height} pixels")
    try:
        if img.mode in _DEEP_MODES:
            gray = _deep_to_8bit(img)
            if release:
                img.close()
            img = gray
        if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
            rgba = convert_mode(img, "RGBA")
            bg = Image.new("RGB", img.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba)      # an RGBA mask is read from its alpha band
            return bg
        return convert_mode(img, "RGB")
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError) as exc:       # a lazily loaded image that turns out to be broken
        raise CorruptImageError(detail=str(exc)) from None
    except ValueError as exc:
        raise UnsupportedImageError(detail=str(exc)) from None


def check_image(source, max_pixels: int | None = None) -> None:
    """What ``data inspect`` and the training cache both require of an image: it decodes within
    the pixel limit and its colour mode converts to RGB and to gray. Raises ImageDecodeError."""
    img = open_image(source, max_pixels, reduce_to_fit=True)
    try:
        probe = img.crop((0, 0, 1, 1))        # mode support does not depend on size
        convert_mode(probe, "RGB")
        convert_mode(probe, "L")
    finally:
        img.close()


def frame(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Apply the spec's crop and resize to a decoded image."""
    img = convert_mode(img, "RGB" if spec.channels == 3 else "L")
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
    """Decode ``source`` (path or bytes) into a ``(size, size, channels)`` uint8 array.

    Within the pixel limit every image decodes in full; a JPEG over it is decoded at a reduced
    scale that fits (the framing is the same, and the result is at most a few hundred px)."""
    return frame_array(open_image(source, reduce_to_fit=True), spec)


def frame_array(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """A decoded image -> the ``(size, size, channels)`` uint8 model input: :func:`load_image`
    after decoding, for pixels altered in memory (e.g. benchmarks degrading a chip)."""
    arr = np.asarray(frame(img, spec), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr
