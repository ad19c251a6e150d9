"""Is an int8 model (``faceage export --int8``) faster than its float export on this CPU?

Model-only ms per face at batch 1 and 32, the float and int8 files alternating in one run
(spinning off in both sessions, so that one's idle threads do not slow the other), and the CPU's
name and int8 instruction sets: int8 convolutions are fast only with VNNI.

    .venv/bin/python bench/quantize_int8.py FLOAT.onnx INT8.onnx [MORE.onnx ...] [--reps 30] [--threads 2]

(Any exported models can be given; each is timed in turn, in the order given, every round.)

Accuracy of the same two files: ``bench/accuracy_targets.py FLOAT.onnx INT8.onnx``. (This
script's first version, commit 592ad41, quantized the default model itself, without excluding
any convolution and with min/max ranges: BENCHMARKS §7.)
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from faceage.inference.runners import import_onnxruntime


def cpu_description() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    vnni = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name}; int8 dot-product instructions: {', '.join(vnni) if vnni else 'none (no VNNI)'}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="exported .onnx files (e.g. float, then int8)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    ort = import_onnxruntime()
    sessions = {}
    for path in a.models:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = a.threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[path] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    sizes = {p: json.loads(Path(p).with_suffix(".json").read_text())["preprocess"]["size"] for p in a.models}
    print(f"cpu: {cpu_description()}; {a.threads} threads; onnxruntime {ort.__version__}")
    for path in a.models:
        print(f"{path}: {sizes[path]} px, {Path(path).stat().st_size / 2**20:.1f} MB")
    print("| model | batch | ms per face (median) |")
    print("|---|---|---|")
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        xs = {k: rng.integers(0, 256, (batch, n, n, 3), dtype=np.uint8) for k, n in sizes.items()}
        times = {k: [] for k in sessions}
        for k, s in sessions.items():
            for _ in range(3):
                s.run(None, {"image": xs[k]})
        for _ in range(a.reps if batch == 1 else max(3, a.reps // 4)):
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {"image": xs[k]})
                times[k].append(time.perf_counter() - t)
        for k in sessions:
            print(f"| {k} | {batch} | {statistics.median(times[k]) * 1000 / batch:.2f} |")


if __name__ == "__main__":
    main()
