"""Which backbone and input size fit the speed target (<= 5 ms per face at batch 1, onnxruntime)?

Each candidate is built with faceage's heads (random weights: speed does not depend on them),
exported to ONNX the way `faceage export` does, and timed at batch 1 and batch 32 on uint8
crops; the candidates take turns round by round so machine noise hits all of them alike.

    .venv/bin/python bench/backbone_speed.py [--rounds 15] [--threads 2] [--only NAME:SIZE,NAME:SIZE]

The first candidate is the baseline of the "vs" column.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

CANDIDATES = [("mobilenetv2", 128), ("efficientnet_lite0", 128), ("dlib_resnet29", 150),
              ("dlib_resnet29", 128), ("dlib_resnet29", 112), ("faceres_mobilenet", 160), ("faceres_mobilenet", 128)]


def build(name: str, size: int, folder: Path, threads: int):
    from faceage.config import Config
    from faceage.inference.checkpoint import AtomicCheckpointIO, describe
    from faceage.inference.export import export_onnx
    from faceage.inference.runners import OnnxRunner
    from faceage.models.registry import create_model

    net = create_model(name, pretrained="none", input_size=size).eval()
    ckpt = folder / f"{name}-{size}.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                                          "faceage": describe(net.spec, Config())}, ckpt)
    export_onnx(ckpt, ckpt.with_suffix(".onnx"))
    return OnnxRunner(ckpt.with_suffix(".onnx"), threads=threads, spinning=False)


def timed(runner, x, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        runner.predict(x)
    return (time.perf_counter() - t) / reps / len(x) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="candidates to time, e.g. dlib_resnet29:150,faceres_mobilenet:160 (default: all)")
    a = ap.parse_args()
    candidates = [(n, int(s)) for n, s in (c.split(":") for c in a.only.split(","))] if a.only else CANDIDATES
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime threads={a.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        runners = {(n, s): build(n, s, Path(tmp), a.threads) for n, s in candidates}
        rng = np.random.default_rng(0)
        inputs = {k: {b: rng.integers(0, 256, (b, k[1], k[1], 3), dtype=np.uint8) for b in (1, 32)} for k in runners}
        for k, r in runners.items():                                   # warm-up
            timed(r, inputs[k][1], 5), timed(r, inputs[k][32], 1)
        times = {k: {1: [], 32: []} for k in runners}
        for _ in range(a.rounds):
            for k, r in runners.items():
                times[k][1].append(timed(r, inputs[k][1], 20))
                times[k][32].append(timed(r, inputs[k][32], 2))
    base = statistics.median(times[candidates[0]][1])
    print(f"| backbone | input | batch 1 ms/face (median of rounds) | vs {candidates[0][0]} {candidates[0][1]} | batch 32 ms/face |")
    print("|---|---|---|---|---|")
    for (n, s), t in times.items():
        b1, b32 = statistics.median(t[1]), statistics.median(t[32])
        print(f"| {n} | {s} | {b1:.2f} | {b1 / base:.2f}x | {b32:.2f} |")


if __name__ == "__main__":
    main()
