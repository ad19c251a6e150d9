"""Does detect -> align -> predict see UTKFace framing? MAE on crops vs MAE on pasted photos.

Each test-split chip is pasted into a larger canvas (random scale --min-scale to --max-scale
times the chip, default 0.8-2x; rotation within +-20 degrees, random offset, noisy background),
then run through the full photo pipeline. Target: MAE within 0.3 years of the MAE measured on
the chips themselves. ``--naive-warp`` also runs every canvas through the pipeline with the old
crop (one bilinear warp from the photo to the model's size, no low-pass filter) as a baseline.

    .venv/bin/python bench/alignment_check.py [--model M] [--n 2811] [--seed 0]
        [--min-scale 0.8] [--max-scale 2.0] [--naive-warp]
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import numpy as np
from PIL import Image

from faceage.data.readers import read_dataset
from faceage.data.split import load_split
from faceage.inference import predictor as predictor_module
from faceage.inference.align import CANONICAL_LANDMARKS, similarity_transform
from faceage.inference.predictor import Predictor
from faceage.preprocess import load_image, open_image
from faceage.training.fit import default_data_path


def paste(chip: Image.Image, rng: np.random.Generator, min_scale: float = 0.8, max_scale: float = 2.0) -> Image.Image:
    scale = rng.uniform(min_scale, max_scale)
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


def naive_align(image: Image.Image, landmarks: np.ndarray, size: int) -> Image.Image:
    """The crop before the low-pass fix: one bilinear warp from the full photo straight to ``size``."""
    m = similarity_transform(np.asarray(landmarks, float), CANONICAL_LANDMARKS * size)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    return image.transform((size, size), Image.AFFINE, data=inv.flatten().tolist(), resample=Image.BILINEAR)


@contextmanager
def naive_warp():
    """The predictor crops with ``naive_align`` inside this block (this script only)."""
    fixed = predictor_module.align_face
    predictor_module.align_face = naive_align
    try:
        yield
    finally:
        predictor_module.align_face = fixed


def age_error(pred: Predictor, canvas: Image.Image, age: int) -> float | None:
    faces = pred.analyze(canvas)
    return abs(max(faces, key=lambda f: f.score).age - age) if faces else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--n", type=int, default=2811)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-scale", type=float, default=0.8, help="smallest paste scale, times the chip's side")
    ap.add_argument("--max-scale", type=float, default=2.0, help="largest paste scale, times the chip's side")
    ap.add_argument("--naive-warp", action="store_true", help="also measure the old single-warp crop")
    a = ap.parse_args()
    pred = Predictor(a.model)
    manifest, _ = read_dataset(a.data)
    split = load_split(a.split)
    samples = [s for s in manifest.samples if split.get(s.key) == "test"][: a.n]
    rng = np.random.default_rng(a.seed)
    crop_err, photo_err, naive_err = [], [], []
    t0 = time.perf_counter()
    for s in samples:
        chip = open_image(s.path).convert("RGB")
        crop = load_image(s.path, pred.pre)
        crop_err.append(abs(float(pred.runner.predict(crop[None])["age"][0]) - s.age))
        canvas = paste(chip, rng, a.min_scale, a.max_scale)
        photo_err.append(age_error(pred, canvas, s.age))
        if a.naive_warp:
            with naive_warp():
                naive_err.append(age_error(pred, canvas, s.age))
    missed = sum(p is None for p in photo_err)
    both = [(c, p, n) for c, p, n in zip(crop_err, photo_err, naive_err or photo_err) if None not in (p, n)]
    mae_crop_all = np.mean(crop_err)
    mae_crop = np.mean([c for c, _, _ in both])
    mae_photo = np.mean([p for _, p, _ in both])
    shrink = [x * chip.width / pred.pre.size for x in (a.min_scale, a.max_scale)]   # UTKFace chips: 200 px
    print(f"{len(samples)} test faces pasted at {a.min_scale:g}-{a.max_scale:g}x the chip (faces "
          f"{shrink[0]:.1f}-{shrink[1]:.1f}x the {pred.pre.size} px crop), {missed} not detected in their "
          f"canvas ({missed / len(samples):.1%}); {time.perf_counter() - t0:.0f}s")
    print(f"MAE on the chips (all {len(samples)}):              {mae_crop_all:.3f}")
    print(f"MAE on the chips (the {len(both)} detected):          {mae_crop:.3f}")
    print(f"MAE via canvas -> detect -> align -> predict:  {mae_photo:.3f}")
    print(f"difference: {mae_photo - mae_crop:+.3f} years (target: within 0.3)")
    if a.naive_warp:
        mae_naive = np.mean([n for _, _, n in both])
        print(f"MAE via the same canvases, old single-warp crop: {mae_naive:.3f}")
        print(f"difference (old crop): {mae_naive - mae_crop:+.3f} years")
        paired = np.array([n - p for _, p, n in both])                     # same canvas, same detection
        print(f"old crop - new crop, paired: {paired.mean():+.3f} +- {paired.std(ddof=1) / np.sqrt(len(paired)):.3f} "
              f"years (standard error)")


if __name__ == "__main__":
    main()
