"""What analysing a photo returns: :class:`Face` records inside one :class:`PhotoResult` per input."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np


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
        """JSON-ready: every field except the crop's pixels."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "crop"}


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
            d["time"] = self.time
        return d
