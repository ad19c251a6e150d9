"""Model-only inference speed: ms per face at batch 1 and 32, onnxruntime vs torch, same run.

Input is uint8 crops at the model's input size (what the aligner/cache produce); the time
covers normalization, the network and decoding. Runs alternate between back-ends so machine
noise hits both.

    .venv/bin/python bench/model_speed.py MODEL.ckpt MODEL.onnx [--reps 30]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from faceage.inference.runners import OnnxRunner, TorchRunner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("onnx")
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    runners = {"torch": TorchRunner(a.checkpoint), "onnxruntime": OnnxRunner(a.onnx)}
    s = runners["torch"].preprocess
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"model {runners['torch'].spec.name} {s.size}px x{s.channels}")
    rng = np.random.default_rng(0)
    print("| back-end | batch | ms per batch (median) | ms per face |")
    print("|---|---|---|---|")
    for batch in (1, 32):
        x = rng.integers(0, 256, (batch, s.size, s.size, s.channels), dtype=np.uint8)
        times = {k: [] for k in runners}
        for r in runners.values():
            for _ in range(3):
                r.predict(x)                                  # warm-up
        for _ in range(a.reps):
            for name, r in runners.items():
                t = time.perf_counter()
                r.predict(x)
                times[name].append(time.perf_counter() - t)
        for name in runners:
            med = statistics.median(times[name]) * 1000
            print(f"| {name} | {batch} | {med:.2f} | {med / batch:.2f} |")


if __name__ == "__main__":
    main()
