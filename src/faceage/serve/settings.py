"""What `faceage serve` can be told; every limit has a safe default."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


def cpu_cores() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class ServeSettings:
    model: str | None = None            # None: the shipped default model
    host: str = "127.0.0.1"             # loopback only unless asked: see README "Serving"
    port: int = 8000
    # Inference threads, each running onnxruntime single-threaded. On 2 cores, 2 workers serve
    # 33-34 req/s of 1 MP photos where 1 worker with 2 threads serves 22-25 (BENCHMARKS.md section 8).
    # Requests beyond them wait for a free one, at most `queue_timeout_s`.
    workers: int = field(default_factory=cpu_cores)
    max_file_mb: float = 10.0           # per uploaded file -> 413 above it
    max_files: int = 16                 # per request -> 413 above it
    # Per image, read from the header -> 413 above it (a bigger JPEG is decoded at a reduced scale
    # when one fits). It is also what all workers together may hold decoded at once (app.PixelBudget).
    max_megapixels: float = 50.0
    # Per request, all its images together (decoded pixels), read from the headers -> 413 above it.
    # It bounds a request's time; memory is bounded per image, as images are decoded one by one.
    max_request_megapixels: float = 200.0
    queue_timeout_s: float = 30.0       # waiting for a worker longer than this -> 503
    upload_timeout_s: float = 60.0      # the whole request body must arrive within this -> 408
    # Uploaded bytes held in memory by all requests together (reading, queued, in a worker) -> 503
    # above it. One request may hold max_files x max_file_mb (160 MB by default).
    max_pending_mb: float = 160.0
    # Server-wide detection options, passed as keyword arguments to Predictor (det_size,
    # det_thresh, min_face_size, max_num_faces, detector="skip"); shown by /v1/model.
    predictor_options: dict = field(default_factory=dict)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    @property
    def max_request_pixels(self) -> int:
        return int(self.max_request_megapixels * 1e6)

    @property
    def max_pending_bytes(self) -> int:
        return int(self.max_pending_mb * 2**20)

    @property
    def threads_per_worker(self) -> int:
        """onnxruntime threads per worker, so that workers together use the cores once."""
        return max(1, cpu_cores() // max(1, self.workers))
