"""Does a gender decision threshold per predicted-age band, fitted on the validation split, help
on the test split? (Babies' and children's genders are where the errors are; if the model's
gender probabilities leaned one way by age, a per-band offset on the logit would fix some.)

    PYTHONPATH=src .venv/bin/python bench/gender_threshold_by_age.py MODEL [--split bench/utkface_split.csv]

MODEL: a run directory, .ckpt or .onnx; scored flip-averaged. For each band of the predicted age,
the logit offset in [-1.5, 1.5] (step 0.05) that maximizes validation accuracy (0 unless it gains);
then the same offsets on the test faces, and one offset for all ages as a control.
"""
from __future__ import annotations

import argparse

import numpy as np

from accuracy_targets import BANDS, flip_average, predict_with_mirror, split_samples
from faceage.inference.runners import load_runner
from faceage.training.fit import default_data_path

EDGES = [lo for _, lo, _ in BANDS] + [BANDS[-1][2]]           # the bands' limits: 0, 3, 13, ..., 80, 200
OFFSETS = np.round(np.linspace(-1.5, 1.5, 61), 2)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def right(z: np.ndarray, female: np.ndarray) -> np.ndarray:
    return (z >= 0) == female


def best_offset(z: np.ndarray, female: np.ndarray) -> float:
    acc = np.array([right(z + o, female).mean() for o in OFFSETS])
    return float(OFFSETS[acc.argmax()]) if acc.max() > right(z, female).mean() else 0.0


def shifted(z: np.ndarray, age: np.ndarray, offsets: list[float]) -> np.ndarray:
    z = z.copy()
    for lo, hi, o in zip(EDGES[:-1], EDGES[1:], offsets):
        z[(age >= lo) & (age < hi)] += o
    return z


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--split", default="bench/utkface_split.csv")
    a = ap.parse_args()
    parts = split_samples(a.data, a.split)
    runner = load_runner(a.model)
    faces = {}
    for part, samples in parts.items():
        out = flip_average(*predict_with_mirror(runner, samples))
        faces[part] = (logit(out["gender_prob"]), out["age"], np.array([s.gender == 1 for s in samples]))
    z, age, female = faces["val"]
    offsets = [best_offset(z[(age >= lo) & (age < hi)], female[(age >= lo) & (age < hi)])
               for lo, hi in zip(EDGES[:-1], EDGES[1:])]
    single = best_offset(z, female)
    bands = ", ".join(f"{name}: {o:+.2f}" for (name, _, _), o in zip(BANDS, offsets))
    print(f"{a.model}: logit offsets fitted on {len(z)} validation faces by predicted age: {bands}; one for all ages {single:+.2f}")
    for part, (z, age, female) in faces.items():
        before, after = right(z, female), right(shifted(z, age, offsets), female)
        print(f"{part}: gender {before.mean():.2%} -> {after.mean():.2%} with the per-band offsets "
              f"({(after & ~before).sum()} faces fixed, {(before & ~after).sum()} broken); "
              f"{right(z + single, female).mean():.2%} with the single offset")


if __name__ == "__main__":
    main()
