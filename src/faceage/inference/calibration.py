"""Interval calibration: make the 90% age interval hold 90% of true ages on held-out faces.

A network trained with DLDL's label distributions reports intervals that are a little too wide
or too narrow for the faces it meets (the width is learnt from a fixed ``sigma``, not from its own
errors). ``faceage calibrate`` fits one number, the interval temperature ``T``, on the
validation split: the interval is read from ``softmax(logits / T)`` (``T`` < 1 narrows it, > 1
widens it) while the age estimate keeps the untempered distribution, so calibration never moves
an estimate. This is temperature scaling (Guo et al. 2017) fitted for interval coverage.

The fitted temperatures (one without and one with flip test-time averaging, since averaging the
mirror image's logits sharpens the distribution) are written to ``calibration.json`` beside the
checkpoint, with the checkpoint's content digest (blake2b, as the decode cache keys images): loading that checkpoint applies them, and
``faceage export`` bakes them into the ONNX graph. A checkpoint that changed since (a run that
went on training) is loaded uncalibrated, with a warning.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json
from ..data.readers import file_digest
from ..errors import CheckpointError, DataError

CALIBRATION_FILE = "calibration.json"
COVERAGE = 0.90                       # the heads report the 5% and 95% quantiles
MAX_AGE = 100


def interval_bounds(logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The 5% and 95% quantile years of ``softmax(logits / T)``, as ``AgeDistributionHead.decode``
    computes them."""
    z = logits.astype(np.float64) / float(temperature)    # one precision, whatever T's type
    p = np.exp(z - z.max(axis=1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    low = np.minimum((cdf < 0.05).sum(axis=1), MAX_AGE)
    high = np.minimum((cdf < 0.95).sum(axis=1), MAX_AGE)
    return low, high


def coverage(logits: np.ndarray, ages: np.ndarray, temperature: float) -> float:
    low, high = interval_bounds(logits, temperature)
    return float(((ages >= low) & (ages <= high)).mean())


def fit_temperature(logits: np.ndarray, ages: np.ndarray, target: float = COVERAGE) -> float:
    """The smallest temperature whose interval covers at least ``target`` of ``ages``, by bisection
    on log T (coverage grows with T: a flatter distribution has wider quantiles)."""
    lo, hi = np.log(1 / 16), np.log(16.0)
    if coverage(logits, ages, np.exp(hi)) < target:
        raise DataError(f"no interval temperature up to 16 covers {target:.0%} of these ages: are they the "
                        "model's own kind of faces?")
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if coverage(logits, ages, np.exp(mid)) >= target else (mid, hi)
    return float(np.exp(hi))


def calibrate(model: str, data: str, split: str = "val", split_file: str | None = None, cache_dir=None) -> dict:
    """Fit the interval temperatures of a checkpoint on ``split`` of its split and write
    ``calibration.json`` beside it. Returns what was written (plus the coverage before)."""
    from ..data.cache import ImageCache
    from ..data.split import BOTH
    from ..evaluation.evaluate import model_split, select_samples
    from .checkpoint import load_checkpoint
    from .graph import cached_head_outputs

    if Path(model).suffix.lower() == ".onnx":
        raise CheckpointError(f"{model}: calibrate a checkpoint or run directory; an exported .onnx model holds only "
                              "decoded intervals (export again after calibrating)")
    loaded = load_checkpoint(model, calibrated=False)
    if "age_dist" not in loaded.spec.tasks:
        raise CheckpointError(f"{loaded.path}: only the age_dist task reports an interval; this model has "
                              f"{', '.join(loaded.spec.tasks)}")
    samples, report, scope = select_samples(loaded, data, split, cache_dir, split_file)
    cache = ImageCache(loaded.preprocess, cache_dir)
    samples = [s for s in cache.build(samples, report) if s.age is not None]
    if len(samples) < 100:
        raise DataError(f"{len(samples)} labelled images in the {scope}: too few to calibrate an interval (need 100)")
    assignment = model_split(loaded)          # the model's own split: were these faces fitted on?
    seen = sum(assignment.get(s.key) in ("train", BOTH) for s in samples) if assignment else 0
    if seen:
        print(f"warning: {seen} of the {len(samples)} images were used to train this model: intervals fitted on "
              f"them come out too narrow for new faces", file=sys.stderr)
    ages = np.array([s.age for s in samples], dtype=np.float64)
    plain, mirrored = (out["age_dist"] for out in cached_head_outputs(loaded.net, cache, [s.digest for s in samples]))
    result = {"checkpoint": loaded.path.name, "checkpoint_digest": file_digest(loaded.path), "scope": scope,
              "n": len(samples), "target_coverage": COVERAGE, "interval_temperature": {}, "coverage_before": {},
              "coverage_after": {}}
    for tta, logits in (("none", plain), ("flip", (plain + mirrored) / 2)):
        t = fit_temperature(logits, ages)
        result["interval_temperature"][tta] = t
        result["coverage_before"][tta] = coverage(logits, ages, 1.0)
        result["coverage_after"][tta] = coverage(logits, ages, t)
    atomic_write_json(loaded.path.parent / CALIBRATION_FILE, result)
    result["path"] = str(loaded.path.parent / CALIBRATION_FILE)
    return result


def saved_temperature(checkpoint: Path, tta: str) -> float | None:
    """The interval temperature ``calibration.json`` beside ``checkpoint`` holds for it and ``tta``;
    None when there is none or it was fitted to other weights."""
    path = checkpoint.parent / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        name, digest, temps = record["checkpoint"], record["checkpoint_digest"], record["interval_temperature"]
    except (OSError, ValueError, KeyError, TypeError):
        print(f"warning: {path} is unreadable; intervals are uncalibrated (run faceage calibrate again)", file=sys.stderr)
        return None
    if name != checkpoint.name:
        return None                                   # fitted to the run's other checkpoint
    if digest != file_digest(checkpoint):
        print(f"warning: {path} was fitted to an earlier {checkpoint.name}; intervals are uncalibrated "
              f"(run faceage calibrate again)", file=sys.stderr)
        return None
    t = temps.get(tta) if isinstance(temps, dict) else None
    return float(t) if isinstance(t, (int, float)) and t > 0 else None
