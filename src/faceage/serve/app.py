"""The HTTP API and the page: FastAPI over one shared :class:`Predictor`.

Request flow for ``POST /v1/analyze``: the multipart body is read into memory under the size
limits, a deadline and a server-wide budget of held bytes (``uploads.py``); a free inference
worker is awaited for at most the queue timeout (else 503); in that worker every file's header
is checked first (format, pixels per image and per request) without decoding anything, then the
images are decoded one at a time, each going through detection and the model before the next
is decoded, so a worker holds one decoded image at a time. A JPEG over the pixel limit is
decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when that fits, and a large one is
looked at coarsely first, as ``faceage predict`` does (``Predictor(coarse_decode=True)``); boxes
and sizes are reported in the photo's own pixels. Nothing is written to disk and no URL is fetched.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import FaceageError
from ..preprocess import ImageDecodeError
from .docs import CSP_PAGE, add_docs, with_csp
from .errors import add_error_handlers, error
from .schemas import AnalyzeResponse, ModelInfo, error_responses
from .settings import ServeSettings
from .uploads import FIELD, UploadBudget, UploadError, held_bytes, read_uploads

STATIC = Path(str(resources.files("faceage.serve") / "static"))
# Decoding failures -> HTTP status: not an image at all is an unsupported media type; an image
# that cannot be decoded is unprocessable content; an oversized one is too large.
STATUS_FOR_REASON = {"not an image": 415, "empty file": 422, "corrupt or truncated image": 422,
                     "image too large": 413}
# After an image (and a request) of this many pixels, free heap pages go back to the system.
TRIM_AFTER_PIXELS = 4_000_000


def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def give_memory_back() -> None:
    """Return freed heap memory to the system. A decoded image's pages are freed into glibc's
    arena of the worker thread that decoded it, and glibc keeps most of them (its mmap threshold
    grows after the first big free): 16 decoded 49 MP images left a server at 4 GB. A trim took
    0.005 ms on an idle heap and 0.1 ms after freeing a 49 MP image (2-core machine)."""
    if _TRIM is not None:
        _TRIM(0)

ANALYZE_BODY = {  # the OpenAPI description of the form FastAPI cannot infer from a raw request
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FIELD],
        "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                               "description": "one or more images (JPEG, PNG, WebP, BMP, TIFF)"}}}}}}}


class PixelBudget:
    """Decoded pixels held by all inference workers together, at most ``limit`` (the per-image
    pixel limit): a worker waits, in arrival order, until its next image fits. Two 20 MP photos
    run side by side; a 49 MP one runs alone. So the server's memory follows one knob,
    ``--max-megapixels``, whatever the number of workers (README, "Serving")."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()
        self._next = self._serving = 0

    @contextmanager
    def hold(self, pixels: int):
        with self._cond:
            ticket, self._next = self._next, self._next + 1
            self._cond.wait_for(lambda: self._serving == ticket and
                                (self.used == 0 or self.used + pixels <= self.limit))
            self._serving += 1
            self.used += pixels
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


def load_predictor(settings: ServeSettings):
    """Load model and detector once; a model that fails to load raises FaceageError."""
    from ..inference.predictor import Predictor
    try:
        predictor = Predictor(settings.model, threads=settings.threads_per_worker, **settings.predictor_options)
        # Warm up both networks (and the detector's lazily created session) before serving.
        from PIL import Image
        predictor.analyze(Image.new("RGB", (64, 64)))
    except FaceageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure must stop the server cleanly
        options = ", ".join(f"{k}={v!r}" for k, v in settings.predictor_options.items())
        raise FaceageError(f"cannot load model {settings.model or 'default'}"
                           f"{f' with {options}' if options else ''}: {exc}") from None
    return predictor


def describe_model(predictor, settings: ServeSettings) -> dict:
    runner = predictor.runner
    path = Path(runner.path)
    meta = getattr(runner, "meta", {}) or {}
    metrics = meta.get("metrics")
    if metrics is None:                           # a run directory evaluated with `faceage evaluate --json`
        candidate = (path if path.is_dir() else path.parent) / "metrics.json"
        if candidate.is_file():
            from ..inference.export import metrics_summary
            metrics = metrics_summary(candidate)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None
    # The predictor's effective options (defaults included) when it reports them, else those given.
    detection = dict(getattr(predictor, "options", None) or settings.predictor_options)
    return {
        "name": "default" if settings.model is None else path.name,
        "version": f"faceage {meta.get('faceage_version', __version__)}" + (f", sha256 {digest}" if digest else ""),
        "backend": "onnxruntime" if path.suffix == ".onnx" else "torch",
        "architecture": runner.spec.name,
        "tasks": dict(runner.spec.tasks),
        "input": runner.preprocess.to_dict(),
        "age_bins": predictor.bin_names,
        "detector": str(detection.get("detector") or type(predictor.detector).__name__),
        "detection": jsonable_encoder(detection),
        "metrics": metrics,
        "limits": {"max_file_mb": settings.max_file_mb, "max_files": settings.max_files,
                   "max_megapixels": settings.max_megapixels,
                   "max_request_megapixels": settings.max_request_megapixels,
                   "queue_timeout_s": settings.queue_timeout_s, "upload_timeout_s": settings.upload_timeout_s,
                   "max_pending_mb": settings.max_pending_mb, "workers": settings.workers},
    }


def create_app(settings: ServeSettings | None = None, predictor=None) -> FastAPI:
    """``predictor``: an already loaded one (tests share one); else loaded here, once."""
    settings = settings or ServeSettings()
    predictor = predictor or load_predictor(settings)
    model_info = describe_model(predictor, settings)
    pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="faceage-infer")
    budget = UploadBudget(settings.max_pending_bytes)      # used from the event loop only
    pixels = PixelBudget(settings.max_pixels)               # used from the worker threads

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # The semaphore belongs to the running event loop, so it is made here, not at import.
        app.state.free_workers = asyncio.Semaphore(settings.workers)
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="faceage", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Age and gender for the faces in your photos, computed on this machine. "
                              "Every error answers `{\"error\": message}`.")
    add_error_handlers(app)
    add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return with_csp(CSP_PAGE, FileResponse(STATIC / "index.html"))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model", response_model=ModelInfo)
    def model():
        """The model, its measured quality, the detection options and the upload limits."""
        return model_info

    def failure(up, exc: ImageDecodeError) -> dict:
        detail = f" ({exc.detail})" if exc.reason == "image too large" else ""
        return {"filename": up.filename, "reason": exc.reason, "status": STATUS_FOR_REASON.get(exc.reason, 422),
                "message": f"{up.filename}: {exc.reason}{detail}"}

    def analyze_uploads(uploads) -> tuple[list[dict], list[dict], dict, str | None]:
        """Runs in a worker thread: check every header, then decode, detect and predict one image
        at a time. Returns (results, failures, timing, request-level 413 message or None)."""
        from ..inference.inputs import to_rgb_image
        from ..preprocess import decoded_size
        t0 = time.perf_counter()
        failures, sizes = [], []
        for up in uploads:                  # headers only: nothing is decoded yet
            try:
                w, h = decoded_size(up.data, settings.max_pixels, reduce_to_fit=True)
                sizes.append(w * h)
            except ImageDecodeError as exc:
                failures.append(failure(up, exc))
        total = sum(sizes)
        if failures:
            return [], failures, {"decode": (time.perf_counter() - t0) * 1000}, None
        if total > settings.max_request_pixels:
            return [], [], {}, (f"the images of this request hold {total:,} pixels ({total / 1e6:.1f} MP) together; "
                                f"the limit is {settings.max_request_pixels:,} ({settings.max_request_megapixels:g} MP) "
                                f"per request: send them in several requests")
        timing = {"decode": 0.0, "faces": 0.0}
        results = []
        try:
            for up, size in zip(uploads, sizes):
                # The budget holds the size decoded in full; a large JPEG is often read coarser
                # (the predictor's coarse first look), never finer.
                with pixels.hold(size):
                    try:
                        if failures:                    # the request fails: only check the rest decode
                            t = time.perf_counter()
                            to_rgb_image(up.data, max_pixels=settings.max_pixels, reduce_to_fit=True).close()
                            timing["decode"] += (time.perf_counter() - t) * 1000
                            continue
                        (width, height), found = predictor.analyze_photo(
                            up.data, max_pixels=settings.max_pixels, reduce_to_fit=True, timing=timing)
                        results.append(describe(up.filename, width, height, found))
                    except ImageDecodeError as exc:
                        failures.append(failure(up, exc))
                    finally:
                        up.data = bytearray()           # its bytes are no longer needed
                        if size >= TRIM_AFTER_PIXELS:   # before the budget lets another worker decode
                            give_memory_back()
        finally:
            if total >= TRIM_AFTER_PIXELS:
                give_memory_back()
        if failures:
            return [], failures, {"decode": timing["decode"]}, None
        return results, [], timing, None

    def describe(filename: str, width: int, height: int, found) -> dict:
        """One image's answer (boxes in the photo's own pixels, however it was decoded)."""
        faces = [f.to_dict() for f in found]            # numbered 1, 2, ... in reading order
        return {"filename": filename, "width": width, "height": height, "faces": faces,
                "note": None if faces else "no face found"}

    @app.post("/v1/analyze", openapi_extra=ANALYZE_BODY, response_model=AnalyzeResponse,
              responses=error_responses({
                  408: "the upload did not arrive within the upload timeout",
                  413: "file, request or image too large",
                  415: "not multipart, or a file that is not an image",
                  422: "empty, corrupt or truncated image; malformed form",
                  503: "no inference worker free within the queue timeout, or too many uploads held at once"}))
    async def analyze(request: Request):
        """Faces with age (and 90% interval) and gender for each uploaded image.

        One bad file fails the whole request (413 over 415 over 422) and is named in `files`."""
        start = time.perf_counter()
        try:
            uploads = await read_uploads(request, settings.max_file_bytes, settings.max_files, budget=budget,
                                         timeout_s=settings.upload_timeout_s)
        except UploadError as exc:
            # The body may be unread (or still trickling in): close the connection after answering.
            headers = {"Connection": "close", **({"Retry-After": "5"} if exc.status == 503 else {})}
            return error(exc.status, exc.message, headers=headers)
        held = held_bytes(uploads)
        try:
            free = request.app.state.free_workers
            try:
                await asyncio.wait_for(free.acquire(), timeout=settings.queue_timeout_s)
            except asyncio.TimeoutError:
                return error(503, f"server busy: no worker free within {settings.queue_timeout_s:g} s; retry later",
                             headers={"Retry-After": "5"})
            queued = time.perf_counter()
            try:
                results, failures, timing, too_many = await asyncio.get_running_loop().run_in_executor(
                    pool, analyze_uploads, uploads)
            finally:
                free.release()
        finally:
            budget.give(held)
            for up in uploads:
                up.data = bytearray()
        if too_many:
            return error(413, too_many)
        if failures:   # one status for the request: 413 over 415 over 422
            statuses = {f["status"] for f in failures}
            status = next(s for s in (413, 415, 422) if s in statuses)
            return error(status, "; ".join(f["message"] for f in failures), files=failures)
        timing.update(queued=(queued - start) * 1000, total=(time.perf_counter() - start) * 1000)
        return {"images": results, "model": model_info["name"],
                "timing_ms": {k: round(v, 2) for k, v in timing.items()}}

    return app
