"""Whole-photo speed, by photo size, face size and face count: from a decoded photo, and end to
end from the JPEG file's bytes (decode + detect + align + predict, what `faceage predict` does
with a file: a large JPEG is decoded coarsely first, see ``Predictor(coarse_decode=...)``), and the
same with every pixel decoded (``coarse_decode=False``; what `faceage serve` did with an upload
before the sixteenth session, see ``bench/serve_large_photos.py``).

Photos are synthetic but the faces are real: a UTKFace test chip pasted into a canvas of the
given size, at a sixth of the photo's shorter side or, for a portrait, at half of it (a face
several times the model's crop, which takes the low-pass path of the crop routine). The canvas
is a real photo (scikit-image's ``coffee``) stretched to size with a little grain, so the JPEG
(quality 90) compresses like a photo, not like noise. The model-only time and the decode-only
time of the same run are printed as baselines.

    .venv/bin/python bench/photo_speed.py [--model M] [--reps 10]
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from faceage.inference.predictor import Predictor
from faceage.preprocess import open_image
from faceage.training.fit import default_data_path

# (megapixels, faces, face side as a fraction of the photo's shorter side)
CASES = ((1, 1, 1 / 6), (1, 1, 1 / 2), (4, 1, 1 / 6), (12, 1, 1 / 6), (12, 1, 1 / 2), (50, 1, 1 / 6),
         (4, 4, 1 / 6), (4, 8, 1 / 6))


def photo(mp: float, faces: int, chip: Image.Image, rng, face_fraction: float = 1 / 6,
          background: Image.Image | None = None) -> Image.Image:
    if background is None:
        from skimage import data as skimage_data
        background = Image.fromarray(skimage_data.coffee())
    w = int((mp * 1e6 * 4 / 3) ** 0.5)
    h = int(w * 3 / 4)
    grain = rng.normal(0, 4, (h, w, 3))
    canvas = np.asarray(background.resize((w, h), Image.BILINEAR), dtype=np.float32) + grain
    canvas = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    side = max(48, int(h * face_fraction))
    face = chip.resize((side, side), Image.LANCZOS)
    for k in range(faces):
        canvas.paste(face, (int((k + 0.5) * w / faces - side / 2), int(h / 2 - side / 2)))
    return canvas


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def timed(fn, reps):
    return interleaved([fn], reps)[0]


def interleaved(fns, reps):
    """Each function's median time (ms) and last result, the functions taking turns in every round:
    a machine that slows down for a while slows all of them alike."""
    outs = [fn() for fn in fns]                                    # warm-up
    times = [[] for _ in fns]
    for _ in range(reps):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t)
    return [(statistics.median(ts) * 1000, out) for ts, out in zip(times, outs)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    chip = Image.open(sorted(Path(default_data_path()).glob("30_1_0_*.chip.jpg"))[0]).convert("RGB")
    pred = Predictor(a.model)
    every_pixel = Predictor(a.model, coarse_decode=False)
    rng = np.random.default_rng(0)
    crop = np.asarray(chip.resize((pred.pre.size, pred.pre.size)))[None]
    model_ms, _ = timed(lambda: pred.runner.predict(crop), a.reps * 3)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; model {pred.runner.spec.name} via "
          f"{type(pred.runner).__name__}; model-only baseline {model_ms:.1f} ms per face (batch 1)")
    print("| photo | faces | face side | detected | ms from the decoded photo | JPEG | ms to decode it "
          "| ms end to end from the JPEG (median) | the same, every pixel decoded |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mp, faces, fraction in CASES:
        img = photo(mp, faces, chip, rng, fraction)
        data = jpeg(img)
        reps = a.reps if mp < 50 else max(3, a.reps // 3)
        (decoded_ms, found), (decode_ms, _), (total_ms, found_e2e), (every_ms, found_every) = interleaved(
            [lambda: pred.analyze(img), lambda: open_image(data), lambda: pred.analyze(data),
             lambda: every_pixel.analyze(data)], reps)
        assert len(found_e2e) == len(found) == len(found_every)
        side = max(48, int(img.height * fraction))
        print(f"| {img.width}x{img.height} ({mp} MP) | {faces} | {side} px | {len(found)} | {decoded_ms:.1f} | "
              f"{len(data) / 1e6:.2f} MB | {decode_ms:.1f} | {total_ms:.1f} | {every_ms:.1f} |")


if __name__ == "__main__":
    main()
