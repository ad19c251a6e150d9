"""A learning-curve split: the same val and test faces as a split file, and a stratified fraction
of its training faces (the rest left out), so a run on it is scored on exactly the same faces as a
run on the full split.

    PYTHONPATH=src .venv/bin/python bench/subset_split.py bench/utkface_split.csv --fraction 0.25 \
        --out runs/curve/split-25.csv

Strata (age decade, gender, race) keep their proportions (``stratified_subset``), and a smaller
fraction's faces are a subset of a larger one's only by chance: each fraction is drawn on its own.
"""
from __future__ import annotations

import argparse
from collections import Counter

from faceage.data.readers import read_dataset
from faceage.data.split import load_split, save_split, stratified_subset
from faceage.training.fit import default_data_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("split")
    ap.add_argument("--fraction", type=float, required=True, help="of the training faces to keep, in (0, 1]")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    if not 0 < a.fraction <= 1:
        raise SystemExit("--fraction must be in (0, 1]")
    assignment = load_split(a.split)
    manifest, _ = read_dataset(a.data)
    train = [s for s in manifest.samples if assignment.get(s.key) == "train"]
    kept = stratified_subset(train, round(len(train) * a.fraction), a.seed)
    subset = {k: v for k, v in assignment.items() if v in ("val", "test")}
    subset.update({s.key: "train" for s in kept})
    save_split(subset, a.out)
    counts = Counter(subset.values())
    print(f"{a.out}: train {counts['train']} of {len(train)}, val {counts['val']}, test {counts['test']}")


if __name__ == "__main__":
    main()
