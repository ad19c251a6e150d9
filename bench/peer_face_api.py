"""faceage against @vladmandic/face-api's ageGenderNet (npm, TensorFlow.js WASM), same crops, same run.

Both get the UTKFace test split's aligned 200x200 chips, chosen as in bench/peer_age_and_gender.py.
Each chip is decoded once with Pillow; faceage resizes it to its input and runs the ONNX model
(1 and 2 onnxruntime threads), face-api gets the very same RGB pixels and runs only ageGenderNet
on the whole chip (no detector: the chip is the face; face-api resizes it to 112x112 itself).
face-api runs in one node process (bench/peer_face_api/age_gender.mjs) that answers one face per
line on stdin, so faces alternate between the models and machine noise hits all of them. Each face
is timed alone (batch 1): faceage from the decoded chip to the answer, face-api from the decoded
pixels to the answer inside node (the pipe to node is not counted). face-api's WASM backend runs
on one thread in node. Caveat: face-api's TUTORIAL.md says ageGenderNet was trained on an 80/20
split of UTK (among 8 sets; its own UTK test MAE 5.25, gender 93%), so most of our test faces were
likely in its training data and its scores here are optimistic.

    bash bench/peer_face_api/setup.sh             # npm ci: face-api 1.7.15, tfjs 4.22.0 (+ wasm), jpeg-js
    .venv/bin/python bench/peer_face_api.py [--limit N] [--model other.onnx ...]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image

from faceage.data.readers import UTK_NAME
from faceage.inference.predictor import DEFAULT_MODEL
from faceage.inference.runners import OnnxRunner

HERE = Path(__file__).parent
NODE_DIR = HERE / "peer_face_api"
DATA = Path(os.environ.get("FACEAGE_DATA", HERE.parent.parent / "shared/datasets/utkface/UTKFace"))


def scores(pred_age: np.ndarray, pred_female: np.ndarray, age: np.ndarray, female: np.ndarray) -> dict:
    err = np.abs(pred_age - age)
    return {"mae": float(err.mean()), "cs5": float((err <= 5).mean()),
            "gender_acc": float((pred_female == female).mean())}


def npm_version(package: str) -> str:
    return json.loads((NODE_DIR / "node_modules" / package / "package.json").read_text())["version"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default=str(HERE / "utkface_split.csv"))
    ap.add_argument("--limit", type=int, default=0, help="only the first N test faces (0 = all)")
    ap.add_argument("--model", action="append", default=[], help="another faceage .onnx to score too (repeatable)")
    ap.add_argument("--backend", default="wasm", choices=["wasm", "cpu"], help="TensorFlow.js backend for face-api")
    ap.add_argument("--node-decode", action="store_true", help="let node decode the JPEGs (jpeg-js) instead of Pillow")
    ap.add_argument("--out", default=str(HERE / "results/peer/face_api.txt"), help="write the report here ('' = don't)")
    a = ap.parse_args()

    keys = [r["key"] for r in csv.DictReader(open(a.split)) if r["split"] == "test"]
    keys = keys[: a.limit] if a.limit else keys
    runners = {}
    for path in [DEFAULT_MODEL, *map(Path, a.model)]:
        label = "faceage" if path == DEFAULT_MODEL else f"faceage {path.stem}"
        for threads in (2, 1):
            runners[f"{label} ({threads} thread{'s' * (threads > 1)})"] = OnnxRunner(path, threads=threads)
    node = subprocess.Popen(["node", str(NODE_DIR / "age_gender.mjs"), "-", "--backend", a.backend],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    tmp = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)) / "chip.npy"

    def run_ours(runner, chip: Image.Image):
        size = runner.preprocess.size
        x = np.asarray(chip.resize((size, size), Image.BILINEAR, reducing_gap=2.0))[None]
        r = runner.predict(x)
        return float(r["age"][0]), bool(r["gender_prob"][0] >= 0.5)   # gender_prob = P(female)

    def run_peer(key: str, chip: Image.Image):
        if a.node_decode:
            path = DATA.resolve() / key
        else:
            np.save(tmp, np.asarray(chip))                               # (H, W, 3) uint8, the pixels faceage gets
            path = tmp
        node.stdin.write(f"{path}\n")
        r = json.loads(node.stdout.readline())                           # node warms up on its first face
        return float(r["age"]), r["gender"] == "female", r["ms"] / 1000

    warm = Image.open(DATA / keys[0]).convert("RGB")                     # load sessions outside the timed loop
    for _ in range(3):
        for runner in runners.values():
            run_ours(runner, warm)

    truth_age, truth_female = [], []
    preds = {name: ([], []) for name in [*runners, "face-api ageGenderNet"]}
    times = {name: [] for name in preds}
    try:
        for key in keys:
            m = UTK_NAME.match(key)
            truth_age.append(int(m.group(1)))
            truth_female.append(m.group(2) == "1")                       # UTKFace: 0 male, 1 female
            chip = Image.open(DATA / key).convert("RGB")
            for name, runner in runners.items():
                t = time.perf_counter()
                age, female = run_ours(runner, chip)
                times[name].append(time.perf_counter() - t)
                preds[name][0].append(age)
                preds[name][1].append(female)
            age, female, seconds = run_peer(key, chip)
            times["face-api ageGenderNet"].append(seconds)
            preds["face-api ageGenderNet"][0].append(age)
            preds["face-api ageGenderNet"][1].append(female)
    finally:
        node.stdin.close()
        node.wait()
        tmp.unlink(missing_ok=True)
        tmp.parent.rmdir()

    node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    decoder = f"jpeg-js {npm_version('jpeg-js')}" if a.node_decode else "Pillow pixels"
    lines = [f"$ {shlex.join(['python', *sys.argv])}",
             f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"machine: {platform.machine()}, {os.cpu_count()} cores; onnxruntime {version('onnxruntime')}; "
             f"node {node_version}, @vladmandic/face-api {npm_version('@vladmandic/face-api')}, "
             f"@tensorflow/tfjs {npm_version('@tensorflow/tfjs')} + tfjs-backend-{a.backend} "
             f"{npm_version('@tensorflow/tfjs-backend-' + a.backend)} ({decoder}); {len(keys)} UTKFace test faces",
             "| model | MAE | CS@5 | gender acc. | ms per face (median) | ms per face (mean) |",
             "|---|---|---|---|---|---|"]
    age, female = np.array(truth_age, float), np.array(truth_female)
    results = {}
    for name, (pa, pf) in preds.items():
        s = scores(np.array(pa), np.array(pf), age, female)
        s["ms_median"] = statistics.median(times[name]) * 1000
        s["ms_mean"] = statistics.fmean(times[name]) * 1000
        results[name] = s
        lines.append(f"| {name} | {s['mae']:.2f} | {100 * s['cs5']:.1f}% | {100 * s['gender_acc']:.1f}% | "
                     f"{s['ms_median']:.2f} | {s['ms_mean']:.2f} |")
    print("\n".join(lines))
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
