"""Whole-photo latency in-process with the detector's and the model's onnxruntime sessions
spin-waiting or not (BENCHMARKS.md section 7). Photo: the 1-face astronaut at 1024 x 1024 JPEG.

    .venv/bin/python bench/session_spinning.py
"""
from __future__ import annotations

import io
import statistics
import time

import onnxruntime as ort
from PIL import Image
from retinaface.weights import WEIGHTS
from skimage import data

from faceage.inference.predictor import Predictor
from faceage.inference.runners import onnx_options
from faceage.preprocess import open_image


def main() -> None:
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((1024, 1024), Image.BICUBIC).save(buf, "JPEG", quality=90)
    photo = buf.getvalue()
    variants = {"both spinning": (True, True), "detector not spinning": (False, True), "neither spinning": (False, False)}
    results: dict[str, list[float]] = {}
    for _ in range(2):                                   # two rounds, variants interleaved
        for name, (detector_spins, model_spins) in variants.items():
            p = Predictor()
            p.detector.session = ort.InferenceSession(WEIGHTS, onnx_options(None, detector_spins),
                                                      providers=["CPUExecutionProvider"])
            p.runner.session = ort.InferenceSession(str(p.runner.path), onnx_options(None, model_spins),
                                                    providers=["CPUExecutionProvider"])
            for _ in range(3):
                p.analyze(open_image(photo).convert("RGB"))
            times = []
            for _ in range(20):
                t = time.perf_counter()
                p.analyze(open_image(photo).convert("RGB"))
                times.append(time.perf_counter() - t)
            results.setdefault(name, []).append(statistics.median(times) * 1000)
    for name, ms in results.items():
        print(f"{name}: " + ", ".join(f"{m:.1f}" for m in ms) + " ms per photo (median of 20, two rounds)")


if __name__ == "__main__":
    main()
