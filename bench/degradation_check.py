"""How a model's answers move when the same test faces are made sharper or softer.

UTKFace's chips are soft, low-resolution JPEGs (200x200 aligned crops); faces cropped from sharp
high-resolution photos are not. This measures that gap (issue 9, part 0): each test chip is decoded,
altered in uint8 RGB at its own 200 px (sharpened as a proxy for sharp photos; blurred, re-encoded
or shrunk and enlarged for softer ones), then prepared exactly as the file would be (the model's own
framing and resize, ``preprocess.frame_array``). Per model and condition: MAE, CS@5, mean signed
error (all, true age 40-59, 60+), gender accuracy, and the shift against the unaltered chip (mean
and mean |pred - pred as-is| in years, % of gender answers that flip). A model trained with
blur/down-up augmentation should move less.

    .venv/bin/python bench/degradation_check.py MODEL [MODEL ...] [--split bench/utkface_split.csv]
        [--data DIR] [--limit N] [--out FILE] [--json FILE]

MODEL: a run directory, .ckpt or .onnx.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFilter

from faceage.data.readers import read_dataset
from faceage.data.split import load_split
from faceage.inference.runners import load_runner
from faceage.preprocess import frame_array, open_image, to_rgb
from faceage.training.fit import default_data_path


def unsharp(percent: int, threshold: int):
    return lambda img: img.filter(ImageFilter.UnsharpMask(radius=2, percent=percent, threshold=threshold))


def blur(sigma: float):
    # OpenCV's is an exact Gaussian (Pillow's GaussianBlur approximates one with box blurs).
    # sigma is in pixels of a 200 px chip, scaled should a chip be another size.
    return lambda img: Image.fromarray(cv2.GaussianBlur(np.asarray(img), (0, 0), sigma * min(img.size) / 200))


def jpeg(quality: int):
    def f(img):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        return Image.open(buf).convert("RGB")
    return f


def down_up(scale: float):
    def f(img):
        small = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        return img.resize(small, Image.BOX).resize(img.size, Image.BILINEAR)    # BOX: area average
    return f


CONDITIONS = {"as-is": lambda img: img, "sharpen": unsharp(150, 3), "sharpen-strong": unsharp(300, 0),
              "blur-1": blur(1), "blur-2": blur(2), "jpeg-20": jpeg(20),
              "down-up-0.5": down_up(0.5), "down-up-0.25": down_up(0.25)}


def mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")      # a small --limit may leave a band empty


def score(out: dict, base: dict, age: np.ndarray, gender: np.ndarray) -> dict:
    err, male = out["age"] - age, out["gender_prob"] >= 0.5
    return {"mae": mean(np.abs(err)), "cs5": mean(np.abs(err) <= 5), "signed": mean(err),
            "signed_40_59": mean(err[(age >= 40) & (age < 60)]), "signed_60plus": mean(err[age >= 60]),
            "gender_acc": mean(male == (gender == 1)), "shift": mean(out["age"] - base["age"]),
            "abs_shift": mean(np.abs(out["age"] - base["age"])),
            "gender_flips": mean(male != (base["gender_prob"] >= 0.5))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--limit", type=int, help="N test faces, evenly spaced (files sort by age: not the first N)")
    ap.add_argument("--out", help="also write the printed text to this file")
    ap.add_argument("--json")
    a = ap.parse_args()
    manifest, _ = read_dataset(a.data)
    split = load_split(a.split)
    test = [s for s in manifest.samples if split.get(s.key) == "test"]
    if a.limit and a.limit < len(test):
        test = [test[i] for i in np.linspace(0, len(test) - 1, a.limit).round().astype(int)]
    age = np.array([s.age for s in test], float)
    gender = np.array([s.gender for s in test])
    runners = {m: load_runner(m) for m in a.models}
    parts = {m: {c: [] for c in CONDITIONS} for m in a.models}
    for i in range(0, len(test), 64):          # a chunk at a time: every condition, every model
        chips = [to_rgb(open_image(s.path)) for s in test[i:i + 64]]
        for name, alter in CONDITIONS.items():
            altered = [alter(c) for c in chips]
            for m, runner in runners.items():
                batch = np.stack([frame_array(img, runner.preprocess) for img in altered])
                parts[m][name].append(runner.predict(batch))

    report, lines = {}, []
    for m, runner in runners.items():
        spec = runner.preprocess
        preds = {c: {k: np.concatenate([p[k] for p in ps]) for k in ps[0]} for c, ps in parts[m].items()}
        report[m] = {c: score(p, preds["as-is"], age, gender) for c, p in preds.items()}
        lines += [f"{m}  (n={len(test)} test faces, input {spec.size} px, {spec.channels} channel(s))",
                  f"  {'condition':<15}{'MAE':>6}{'CS@5':>7}{'signed':>8}{'40-59':>7}{'60+':>7}{'gender':>8}"
                  f"{'shift':>8}{'|shift|':>8}{'flips':>7}"]
        lines += [f"  {c:<15}{r['mae']:>6.3f}{r['cs5']:>7.1%}{r['signed']:>+8.2f}{r['signed_40_59']:>+7.2f}"
                  f"{r['signed_60plus']:>+7.2f}{r['gender_acc']:>8.2%}{r['shift']:>+8.2f}{r['abs_shift']:>8.2f}"
                  f"{r['gender_flips']:>7.1%}" for c, r in report[m].items()]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    for path, content in ((a.out, text), (a.json, json.dumps(report, indent=1) + "\n")):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(content)


if __name__ == "__main__":
    main()
