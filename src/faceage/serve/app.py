"""The HTTP API and the page: FastAPI over one shared :class:`Predictor`.

Request flow for ``POST /v1/analyze``: the multipart body is read into memory under the size
limits (``uploads.py``); a free inference worker is awaited for at most the queue timeout
(else 503); in that worker every image is decoded (pixel limit, format checks) and all faces
go through the model in shared batches. Nothing is written to disk and no URL is fetched.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
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
from .uploads import FIELD, UploadError, read_uploads

STATIC = Path(str(resources.files("faceage.serve") / "static"))
# Decoding failures -> HTTP status: not an image at all is an unsupported media type; an image
# that cannot be decoded is unprocessable content; an oversized one is too large.
STATUS_FOR_REASON = {"not an image": 415, "empty file": 422, "corrupt or truncated image": 422,
                     "image too large": 413}

ANALYZE_BODY = {  # the OpenAPI description of the form FastAPI cannot infer from a raw request
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FIELD],
        "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                               "description": "one or more images (JPEG, PNG, WebP, BMP, TIFF)"}}}}}}}


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
                   "max_megapixels": settings.max_megapixels, "queue_timeout_s": settings.queue_timeout_s,
                   "workers": settings.workers},
    }


def create_app(settings: ServeSettings | None = None, predictor=None) -> FastAPI:
    """``predictor``: an already loaded one (tests share one); else loaded here, once."""
    settings = settings or ServeSettings()
    predictor = predictor or load_predictor(settings)
    model_info = describe_model(predictor, settings)
    pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="faceage-infer")

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

    def analyze_uploads(uploads) -> tuple[list[dict], list[dict], dict]:
        """Runs in a worker thread: decode everything, then detect and predict in batches."""
        from ..inference.predictor import to_rgb_image
        t0 = time.perf_counter()
        images, failures = [], []
        for up in uploads:
            try:
                images.append(to_rgb_image(bytes(up.data), max_pixels=settings.max_pixels))
            except ImageDecodeError as exc:
                detail = f" ({exc.detail})" if exc.reason == "image too large" else ""
                failures.append({"filename": up.filename, "reason": exc.reason,
                                 "status": STATUS_FOR_REASON.get(exc.reason, 422),
                                 "message": f"{up.filename}: {exc.reason}{detail}"})
        t1 = time.perf_counter()
        if failures:
            return [], failures, {"decode": (t1 - t0) * 1000}
        results = []
        for up, im, found in zip(uploads, images, predictor.analyze_many(images)):
            faces = [f.to_dict() for f in found.faces]     # numbered 1, 2, ... in reading order
            results.append({"filename": up.filename, "width": im.width, "height": im.height,
                            "faces": faces, "note": None if faces else "no face found"})
        t2 = time.perf_counter()
        return results, [], {"decode": (t1 - t0) * 1000, "faces": (t2 - t1) * 1000}

    @app.post("/v1/analyze", openapi_extra=ANALYZE_BODY, response_model=AnalyzeResponse,
              responses=error_responses({
                  413: "file, request or image too large",
                  415: "not multipart, or a file that is not an image",
                  422: "empty, corrupt or truncated image; malformed form",
                  503: "no inference worker free within the queue timeout"}))
    async def analyze(request: Request):
        """Faces with age (and 90% interval) and gender for each uploaded image.

        One bad file fails the whole request (413 over 415 over 422) and is named in `files`."""
        start = time.perf_counter()
        try:
            uploads = await read_uploads(request, settings.max_file_bytes, settings.max_files)
        except UploadError as exc:
            return error(exc.status, exc.message)
        free = request.app.state.free_workers
        try:
            await asyncio.wait_for(free.acquire(), timeout=settings.queue_timeout_s)
        except asyncio.TimeoutError:
            return error(503, f"server busy: no worker free within {settings.queue_timeout_s:g} s; retry later",
                         headers={"Retry-After": "5"})
        queued = time.perf_counter()
        try:
            results, failures, timing = await asyncio.get_running_loop().run_in_executor(pool, analyze_uploads, uploads)
        finally:
            free.release()
        if failures:   # one status for the request: 413 over 415 over 422
            statuses = {f["status"] for f in failures}
            status = next(s for s in (413, 415, 422) if s in statuses)
            return error(status, "; ".join(f["message"] for f in failures), files=failures)
        timing.update(queued=(queued - start) * 1000, total=(time.perf_counter() - start) * 1000)
        return {"images": results, "model": model_info["name"],
                "timing_ms": {k: round(v, 2) for k, v in timing.items()}}

    return app
