"""How far can a post-hoc correction of a trained model's age estimates go toward issue 9's
"mean signed error within ±1.5 years in every band from 13 up", and what does it cost in MAE?

Two corrections, both fitted on the validation split and scored on the test split of a run:

* the age prior correction of ``faceage calibrate --age-prior`` (strength S from 0 to 1);
* on top of the shipped strength, a monotone remap of the estimate: a piecewise-linear function
  of the predicted age (knots every 10 years) fitted to make the validation bands' signed errors
  as small as possible (least squares over the bands from 13 up) while the validation MAE stays
  under a cap. A calibration of the estimate can only use the estimate, never the true age, so
  it cannot pull a band's faces toward their own truth without moving the other bands' faces
  that got the same estimates: this is the best any such function does, for each MAE cap.

    PYTHONPATH=src .venv/bin/python bench/signed_error_tradeoff.py runs/faceres160-split

Flip-averaged logits, as the shipped model reads them. Prints one line per correction: MAE and
each band's mean signed error, validation then test.
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import minimize

from faceage.data.cache import ImageCache
from faceage.evaluation.evaluate import model_split, select_samples
from faceage.inference.calibration import AGE_BANDS, _model_training_prior, corrected_ages, prior_offset
from faceage.inference.checkpoint import load_checkpoint
from faceage.inference.graph import cached_head_outputs
from faceage.training.fit import default_data_path

SIGNED_BANDS = [b for b in AGE_BANDS if b[0] >= 13]        # the target's bands
KNOTS = np.arange(0, 101, 10.0)
MAE_CAPS = (4.40, 4.50, 4.75, 5.00)


def split_age_logits(loaded, data: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    samples, report, _ = select_samples(loaded, data, split)
    cache = ImageCache(loaded.preprocess, None)
    samples = [s for s in cache.build(samples, report) if s.age is not None]
    plain, mirrored = cached_head_outputs(loaded.net, cache, [s.digest for s in samples])
    return (plain["age_dist"] + mirrored["age_dist"]) / 2, np.array([s.age for s in samples], dtype=np.float64)


def band_bias(estimate: np.ndarray, ages: np.ndarray) -> np.ndarray:
    return np.array([np.mean(estimate[(ages >= lo) & (ages < hi)] - ages[(ages >= lo) & (ages < hi)])
                     for lo, hi in SIGNED_BANDS])


def remap(estimate: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Monotone piecewise-linear map through (KNOTS, cumulative positive steps)."""
    values = np.concatenate([[params[0]], params[0] + np.cumsum(np.exp(params[1:]))])
    return np.interp(estimate, KNOTS, values)         # estimates lie in 0..100 (the head's ages)


def fit_remap(estimate: np.ndarray, ages: np.ndarray, mae_cap: float) -> np.ndarray:
    identity = np.concatenate([[0.0], np.full(len(KNOTS) - 1, np.log(10.0))])

    def loss(p):
        e = remap(estimate, p)
        over = max(0.0, np.mean(np.abs(e - ages)) - mae_cap)
        return float(np.sum(band_bias(e, ages) ** 2) + 1e4 * over ** 2 + 1e3 * over)
    best = minimize(loss, identity, method="Powell", options={"maxiter": 20000, "xtol": 1e-3, "ftol": 1e-6})
    return best.x


def line(name: str, val: tuple, test: tuple) -> str:
    def part(est, ages):
        b = band_bias(est, ages)
        return f"MAE {np.mean(np.abs(est - ages)):.3f} max|signed| {np.max(np.abs(b)):.2f} (" + \
            " / ".join(f"{x:+.2f}" for x in b) + ")"
    return f"{name:<34} val {part(*val)}   test {part(*test)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a split run's directory or checkpoint (its split.csv names val and test)")
    ap.add_argument("--data", default=None, help="dataset (default: $FACEAGE_DATA or the shared UTKFace)")
    ap.add_argument("--strength", type=float, default=0.2, help="age prior strength under the remap (shipped: 0.2)")
    a = ap.parse_args()
    data = a.data or default_data_path()
    loaded = load_checkpoint(a.run, calibrated=False)
    prior = _model_training_prior(loaded, data, None, model_split(loaded))
    logits = {s: split_age_logits(loaded, data, s) for s in ("val", "test")}
    bands = " / ".join(f"{lo}-{hi - 1}" if hi < 200 else f"{lo}+" for lo, hi in SIGNED_BANDS)
    print(f"{loaded.path}: {len(logits['val'][1])} val, {len(logits['test'][1])} test faces; signed error by band {bands}")

    def estimates(strength):
        return {s: (corrected_ages(lg + prior_offset(strength, prior), 0.0, None), ages) for s, (lg, ages) in logits.items()}
    for strength in (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0):
        est = estimates(strength)
        print(line(f"age prior S={strength:.1f}", est["val"], est["test"]))
    est = estimates(a.strength)
    for cap in MAE_CAPS:
        p = fit_remap(*est["val"], cap)
        print(line(f"S={a.strength:.1f} + remap, val MAE <= {cap:.2f}",
                   (remap(est["val"][0], p), est["val"][1]), (remap(est["test"][0], p), est["test"][1])))


if __name__ == "__main__":
    main()
