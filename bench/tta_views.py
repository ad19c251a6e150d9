"""Does averaging more views of a face than the mirror image (zoom, shift, rotation) help?

Each view is an affine change of the 200 px UTKFace chip of the kind training augmentation
draws (zoom in/out, a 4% shift, an 8 degree rotation), framed as the model's input. The model
is scored on every view of the validation and test faces; then every average of the plain view
with up to three others is ranked by validation gender accuracy, and the best ones are scored on
test (chosen on validation, so the test number is not picked).

    PYTHONPATH=src .venv/bin/python bench/tta_views.py MODEL [--split bench/utkface_split.csv]

MODEL: a run directory, .ckpt or .onnx (an export with ``--tta flip`` already averages the mirror).
"""
from __future__ import annotations

import argparse
import itertools
import math

import numpy as np
from PIL import Image

from accuracy_targets import predict, split_samples
from faceage.inference.runners import load_runner
from faceage.preprocess import frame_array, open_image
from faceage.training.fit import default_data_path

# name: (zoom > 1 zooms in, shift x and y as a fraction of the side, rotation in degrees)
VIEWS = {"plain": (1.0, 0, 0, 0), "zoom-in 10%": (1.1, 0, 0, 0), "zoom-out 10%": (0.9, 0, 0, 0),
         "zoom-in 15%": (1.15, 0, 0, 0), "right 4%": (1.0, 0.04, 0, 0), "left 4%": (1.0, -0.04, 0, 0),
         "down 4%": (1.0, 0, 0.04, 0), "up 4%": (1.0, 0, -0.04, 0), "rotate +8": (1.0, 0, 0, 8),
         "rotate -8": (1.0, 0, 0, -8)}


def view(img: Image.Image, zoom: float, dx: float, dy: float, degrees: float) -> Image.Image:
    """The chip zoomed, shifted and rotated about its centre; uncovered borders are black, as in training."""
    w, h = img.size
    c, s = math.cos(math.radians(degrees)) / zoom, math.sin(math.radians(degrees)) / zoom
    # PIL maps each output pixel p to the input pixel A p + t: A = rotation / zoom about the centre
    tx = w / 2 - c * w / 2 + s * h / 2 + dx * w
    ty = h / 2 - s * w / 2 - c * h / 2 + dy * h
    return img.transform((w, h), Image.AFFINE, (c, -s, tx, s, c, ty), resample=Image.BILINEAR)


def scores(answers: dict, combo, true_age, true_gender) -> tuple[float, float]:
    gender = np.mean([answers[v]["gender_prob"] for v in combo], 0)
    age = np.mean([answers[v]["age"] for v in combo], 0)
    return float(((gender >= 0.5) == (true_gender == 1)).mean()), float(np.abs(age - true_age).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--top", type=int, default=5, help="how many val-ranked averages to score on test")
    a = ap.parse_args()
    runner = load_runner(a.model)
    truth, answers = {}, {}
    for part, samples in split_samples(a.data, a.split).items():
        chips = [open_image(s.path, reduce_to_fit=True).convert("RGB") for s in samples]
        truth[part] = (np.array([s.age for s in samples]), np.array([s.gender for s in samples]))
        answers[part] = {name: predict(runner, np.stack([frame_array(view(c, *v), runner.preprocess) for c in chips]))
                         for name, v in VIEWS.items()}
    print(f"{a.model}: {len(truth['val'][0])} val, {len(truth['test'][0])} test faces")
    print("| views averaged | val gender | val MAE | test gender | test MAE |\n|---|---|---|---|---|")
    row = lambda combo: " | ".join(f"{g:.2%} | {m:.3f}" for g, m in (scores(answers[p], combo, *truth[p])
                                                                    for p in ("val", "test")))
    for name in VIEWS:
        print(f"| {name} alone | {row([name])} |")
    others = [v for v in VIEWS if v != "plain"]
    combos = [("plain",) + c for r in range(1, 4) for c in itertools.combinations(others, r)]
    combos.sort(key=lambda c: -scores(answers["val"], c, *truth["val"])[0])
    for combo in combos[:a.top]:
        print(f"| {' + '.join(combo)} (val rank {combos.index(combo) + 1} of {len(combos)}) | {row(combo)} |")
    print(f"| all {len(VIEWS)} views | {row(list(VIEWS))} |")


if __name__ == "__main__":
    main()
