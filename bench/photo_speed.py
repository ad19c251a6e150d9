"""Whole-photo speed: decode excluded, detect + align + predict, by photo size and face count.

Photos are synthetic but the faces are real: a UTKFace test chip pasted (scaled to a tenth of
the photo's shorter side) into a noise canvas of the given size. The model-only time of the
same run is printed as the baseline.

    .venv/bin/python bench/photo_speed.py [--model M] [--reps 10]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from PIL import Image

from faceage.inference.predictor import Predictor
from faceage.training.fit import default_data_path


def photo(mp: float, faces: int, chip: Image.Image, rng) -> Image.Image:
    w = int((mp * 1e6 * 4 / 3) ** 0.5)
    h = int(w * 3 / 4)
    canvas = Image.fromarray(rng.integers(40, 220, (h, w, 3), dtype=np.uint8))
    side = max(48, h // 6)
    face = chip.resize((side, side), Image.BILINEAR)
    for k in range(faces):
        canvas.paste(face, (int((k + 0.5) * w / faces - side / 2), int(h / 2 - side / 2)))
    return canvas


def timed(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    from pathlib import Path
    chip = Image.open(sorted(Path(default_data_path()).glob("30_1_0_*.chip.jpg"))[0]).convert("RGB")
    pred = Predictor(a.model)
    rng = np.random.default_rng(0)
    crop = np.asarray(chip.resize((pred.pre.size, pred.pre.size)))[None]
    model_ms, _ = timed(lambda: pred.runner.predict(crop), a.reps * 3)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; model {pred.runner.spec.name} via {type(pred.runner).__name__}; "
          f"model-only baseline {model_ms:.1f} ms per face (batch 1)")
    print("| photo | faces | detected | ms per photo (median) |")
    print("|---|---|---|---|")
    for mp, faces in ((1, 1), (4, 1), (12, 1), (50, 1), (4, 4), (4, 8)):
        img = photo(mp, faces, chip, rng)
        ms, found = timed(lambda: pred.analyze(img), a.reps if mp < 50 else max(3, a.reps // 3))
        print(f"| {img.width}x{img.height} ({mp} MP) | {faces} | {len(found)} | {ms:.1f} |")


if __name__ == "__main__":
    main()
