"""Does detect -> align -> predict see UTKFace framing? MAE on crops vs MAE on pasted photos.

Each test-split chip is pasted into a larger canvas (random scale 0.8-2x, rotation within
+-20 degrees, random offset, noisy background), then run through the full photo pipeline.
Target: MAE within 0.3 years of the MAE measured on the chips themselves.

    .venv/bin/python bench/alignment_check.py [--model M] [--n 2811] [--seed 0]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from faceage.data.readers import read_dataset
from faceage.data.split import load_split
from faceage.inference.predictor import Predictor
from faceage.preprocess import load_image, open_image
from faceage.training.fit import default_data_path


def paste(chip: Image.Image, rng: np.random.Generator) -> Image.Image:
    scale = rng.uniform(0.8, 2.0)
    angle = rng.uniform(-20, 20)
    side = round(chip.width * scale)
    face = chip.resize((side, side), Image.BILINEAR).rotate(angle, expand=True, resample=Image.BILINEAR)
    mask = Image.new("L", (side, side), 255).rotate(angle, expand=True)
    w, h = face.width + rng.integers(100, 500), face.height + rng.integers(100, 400)
    bg = rng.integers(60, 200, (h, w, 3)).astype(np.uint8)
    bg = (bg * 0.3 + rng.integers(60, 200, 3) * 0.7).astype(np.uint8)     # tinted noise
    canvas = Image.fromarray(bg)
    canvas.paste(face, (int(rng.integers(0, w - face.width + 1)), int(rng.integers(0, h - face.height + 1))), mask)
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--n", type=int, default=2811)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    pred = Predictor(a.model)
    manifest, _ = read_dataset(a.data)
    split = load_split(a.split)
    samples = [s for s in manifest.samples if split.get(s.key) == "test"][: a.n]
    rng = np.random.default_rng(a.seed)
    crop_err, photo_err, missed = [], [], 0
    t0 = time.perf_counter()
    for s in samples:
        chip = open_image(s.path).convert("RGB")
        crop = load_image(s.path, pred.pre)
        crop_err.append(abs(float(pred.runner.predict(crop[None])["age"][0]) - s.age))
        faces = pred.analyze(paste(chip, rng))
        if not faces:
            missed += 1
            photo_err.append(None)
            continue
        best = max(faces, key=lambda f: f.score)
        photo_err.append(abs(best.age - s.age))
    both = [(c, p) for c, p in zip(crop_err, photo_err) if p is not None]
    mae_crop_all = np.mean(crop_err)
    mae_crop = np.mean([c for c, _ in both])
    mae_photo = np.mean([p for _, p in both])
    print(f"{len(samples)} test faces, {missed} not detected in their canvas ({missed / len(samples):.1%}); "
          f"{time.perf_counter() - t0:.0f}s")
    print(f"MAE on the chips (all {len(samples)}):              {mae_crop_all:.3f}")
    print(f"MAE on the chips (the {len(both)} detected):          {mae_crop:.3f}")
    print(f"MAE via canvas -> detect -> align -> predict:  {mae_photo:.3f}")
    print(f"difference: {mae_photo - mae_crop:+.3f} years (target: within 0.3)")


if __name__ == "__main__":
    main()
