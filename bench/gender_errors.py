"""The test faces whose gender every given model gets wrong, most confident first.

Gender accuracy has stopped near 94.5% for every backbone and recipe tried (BENCHMARKS.md 11c-11l),
and averaging models does not move it: they make the same mistakes. This script lists those shared
mistakes so that a person can look at them: a face that all models read confidently against its
label is either a hard face or a wrong label, and which of the two decides what accuracy is reachable.

    PYTHONPATH=src .venv/bin/python bench/gender_errors.py MODEL [MODEL ...] --out DIR
        [--min-age 13] [--sheet 48]

Writes DIR/gender_errors.csv (every face all models get wrong: file, true age and gender, each
model's probability of female) and DIR/gender_errors_13plus.jpg, a contact sheet of the most confident
shared mistakes from --min-age up, each chip captioned with its label and the models' mean answer.
Uses bench/accuracy_targets.py's scoring inputs (test split of bench/utkface_split.csv, flip-averaged).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from accuracy_targets import BANDS, predict, split_samples
from faceage.inference.runners import load_runner
from faceage.preprocess import load_image
from faceage.training.fit import default_data_path

CHIP = 128


def female_probability(model: str, samples) -> np.ndarray:
    """Each face's probability of female, the mean of the face and its mirror image."""
    runner = load_runner(model)
    images = np.stack([load_image(s.path, runner.preprocess) for s in samples])
    female = predict(runner, images)["gender_prob"]
    if runner.spec.tta == "flip":           # the model already averages the mirror image in its graph
        return female
    return (female + predict(runner, images[:, :, ::-1].copy())["gender_prob"]) / 2


def contact_sheet(rows: list[dict], path: Path, columns: int = 8) -> None:
    sheet = Image.new("RGB", (columns * CHIP, -(-len(rows) // columns) * (CHIP + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        x, y = (i % columns) * CHIP, (i // columns) * (CHIP + 16)
        sheet.paste(Image.open(row["path"]).convert("RGB").resize((CHIP, CHIP)), (x, y))
        label = "F" if row["gender"] == 1 else "M"
        draw.text((x + 2, y + CHIP + 2), f"{i + 1} {row['age']}{label} says {row['mean_female']:.0%}F", fill="black")
    sheet.save(path, quality=90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--min-age", type=int, default=13, help="youngest age on the contact sheet")
    ap.add_argument("--sheet", type=int, default=48, help="faces on the contact sheet")
    a = ap.parse_args()
    samples = split_samples(a.data, a.split, ("test",))["test"]
    female = np.stack([female_probability(m, samples) for m in a.models])       # models x faces
    label = np.array([s.gender for s in samples])
    age = np.array([s.age for s in samples])
    wrong = ((female >= 0.5) != (label == 1)).all(axis=0)
    mean = female.mean(axis=0)
    confidence = np.abs(mean - 0.5) * 2                                           # 0: a coin, 1: certain

    print(f"test split, {len(samples)} faces, {len(a.models)} models; wrong by every model: {wrong.sum()}")
    for model, f in zip(a.models, female):
        print(f"  {model}: wrong {((f >= 0.5) != (label == 1)).sum()}")
    for name, lo, hi in BANDS:
        band = (age >= lo) & (age < hi)
        sure = band & wrong & (confidence >= 0.8)
        print(f"  {name:>5}: {band.sum():4d} faces, wrong by all {(band & wrong).sum():3d}, "
              f"of which the models' mean is at least 90% sure {sure.sum():3d}")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    order = [i for i in np.argsort(-confidence) if wrong[i]]
    rows = [{"file": Path(samples[i].path).name, "path": samples[i].path, "age": int(age[i]), "gender": int(label[i]),
             "mean_female": float(mean[i]), **{f"female_{k}": float(female[k, i]) for k in range(len(a.models))}}
            for i in order]
    with open(out / "gender_errors.csv", "w", newline="") as fh:
        fields = [k for k in rows[0] if k != "path"] if rows else ["file"]
        writer = csv.DictWriter(fh, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shown = [r for r in rows if r["age"] >= a.min_age][:a.sheet]
    if shown:
        contact_sheet(shown, out / f"gender_errors_{a.min_age}plus.jpg")
    print(f"wrote {out / 'gender_errors.csv'} ({len(rows)} faces) and a sheet of {len(shown)} from age {a.min_age} up")


if __name__ == "__main__":
    main()
