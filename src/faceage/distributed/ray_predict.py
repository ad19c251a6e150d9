"""`faceage predict --engine ray`: ages and genders for a photo collection on Ray Data, written
to a resumable Parquet table.

    paths (the driver lists them; sent in waves of blocks)
      -> Ray tasks, one per block of paths: read, decode, detect, align   (one row per face + its crop)
      -> a pool of actors, each loading the age/gender model once          (map_batches with a class)
      -> the driver commits photos whose faces are all back, in parts     (temp name, then rename)

The output folder holds ``part-*.parquet`` files: one row per face (``face`` 1, 2, ... in
reading order, as ``faceage predict`` numbers them) and one row for each photo without a face
(``note`` "no face found") or that could not be read (``error``). A photo's rows are always in
one part, and a part is renamed into place only once complete, so the parts list exactly the
photos done: a run with the same ``out`` skips them and does the rest. Read the result with
``pandas.read_parquet(out)`` or ``pyarrow.parquet.read_table(out)``; they ignore the
``.part-*.tmp`` files being written and ``_faceage_job.json`` (the job's options, checked on
resume so that one table never mixes two models).

Without ``address`` a local Ray is started for the job (this machine's cores, its own
temporary folder, listening on 127.0.0.1 only, no dashboard) and stopped at the end. With
``address="auto"`` or ``"ray://HOST:PORT"`` the job runs on that cluster, whose nodes need
``faceage[ray]`` installed and must see the photos (a shared file system or URIs).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

from ..errors import ConfigError, FaceageError
from .sources import filesystem, is_uri, list_photos, read_uri

RAY_PINS = "ray[data]==2.60.0, pyarrow==26.0.1"
INSTALL_HINT = "pip install 'faceage[ray]'"
JOB_FILE = "_faceage_job.json"
PART = re.compile(r"^part-.+\.parquet$")
TEMP = re.compile(r"^\.part-.+\.parquet\.tmp$")


class RayNotInstalledError(FaceageError, ImportError):
    """``--engine ray`` without Ray Data: the message says how to install it (exit code 2)."""


def import_ray():
    """ray (with ray.data) and pyarrow, or :class:`RayNotInstalledError` saying how to get them."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayNotInstalledError(f"--engine ray needs Ray Data, which is not installed ({exc}); install it with: "
                                   f"{INSTALL_HINT}  ({RAY_PINS})") from None
    return ray


# ---- the rows ------------------------------------------------------------------------------
def result_schema(with_count: bool = False):
    """The output table: one row per face, or one per photo without a face or with an error."""
    import pyarrow as pa
    fields = [("path", pa.string()), ("face", pa.int32()), ("box", pa.list_(pa.float64())),
              ("landmarks", pa.list_(pa.list_(pa.float64()))), ("score", pa.float64()), ("age", pa.float64()),
              ("age_low", pa.float64()), ("age_high", pa.float64()), ("age_bin", pa.string()), ("gender", pa.string()),
              ("gender_prob", pa.float64()), ("female_prob", pa.float64()), ("low_quality", pa.bool_()),
              ("note", pa.string()), ("error", pa.string()), ("error_type", pa.string())]
    return pa.schema(fields + ([("n_rows", pa.int32())] if with_count else []))


def detected_schema():
    """Between the stages: the detection of each face with its aligned crop (uint8 bytes)."""
    import pyarrow as pa
    return pa.schema([("path", pa.string()), ("n_rows", pa.int32()), ("face", pa.int32()),
                      ("box", pa.list_(pa.float64())), ("landmarks", pa.list_(pa.list_(pa.float64()))),
                      ("score", pa.float64()), ("crop", pa.binary()), ("crop_shape", pa.list_(pa.int32())),
                      ("note", pa.string()), ("error", pa.string()), ("error_type", pa.string())])


# ---- stage 1: Ray tasks over blocks of paths ------------------------------------------------
_PREDICTORS: dict = {}      # per worker process: Ray reuses workers, so the detector loads once each


def _cached_predictor(options: dict):
    key = json.dumps(options, sort_keys=True, default=str)
    if key not in _PREDICTORS:
        from ..inference.predictor import Predictor
        _PREDICTORS[key] = Predictor(**options)
    return _PREDICTORS[key]


def _read(path: str, cwd: str):
    """A local path (decoded with `faceage predict`'s own errors; a relative one is the driver's,
    not this worker's); a URI's bytes via pyarrow.fs."""
    if not is_uri(path):
        return os.path.join(cwd, path)
    from ..preprocess import ImageNotFoundError
    try:
        return read_uri(path)
    except FileNotFoundError:
        raise ImageNotFoundError() from None


def detect_block(batch, options: dict, cwd: str = "."):
    """Decode, detect and align every photo of a block (a pyarrow table with a ``path`` column).
    A photo that fails, for whatever reason, becomes an error row: a bad file never fails the job.
    ``options``: Predictor's; ``cwd``: the folder relative paths are relative to."""
    import pyarrow as pa

    from ..inference.predictor import describe_error
    predictor = _cached_predictor(options)
    paths = batch.column("path").to_pylist()
    # Object stores answer each GET after tens of ms: fetch the block's URIs side by side first,
    # so the CPU is not left waiting photo after photo. Local paths are read when decoded.
    fetched = {}
    uris = [p for p in paths if is_uri(p)]
    if uris:
        from concurrent.futures import ThreadPoolExecutor

        def fetch(uri):
            try:
                return _read(uri, cwd)
            except Exception as exc:  # noqa: BLE001 - raised again for its photo below
                return exc
        with ThreadPoolExecutor(max_workers=min(8, len(uris))) as pool:
            fetched = dict(zip(uris, pool.map(fetch, uris)))
    rows: list[dict] = []
    for path in paths:
        try:
            data = fetched.pop(path) if path in fetched else _read(path, cwd)
            if isinstance(data, Exception):
                raise data
            _, faces = predictor._decode_and_find(data, "rgb", keep_image=False)    # as Predictor.analyze
        except Exception as exc:  # noqa: BLE001 - one row saying why, and the job goes on
            rows.append({"path": path, "n_rows": 1, "error": describe_error(exc) or type(exc).__name__,
                         "error_type": type(exc).__name__})
            continue
        if not faces:
            rows.append({"path": path, "n_rows": 1, "note": "no face found"})
        for number, (d, crop) in enumerate(faces, start=1):
            rows.append({"path": path, "n_rows": len(faces), "face": number, "box": [float(v) for v in d.box],
                         "landmarks": None if d.landmarks is None else [[float(x), float(y)] for x, y in d.landmarks],
                         "score": None if d.score is None else float(d.score),
                         "crop": crop.tobytes(), "crop_shape": list(crop.shape)})
    return pa.Table.from_pylist(rows, schema=detected_schema())


# ---- stage 2: the model, in a pool of actors ------------------------------------------------
class AgeModel:
    """A Ray Data actor: loads the age/gender model once, then scores batches of face crops."""

    def __init__(self, model=None, batch_size: int = 32, threads: int = 1):
        from ..inference.predictor import Predictor
        self.predictor = Predictor(model, detector="skip", batch_size=batch_size, threads=threads)

    def __call__(self, batch):
        import numpy as np
        import pyarrow as pa

        from ..inference.detector import Detection
        rows = batch.to_pylist()
        todo = [r for r in rows if r["crop"] is not None]
        # Each face on its own, numbered afterwards: one photo's faces may come in different batches.
        per_face = [[(Detection(np.asarray(r["box"], dtype=np.float64),
                                None if r["landmarks"] is None else np.asarray(r["landmarks"], dtype=np.float64),
                                r["score"]),
                      np.frombuffer(r["crop"], dtype=np.uint8).reshape(r["crop_shape"]))] for r in todo]
        faces = self.predictor._predict(per_face) if todo else []
        out = []
        for r in rows:
            out.append({"path": r["path"], "n_rows": r["n_rows"], "note": r["note"], "error": r["error"],
                        "error_type": r["error_type"]})
        by_row = dict(zip((id(r) for r in todo), faces))
        for r, o in zip(rows, out):
            if id(r) not in by_row:
                continue
            f = by_row[id(r)][0].to_dict()
            probs = f.get("gender_probs") or {}
            o.update(face=r["face"], box=f["box"], landmarks=f["landmarks"], score=f["score"], age=f["age"],
                     age_low=f["age_low"], age_high=f["age_high"], age_bin=f["age_bin"], gender=f["gender"],
                     gender_prob=f["gender_prob"], female_prob=probs.get("female"), low_quality=f["low_quality"])
        return pa.Table.from_pylist(out, schema=result_schema(with_count=True))


# ---- the output folder ------------------------------------------------------------------------
class ResultStore:
    """``out``: Parquet parts committed atomically; the parts' ``path`` column is the list of done photos."""

    def __init__(self, out: str, part_size: int, part_seconds: float):
        from pyarrow import fs as pafs
        self.out, self.part_size, self.part_seconds = str(out), part_size, part_seconds
        self.fs, self.dir = filesystem(self.out)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        info = self.fs.get_file_info(self.dir)
        if info.type == pafs.FileType.File:
            raise ConfigError(f"--out {out} is a file: give a folder for the Parquet parts")
        self.fs.create_dir(self.dir, recursive=True)
        self.tag = time.strftime("%Y%m%dT%H%M%S") + f"-p{os.getpid()}"
        self.seq, self.parts_written = 0, 0
        self.pending: list = []           # result batches not yet committed
        self.missing: dict[str, int] = {}  # photo -> rows still to come
        self.complete: list[str] = []     # photos whose rows are all here, not yet committed
        self.last_commit = time.monotonic()
        self.counts = {"scored": 0, "faces": 0, "no_face": 0, "errors": 0}

    def _names(self):
        from pyarrow import fs as pafs
        for f in self.fs.get_file_info(pafs.FileSelector(self.dir)):
            if f.type == pafs.FileType.File:
                yield f, f.path.rsplit("/", 1)[-1]

    def check_job(self, job: dict) -> None:
        """The first run writes the job's options; a later run must use the same ones."""
        path = f"{self.dir}/{JOB_FILE}"
        if self.fs.get_file_info(path).type.name == "File":
            with self.fs.open_input_stream(path) as fh:
                before = json.loads(fh.read())
            if before.get("options") != job["options"]:
                raise ConfigError(f"{self.out} holds results made with other options ({before.get('options')}); "
                                  f"resume with the same model and detection options, or give a new --out")
            return
        self._write_bytes(JOB_FILE, json.dumps(job, indent=2).encode())

    def done(self):
        """The photos already committed (a pyarrow array of paths), after removing what a killed
        run left half-written."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        parts = []
        for info, name in self._names():
            if PART.match(name):
                parts.append(info.path)
            elif TEMP.match(name) and self._stale(info, name):
                self.fs.delete_file(info.path)
        if not parts:
            return pa.array([], pa.string())
        import pyarrow.compute as pc
        return pc.unique(pq.read_table(parts, filesystem=self.fs, columns=["path"]).column("path"))

    def _stale(self, info, name: str) -> bool:
        m = re.search(r"-p(\d+)-", name)
        if self.local and m:
            try:
                os.kill(int(m.group(1)), 0)
                return False               # its writer still runs
            except (ProcessLookupError, PermissionError, ValueError):
                return True
        return info.mtime is not None and time.time() - info.mtime.timestamp() > 3600

    def add(self, batch) -> None:
        self.pending.append(batch)
        for path, n in zip(batch.column("path").to_pylist(), batch.column("n_rows").to_pylist()):
            left = self.missing.pop(path, n) - 1
            if left > 0:
                self.missing[path] = left
            else:
                self.complete.append(path)
        due = time.monotonic() - self.last_commit >= self.part_seconds
        if len(self.complete) >= self.part_size or (self.complete and due):
            self.commit()

    def commit(self) -> int:
        """Write every complete photo as one part; returns how many photos it held."""
        import pyarrow as pa
        import pyarrow.compute as pc
        if not self.complete:
            return 0
        table = pa.concat_tables(self.pending)
        chosen = pc.is_in(table.column("path"), value_set=pa.array(self.complete, pa.string()))
        part, rest = table.filter(chosen), table.filter(pc.invert(chosen))
        self.pending = [rest] if rest.num_rows else []
        n = len(self.complete)
        self.complete = []
        part = part.drop_columns(["n_rows"]).sort_by([("path", "ascending"), ("face", "ascending")])
        self.seq += 1
        self._write_table(f"part-{self.tag}-{self.seq:05d}.parquet", part)
        self.parts_written += 1
        self.last_commit = time.monotonic()
        faces = pc.sum(pc.is_valid(part.column("face"))).as_py() or 0
        errors = pc.sum(pc.is_valid(part.column("error"))).as_py() or 0
        self.counts["scored"] += n
        self.counts["faces"] += faces
        self.counts["errors"] += errors
        self.counts["no_face"] += part.num_rows - faces - errors
        return n

    def _write_table(self, name: str, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self._write_bytes(name, sink.getvalue().to_pybytes())

    def _write_bytes(self, name: str, data: bytes) -> None:
        """Under a temporary name, then renamed: a reader (or a resumed run) sees all or nothing."""
        final = f"{self.dir}/{name}"
        tmp = f"{self.dir}/.{name}.tmp" if name.startswith("part-") else f"{self.dir}/.{name}.{self.tag}.tmp"
        if self.local:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with self.fs.open_output_stream(tmp) as fh:
                fh.write(data)
            self.fs.move(tmp, final)


# ---- the driver -------------------------------------------------------------------------------
@dataclass
class _Local:
    temp_dir: str


@contextlib.contextmanager
def _stderr_to_file():
    """While Ray starts, its C++ side writes to file descriptor 2 (a line about its own log level,
    for one): keep those lines in a file and hand them back, shown only if the start fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        lines: list[str] = []
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines += capture.read().decode(errors="replace").splitlines()


def _start_ray(ray, address, num_cpus, object_store_mb, runtime_env=None):
    """Connect to ``address``, or start a local Ray that only this machine can reach. Returns a
    _Local when this call started it (so the caller stops it), else None."""
    logging.getLogger("ray").setLevel(logging.ERROR)
    if ray.is_initialized():
        return None
    # The driver's C++ log goes to stderr; at its default level it warns about every actor
    # that Ray Data creates (constructor arguments in the object store). Workers log to files.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if address:
        with _stderr_to_file():
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, runtime_env=runtime_env)
        return None
    # 127.0.0.1 only: Ray binds its servers to the node address, which is the loopback address
    # when this (Windows/macOS) switch is off. Read when ray is imported; set here too in case
    # it already was.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        from ray._private import ray_constants
        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):
        pass
    # Short: Ray's socket paths under it (~70 more bytes) must stay within the 107-byte limit of
    # Unix sockets, which a long $TMPDIR (macOS's /var/folders/...) would pass.
    base = tempfile.gettempdir()
    if len(base) > 32 and os.path.isdir("/tmp"):
        base = "/tmp"
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir=base)
    try:
        with _stderr_to_file() as printed:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir,
                     logging_level=logging.ERROR, log_to_driver=False,
                     object_store_memory=object_store_mb * 1024 ** 2, runtime_env=runtime_env)
    except Exception as exc:  # noqa: BLE001 - Ray's own start-up errors are plain Exceptions
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        said = "".join(f"\n  {line}" for line in printed[-5:] if "log level" not in line)
        raise FaceageError(f"the local Ray did not start: {str(exc).splitlines()[0]} (Ray gives its processes "
                           f"30 s; on a very busy machine run again, or give --address of a running cluster)"
                           + said) from None
    return _Local(temp_dir)


def predict_dataset(source, out, *, address: str | None = None, model=None, detector: str | None = None,
                    det_size: int | None = None, det_thresh: float = 0.8, min_face_size: int = 0,
                    max_num_faces: int = 0, batch_size: int = 32, concurrency: int = 2, cpus_per_actor: float = 1.0,
                    detect_cpus: float = 1.0, detect_memory_mb: int = 512, block_size: int = 16,
                    num_cpus: int | None = None,
                    object_store_mb: int = 1024, part_size: int = 1000, part_seconds: float = 60.0,
                    wave_size: int = 1_000_000, path_column: str | None = None, runtime_env: dict | None = None,
                    progress: bool = False) -> dict:
    """Ages and genders for every photo in ``source``, written to the Parquet folder ``out``.

    ``source``: a folder, a text file of paths or URIs (one a line), a Parquet/CSV table with a
    path column (``path_column``; default the column named path, uri, file, ... ), one photo,
    or a list of these; paths may be any URI ``pyarrow.fs`` reads. ``out``: a folder (local or
    URI). Photos already in ``out`` are skipped, so a killed job continues where it stopped.

    ``address``: None starts a local Ray for the job (``num_cpus`` logical CPUs: default this
    machine's cores plus the actors' CPUs, because the model waits on detection most of the
    time); "auto" or "ray://HOST:PORT" runs on that cluster. ``concurrency`` actors load the
    model once each and take ``cpus_per_actor`` CPUs; detection runs in tasks of
    ``block_size`` photos, each reserving ``detect_cpus`` CPUs and ``detect_memory_mb`` of
    memory; ``batch_size`` faces go through the model at once. ``runtime_env`` is Ray's (e.g.
    ``{"pip": ["faceage[ray]"]}`` for a cluster whose image lacks faceage). Photos are sent
    ``wave_size`` at a time; a part is committed every ``part_size`` photos or ``part_seconds``.
    Detection options are those of :class:`faceage.Predictor`.

    Returns a summary: ``photos`` in the source, ``skipped`` (already in ``out``), ``scored``
    now, with their ``faces``, ``no_face`` and ``errors`` counts, ``parts`` written, ``seconds``
    (``startup_seconds`` of them before the first photo: listing, checks, starting Ray) and
    ``photos_per_second``.
    """
    ray = import_ray()
    for name, value, low in (("batch_size", batch_size, 1), ("concurrency", concurrency, 1),
                             ("block_size", block_size, 1), ("part_size", part_size, 1), ("wave_size", wave_size, 1),
                             ("object_store_mb", object_store_mb, 64), ("detect_memory_mb", detect_memory_mb, 1)):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, not {value}")
    if cpus_per_actor <= 0 or detect_cpus <= 0:
        raise ConfigError("cpus_per_actor and detect_cpus must be positive")
    t0 = time.perf_counter()
    detection = {"detector": detector, "det_size": det_size, "det_thresh": det_thresh,
                 "min_face_size": min_face_size, "max_num_faces": max_num_faces}
    from ..inference.predictor import DEFAULT_MODEL, Predictor
    try:   # the options and the model checked here, once, rather than failing in every worker
        Predictor(model, **detection, threads=1)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if model is not None and os.path.exists(model):
        model = os.path.abspath(model)             # the workers' working folder is not ours
    model_name = str(DEFAULT_MODEL if model is None else model)
    photos = list_photos(source, path_column)
    store = ResultStore(out, part_size, part_seconds)
    from .. import __version__
    store.check_job({"faceage": __version__, "options": {"model": model_name, **detection}, "created": time.time()})
    todo = _remaining(photos, store.done())
    summary = {"photos": len(photos), "skipped": len(photos) - len(todo), "out": str(out)}
    local = None
    if todo:
        cores = os.cpu_count() or 1
        if address is None and num_cpus is None:
            num_cpus = max(cores, math.ceil(detect_cpus)) + math.ceil(concurrency * cpus_per_actor)
        if address is None and num_cpus < concurrency * cpus_per_actor + detect_cpus:
            raise ConfigError(f"num_cpus {num_cpus} leaves no CPU for detection beside {concurrency} actors of "
                              f"{cpus_per_actor} CPU: the job would wait forever")
        local = _start_ray(ray, address, num_cpus, object_store_mb, runtime_env)
    summary["startup_seconds"] = round(time.perf_counter() - t0, 2)     # listing, checks, Ray's start
    try:
        if todo:
            _run(ray, todo, store, model=model, detection=detection, batch_size=batch_size, concurrency=concurrency,
                 cpus_per_actor=cpus_per_actor, detect_cpus=detect_cpus, block_size=block_size,
                 detect_memory_mb=detect_memory_mb, wave_size=wave_size, progress=progress)
    finally:
        store.commit()                     # what is complete is kept, even on Ctrl+C
        if local is not None:
            ray.shutdown()
            shutil.rmtree(local.temp_dir, ignore_errors=True)
    seconds = time.perf_counter() - t0
    summary.update(store.counts, parts=store.parts_written, seconds=round(seconds, 2),
                   photos_per_second=round(store.counts["scored"] / seconds, 2) if seconds else None)
    return summary


def _remaining(photos: list[str], done) -> list[str]:
    if not len(done):
        return photos
    import pyarrow as pa
    import pyarrow.compute as pc
    arr = pa.array(photos, pa.string())
    return arr.filter(pc.invert(pc.is_in(arr, value_set=done))).to_pylist()


def _run(ray, todo, store, *, model, detection, batch_size, concurrency, cpus_per_actor, detect_cpus, block_size,
         detect_memory_mb, wave_size, progress) -> None:
    from tqdm import tqdm

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False          # the driver's own bar counts photos instead
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    worker_options = {"model": model, "threads": max(1, int(detect_cpus)), "batch_size": batch_size, **detection}
    bar = tqdm(total=len(todo), desc="photos", unit="photo", disable=not progress, file=sys.stderr)
    try:
        with warnings.catch_warnings():
            # Ray Data's advice for a short job: fewer blocks than actors.
            warnings.filterwarnings("ignore", message=".*concurrent actors", category=UserWarning)
            for w in range(0, len(todo), wave_size):       # waves bound what the object store holds
                for batch in _wave(ray, todo[w:w + wave_size], worker_options, model=model, batch_size=batch_size,
                                   concurrency=concurrency, cpus_per_actor=cpus_per_actor, detect_cpus=detect_cpus,
                                   block_size=block_size, detect_memory_mb=detect_memory_mb):
                    before = store.counts["scored"] + len(store.complete)
                    store.add(batch)
                    bar.update(store.counts["scored"] + len(store.complete) - before)
    finally:
        bar.close()


def _wave(ray, paths, worker_options, *, model, batch_size, concurrency, cpus_per_actor, detect_cpus, block_size,
          detect_memory_mb):
    """The pipeline over some paths; yields result batches (pyarrow tables) as they finish."""
    import pyarrow as pa
    blocks = [pa.table({"path": pa.array(paths[i:i + block_size], pa.string())})
              for i in range(0, len(paths), block_size)]
    ds = ray.data.from_arrow(blocks)
    # Tasks: read, decode, detect, align. Their memory reservation (a decoded photo, its
    # detection copies, the sessions) also keeps Ray Data from fusing this stage into the actors
    # (it fuses stages with equal resource requests), so detection scales with tasks, not actors.
    ds = ds.map_batches(detect_block, fn_kwargs={"options": worker_options, "cwd": os.getcwd()},
                        batch_size=block_size, batch_format="pyarrow", num_cpus=detect_cpus,
                        memory=detect_memory_mb * 1024 ** 2)
    ds = ds.map_batches(AgeModel, fn_constructor_kwargs={"model": model, "batch_size": batch_size,
                                                         "threads": max(1, round(cpus_per_actor))},
                        compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=cpus_per_actor,
                        batch_size=batch_size, batch_format="pyarrow")
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


# ---- the command line -----------------------------------------------------------------------
def add_arguments(parser) -> None:
    """`faceage predict`'s flags for the Ray engine."""
    g = parser.add_argument_group(f"distributed scoring (--engine ray; needs {INSTALL_HINT})")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: Ray Data, here or on a cluster, into a Parquet "
                        "table (--out). With ray, PATH may also be a text file of paths/URIs or a Parquet/CSV "
                        "table with a path column")
    g.add_argument("--out", metavar="RESULTS", help="(ray) Parquet folder, local or a URI: one row per face; "
                                                    "run again with the same --out to resume")
    g.add_argument("--address", metavar="ADDR", help="(ray) a running cluster: auto, or ray://HOST:PORT "
                                                     "(default: start a local Ray on this machine for the job)")
    g.add_argument("--actors", type=int, default=2, metavar="N",
                   help="(ray) model actors, each loading the model once (default 2)")
    g.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C", help="(ray) CPUs per model actor (default 1)")
    g.add_argument("--block-size", type=int, default=16, metavar="N", help="(ray) photos per detection task (default 16)")
    g.add_argument("--num-cpus", type=int, metavar="N",
                   help="(ray) CPUs of the local Ray (default: the cores plus the actors')")
    g.add_argument("--part-size", type=int, default=1000, metavar="N",
                   help="(ray) photos per committed part (default 1000; a part is also committed every minute)")
    g.add_argument("--path-column", metavar="NAME",
                   help="(ray) the column of a Parquet/CSV source that holds the paths (default: path, uri, file, ...)")

def run_cli(args) -> int:
    """`faceage predict --engine ray ...`."""
    def fail(message: str) -> int:
        print(f"faceage: error: {message}", file=sys.stderr)
        return 2

    if args.engine != "ray":
        return fail("--out and --address are for --engine ray (the local engine prints its results)")
    if not args.out:
        return fail("--engine ray writes a Parquet table: give --out RESULTS (a folder)")
    clash = [flag for flag, on in (("--json", args.json), ("--jsonl", args.jsonl), ("--csv", args.csv),
                                   ("--annotate", args.annotate)) if on]
    if clash:
        return fail(f"{', '.join(clash)}: not with --engine ray, which writes Parquet to --out")
    from .. import cli
    s = predict_dataset(args.paths, args.out, address=args.address, model=args.model, batch_size=args.batch,
                        concurrency=args.actors, cpus_per_actor=args.cpus_per_actor, block_size=args.block_size,
                        num_cpus=args.num_cpus, part_size=args.part_size, path_column=args.path_column,
                        progress=not args.no_progress, **cli.detection_options(args))
    rate = f" ({s['photos_per_second']:g} photos/s)" if s["scored"] and s["photos_per_second"] else ""
    print(f"{s['scored']} photos scored in {s['seconds']:g} s{rate}: {s['faces']} faces, {s['no_face']} without a "
          f"face, {s['errors']} unreadable; {s['skipped']} of {s['photos']} skipped (already in {s['out']}); "
          f"{s['parts']} part(s) written", file=sys.stderr)
    return 1 if s["errors"] else 0
