"""How the test split's numbers move with the number of training faces, and what a power law
through them says of more faces: would more UTKFace-like data reach a target?

    PYTHONPATH=src .venv/bin/python bench/learning_curve.py MODEL [MODEL ...] [--at 15924 18735]
        [--bootstrap 1000]

MODEL: a checkpoint (or run directory) whose directory holds the run's ``run.json``, which gives
its number of training faces; runs of one recipe on subsets of the split's training faces
(``bench/subset_split.py``) all score on the same test faces. Each model is scored flip-averaged
and uncalibrated (the age prior and interval calibration leave gender unchanged).

The fit: log(error) = a - b log(n) by least squares over the models (gender error rate, and MAE,
for which a power law without a floor is the optimistic reading), then evaluated at each ``--at``
size. ``--bootstrap`` resamples the test faces (the same resamples for all models) and refits, for
95% intervals of the slope and of the extrapolated numbers; it does not cover seed-to-seed spread,
which the repeated sizes show.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from accuracy_targets import flip_average, predict_with_mirror, split_samples
from faceage.inference.runners import load_runner
from faceage.training.fit import default_data_path


def training_faces(model: str) -> int:
    run = Path(model) if Path(model).is_dir() else Path(model).parent
    return int(json.loads((run / "run.json").read_text())["n_images"]["train"])


def errors(true_age, true_gender, out) -> tuple[np.ndarray, np.ndarray]:
    """Per face: absolute age error, and whether the gender is wrong."""
    return np.abs(out["age"] - true_age), (out["gender_prob"] >= 0.5) != (true_gender == 1)


def power_law(n: np.ndarray, err: np.ndarray) -> tuple[float, float]:
    """(a, b) of log(err) = a - b log(n), least squares."""
    slope, a = np.polyfit(np.log(n), np.log(err), 1)
    return a, -slope


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--at", type=int, nargs="*", default=[15924, 18735],
                    help="training-set sizes to extrapolate to (default: train+val, and every usable image)")
    ap.add_argument("--gender-target", type=float, default=0.95,
                    help="report how many training faces the gender curve needs to reach this accuracy")
    ap.add_argument("--bootstrap", type=int, default=1000, metavar="N")
    a = ap.parse_args()
    test = split_samples(a.data, a.split, parts=("test",))["test"]
    true_age = np.array([s.age for s in test], float)
    true_gender = np.array([s.gender for s in test])
    child = true_age < 13
    sizes, abs_err, wrong = [], [], []
    print(f"{len(test)} test faces ({child.sum()} under 13); flip-averaged, uncalibrated")
    print("| model | training faces | MAE | gender | gender under 13 / 13+ |")
    print("|---|---|---|---|---|")
    for model in a.models:
        e, w = errors(true_age, true_gender, flip_average(*predict_with_mirror(load_runner(model), test)))
        sizes.append(training_faces(model))
        abs_err.append(e)
        wrong.append(w)
        print(f"| {model} | {sizes[-1]:,} | {e.mean():.3f} | {1 - w.mean():.2%} | "
              f"{1 - w[child].mean():.1%} / {1 - w[~child].mean():.1%} |")
    n = np.array(sizes, float)
    if len(set(sizes)) < 2:
        raise SystemExit("a curve needs models trained on at least two different numbers of faces")
    abs_err, wrong = np.array(abs_err), np.array(wrong, float)

    def fit(idx) -> dict:
        out = {}
        for name, per_face in (("gender error", wrong), ("MAE", abs_err)):
            ab = power_law(n, per_face[:, idx].mean(axis=1))
            out[name] = ab, {m: float(np.exp(ab[0] - ab[1] * np.log(m))) for m in a.at}
        a_g, b_g = out["gender error"][0]
        # n where a - b log(n) = log(1 - target); a flat or rising curve never gets there
        out["faces for target"] = float(np.exp((a_g - np.log(1 - a.gender_target)) / b_g)) if b_g > 0 else np.inf
        return out

    point = fit(np.arange(len(test)))
    rng = np.random.default_rng(0)
    draws = [fit(rng.integers(0, len(test), len(test))) for _ in range(a.bootstrap)]
    ci = lambda xs: " to ".join(f"{v:.3f}" for v in np.percentile(xs, [2.5, 97.5]))
    print(f"\npower law log(error) = a - b log(n) over {len(n)} models; 95% intervals from {a.bootstrap} "
          "resamples of the test faces")
    # the gender curve is fitted on the error rate and reported as accuracy
    for name, label, shown in (("gender error", "gender accuracy", lambda x: 1 - x), ("MAE", "MAE", lambda x: x)):
        (_, b), at = point[name]
        print(f"{name}: b = {b:.3f} ({ci([d[name][0][1] for d in draws])}); per doubling of training faces "
              f"x{2 ** -b:.3f} ({ci([2 ** -d[name][0][1] for d in draws])})")
        for m, v in at.items():
            lo, hi = sorted(np.percentile([shown(d[name][1][m]) for d in draws], [2.5, 97.5]))
            print(f"    at {m:,} training faces: {label} {shown(v):.4f} ({lo:.4f} to {hi:.4f})")
    need = [d["faces for target"] for d in draws]
    lo, hi = np.percentile(need, [2.5, 97.5])
    print(f"gender accuracy {a.gender_target:.1%} on this curve at {point['faces for target']:,.0f} training faces "
          f"({lo:,.0f} to {hi:,.0f}; {point['faces for target'] / n.max():.1f}x the most any model here had)")


if __name__ == "__main__":
    main()
