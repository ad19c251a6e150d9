"""The HTTP answers as pydantic models: they validate what is sent and document it in OpenAPI,
so that clients can be generated from /openapi.json."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# ---- the answers, as pydantic models: they validate what is sent and document it in OpenAPI,
# so that clients can be generated from /openapi.json. Field names match Face.to_dict().
class GenderProbs(BaseModel):
    female: float
    male: float


class Face(BaseModel):
    number: int = Field(description="1, 2, ... in reading order (left to right by box centre): "
                                    "the number drawn on the photo")
    box: list[float] = Field(min_length=4, max_length=4,
                             description="x1, y1, x2, y2 in the photo's pixels (after EXIF rotation)")
    landmarks: list[list[float]] | None = Field(description="5 x (x, y): eyes, nose, mouth corners; "
                                                            "null when detection is skipped")
    score: float | None = Field(description="detection confidence, 0-1; null when detection is skipped")
    age: float | None = Field(description="estimated age in years")
    age_low: float | None = Field(description="lower end of the 90% interval")
    age_high: float | None = Field(description="upper end of the 90% interval")
    age_bin: str | None = Field(description="the age group holding the rounded age, e.g. '21-30'")
    gender: Literal["male", "female"] | None
    gender_prob: float | None = Field(description="probability of that gender, 0.5-1")
    gender_probs: GenderProbs | None = None
    low_quality: bool = Field(description="face smaller than 32 px: the estimate is less reliable")


class ImageResult(BaseModel):
    filename: str
    width: int
    height: int
    faces: list[Face]
    note: str | None = Field(description="'no face found' when faces is empty")


class Timing(BaseModel):
    decode: float
    faces: float
    queued: float
    total: float


class AnalyzeResponse(BaseModel):
    images: list[ImageResult] = Field(description="one per uploaded file, in upload order")
    model: str
    timing_ms: Timing


class FileError(BaseModel):
    filename: str
    reason: str
    status: int
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="what went wrong, for a person to read")
    files: list[FileError] | None = Field(None, description="/v1/analyze: each file that could not be used")


class Limits(BaseModel):
    max_file_mb: float
    max_files: int
    max_megapixels: float = Field(description="per image, from its header; also the pixels all workers "
                                              "together hold decoded at once")
    max_request_megapixels: float = Field(description="all images of one request together")
    queue_timeout_s: float
    upload_timeout_s: float = Field(description="a request body must arrive within this (else 408)")
    max_pending_mb: float = Field(description="uploaded bytes all requests together may hold (else 503)")
    workers: int


class ModelInfo(BaseModel):
    name: str
    version: str
    backend: str
    architecture: str
    tasks: dict[str, Any]
    input: dict[str, Any]
    age_bins: list[str]
    detector: str
    detection: dict[str, Any] = Field(description="the server-wide detection options")
    metrics: dict[str, Any] | None
    limits: Limits


def error_responses(descriptions: dict[int, str]) -> dict:
    """OpenAPI ``responses`` for error statuses: each one answers with an ErrorResponse body."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in descriptions.items()}
