"""Ages and genders for the faces in photos: detect -> align (THE crop) -> model -> Face records.

Faces from many photos are batched through the model together. Inference uses the exported
ONNX model on onnxruntime by default (no torch import); a run directory or checkpoint runs on
torch through the same graph.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from ..labels import age_to_bin, bin_labels
from ..preprocess import ImageDecodeError, frame
from .align import align_face, photo_px_per_crop_px
from .detector import Detection
from .inputs import ENCODED, to_rgb_image, video_frames
from .results import Face, PhotoResult

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "default.onnx"
LOW_QUALITY_PX = 32
DETECTORS = ("retinaface", "skip")


class Predictor:
    """Reusable detector + model.

    Parameters (names as in InsightFace / DeepFace where they exist)
    ----------
    model: None (the shipped default), a run directory, a checkpoint or an exported ``.onnx``.
    detector: "retinaface" (default), "skip" (every image is already a face crop, as UTKFace's
        chips: the whole image goes to the model) or any object with ``detect(image)``.
    det_size: longer side of the detection copy in px; None finds faces of any size.
    det_thresh: detection score threshold.
    min_face_size: ignore faces whose box is smaller than this many px (shorter side).
    max_num_faces: keep only the largest N faces (0: all).
    threads: onnxruntime threads for the detector and the age model, each (None: all cores).
    coarse_decode: a JPEG given as a path or bytes whose longer side is about four times the
        detector's first copy or more (2,560 px with the default) is first decoded at 1/2, 1/4 or
        1/8 scale, the coarsest still twice that copy (1,280 px; libjpeg's DCT scaling: far
        cheaper than every pixel). When the detector's first look there is final, no pixel more
        is decoded for detection, and each face is cropped from the coarsest decode where it is
        at least as fine as its crop (that copy itself for big faces); when the detector must
        look finer, the photo is decoded in full. Boxes are in the photo's own pixels either
        way. False: always decode in full.
    """

    def __init__(self, model=None, detector=None, *, det_size: int | None = None, det_thresh: float = 0.8,
                 min_face_size: int = 0, max_num_faces: int = 0, batch_size: int = 32, threads: int | None = None,
                 coarse_decode: bool = True):
        from .runners import load_runner
        if isinstance(detector, str) and detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}: use one of {', '.join(DETECTORS)}")
        if not 0 < det_thresh < 1:
            raise ValueError(f"det_thresh must be between 0 and 1, not {det_thresh}")
        if det_size is not None and det_size < 32:
            raise ValueError(f"det_size must be at least 32 px, not {det_size}")
        if min_face_size < 0 or max_num_faces < 0:
            raise ValueError("min_face_size and max_num_faces must not be negative")
        # The detector and the model run in turn: neither session may spin while the other works.
        self.runner = load_runner(model or DEFAULT_MODEL, threads=threads, spinning=False)
        self.skip_detection = detector == "skip"
        if detector is None or detector == "retinaface":
            from .detector import RetinaFaceDetector
            # Asking for big faces only also spares the detector the fine passes that find small ones.
            detector = RetinaFaceDetector(score_threshold=det_thresh, det_size=det_size, threads=threads,
                                          min_face_size=max(32, min_face_size))
        self.detector = None if self.skip_detection else detector
        self.min_face_size, self.max_num_faces = min_face_size, max_num_faces
        self.coarse_decode = coarse_decode
        self.options = {"detector": "skip" if self.skip_detection else type(detector).__name__,
                        "det_size": det_size, "det_thresh": det_thresh, "min_face_size": min_face_size,
                        "max_num_faces": max_num_faces}
        self.batch_size = batch_size
        self.pre = self.runner.preprocess
        self.bin_edges = self.runner.spec.age_bins
        self.bin_names = bin_labels(self.bin_edges)

    # ---- one photo -------------------------------------------------------------------------
    def analyze(self, image, *, channels: str = "rgb", return_crops: bool = False) -> list[Face]:
        """The faces in one photo (path, bytes, PIL image or NumPy array; arrays are RGB unless
        ``channels="bgr"``). A photo that cannot be read raises a subclass of
        :class:`faceage.preprocess.ImageDecodeError` saying why."""
        _, faces = self._decode_and_find(image, channels, keep_image=False)
        return self._predict([faces], return_crops)[0]

    def analyze_photo(self, image, *, max_pixels: int | None = None, reduce_to_fit: bool = False,
                      timing: dict | None = None) -> tuple[tuple[int, int], list[Face]]:
        """:meth:`analyze` for a service: ``(width, height)`` of the photo (after EXIF rotation)
        and its faces, boxes and landmarks in the photo's own pixels however it was decoded.
        ``max_pixels`` and ``reduce_to_fit`` are :func:`faceage.preprocess.open_image`'s: a JPEG
        over the limit is decoded at a reduced scale instead of being refused. ``timing``, a dict,
        gains the milliseconds spent decoding (``"decode"``) and finding and reading the faces
        (``"faces"``)."""
        timing = {} if timing is None else timing
        t0, decoded_before = time.perf_counter(), timing.get("decode", 0.0)
        decode = {"max_pixels": max_pixels, "reduce_to_fit": reduce_to_fit, "timing": timing}
        rgb, faces = self._decode_and_find(image, "rgb", keep_image=False, decode=decode)
        size = _photo_size(image, rgb)
        if rgb is not image:                 # never close the caller's own PIL image
            rgb.close()
        found = self._predict([faces])[0]
        spent = (time.perf_counter() - t0) * 1000 - (timing.get("decode", 0.0) - decoded_before)
        timing["faces"] = timing.get("faces", 0.0) + spent
        return tuple(size), found

    # ---- many photos -----------------------------------------------------------------------
    def iter_analyze(self, images: Iterable, *, channels: str = "rgb", return_crops: bool = False,
                     return_images: bool = False, progress: bool = False,
                     photos_per_batch: int = 16) -> Iterator[PhotoResult]:
        """One :class:`PhotoResult` per input, in input order, as soon as its batch is done.

        A file that cannot be read gives a result with ``error`` set and the others go on. At
        most ``photos_per_batch`` decoded photos are held at a time, so a generator over
        100,000 paths runs in bounded memory; ``progress`` shows a bar counting photos."""
        from tqdm import tqdm
        total = len(images) if hasattr(images, "__len__") else None
        bar = tqdm(total=total, disable=not progress, desc="photos", unit="photo")
        try:
            chunk: list = []
            for index, image in enumerate(images):
                chunk.append((index, image))
                if len(chunk) == photos_per_batch:
                    yield from self._analyze_chunk(chunk, channels, return_crops, return_images)
                    bar.update(len(chunk))
                    chunk = []
            if chunk:
                yield from self._analyze_chunk(chunk, channels, return_crops, return_images)
                bar.update(len(chunk))
        finally:
            bar.close()

    def analyze_many(self, images: Iterable, **options) -> list[PhotoResult]:
        """:meth:`iter_analyze` as a list: one result (faces or an error) per input."""
        return list(self.iter_analyze(images, **options))

    def iter_video(self, path, every: float = 1.0, *, return_crops: bool = False,
                   return_images: bool = False) -> Iterator[PhotoResult]:
        """Faces in frames of a video (any format OpenCV reads), one frame every ``every``
        seconds; each result carries the frame's ``time`` in seconds."""
        chunk: list = []
        for t, rgb in video_frames(path, every):
            chunk.append((t, rgb))
            if len(chunk) == 8:
                yield from self._video_chunk(path, chunk, return_crops, return_images)
                chunk = []
        if chunk:
            yield from self._video_chunk(path, chunk, return_crops, return_images)

    def _video_chunk(self, path, chunk, return_crops, return_images):
        per_image = [self._find_faces(rgb) for _, rgb in chunk]
        for (t, rgb), faces in zip(chunk, self._predict(per_image, return_crops)):
            yield PhotoResult(index=0, path=str(path), faces=faces, time=t, image=rgb if return_images else None)

    def _analyze_chunk(self, chunk, channels, return_crops, return_images) -> list[PhotoResult]:
        results, found = [], []
        for index, image in chunk:
            path = str(image) if isinstance(image, (str, Path)) else None
            try:
                rgb, faces = self._decode_and_find(image, channels, keep_image=return_images)
            except (ImageDecodeError, TypeError) as exc:
                results.append(PhotoResult(index, path, [], error=describe_error(exc), error_type=type(exc).__name__))
                continue
            results.append(PhotoResult(index, path, [], image=rgb if return_images else None))
            found.append((results[-1], faces))
        for result, faces in zip((r for r, _ in found), self._predict([f for _, f in found], return_crops)):
            result.faces = faces
        return results

    # ---- the pipeline ----------------------------------------------------------------------
    def _decode_and_find(self, image, channels: str, keep_image: bool, decode: dict | None = None):
        """(decoded photo, its faces as :meth:`_find_faces` gives them). A large JPEG file or bytes
        is decoded coarsely first (see ``coarse_decode``); the photo returned is then a reduced
        copy, unless ``keep_image`` asks for the photo itself. ``decode``: :meth:`_decode`'s options."""
        decode = decode or {}
        coarse_first = self.coarse_decode and hasattr(self.detector, "first_look")     # not a custom detector
        if coarse_first and not keep_image and isinstance(image, ENCODED):
            coarse = self._decode(image, channels, at_least=2 * self.detector.first_side, **decode)
            full_size = coarse.info.get("faceage_original_size")
            if full_size is None:                   # not reduced (small, or not a JPEG): it is the photo
                return coarse, self._find_faces(coarse, coarse.size)
            found = self.detector.first_look(coarse, full_size)
            if found is not None:
                return self._crop_found(image, channels, coarse, full_size, found, decode)
            coarse.close()                          # the detector must look finer: every pixel allowed
        rgb = self._decode(image, channels, **decode)
        return rgb, self._find_faces(rgb, _photo_size(image, rgb))

    @staticmethod
    def _decode(image, channels: str, *, max_pixels: int | None = None, reduce_to_fit: bool = False,
                at_least: int | None = None, timing: dict | None = None) -> Image.Image:
        """:func:`to_rgb_image`, adding its milliseconds to ``timing["decode"]`` when asked."""
        t0 = time.perf_counter()
        try:
            return to_rgb_image(image, max_pixels, channels, reduce_to_fit=reduce_to_fit, at_least=at_least)
        finally:
            if timing is not None:
                timing["decode"] = timing.get("decode", 0.0) + (time.perf_counter() - t0) * 1000

    def _find_faces(self, rgb: Image.Image, photo_size=None) -> list[tuple[Detection | None, np.ndarray]]:
        """(detection, aligned crop) per face: filtered by size, the largest N, in reading order.
        Detections are in ``photo_size``'s pixels (default: ``rgb``'s own), for ``rgb`` a copy of the
        photo reduced to fit a pixel limit."""
        photo_size = rgb.size if photo_size is None else photo_size
        if self.skip_detection:        # the photo is the crop: framed exactly as in training
            box = np.array([0, 0, *photo_size], dtype=np.float64)
            return [(Detection(box, None, None), self._as_input(frame(rgb, self.pre)))]
        found = self.detector.detect(rgb)
        if tuple(photo_size) != rgb.size:
            found = _scaled(found, np.array(photo_size, dtype=np.float64) / rgb.size)
        return self._aligned(rgb, self._select(found), photo_size)

    def _crop_found(self, image, channels: str, coarse: Image.Image, full_size, found: list[Detection], decode: dict):
        """:meth:`_find_faces`'s answer from the faces that the first look on ``coarse`` (a reduced
        decode of the photo of ``full_size`` px) found: detections in the photo's pixels, each face
        cropped from the coarsest decode where it is at least as fine as its crop (the coarse copy
        itself when every face is big; else the photo decoded again, as finely as needed)."""
        to_full = np.array(full_size, dtype=np.float64) / coarse.size
        chosen = self._select(_scaled(found, to_full))
        finest = min((photo_px_per_crop_px(d.landmarks, self.pre.size) for d in chosen), default=math.inf)
        source = coarse
        if finest < to_full.max():                  # a face is coarser in this copy than in its crop
            coarse.close()
            source = self._decode(image, channels, at_least=math.ceil(max(full_size) / max(finest, 1.0)), **decode)
        return source, self._aligned(source, chosen, full_size)

    def _aligned(self, source: Image.Image, chosen: list[Detection], photo_size) -> list[tuple[Detection, np.ndarray]]:
        """(detection, aligned crop) for detections in the pixels of a ``photo_size`` photo, cropped
        from ``source``, a decode of it at any scale."""
        to_source = np.array(source.size, dtype=np.float64) / np.asarray(photo_size, dtype=np.float64)
        return [(d, self._as_input(align_face(source, d.landmarks * to_source, self.pre.size))) for d in chosen]

    def _select(self, detections: list[Detection]) -> list[Detection]:
        """Filtered by size, the largest N, in reading order."""
        if self.min_face_size:
            detections = [d for d in detections if min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= self.min_face_size]
        if self.max_num_faces:
            detections = sorted(detections, key=_area, reverse=True)[: self.max_num_faces]
        return sorted(detections, key=lambda d: ((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2))

    def _as_input(self, crop: Image.Image) -> np.ndarray:
        if self.pre.channels == 1:
            crop = crop.convert("L")
        arr = np.asarray(crop, dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr

    def _predict(self, per_image, return_crops: bool = False) -> list[list[Face]]:
        flat = [crop for faces in per_image for _, crop in faces]
        record: dict[str, np.ndarray] = {}
        for i in range(0, len(flat), self.batch_size):
            out = self.runner.predict(np.stack(flat[i:i + self.batch_size]))
            for k, v in out.items():
                record[k] = np.concatenate([record[k], v]) if k in record else v
        results, j = [], 0
        for faces in per_image:
            out = []
            for number, (d, crop) in enumerate(faces, start=1):
                out.append(self._face(number, d, {k: v[j] for k, v in record.items()}, crop if return_crops else None))
                j += 1
            results.append(out)
        return results

    def _face(self, number: int, d: Detection, r: dict, crop) -> Face:
        gp = r.get("gender_prob")
        w, h = d.box[2] - d.box[0], d.box[3] - d.box[1]
        age = round(float(r["age"]), 1) if "age" in r else None
        if "age_bin" in r:   # the bin of the age shown, so "age 52" never comes with "71-80"
            age_bin = self.bin_names[age_to_bin(round(age), self.bin_edges) if age is not None else int(r["age_bin"])]
        else:
            age_bin = None
        return Face(
            number=number, box=[round(float(v), 1) for v in d.box],
            landmarks=None if d.landmarks is None else [[round(float(x), 1), round(float(y), 1)] for x, y in d.landmarks],
            score=None if d.score is None else round(d.score, 4),
            age=age,
            age_low=float(r["age_low"]) if "age_low" in r else None,
            age_high=float(r["age_high"]) if "age_high" in r else None,
            age_bin=age_bin,
            gender=None if gp is None else ("female" if gp >= 0.5 else "male"),
            gender_prob=None if gp is None else round(float(gp if gp >= 0.5 else 1 - gp), 4),
            gender_probs=None if gp is None else {"female": round(float(gp), 4), "male": round(1 - float(gp), 4)},
            low_quality=bool(min(w, h) < LOW_QUALITY_PX),
            crop=crop,
        )


def describe_error(exc: Exception) -> str:
    """The reason, plus the detail where it helps (the path is already in the result)."""
    if isinstance(exc, ImageDecodeError):
        helpful = ("image too large", "permission denied", "unsupported array", "unsupported image", "empty image")
        return exc.reason + (f": {exc.detail}" if exc.detail and exc.reason in helpful else "")
    return str(exc)


def _photo_size(image, rgb: Image.Image) -> tuple[int, int]:
    """The size of the photo ``rgb`` was decoded from: the original's where faceage decoded a file
    or bytes at a reduced scale (``open_image`` records it), else ``rgb``'s own. A PIL image the
    caller gives is the photo, whatever its ``info`` says (Pillow copies ``info`` through crops)."""
    original = rgb.info.get("faceage_original_size") if isinstance(image, ENCODED) else None
    return tuple(original) if original else rgb.size


def _scaled(detections: list[Detection], factor: np.ndarray) -> list[Detection]:
    """Detections on a copy, in the pixels of an image ``factor`` (x, y) times its size."""
    return [Detection(d.box * np.tile(factor, 2), d.landmarks * factor, d.score) for d in detections]


def _area(d: Detection) -> float:
    return float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))


_DEFAULT: Predictor | None = None


def analyze(image, *, model=None, channels: str = "rgb", return_crops: bool = False) -> list[Face]:
    """Faces with age and gender in one call. ``image``: path, bytes, PIL image or NumPy array
    (RGB; ``channels="bgr"`` for OpenCV arrays).

    Examples
    --------
    >>> import faceage
    >>> faces = faceage.analyze("photo.jpg")            # doctest: +SKIP
    >>> faces[0].age, faces[0].gender                    # doctest: +SKIP
    (34.2, 'female')
    """
    global _DEFAULT
    if model is not None:
        return Predictor(model).analyze(image, channels=channels, return_crops=return_crops)
    if _DEFAULT is None:
        _DEFAULT = Predictor()
    return _DEFAULT.analyze(image, channels=channels, return_crops=return_crops)
