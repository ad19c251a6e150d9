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

A model with a gender head also gets its gender probability calibrated, by age: a network
trained on everyone's faces is about as sure of a baby's gender as of an adult's, and right far
less often. For each band of *predicted* age (``GENDER_BAND_STARTS``: under 3, 3-12, 13 and over)
one temperature ``T`` is fitted so that the validation faces' mean confidence equals their
accuracy (temperature scaling again, per band; matching the mean rather than maximizing the
likelihood keeps babies' stated confidence nearer their accuracy on held-out faces:
``bench/gender_temperature_fit.py``, BENCHMARKS §11j). The probability is then
``sigmoid(logit / T)``. Which gender is answered never changes, only how sure it says it is.

The fitted temperatures (one without and one with flip test-time averaging, since averaging the
mirror image's logits sharpens the distribution) are written beside the checkpoint, one file per
checkpoint (``best.calibration.json`` for ``best.ckpt``: calibrating ``last.ckpt`` too keeps both),
with the checkpoint's content digest (blake2b, as the decode cache keys images): loading that
checkpoint applies them, and ``faceage export`` bakes them into the ONNX graph. A checkpoint that
changed since (a run that went on training) is loaded uncalibrated, with a warning. A run
calibrated by an earlier faceage has one ``calibration.json`` for the whole run directory; it
still applies to the checkpoint it names.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json
from ..data.readers import file_digest
from ..errors import CheckpointError, DataError
from ..evaluation.metrics import gender_calibration_error

LEGACY_CALIBRATION_FILE = "calibration.json"     # one per run directory, before per-checkpoint files
COVERAGE = 0.90                       # the heads report the 5% and 95% quantiles
MAX_AGE = 100
PRIOR_STEPS = np.round(np.arange(0, 1.0001, 0.05), 2)     # the prior strengths auto tries
MAE_BUDGET = 0.01
AGE_BANDS = ((0, 3), (3, 13), (13, 20), (20, 40), (40, 60), (60, 80), (80, 200))     # as issue 9's targets
GENDER_BAND_STARTS = (0, 3, 13)      # bands of predicted age with their own gender temperature
MIN_GENDER_FACES = 100               # a band with fewer validation faces joins the band before it
AGES_NPZ = "age"                     # what an .npz's y holds for calibrate (data/arrays.py's data.y_is)


def calibration_path(checkpoint: Path) -> Path:
    """Where the calibration fitted to ``checkpoint`` lives: ``best.ckpt`` -> ``best.calibration.json``."""
    return checkpoint.with_name(f"{checkpoint.stem}.calibration.json")


def training_age_prior(ages: np.ndarray) -> list[float]:
    """The distribution of training ages over years 0..100, add-one smoothed and averaged over a
    5-year window (a year no training face had must not get an infinite correction)."""
    counts = np.bincount(np.clip(np.rint(ages), 0, MAX_AGE).astype(int), minlength=MAX_AGE + 1) + 1.0
    smooth = np.convolve(np.pad(counts, 2, mode="edge"), np.ones(5) / 5, mode="valid")
    return [float(v) for v in smooth / smooth.sum()]


def prior_offset(strength: float, prior) -> np.ndarray | float:
    """What the age prior correction adds to the age logits: ``-strength * log prior`` (0 without a prior)."""
    if prior is None or strength == 0:
        return 0.0
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
    """The smallest temperature whose interval covers at least ``target`` of ``ages``: the first
    of a grid of T from 1/16 to 16 that does, refined by bisection on log T from the grid point
    before it. Coverage grows with T (a flatter distribution has wider quantiles) only up to a
    point: nearly flat over 0..100 years, the interval tends to [5, 95] and leaves out babies and
    the very old again, so the search walks up from the narrow end."""
    grid = np.linspace(np.log(1 / 16), np.log(16.0), 33)
    covers = [coverage(logits, ages, np.exp(g)) >= target for g in grid]
    if not any(covers):
        raise DataError(f"no interval temperature from 1/16 to 16 covers {target:.0%} of these ages: are they the "
                        "model's own kind of faces?")
    first = covers.index(True)
    if first == 0:
        return float(np.exp(grid[0]))
    lo, hi = grid[first - 1], grid[first]
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if coverage(logits, ages, np.exp(mid)) >= target else (mid, hi)
    return float(np.exp(hi))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(z / 2))           # no overflow warning for large |z|


def mean_confidence(logits: np.ndarray, temperature: float) -> float:
    """How sure the gender answers say they are on average: the mean of max(p, 1 - p)."""
    return float(np.mean(_sigmoid(np.abs(logits.astype(np.float64)) / temperature)))


def fit_gender_temperature(logits: np.ndarray, gender: np.ndarray) -> float:
    """The temperature at which the answers' mean confidence equals their accuracy: what a face
    of this kind is told ("female 63%") is then how often such answers are right. Bisection on
    log T in [1/16, 16] (the mean confidence falls as T grows)."""
    accuracy = float(((logits >= 0) == (gender == 1)).mean())     # p >= 0.5 answers female, as evaluate scores it
    lo, hi = np.log(1 / 16), np.log(16.0)
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_confidence(logits, np.exp(mid)) > accuracy else (lo, mid)
    return float(np.exp((lo + hi) / 2))


def band_index(starts, ages: np.ndarray) -> np.ndarray:
    """For each age, the index of the last band start at or below it (as ``GenderHead.decode`` reads it)."""
    return np.searchsorted(np.asarray(starts, dtype=np.float64), ages, side="right") - 1


def gender_bands(predicted_age: np.ndarray) -> list[int]:
    """``GENDER_BAND_STARTS`` with every band of fewer than ``MIN_GENDER_FACES`` faces merged into its neighbour."""
    starts = list(GENDER_BAND_STARTS)
    while len(starts) > 1:
        counts = np.bincount(band_index(starts, predicted_age), minlength=len(starts))
        small = [i for i, c in enumerate(counts) if c < MIN_GENDER_FACES]
        if not small:
            break
        del starts[max(small[0], 1)]          # the first band keeps starting at 0
    return starts


def fit_gender_temperatures(logits: np.ndarray, predicted_age: np.ndarray, gender: np.ndarray) -> tuple[list, list]:
    """One gender temperature per band of predicted age: ``[[from_age, T], ...]``, and per band
    what it did (faces, accuracy, mean confidence before and after)."""
    starts = gender_bands(predicted_age)
    which = band_index(starts, predicted_age)
    bands, report = [], []
    for i, lo in enumerate(starts):
        sel = which == i
        t = fit_gender_temperature(logits[sel], gender[sel]) if sel.sum() >= MIN_GENDER_FACES else 1.0
        bands.append([float(lo), t])
        report.append({"from": float(lo), "n": int(sel.sum()), "accuracy": float(((logits[sel] >= 0) == (gender[sel] == 1)).mean()),
                       "confidence_before": mean_confidence(logits[sel], 1.0),
                       "confidence_after": mean_confidence(logits[sel], t), "temperature": t})
    return bands, report


def calibrate(model: str, data: str, split: str = "val", split_file: str | None = None, cache_dir=None,
              age_prior: str | float | None = None, mae_budget: float = MAE_BUDGET) -> dict:
    """Fit the interval temperatures of a checkpoint on ``split`` of its split and write
    ``<checkpoint>.calibration.json`` beside it. Returns what was written (plus the coverage before).
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
    # An .npz's whole-number y can only be ages here: only an age model is calibrated.
    samples, report, scope = select_samples(loaded, data, split, cache_dir, split_file, y_is=AGES_NPZ)
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
    gender = np.array([s.gender for s in samples])
    outputs_plain, outputs_mirrored = cached_head_outputs(loaded.net, cache, [s.digest for s in samples])
    plain, mirrored = outputs_plain["age_dist"], outputs_mirrored["age_dist"]
    with_gender = "gender" in outputs_plain and (gender >= 0).sum() >= MIN_GENDER_FACES
    result = {"checkpoint": loaded.path.name, "checkpoint_digest": file_digest(loaded.path), "scope": scope,
              "n": len(samples), "target_coverage": COVERAGE, "interval_temperature": {}, "coverage_before": {},
              "coverage_after": {}}
    if prior is not None:
        result.update(age_prior=prior, age_prior_strength={}, mae_budget=mae_budget if age_prior == "auto" else None,
                      prior_sweep={})
    if with_gender:
        result.update(gender_temperature={}, gender_bands={}, gender_calibration_error={})
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
        if with_gender:                 # by the age the model will answer (prior-corrected where it is)
            g_logits = outputs_plain["gender"][:, 0] if tta == "none" else \
                (outputs_plain["gender"][:, 0] + outputs_mirrored["gender"][:, 0]) / 2
            known = gender >= 0
            g_logits, g, predicted = g_logits[known].astype(np.float64), gender[known], corrected_ages(logits, 0.0, None)[known]
            bands, report = fit_gender_temperatures(g_logits, predicted, g)
            temps = np.array([t for _, t in bands])[band_index([a for a, _ in bands], predicted)]
            result["gender_temperature"][tta], result["gender_bands"][tta] = bands, report
            result["gender_calibration_error"][tta] = {
                "before": gender_calibration_error(_sigmoid(g_logits), g),
                "after": gender_calibration_error(_sigmoid(g_logits / temps), g)}
    atomic_write_json(calibration_path(loaded.path), result)
    result["path"] = str(calibration_path(loaded.path))
    return result


def _model_training_prior(loaded, data: str, cache_dir, assignment) -> list[float]:
    from ..data.readers import read_dataset
    from ..data.split import BOTH
    if not assignment:
        raise DataError(f"{loaded.path}: --age-prior needs the ages the model trained on, and no split.csv records "
                        "which images those were")
    manifest, _ = read_dataset(data, cache_dir, y_is=AGES_NPZ)
    ages = np.array([s.age for s in manifest.samples if s.age is not None and assignment.get(s.key) in ("train", BOTH)])
    if len(ages) < 100:
        raise DataError(f"{len(ages)} of the model's training images are in {data}: too few to know the ages it "
                        "trained on (give the dataset it trained on with --data)")
    return training_age_prior(ages)


def read_calibration(path: Path, tta: str, checkpoint: Path | None = None) -> dict | None:
    """The spec fields the calibration file at ``path`` sets for ``tta`` (interval temperature, and
    age prior correction where fitted). With ``checkpoint``: only if it was fitted to those weights
    (None, and a warning where it was fitted to an earlier state of them)."""
    try:
        record = json.loads(path.read_text())
        name, digest, temps = record["checkpoint"], record["checkpoint_digest"], record["interval_temperature"]
        t = float(temps[tta])
        strength = float(record["age_prior_strength"][tta]) if "age_prior_strength" in record else 0.0
        prior = record.get("age_prior")
        gender_bands = record["gender_temperature"][tta] if "gender_temperature" in record else None
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
    if not (np.isfinite(t) and t > 0 and 0 <= strength <= 1) or (strength and not _is_prior(prior)) or \
            (gender_bands is not None and not _is_gender_bands(gender_bands)):
        print(f"warning: {path} holds values out of range; the model is uncalibrated", file=sys.stderr)
        return None
    return {"interval_temperature": t, "age_prior_strength": strength, "age_prior": prior if strength else None,
            "gender_temperature": gender_bands}


def _is_gender_bands(bands) -> bool:
    """``[[from_age, T], ...]``: ascending from age 0, every T a positive finite number."""
    try:
        b = np.asarray(bands, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return (b.ndim == 2 and b.shape[1] == 2 and len(b) >= 1 and b[0, 0] == 0 and bool(np.all(np.diff(b[:, 0]) > 0))
            and bool(np.isfinite(b).all() and (b[:, 1] > 0).all()))


def _is_prior(prior) -> bool:
    try:
        p = np.asarray(prior, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return p.shape == (MAX_AGE + 1,) and bool(np.isfinite(p).all() and (p > 0).all())


def calibration_file(checkpoint: Path) -> Path | None:
    """The calibration file for ``checkpoint``: its own, else the run's legacy ``calibration.json``
    (which names the checkpoint it was fitted to); None when there is neither."""
    for path in (calibration_path(checkpoint), checkpoint.parent / LEGACY_CALIBRATION_FILE):
        if path.is_file():
            return path
    return None


def saved_calibration(checkpoint: Path, tta: str) -> dict | None:
    """What the calibration fitted to ``checkpoint`` sets for ``tta``; None when there is none or it
    was fitted to other weights."""
    path = calibration_file(checkpoint)
    return read_calibration(path, tta, checkpoint) if path is not None else None
