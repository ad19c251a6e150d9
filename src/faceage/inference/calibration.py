"""Interval calibration: make the 90% age interval hold 90% of true ages on held-out faces.

A network trained with DLDL's label distributions reports intervals that are a little too wide
or too narrow for the faces it meets (the width is learnt from a fixed ``sigma``, not from its own
errors). ``faceage calibrate`` fits one number, the interval temperature ``T``, on the
validation split: the interval is read from ``softmax(logits / T)`` (``T`` < 1 narrows it, > 1
widens it) while the age estimate keeps the untempered distribution, so calibration never moves
an estimate. This is temperature scaling (Guo et al. 2017) fitted for interval coverage.

With ``--age-prior``, calibration also corrects the estimate's pull toward common ages. A network
trained on UTKFace's ages (few over 60) learns that an old-looking face is probably younger than
it looks: MAE is lowest that way, but every band of old faces is read years too young. Logit
adjustment (Menon et al. 2021) divides the training ages' distribution out of the prediction,
in part: the age is read from ``softmax(logits - s * log prior)``. ``s`` 0 is the model as trained,
1 a flat prior (each age as likely as any other, before the face is seen). ``auto`` takes the
largest ``s`` (in steps of 0.05) whose validation MAE is at most ``mae_budget`` (1%) above the
uncorrected one: the tails gain, the whole pays at most that. The sweep is saved for the reader.

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
PRIOR_STEPS = np.round(np.arange(0, 1.0001, 0.05), 2)     # the prior strengths auto tries
MAE_BUDGET = 0.01
AGE_BANDS = ((0, 3), (3, 13), (13, 20), (20, 40), (40, 60), (60, 80), (80, 200))     # as issue 9's targets


def training_age_prior(ages: np.ndarray) -> list[float]:
    """The distribution of training ages over years 0..100, add-one smoothed and averaged over a
    5-year window (a year no training face had must not get an infinite correction)."""
    counts = np.bincount(np.clip(np.rint(ages), 0, MAX_AGE).astype(int), minlength=MAX_AGE + 1) + 1.0
    smooth = np.convolve(np.pad(counts, 2, mode="edge"), np.ones(5) / 5, mode="valid")
    return [float(v) for v in smooth / smooth.sum()]


def prior_offset(strength: float, prior) -> np.ndarray:
    """What the age prior correction adds to the age logits: ``-strength * log prior``."""
    return -strength * np.log(np.asarray(prior, dtype=np.float64))


def corrected_ages(logits: np.ndarray, strength: float, prior) -> np.ndarray:
    """The expected age of ``softmax(logits - strength * log prior)``, as the head decodes it."""
    z = logits.astype(np.float64) + prior_offset(strength, prior)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)) @ np.arange(logits.shape[1])


def prior_sweep(logits: np.ndarray, ages: np.ndarray, prior) -> list[dict]:
    """For each strength of PRIOR_STEPS: MAE, MAE of faces 60 and over, the mean signed error per
    band, and the mean of the bands' MAEs (a balanced MAE: every band of ages counts alike)."""
    rows = []
    for s in PRIOR_STEPS:
        err = corrected_ages(logits, float(s), prior) - ages
        bands = [(lo, hi) for lo, hi in AGE_BANDS if ((ages >= lo) & (ages < hi)).any()]
        old = ages >= 60
        rows.append({"strength": float(s), "mae": float(np.abs(err).mean()),
                     "mae_60plus": float(np.abs(err[old]).mean()) if old.any() else None,
                     "balanced_mae": float(np.mean([np.abs(err[(ages >= lo) & (ages < hi)]).mean() for lo, hi in bands])),
                     "signed_error": {f"{lo}-{hi - 1}" if hi < 200 else f"{lo}+": float(err[(ages >= lo) & (ages < hi)].mean())
                                      for lo, hi in bands}})
    return rows


def choose_strength(sweep: list[dict], mae_budget: float = MAE_BUDGET) -> float:
    """The largest strength whose MAE is within ``mae_budget`` (a fraction) of the uncorrected MAE."""
    limit = sweep[0]["mae"] * (1 + mae_budget)
    return max(r["strength"] for r in sweep if r["mae"] <= limit)


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


def calibrate(model: str, data: str, split: str = "val", split_file: str | None = None, cache_dir=None,
              age_prior: str | float | None = None, mae_budget: float = MAE_BUDGET) -> dict:
    """Fit the interval temperatures of a checkpoint on ``split`` of its split and write
    ``calibration.json`` beside it. Returns what was written (plus the coverage before).
    ``age_prior``: None (estimates as trained), a strength in [0, 1], or "auto" (module docstring)."""
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
    prior = _model_training_prior(loaded, data, cache_dir, assignment) if age_prior is not None else None
    ages = np.array([s.age for s in samples], dtype=np.float64)
    plain, mirrored = (out["age_dist"] for out in cached_head_outputs(loaded.net, cache, [s.digest for s in samples]))
    result = {"checkpoint": loaded.path.name, "checkpoint_digest": file_digest(loaded.path), "scope": scope,
              "n": len(samples), "target_coverage": COVERAGE, "interval_temperature": {}, "coverage_before": {},
              "coverage_after": {}}
    if prior is not None:
        result.update(age_prior=prior, age_prior_strength={}, mae_budget=mae_budget if age_prior == "auto" else None,
                      prior_sweep={})
    for tta, logits in (("none", plain), ("flip", (plain + mirrored) / 2)):
        result["coverage_before"][tta] = coverage(logits, ages, 1.0)
        if prior is not None:
            sweep = prior_sweep(logits, ages, prior)
            strength = choose_strength(sweep, mae_budget) if age_prior == "auto" else float(age_prior)
            result["age_prior_strength"][tta], result["prior_sweep"][tta] = strength, sweep
            logits = logits + prior_offset(strength, prior)     # the interval is the corrected distribution's
        t = fit_temperature(logits, ages)
        result["interval_temperature"][tta] = t
        result["coverage_after"][tta] = coverage(logits, ages, t)
    atomic_write_json(loaded.path.parent / CALIBRATION_FILE, result)
    result["path"] = str(loaded.path.parent / CALIBRATION_FILE)
    return result


def _model_training_prior(loaded, data: str, cache_dir, assignment) -> list[float]:
    from ..data.readers import read_dataset
    from ..data.split import BOTH
    if not assignment:
        raise DataError(f"{loaded.path}: --age-prior needs the ages the model trained on, and no split.csv records "
                        "which images those were")
    manifest, _ = read_dataset(data, cache_dir)
    ages = np.array([s.age for s in manifest.samples if s.age is not None and assignment.get(s.key) in ("train", BOTH)])
    if len(ages) < 100:
        raise DataError(f"{len(ages)} of the model's training images are in {data}: too few to know the ages it "
                        "trained on (give the dataset it trained on with --data)")
    return training_age_prior(ages)


def read_calibration(path: Path, tta: str, checkpoint: Path | None = None) -> dict | None:
    """The spec fields ``calibration.json`` at ``path`` sets for ``tta`` (interval temperature, and
    age prior correction where fitted). With ``checkpoint``: only if it was fitted to those weights
    (None, and a warning where it was fitted to an earlier state of them)."""
    try:
        record = json.loads(path.read_text())
        name, digest, temps = record["checkpoint"], record["checkpoint_digest"], record["interval_temperature"]
        t = float(temps[tta])
        strength = float(record["age_prior_strength"][tta]) if "age_prior_strength" in record else 0.0
        prior = record.get("age_prior")
    except (OSError, ValueError, KeyError, TypeError):
        print(f"warning: {path} is unreadable; the model is uncalibrated (run faceage calibrate again)", file=sys.stderr)
        return None
    if checkpoint is not None:
        if name != checkpoint.name:
            return None                                   # fitted to the run's other checkpoint
        if digest != file_digest(checkpoint):
            print(f"warning: {path} was fitted to an earlier {checkpoint.name}; the model is uncalibrated "
                  f"(run faceage calibrate again)", file=sys.stderr)
            return None
    if not (np.isfinite(t) and t > 0 and 0 <= strength <= 1) or (strength and not _is_prior(prior)):
        print(f"warning: {path} holds values out of range; the model is uncalibrated", file=sys.stderr)
        return None
    return {"interval_temperature": t, "age_prior_strength": strength, "age_prior": prior if strength else None}


def _is_prior(prior) -> bool:
    try:
        p = np.asarray(prior, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return p.shape == (MAX_AGE + 1,) and bool(np.isfinite(p).all() and (p > 0).all())


def saved_calibration(checkpoint: Path, tta: str) -> dict | None:
    """What ``calibration.json`` beside ``checkpoint`` sets for it and ``tta``; None when there is
    none or it was fitted to other weights."""
    path = checkpoint.parent / CALIBRATION_FILE
    return read_calibration(path, tta, checkpoint) if path.is_file() else None
