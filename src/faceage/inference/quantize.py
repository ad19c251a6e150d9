"""``faceage export --int8``: an exported model with 8-bit convolutions, for CPUs that run them fast.

onnxruntime's static quantization (QDQ format: per-channel int8 weights, uint8 activations) turns
the float convolutions into integer ones. On a CPU with AVX512-VNNI (or AVX-VNNI) the model runs
faster (on a 2-core AMD EPYC, BENCHMARKS §11h: 1.3x per face at batch 1, 1.4x at batch 32, 1.6x
per chip on one thread); on one without, int8
convolutions can be *slower* than float ones (BENCHMARKS §7, measured on such a machine), which is
why the shipped model stays float and this is an option.

What keeps the error small (measured on the FaceRes model, BENCHMARKS §11h):
- Activation ranges are fitted on real face crops (the run's validation faces), with the
  percentile method: the 99.99th percentile of each activation, not its maximum, so a few
  outliers do not waste the 256 levels (test MAE +0.01 years against float; +0.02 at 99.999).
- The first three convolutions and the last one stay in float. The first ones work at full
  resolution on raw pixels, where a coarse step blurs what every later layer reads: with only
  the first kept, ages came out 0.3 years older on average and MAE rose by 0.07 years. The last
  one feeds the heads directly.
- Only convolutions are quantized: the heads, the softmax over years and the interval decoding
  are a sliver of the time and all of the output's precision.

The result is checked against the float export on faces that were not used to fit the ranges,
and what it measured is kept in the sidecar (``quantization``).
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import FaceageError

CALIBRATION_FACES = 400      # enough for stable percentiles; ~1 min on two cores
CHECK_FACES = 200            # faces held out from calibration, to measure the int8 error
PERCENTILE = 99.99
KEEP_FIRST = 3               # convolutions kept in float at the input end (and the last one)
WARN_AGE_DIFF = 1.0          # mean |int8 - float| age, years, above which export warns


def float_convolutions(onnx_path: Path) -> list[str]:
    """Names of the Conv nodes to keep in float: the first KEEP_FIRST and the last, in graph order."""
    import onnx
    convs = [n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node if n.op_type == "Conv"]
    if not convs:
        raise FaceageError(f"{onnx_path}: no convolutions to quantize")
    return sorted({*convs[:KEEP_FIRST], convs[-1]})


def quantize_onnx(float_path: Path, out: Path, faces: np.ndarray) -> dict:
    """Write the int8 version of ``float_path`` to ``out``, with activation ranges fitted on
    ``faces`` (uint8, (N, H, W, C), as the model's input). Returns what was done."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Faces(CalibrationDataReader):
        # Equal batches only: the percentile calibrator stacks every batch's activations into one
        # array and fails on a short last batch (a remainder of up to 7 faces is left out).
        # ``set_range`` lets onnxruntime collect a batch at a time ("CalibStridedMinMax"), merging
        # histograms as it goes: all activations of 400 faces at once needed more memory than a
        # 24 GB machine had free (the process was killed).
        def __init__(self, batch: int = 8):
            self.batches = [faces[i:i + batch] for i in range(0, len(faces) - batch + 1, batch)]
            self.set_range(0, len(self.batches))

        def __len__(self):
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int):
            self.pending = iter(self.batches[start_index:end_index])

        def get_next(self):
            x = next(self.pending, None)
            return None if x is None else {"image": x}

    keep_float = float_convolutions(float_path)
    # onnxruntime prints its calibration progress on stdout, which is faceage's output channel.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Faces(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], nodes_to_exclude=keep_float, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"CalibPercentile": PERCENTILE, "CalibStridedMinMax": 1})
    return {"format": "onnxruntime static quantization, QDQ: int8 per-channel weights, uint8 activations",
            "quantized_ops": ["Conv"], "kept_float": keep_float, "calibration_method": f"percentile {PERCENTILE}",
            "calibration_faces": int(len(faces) // 8 * 8)}


def quantize_to(float_path: Path, out: Path, meta: dict, fit: np.ndarray, check: np.ndarray,
                max_age_diff: float | None = None) -> dict:
    """Quantize ``float_path`` (beside it, in its scratch folder), its ranges fitted on the faces
    ``fit``, and measure it against the float model on the faces ``check``. Only then is it copied
    to ``out`` (atomically): with ``max_age_diff``, a model whose ages differ from the float
    model's by more than that on average is refused, and nothing is written."""
    import shutil

    from ..atomic import atomic_write_json, atomic_write_via
    candidate = float_path.with_name("int8.onnx")
    done = quantize_onnx(float_path, candidate, fit)
    atomic_write_json(candidate.with_suffix(".json"), meta)          # the runner reads it
    done["check"] = measured = compare_outputs(float_path, candidate, check)
    diff = measured.get("age_mean_abs_diff", 0.0)
    if max_age_diff is not None and diff > max_age_diff:
        raise FaceageError(f"the int8 model's ages differ from the float model's by {diff:.2f} years on average on "
                           f"{measured['faces']} faces, more than --int8-max-diff {max_age_diff:g}: {out} not written")
    if diff > WARN_AGE_DIFF:
        print(f"warning: the int8 model's ages differ from the float model's by {diff:.2f} "
              f"years on average on {measured['faces']} faces: check its accuracy before using it", file=sys.stderr)
    atomic_write_via(out, lambda tmp: shutil.copyfile(candidate, tmp))
    return done


def compare_outputs(float_path: Path, int8_path: Path, faces: np.ndarray) -> dict:
    """How far the int8 model's answers are from the float model's on ``faces``."""
    from .runners import OnnxRunner
    ref, got = OnnxRunner(float_path).predict(faces), OnnxRunner(int8_path).predict(faces)
    for k, v in got.items():
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            raise FaceageError(f"the int8 model answers NaN or infinity ('{k}'); {int8_path} is not usable")
    report = {"faces": int(len(faces))}
    if "age" in ref:
        diff = np.abs(got["age"] - ref["age"])
        report.update(age_mean_abs_diff=float(diff.mean()), age_max_abs_diff=float(diff.max()))
    if "gender_prob" in ref:
        report["gender_agreement"] = float(((got["gender_prob"] >= 0.5) == (ref["gender_prob"] >= 0.5)).mean())
    return report


def calibration_faces(loaded, data: str, n: int, cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Face crops from ``data``, framed as the model wants them: ``n`` to fit the activation ranges
    and up to CHECK_FACES others to measure the result. The run's validation faces when its split
    names enough of them, else any but its test faces; evenly spaced and in a fixed order, so that
    an export can be repeated."""
    from ..data.cache import ImageCache
    from ..data.readers import read_dataset
    from ..evaluation.evaluate import model_split

    if n < 16:
        raise FaceageError(f"--int8-faces must be at least 16; got {n}")
    want = n + min(CHECK_FACES, n)
    manifest, report = read_dataset(data, cache_dir)
    samples = sorted(manifest.samples, key=lambda s: s.key)
    assignment = model_split(loaded)
    if assignment:
        held_out = [s for s in samples if assignment.get(s.key) == "val"]
        samples = held_out if len(held_out) >= want else [s for s in samples if assignment.get(s.key) != "test"]
    if len(samples) < want:
        raise FaceageError(f"--int8 with {n} faces needs {want} face images in {data} ({n} to fit the ranges, "
                           f"{want - n} to check them); found {len(samples)}")
    picked = [samples[i] for i in np.linspace(0, len(samples) - 1, want).astype(int)]
    cache = ImageCache(loaded.preprocess, cache_dir)
    built = cache.build(picked, report)
    if len(built) < want:
        raise FaceageError(f"only {len(built)} of {want} images in {data} could be read for --int8")
    faces = cache.gather([s.digest for s in built])
    check = np.zeros(want, bool)
    check[np.linspace(0, want - 1, want - n).astype(int)] = True      # spread over the sorted keys
    return faces[~check], faces[check]
