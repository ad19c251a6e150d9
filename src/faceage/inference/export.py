"""``faceage export``: checkpoint -> ONNX (dynamic batch axis) + sidecar JSON, verified.

The graph takes uint8 pixels ``(B, H, W, C)`` and returns the decoded record, so a consumer
needs only onnxruntime and the sidecar's preprocessing spec (size, channels, crop). After
writing, the export is checked: onnxruntime must load it, and its outputs must match torch's
on sample inputs at two batch sizes.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json, atomic_write_via, remove_stale
from ..errors import CheckpointError, ConfigError, FaceageError

TOLERANCE = 1e-4


# What a served or shipped model reports about its accuracy (from `faceage evaluate --json`).
METRIC_KEYS = ("data", "scope", "n", "mae", "rmse", "cs5", "gender_accuracy", "gender_calibration_error", "interval90_coverage",
               "bin_accuracy")


def metrics_summary(path: str | Path) -> dict:
    import json
    try:
        full = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FaceageError(f"cannot read metrics {path}: {exc}") from None
    return {k: full[k] for k in METRIC_KEYS if k in full}


def export_onnx(model: str | Path, out: str | Path | None = None, opset: int = 18,
                metrics: str | Path | None = None, tta: str | None = None,
                interval_temperature: float | None = None, calibration: str | Path | None = None,
                int8: bool = False, int8_data: str | None = None, int8_faces: int | None = None,
                int8_max_diff: float | None = None, cache_dir=None) -> dict:
    """``metrics``: a `faceage evaluate --json` file whose headline numbers go into the sidecar
    (default: ``metrics.json`` beside the checkpoint, when there is one). ``tta``: override the
    checkpoint's test-time augmentation ("none" or "flip") in the exported graph.
    ``calibration``: a ``calibration.json`` to apply although it was fitted to another checkpoint
    (e.g. the split run of the recipe, for a model trained on all the data); default: the one
    `faceage calibrate` fitted to this checkpoint, if any. ``interval_temperature`` overrides the
    calibration's temperature. ``int8``: write the int8 version instead (``quantize.py``), its
    activation ranges fitted on ``int8_faces`` crops of ``int8_data`` (default: the run's validation
    faces in the default dataset); the float graph is verified against torch, the int8 one
    against the float one (``int8_max_diff``: refused, nothing written, if their ages differ by
    more years than that on average)."""
    import torch

    from .checkpoint import load_checkpoint
    from .graph import InferenceGraph
    from .runners import OnnxRunner

    if int8_max_diff is not None and not (int8 and np.isfinite(int8_max_diff) and int8_max_diff > 0):
        raise ConfigError(f"--int8-max-diff must be a positive number of years, with --int8; got {int8_max_diff}")
    if interval_temperature is not None and not (np.isfinite(interval_temperature) and interval_temperature > 0):
        raise FaceageError(f"--interval-temperature must be a positive number; got {interval_temperature}")
    loaded = load_checkpoint(model, calibrated=False)
    if tta is not None:
        from ..models.spec import resolve_spec
        loaded.set_spec(resolve_spec(loaded.spec, {"tta": tta}))
    from .calibration import read_calibration, saved_calibration
    if calibration is not None:
        if not Path(calibration).is_file():
            raise FaceageError(f"calibration file not found: {calibration}")
        fields = read_calibration(Path(calibration), loaded.spec.tta)
        if fields is None:
            raise FaceageError(f"{calibration} cannot be applied (see the warning above)")
    else:
        fields = saved_calibration(loaded.path, loaded.spec.tta)
    if fields is not None:
        loaded.set_spec(replace(loaded.spec, **fields))
    if interval_temperature is not None:
        loaded.set_spec(replace(loaded.spec, interval_temperature=float(interval_temperature)))
    out = Path(out) if out else loaded.path.parent / ("model-int8.onnx" if int8 else "model.onnx")
    if int8:     # bad options or too few faces fail before the export work
        from ..training.fit import default_data_path
        from .quantize import CALIBRATION_FACES, calibration_faces
        fit_faces, check_faces = calibration_faces(loaded, int8_data or default_data_path(),
                                  CALIBRATION_FACES if int8_faces is None else int8_faces, cache_dir)
    graph = InferenceGraph(loaded.net).eval()
    s = loaded.preprocess
    sample = torch.randint(0, 256, (2, s.size, s.size, s.channels), dtype=torch.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent.glob(f".{out.name}.*.tmp"), unknown_age_s=0)   # left by a killed export

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, (sample,), dynamo=True, opset_version=opset, input_names=["image"],
                                        output_names=sorted(graph(sample)), verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
            program.save(str(tmp))
    if int8:
        import tempfile
        scratch = tempfile.TemporaryDirectory()
        float_path = Path(scratch.name) / "float.onnx"
        write(float_path)
    else:
        float_path = out
        atomic_write_via(out, write)
    meta = dict(loaded.meta)
    meta.update({"input": {"name": "image", "dtype": "uint8", "shape": ["batch", s.size, s.size, s.channels],
                           "meaning": "face crops framed per 'preprocess', raw pixel values (RGB or gray)"},
                 "outputs": sorted(graph(sample)), "source_checkpoint": str(loaded.path)})
    meta.pop("config", None)
    split_csv = loaded.path.parent / "split.csv"
    if split_csv.is_file():   # so `faceage evaluate` can warn when scored images were trained on
        from ..data.split import encode_split, load_split
        meta["split"] = encode_split(load_split(split_csv))
    metrics = metrics or (loaded.path.parent / "metrics.json")
    if Path(metrics).is_file():
        meta["metrics"] = metrics_summary(metrics)
    sidecar = out.with_suffix(".json")
    atomic_write_json(float_path.with_suffix(".json"), meta)      # the runner reads it

    # Verify: onnxruntime loads it and agrees with torch, including a batch size not exported with.
    runner = OnnxRunner(float_path)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in (1, 5):
        x = torch.randint(0, 256, (batch, s.size, s.size, s.channels), dtype=torch.uint8, generator=gen)
        with torch.inference_mode():
            ref = {k: v.numpy() for k, v in graph(x).items()}
        got = runner.predict(x.numpy())
        for k in ref:
            if not (np.isfinite(ref[k]).all() and np.isfinite(got[k]).all()):
                raise FaceageError(f"the exported model answers NaN or infinity ('{k}'); {out} is not usable")
            worst = max(worst, float(np.abs(got[k] - ref[k]).max()))
    report = {"onnx": str(out), "sidecar": str(sidecar), "max_abs_diff": worst, "tolerance": TOLERANCE,
              "batches_checked": [1, 5]}
    meta["verification"] = dict(report)
    if worst > TOLERANCE:
        atomic_write_json(float_path.with_suffix(".json"), meta)
        raise FaceageError(f"exported model differs from torch by {worst:.3g} (> {TOLERANCE}); {out} is not reliable")
    if int8:
        from .quantize import quantize_to
        with scratch:
            report["quantization"] = meta["quantization"] = quantize_to(float_path, out, meta, fit_faces, check_faces,
                                                                            int8_max_diff)
    report["size_mb"] = meta["verification"]["size_mb"] = round(out.stat().st_size / 2**20, 2)
    atomic_write_json(sidecar, meta)
    return report


def check_finite_onnx(path: str | Path) -> None:
    """Refuse an ONNX model whose weights (initializers) hold NaN or infinity: it would answer
    NaN for every face. Reads the file once (about 50 ms for the shipped model); onnx only."""
    import onnx
    from onnx import numpy_helper
    try:
        model = onnx.load(str(path))
    except Exception:  # noqa: BLE001 - onnxruntime loaded it; an unreadable file is reported there
        return
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise CheckpointError(f"{path} holds non-finite weights (NaN or infinity in '{init.name}'): it was exported "
                                  "from a diverged model and cannot be used")
