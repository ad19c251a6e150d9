"""Real photographs of people whose age at the time is on public record, from files that
registry packages ship, through the whole photo pipeline (detect, align, model), each model
in one run. Each photo is also run mirrored: the same person, so the answers should agree.

    .venv/bin/python bench/real_photos.py [MODEL ...]      (default: the shipped model)

Photos (both public domain):
- scikit-image's ``astronaut``: Eileen Collins (born 1956-11-19), a NASA portrait. The
  issue that asked for this set gives her age in it as the early forties (40-44).
- matplotlib's ``grace_hopper.jpg``: Grace Hopper (born 1906-12-09), the official U.S. Navy
  portrait of 1984-01-20: 77.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageOps

from faceage.inference.predictor import Predictor


def photos() -> list[tuple[str, str, Image.Image]]:
    from skimage import data
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return [("astronaut (skimage)", "Eileen Collins, early 40s", Image.fromarray(data.astronaut())),
            ("grace_hopper (matplotlib)", "Grace Hopper, 77", Image.open(hopper).convert("RGB"))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=[None])
    a = ap.parse_args()
    rows = []
    for model in a.models:
        pred = Predictor(model)
        for name, truth, img in photos():
            for view, im in (("as is", img), ("mirrored", ImageOps.mirror(img))):
                faces = pred.analyze(np.asarray(im))
                face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])) if faces else None
                answer = (f"{face.age:.1f} ({face.age_low:.0f}-{face.age_high:.0f}), {face.gender} {face.gender_prob:.0%}"
                          if face else "no face")
                rows.append((model or "shipped default", name, truth, view, answer))
    print("| model | photo | person, age then | view | age (90% interval), gender |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
