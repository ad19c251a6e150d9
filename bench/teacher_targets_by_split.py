"""How far a distillation target file (`faceage teach --out FILE.npz`) is from the labels, per part
of a split: the teachers' own training faces against the faces they never saw.

A teacher's answers on its training faces are in-sample: if they sit much closer to the labels
than its answers on held-out faces, the student mostly relearns the labels, and distillation
can add little (BENCHMARKS.md §11e). This script tells how big that gap is for a target file. It
also counts the faces whose gender the teachers contradict with >= 90% confidence (from age 13
up, most such faces in the test split were wrong labels, §11m): the distilled gender target of
such a face is pulled halfway to the teachers' answer at distill.weight=0.5.

    PYTHONPATH=src .venv/bin/python bench/teacher_targets_by_split.py runs/X/teacher.npz
        [--split bench/utkface_split.csv] [--data DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from accuracy_targets import split_samples
from faceage.training.fit import default_data_path

HERE = Path(__file__).resolve().parent
PARTS = ("train", "val", "test")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", help="a .npz written by faceage teach")
    ap.add_argument("--split", default=str(HERE / "utkface_split.csv"))
    ap.add_argument("--data", default=default_data_path(), help="dataset (default: the shared UTKFace)")
    a = ap.parse_args()

    targets = np.load(a.targets)
    row = {digest: i for i, digest in enumerate(targets["digests"])}
    years = np.arange(targets["age_dist"].shape[1])
    print(f"{a.targets}: {len(row)} faces, teachers: {', '.join(map(str, targets['teachers']))}")
    print("| part | faces | target age (mean of the distribution) MAE | gender agrees with the label "
          "| contradicted with >= 90% confidence (aged 13+) |")
    print("|---|---|---|---|---|")
    for part, samples in split_samples(a.data, a.split, PARTS).items():
        idx = np.array([row[s.digest] for s in samples])
        age = np.array([s.age for s in samples], float)
        gender = np.array([s.gender for s in samples])
        mean_age = targets["age_dist"][idx].astype(np.float64) @ years
        female = targets["gender_prob"][idx]
        contradicted = ((female >= 0.9) & (gender == 0)) | ((female <= 0.1) & (gender == 1))
        print(f"| {part} | {len(samples)} | {np.abs(mean_age - age).mean():.3f} "
              f"| {((female > 0.5) == (gender == 1)).mean():.2%} "
              f"| {contradicted.sum()} ({contradicted[age >= 13].sum()}) |")


if __name__ == "__main__":
    main()
