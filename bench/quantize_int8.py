"""Does int8 make the default model faster on this CPU? Static QDQ quantization (onnxruntime,
per-channel weights, calibrated on 256 UTKFace training chips), then model-only ms per face at
batch 1 and 32, float and int8 alternating in one run; and the int8 model's test accuracy.

    .venv/bin/python bench/quantize_int8.py [--out /tmp/int8.onnx] [--reps 30]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from faceage.data.readers import UTK_NAME
from faceage.inference.predictor import DEFAULT_MODEL
from faceage.preprocess import PreprocessSpec, load_image
from faceage.training.fit import default_data_path

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "faceage-int8.onnx"))
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    spec = PreprocessSpec.from_dict(json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())["preprocess"])
    data = Path(default_data_path())
    rows = list(csv.DictReader(open(HERE / "utkface_split.csv")))
    calib = np.stack([load_image(data / r["key"], spec) for r in rows if r["split"] == "train"][:256])

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(calib):
                return None
            self.i += 32
            return {"image": calib[self.i - 32:self.i]}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(DEFAULT_MODEL), str(pre))
        quantize_static(str(pre), a.out, Batches(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "Gemm"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    shutil.copy(DEFAULT_MODEL.with_suffix(".json"), Path(a.out).with_suffix(".json"))
    models = {"float32": str(DEFAULT_MODEL), "int8 (QDQ)": a.out}
    sessions = {k: ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for k, p in models.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; onnxruntime {ort.__version__}; "
          f"float {DEFAULT_MODEL.stat().st_size / 2**20:.1f} MB, int8 {Path(a.out).stat().st_size / 2**20:.1f} MB")
    print("| model | batch | ms per face (median) |")
    print("|---|---|---|")
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        x = rng.integers(0, 256, (batch, spec.size, spec.size, 3), dtype=np.uint8)
        times = {k: [] for k in sessions}
        for s in sessions.values():
            for _ in range(3):
                s.run(None, {"image": x})
        for _ in range(a.reps):
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {"image": x})
                times[k].append(time.perf_counter() - t)
        for k in sessions:
            print(f"| {k} | {batch} | {statistics.median(times[k]) * 1000 / batch:.2f} |")

    test = [r["key"] for r in rows if r["split"] == "test"]
    ages = np.array([int(UTK_NAME.match(k).group(1)) for k in test], float)
    female = np.array([UTK_NAME.match(k).group(2) == "1" for k in test])
    images = np.stack([load_image(data / k, spec) for k in test])
    print("| model | test MAE | CS@5 | gender acc. |")
    print("|---|---|---|---|")
    for k, s in sessions.items():
        out = [s.run(["age", "gender_prob"], {"image": images[i:i + 64]}) for i in range(0, len(images), 64)]
        age = np.concatenate([o[0] for o in out])
        gp = np.concatenate([o[1] for o in out])
        err = np.abs(age - ages)
        print(f"| {k} | {err.mean():.2f} | {100 * (err <= 5).mean():.1f}% | {100 * ((gp >= 0.5) == female).mean():.1f}% |")


if __name__ == "__main__":
    main()
