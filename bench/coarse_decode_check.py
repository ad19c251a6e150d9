"""Coarse JPEG decoding (Predictor's ``coarse_decode``, the default) against decoding every pixel:
the same answers, in less time?

Each of N test-split UTKFace chips is pasted, as `bench/photo_speed.py` does, into a photo of 4, 12
or 24 MP (in turn) with the face a random 8-50% of the photo's height, and saved as a JPEG
(quality 90). Both predictors analyze the JPEG bytes, taking turns; the script prints the age MAE
of each against the chip's label, how far the two answers are apart, which decode paths were taken,
and the median time per photo size.

    PYTHONPATH=src .venv/bin/python bench/coarse_decode_check.py [--n 150]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter, defaultdict

import numpy as np

import faceage.inference.predictor as predictor_module
from accuracy_targets import split_samples
from faceage.inference.predictor import Predictor
from faceage.preprocess import open_image
from faceage.training.fit import default_data_path
from photo_speed import jpeg, photo

SIZES_MP = (4, 12, 24)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--split", default="bench/utkface_split.csv")
    a = ap.parse_args()
    samples = split_samples(default_data_path(), a.split, parts=("test",))["test"]
    samples = samples[:: max(1, len(samples) // a.n)][: a.n]
    coarse, full = Predictor(), Predictor(coarse_decode=False)
    decoded = []                                   # sizes decoded by the coarse predictor, per photo
    real = predictor_module.to_rgb_image
    predictor_module.to_rgb_image = lambda image, *args, **kw: _spy(real, decoded, image, *args, **kw)
    looks = []                                     # the coarse predictor's first looks: final or not
    first_look = coarse.detector.first_look
    coarse.detector.first_look = lambda *args: looks.append(first_look(*args)) or looks[-1]
    rng = np.random.default_rng(0)
    rows, times, paths = [], defaultdict(lambda: ([], [])), Counter()
    for i, s in enumerate(samples):
        mp = SIZES_MP[i % len(SIZES_MP)]
        data = jpeg(photo(mp, 1, open_image(s.path).convert("RGB"), rng, float(rng.uniform(0.08, 0.5))))
        answers = {}                                # coarse predictor? -> its faces
        for pred in (coarse, full) if i % 2 == 0 else (full, coarse):
            decoded.clear()
            looks.clear()
            t = time.perf_counter()
            answers[pred is coarse] = pred.analyze(data)
            times[mp][0 if pred is coarse else 1].append((time.perf_counter() - t) * 1000)
            if pred is coarse:
                paths[_path_name(decoded, open_image(data).size, looks)] += 1
        if answers[True] and answers[False]:
            fa, fb = (max(answers[k], key=lambda f: f.box[2] - f.box[0]) for k in (True, False))
            rows.append((s.age, fa.age, fb.age, fa.gender == fb.gender, len(answers[True]) == len(answers[False]),
                         float(np.abs(np.array(fa.box) - np.array(fb.box)).max() / (fb.box[2] - fb.box[0]))))
    true, age_c, age_f, same_gender, same_count, box_gap = (np.array(c) for c in zip(*rows))
    print(f"{len(samples)} test faces in {'/'.join(map(str, SIZES_MP))} MP JPEGs; found by both: {len(rows)}")
    print(f"MAE against the labels: coarse decode {np.abs(age_c - true).mean():.3f}, every pixel {np.abs(age_f - true).mean():.3f}")
    gap = np.abs(age_c - age_f)
    print(f"|age coarse - age every pixel|: mean {gap.mean():.3f}, 95th percentile {np.percentile(gap, 95):.3f}, max {gap.max():.3f} years")
    print(f"same gender {same_gender.mean():.1%}; same number of faces {same_count.mean():.1%}; "
          f"largest box corner gap {box_gap.max():.1%} of the face's width")
    print("decode paths of the coarse predictor: " + ", ".join(f"{k} {v}" for k, v in sorted(paths.items())))
    print("| photo | photos | ms coarse decode (median) | ms every pixel (median) |\n|---|---|---|---|")
    for mp in SIZES_MP:
        c, f = times[mp]
        print(f"| {mp} MP | {len(c)} | {statistics.median(c):.1f} | {statistics.median(f):.1f} |")


def _spy(real, decoded, image, *args, **kw):
    out = real(image, *args, **kw)
    decoded.append(out.size)
    return out


def _path_name(decoded: list, full_px, looks: list) -> str:
    if decoded == [full_px]:
        return "every pixel at once (too small to reduce)"
    if len(decoded) == 1:
        return "coarse copy only"
    if looks == [None]:
        return "coarse, then every pixel (the detector looked finer)"
    return "coarse, then every pixel for the crop" if decoded[-1] == full_px else "coarse, then a finer reduced decode"


if __name__ == "__main__":
    main()
