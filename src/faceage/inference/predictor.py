"""Ages and genders for the faces in photos: detect -> align (THE crop) -> model -> Face records.

Faces from many photos are batched through the model together. Inference uses the exported
ONNX model on onnxruntime by default (no torch import); a run directory or checkpoint runs on
torch through the same graph.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..labels import bin_labels
from ..preprocess import ImageDecodeError, open_image
from .align import align_face

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "default.onnx"
LOW_QUALITY_PX = 32


@dataclass
class Face:
    box: list[float]             # x1, y1, x2, y2 in the photo's pixels (after EXIF rotation)
    landmarks: list[list[float]]  # 5 x (x, y)
    score: float                 # detection confidence
    age: float | None
    age_low: float | None        # 90% interval from the predicted age distribution
    age_high: float | None
    age_bin: str | None
    gender: str | None           # "male" / "female"
    gender_prob: float | None    # probability of that gender
    low_quality: bool            # face smaller than 32 px: estimate is less reliable

    def to_dict(self) -> dict:
        return asdict(self)


def to_rgb_image(image, max_pixels: int | None = None) -> Image.Image:
    """Path, bytes, PIL image or NumPy array -> 8-bit RGB PIL image (EXIF orientation applied)."""
    if isinstance(image, (str, Path)) or isinstance(image, (bytes, bytearray)):
        img = open_image(image if not isinstance(image, str) else Path(image), max_pixels=max_pixels)
    elif isinstance(image, Image.Image):
        img = image
    elif isinstance(image, np.ndarray):
        img = Image.fromarray(image)
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


class Predictor:
    """Reusable detector + model. ``model``: None (the shipped default), a run directory, a
    checkpoint or an exported ``.onnx``."""

    def __init__(self, model=None, detector=None, batch_size: int = 32, threads: int | None = None):
        """``threads``: onnxruntime threads for the detector and the age model, each (None: all cores)."""
        from .detector import RetinaFaceDetector
        from .runners import load_runner
        # The detector and the model run in turn: neither session may spin while the other works.
        self.runner = load_runner(model or DEFAULT_MODEL, threads=threads, spinning=False)
        self.detector = detector or RetinaFaceDetector(threads=threads)
        self.batch_size = batch_size
        self.pre = self.runner.preprocess
        self.bin_names = bin_labels(self.runner.spec.age_bins)

    def _crops(self, rgb: Image.Image):
        detections = self.detector.detect(rgb)
        crops = []
        for d in detections:
            crop = align_face(rgb, d.landmarks, self.pre.size)
            if self.pre.channels == 1:
                crop = crop.convert("L")
            arr = np.asarray(crop, dtype=np.uint8)
            crops.append(arr[:, :, None] if arr.ndim == 2 else arr)
        return detections, crops

    def analyze_many(self, images) -> list[list[Face]]:
        """One list of faces per image; all faces go through the model in shared batches."""
        per_image = [self._crops(to_rgb_image(im)) for im in images]
        return self._predict(per_image)

    def _predict(self, per_image) -> list[list[Face]]:
        flat = [c for _, crops in per_image for c in crops]
        record: dict[str, np.ndarray] = {}
        for i in range(0, len(flat), self.batch_size):
            out = self.runner.predict(np.stack(flat[i:i + self.batch_size]))
            for k, v in out.items():
                record[k] = np.concatenate([record[k], v]) if k in record else v
        results, j = [], 0
        for detections, _ in per_image:
            faces = []
            for d in detections:
                faces.append(self._face(d, {k: v[j] for k, v in record.items()}))
                j += 1
            results.append(faces)
        return results

    def _face(self, d, r: dict) -> Face:
        gp = r.get("gender_prob")
        w, h = d.box[2] - d.box[0], d.box[3] - d.box[1]
        return Face(
            box=[round(float(v), 1) for v in d.box], landmarks=[[round(float(x), 1), round(float(y), 1)] for x, y in d.landmarks],
            score=round(d.score, 4),
            age=round(float(r["age"]), 1) if "age" in r else None,
            age_low=float(r["age_low"]) if "age_low" in r else None,
            age_high=float(r["age_high"]) if "age_high" in r else None,
            age_bin=self.bin_names[int(r["age_bin"])] if "age_bin" in r else None,
            gender=None if gp is None else ("female" if gp >= 0.5 else "male"),
            gender_prob=None if gp is None else round(float(gp if gp >= 0.5 else 1 - gp), 4),
            low_quality=bool(min(w, h) < LOW_QUALITY_PX),
        )

    def analyze(self, image) -> list[Face]:
        return self.analyze_many([image])[0]

    def predict_files(self, files: list[Path], annotate_dir: Path | None = None, photos_per_batch: int = 16,
                      progress: bool = False) -> list[dict]:
        """One result per file: ``{path, faces, error, note}``. A file that cannot be read gets
        an error and the others go on; faces of several photos share model batches."""
        from tqdm import tqdm
        results = []
        for i in tqdm(range(0, len(files), photos_per_batch), disable=not progress, desc="photos", unit="batch"):
            group = [Path(f) for f in files[i:i + photos_per_batch]]
            loaded = [(f, *read_for_predict(f)) if f.is_file() else (f, None, "file not found") for f in group]
            ok = [(f, img) for f, img, _ in loaded if img is not None]
            faces_by = dict(zip((f for f, _ in ok), self.analyze_many([img for _, img in ok]))) if ok else {}
            for f, img, err in loaded:
                faces = faces_by.get(f, [])
                results.append({"path": str(f), "faces": [x.to_dict() for x in faces], "error": err,
                                "note": None if err or faces else "no face found"})
                if annotate_dir is not None and img is not None:
                    Path(annotate_dir).mkdir(parents=True, exist_ok=True)
                    annotate(img, faces).save(Path(annotate_dir) / f"{f.stem}.annotated.png")
        return results


_DEFAULT: Predictor | None = None


def analyze(image, *, model=None) -> list[Face]:
    """Faces with age and gender in one call. ``image``: path, bytes, PIL image or NumPy array.

    Examples
    --------
    >>> import faceage
    >>> faces = faceage.analyze("photo.jpg")            # doctest: +SKIP
    >>> faces[0].age, faces[0].gender                    # doctest: +SKIP
    (34.2, 'female')
    """
    global _DEFAULT
    if model is not None:
        return Predictor(model).analyze(image)
    if _DEFAULT is None:
        _DEFAULT = Predictor()
    return _DEFAULT.analyze(image)


def annotate(image: Image.Image, faces: list[Face]) -> Image.Image:
    """A copy with boxes and 'age ± interval, gender' labels drawn."""
    from PIL import ImageDraw
    out = image.copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 400))
    for f in faces:
        draw.rectangle(f.box, outline=(255, 40, 40), width=width)
        label = f"{f.age:.0f}" if f.age is not None else "?"
        if f.age_low is not None:
            label += f" ({f.age_low:.0f}-{f.age_high:.0f})"
        if f.gender:
            label += f", {f.gender} {f.gender_prob:.0%}"
        x, y = f.box[0], max(0, f.box[1] - 14 * width)
        draw.rectangle(draw.textbbox((x, y), label), fill=(255, 40, 40))
        draw.text((x, y), label, fill=(255, 255, 255))
    return out


def read_for_predict(path: Path):
    """(PIL RGB image, None) or (None, error message) - a bad file never stops a batch."""
    try:
        return to_rgb_image(path), None
    except ImageDecodeError as exc:
        return None, f"{exc.reason}" + (f": {exc.detail}" if exc.detail and exc.reason == "image too large" else "")
    except OSError as exc:
        return None, f"cannot read file: {exc.strerror or exc}"
