"""Two ways to fit the gender temperatures of ``faceage calibrate``, fitted on the validation split
and scored on the test split of a run: the likelihood fit (temperature scaling as in Guo et al.
2017, one temperature per band of predicted age) and the confidence match that ``calibrate`` uses
(each band's mean confidence set equal to its accuracy). Flip-averaged logits; the predicted age
is read with the run's age prior correction, as the exported model reads it.

    PYTHONPATH=src .venv/bin/python bench/gender_temperature_fit.py runs/faceres160-split

Prints, per fit and split: the negative log-likelihood, the expected calibration error, and for
each band of predicted age its faces, mean confidence and accuracy.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from faceage.data.cache import ImageCache
from faceage.evaluation.evaluate import select_samples
from faceage.evaluation.metrics import gender_calibration_error
from faceage.inference.calibration import (_sigmoid, band_index, calibration_file, corrected_ages,
                                           fit_gender_temperatures, mean_confidence, prior_offset)
from faceage.inference.checkpoint import load_checkpoint
from faceage.inference.graph import cached_head_outputs
from faceage.training.fit import default_data_path


def split_logits(loaded, data: str, split: str, strength: float, prior) -> dict[str, np.ndarray]:
    samples, report, _ = select_samples(loaded, data, split)
    cache = ImageCache(loaded.preprocess, None)
    samples = [s for s in cache.build(samples, report) if s.gender >= 0]
    plain, mirrored = cached_head_outputs(loaded.net, cache, [s.digest for s in samples])
    age_logits = (plain["age_dist"] + mirrored["age_dist"]) / 2 + prior_offset(strength, prior)
    return {"gender": np.array([s.gender for s in samples]), "age": corrected_ages(age_logits, 0.0, None),
            "logit": ((plain["gender"] + mirrored["gender"]) / 2)[:, 0].astype(np.float64)}


def likelihood_temperature(logits: np.ndarray, gender: np.ndarray) -> float:
    """The temperature of least negative log-likelihood, by a grid on log T then a finer one."""
    def nll(t):
        return np.mean(np.logaddexp(0, logits / t) - gender * logits / t)
    grid = np.exp(np.linspace(np.log(1 / 16), np.log(16), 401))
    best = grid[np.argmin([nll(t) for t in grid])]
    fine = best * np.exp(np.linspace(-0.02, 0.02, 401))
    return float(fine[np.argmin([nll(t) for t in fine])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run directory with split.csv, calibrated by faceage calibrate --age-prior")
    ap.add_argument("--data", default=None, help="dataset (default: $FACEAGE_DATA or the shared UTKFace)")
    a = ap.parse_args()
    loaded = load_checkpoint(a.run, calibrated=False)
    cal_file = calibration_file(loaded.path)
    if cal_file is None:
        raise SystemExit(f"{loaded.path} is not calibrated: run faceage calibrate {a.run} --age-prior auto first")
    cal = json.loads(cal_file.read_text())
    strength, prior = cal.get("age_prior_strength", {}).get("flip", 0.0), cal.get("age_prior")
    parts = {s: split_logits(loaded, a.data or default_data_path(), s, strength, prior) for s in ("val", "test")}
    val = parts["val"]
    matched, _ = fit_gender_temperatures(val["logit"], val["age"], val["gender"])
    starts = [lo for lo, _ in matched]
    which = band_index(starts, val["age"])
    likelihood = [[lo, likelihood_temperature(val["logit"][which == i], val["gender"][which == i])]
                  for i, lo in enumerate(starts)]
    print(f"{a.run}: flip-averaged, age prior strength {strength:.2f}; bands of predicted age from {starts}")
    for name, bands in (("none", [[lo, 1.0] for lo in starts]), ("likelihood", likelihood), ("confidence match", matched)):
        print(f"{name}: temperatures " + " / ".join(f"{t:.2f}" for _, t in bands))
        for split, d in parts.items():
            b = band_index(starts, d["age"])
            t = np.array([t for _, t in bands])[b]
            z = d["logit"] / t
            nll = float(np.mean(np.logaddexp(0, z) - d["gender"] * z))
            cells = [f"from {lo:g}: n {int((b == i).sum())} says {mean_confidence(d['logit'][b == i], bands[i][1]):.3f} "
                     f"right {float(((d['logit'][b == i] >= 0) == (d['gender'][b == i] == 1)).mean()):.3f}"
                     for i, lo in enumerate(starts)]
            print(f"  {split}: NLL {nll:.4f}  calibration error {gender_calibration_error(_sigmoid(z), d['gender']):.4f} | "
                  + " | ".join(cells))


if __name__ == "__main__":
    main()
