"""What analysing a photo returns: :class:`Face` records inside one :class:`PhotoResult` per input."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np


def _finite(v):
    """``v`` with every non-finite float (NaN, infinity) replaced by None, inside lists and dicts too."""
    if isinstance(v, float) or isinstance(v, np.floating):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


@dataclass
class Face:
    number: int                  # 1, 2, ... in reading order (left to right): the number drawn on the photo
    box: list[float]             # x1, y1, x2, y2 in the photo's pixels (after EXIF rotation)
    landmarks: list[list[float]] | None  # 5 x (x, y); None when detection was skipped
    score: float | None          # detection confidence; None when detection was skipped
    age: float | None
    age_low: float | None        # 90% interval from the predicted age distribution
    age_high: float | None
    age_bin: str | None          # the bin holding the printed (rounded) age
    gender: str | None           # "male" / "female"
    gender_prob: float | None    # probability of that gender
    gender_probs: dict[str, float] | None  # both: {"female": p, "male": 1 - p}
    low_quality: bool            # face smaller than 32 px: estimate is less reliable
    crop: np.ndarray | None = field(default=None, repr=False)  # the aligned model input, if asked for

    def to_dict(self) -> dict:
        """JSON-ready: every field except the crop's pixels. A number that is not finite (a
        model answering NaN) becomes null, never ``NaN`` (which is not JSON), and so does
        whatever was derived from it (the age bin from the age, the gender from its probability)."""
        d = {f.name: _finite(getattr(self, f.name)) for f in fields(self) if f.name != "crop"}
        if d["age"] is None and self.age is not None:
            d["age_low"] = d["age_high"] = d["age_bin"] = None
        if d["gender_prob"] is None and self.gender_prob is not None:
            d["gender"] = d["gender_probs"] = None
        if isinstance(d["gender_probs"], dict) and None in d["gender_probs"].values():
            d["gender"] = d["gender_prob"] = d["gender_probs"] = None
        return d


@dataclass
class PhotoResult:
    """One input's answer: its faces, or why it could not be read. Never both."""
    index: int                   # position in the input sequence
    path: str | None             # the file, for path inputs
    faces: list[Face]
    error: str | None = None     # e.g. "file not found: a.jpg"
    error_type: str | None = None  # the exception class, e.g. "ImageNotFoundError"
    time: float | None = None    # seconds from the start, for video frames
    image: object = field(default=None, repr=False)  # the decoded RGB photo, if asked for (for drawing)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def note(self) -> str | None:
        return None if self.error or self.faces else "no face found"

    def to_dict(self) -> dict:
        d = {"path": self.path, "faces": [f.to_dict() for f in self.faces], "error": self.error,
             "error_type": self.error_type, "note": self.note}
        if self.time is not None:
            d["time"] = _finite(self.time)
        return d
