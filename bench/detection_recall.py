"""Face detection recall by face size and photo size, old single 640 px look vs the automatic one.

Scenes come from faceage.evaluation.scenes: real UTKFace faces (24-400 px wide, 3-12 per photo,
40% turned by up to 30 degrees) pasted with feathered edges into scikit-image sample photos
upscaled to 1-50 MP. Three in four scenes are groups (faces within 0.74-1.35x of one size), one
in four mixed (each face's size drawn on its own). One photo per size has no face (false
positives and time on a faceless photo). A face is found when a detection overlaps its
ground-truth box with IoU >= 0.4 (one-to-one, best pairs first); every other detection is a
false positive. Time: detect() alone, one call per photo.

    .venv/bin/python bench/detection_recall.py [--per-size 10] [--sizes 1,2,4,8,12,24,50] \
        [--also min_face_size=48,max_pixels=12e6]     # one more setting in the same run
    .venv/bin/python bench/detection_recall.py --calibrate    # re-measures scenes.FACE_BOX_IN_CHIP
    .venv/bin/python bench/detection_recall.py --net-sizes    # recall by face width in the network's
                                                              # input (detector.RESOLVED_PX)
    .venv/bin/python bench/detection_recall.py --photo-speed  # bench/photo_speed.py's photos, whole
                                                              # pipeline, det_size=640 vs default
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import defaultdict

import numpy as np
from PIL import Image

from faceage.evaluation.scenes import make_scene, match
from faceage.inference.detector import RetinaFaceDetector
from faceage.training.fit import default_data_path

BANDS = [(24, 32), (32, 48), (48, 64), (64, 96), (96, 160), (160, 256), (256, 401)]


def calibrate(n: int = 200) -> None:
    """Where RetinaFace puts its box on UTKFace chips (chip scaled to 300 px, on gray)."""
    from pathlib import Path
    det = RetinaFaceDetector(score_threshold=0.5, det_size=640)
    files = sorted(Path(default_data_path()).glob("*.chip.jpg"))
    rel = []
    for f in files[:: max(1, len(files) // n)][:n]:
        canvas = Image.new("RGB", (600, 500), (120, 120, 120))
        canvas.paste(Image.open(f).convert("RGB").resize((300, 300), Image.BICUBIC), (150, 100))
        found = det.detect(canvas)
        if found:
            rel.append((max(found, key=lambda d: d.score).box - [150, 100, 150, 100]) / 300)
    print(f"{len(rel)} chips; median box x1 y1 x2 y2 (fraction of chip side): {np.median(rel, axis=0).round(3)}")


def net_sizes() -> None:
    """Recall by the face's width in the network's input, reached by resizing 0.5 MP scenes
    (faces of one width each) by 0.75-3x: it is the width there that matters, not the source."""
    det = RetinaFaceDetector(det_size=100_000)          # one copy, never downscaled
    print("| face px in photo | x0.75 | x1 | x1.5 | x2 | x3 |\n|---|---|---|---|---|---|")
    for f in (16, 24, 32, 48, 64):
        cells = []
        for u in (0.75, 1.0, 1.5, 2.0, 3.0):
            hits = []
            for k in range(5):
                sc = make_scene(2000 + 10 * f + k, 0.5, 8, (f, f))
                w, h = sc.image.size
                found = det.detect(sc.image.resize((round(w * u), round(h * u)), Image.BICUBIC if u > 1 else Image.BILINEAR))
                hits.append(match(sc.boxes, np.array([d.box / u for d in found]).reshape(-1, 4))[0])
            cells.append(f"{np.concatenate(hits).mean():.0%} ({f * u:.0f} px)")
        print(f"| {f} ({len(np.concatenate(hits))} faces) | " + " | ".join(cells) + " |", flush=True)


def photo_speed(reps: int = 10) -> None:
    """bench/photo_speed.py's photos and timer, through Predictor(det_size=640) and Predictor()
    in one process, interleaved twice (the machine's load varies)."""
    import sys
    from pathlib import Path

    from faceage.inference.predictor import Predictor
    sys.path.insert(0, str(Path(__file__).parent))
    from photo_speed import photo, timed
    chip = Image.open(sorted(Path(default_data_path()).glob("30_1_0_*.chip.jpg"))[0]).convert("RGB")
    preds = {"det_size=640 (old)": Predictor(det_size=640), "automatic (new default)": Predictor()}
    rng = np.random.default_rng(0)
    print("| photo | faces | " + " | ".join(f"found; ms, 2 rounds: {n}" for n in preds) + " |\n|---|---|---|---|")
    for mp, faces in ((1, 1), (4, 1), (12, 1), (50, 1), (4, 4), (4, 8)):
        img = photo(mp, faces, chip, rng)
        runs = defaultdict(list)
        for _round in range(2):
            for n, p in preds.items():
                runs[n].append(timed(lambda: p.analyze(img), reps if mp < 50 else max(3, reps // 3)))
        print(f"| {img.width}x{img.height} ({mp} MP) | {faces} | " + " | ".join(
            f"{len(r[0][1])}; " + " / ".join(f"{ms:.1f}" for ms, _ in r) for r in runs.values()) + " |", flush=True)


def scenes(sizes, per_size, seed):
    for si, mp in enumerate(sizes):
        rng = np.random.default_rng([seed, si])
        for i in range(per_size):
            yield mp, make_scene(seed * 100_000 + si * 1000 + i, mp, int(rng.integers(3, 13)), mixed=i % 4 == 3)
        yield mp, make_scene(seed * 100_000 + si * 1000 + 999, mp, 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-size", type=int, default=10, help="scenes with faces per photo size")
    ap.add_argument("--sizes", default="1,2,4,8,12,24,50", help="photo sizes, megapixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--also", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="one more automatic detector with these keyword arguments, e.g. min_face_size=48")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--net-sizes", action="store_true")
    ap.add_argument("--photo-speed", action="store_true")
    a = ap.parse_args()
    if a.photo_speed:
        return photo_speed()
    if a.calibrate:
        return calibrate()
    if a.net_sizes:
        return net_sizes()
    methods = {"640 (old)": RetinaFaceDetector(det_size=640), "auto (new)": RetinaFaceDetector()}
    for spec in a.also:
        kw = {k: float(v) for k, v in (kv.split("=") for kv in spec.split(","))}
        methods[f"auto {spec}"] = RetinaFaceDetector(**kw)
    warm = make_scene(1, 0.3, 2, (60, 120)).image
    for det in methods.values():
        det.detect(warm)
    faces = []                                   # (mp, width, mixed, rotated, {method: found})
    photos = defaultdict(lambda: defaultdict(list))   # (mp, has faces) -> method -> [(fp, ms)]
    sizes = [float(s) for s in a.sizes.split(",")]
    for mp, sc in scenes(sizes, a.per_size, a.seed):
        hits = {}
        for name, det in methods.items():
            t = time.perf_counter()
            found = det.detect(sc.image)
            ms = (time.perf_counter() - t) * 1000
            hit, fp = match(sc.boxes, np.array([d.box for d in found]).reshape(-1, 4))
            hits[name] = hit
            photos[mp, len(sc.boxes) > 0][name].append((fp, ms))
        mixed = sc.name.endswith("mixed")
        for k, w in enumerate(sc.widths):
            faces.append((mp, w, mixed, abs(sc.angles[k]) > 10, {n: bool(h[k]) for n, h in hits.items()}))
        print(f"# {sc.name}: " + ", ".join(f"{n} {int(h.sum())}/{len(h)} fp {photos[mp, len(h) > 0][n][-1][0]} "
                                             f"{photos[mp, len(h) > 0][n][-1][1]:.0f} ms" for n, h in hits.items()), flush=True)
    names = list(methods)
    n_photos = sum(len(v[names[0]]) for v in photos.values())
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; {len(faces)} faces in {n_photos} photos "
          f"(seed {a.seed}); match: IoU >= 0.4, one-to-one")

    def recall(rows):
        return " | ".join(f"{np.mean([r[4][n] for r in rows]):.0%}" if rows else "-" for n in names)

    print("\nRecall by face width (px in the photo):")
    print("| face width | faces | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names))
    for lo, hi in BANDS:
        rows = [f for f in faces if lo <= f[1] < hi]
        print(f"| {lo}-{min(hi, 400)} | {len(rows)} | {recall(rows)} |")
    print(f"| all | {len(faces)} | {recall(faces)} |")
    for label, pick in (("group scenes", lambda f: not f[2]), ("mixed scenes", lambda f: f[2]),
                        ("turned > 10 deg", lambda f: f[3]), ("upright (<= 10 deg)", lambda f: not f[3])):
        rows = [f for f in faces if pick(f)]
        print(f"| {label} | {len(rows)} | {recall(rows)} |")

    print("\nBy photo size (photos with faces; false positives per photo; detect() ms per photo, median):")
    print("| photo | faces | " + " | ".join(f"recall {n}" for n in names) + " | "
          + " | ".join(f"FP/photo {n}" for n in names) + " | " + " | ".join(f"ms {n}" for n in names) + " |")
    print("|---|---|" + "---|" * 3 * len(names))
    for mp in sizes:
        rows = [f for f in faces if f[0] == mp]
        runs = photos[mp, True]
        fps = " | ".join(f"{np.mean([fp for fp, _ in runs[n]]):.2f}" for n in names)
        ms = " | ".join(f"{statistics.median(t for _, t in runs[n]):.0f}" for n in names)
        print(f"| {mp:g} MP | {len(rows)} | {recall(rows)} | {fps} | {ms} |")
    print("\nPhotos without faces (one per size): false positives, detect() ms")
    print("| photo | " + " | ".join(f"FP {n} | ms {n}" for n in names) + " |\n|---|" + "---|" * 2 * len(names))
    for mp in sizes:
        runs = photos[mp, False]
        print(f"| {mp:g} MP | " + " | ".join(f"{runs[n][0][0]} | {runs[n][0][1]:.0f}" for n in names) + " |")


if __name__ == "__main__":
    main()
