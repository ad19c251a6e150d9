"""`POST /v1/analyze` latency for phone-sized photos: the server reading a large JPEG coarsely
first (as `faceage serve` does since the sixteenth session) against decoding every pixel of it
(as it did before), in the same run.

Both apps are the real FastAPI app (`faceage.serve.app.create_app`, default settings), each over
its own Predictor (`coarse_decode=True` / `False`), called in-process through Starlette's
TestClient: no network, the same multipart parsing, header checks, pixel budget and JSON as a
served request. The photos are those of `bench/photo_speed.py` (a UTKFace chip pasted into a real
photo at a sixth or half of its height, JPEG quality 90). The two apps take turns in every round,
with `Predictor.analyze` on the decoded photo as the baseline of the same rounds (no decode, no
HTTP). The faces and ages the two apps answer are compared.

    PYTHONPATH=src .venv/bin/python bench/serve_large_photos.py [--reps 10]
"""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from faceage.inference.predictor import Predictor
from faceage.serve.app import create_app
from faceage.serve.settings import ServeSettings
from faceage.training.fit import default_data_path
from photo_speed import interleaved, jpeg, photo

# (megapixels, face side as a fraction of the photo's shorter side): a 12 MP phone photo is the case
CASES = ((1, 1 / 6), (4, 1 / 6), (12, 1 / 6), (12, 1 / 2), (24, 1 / 6), (48, 1 / 6))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    chip = Image.open(sorted(Path(default_data_path()).glob("30_1_0_*.chip.jpg"))[0]).convert("RGB")
    coarse, every_pixel = Predictor(), Predictor(coarse_decode=False)
    rng = np.random.default_rng(0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; model {coarse.runner.spec.name}; "
          f"default serve settings (max {ServeSettings().max_pixels:,} pixels per image)")
    print("| photo | face side | JPEG | baseline: analyze the decoded photo (ms) | request, coarse first (ms) "
          "| request, every pixel (ms) | faces | largest age difference |")
    print("|---|---|---|---|---|---|---|---|")
    with TestClient(create_app(ServeSettings(), coarse)) as fast, TestClient(create_app(ServeSettings(), every_pixel)) as full:
        for mp, fraction in CASES:
            img = photo(mp, 1, chip, rng, fraction)
            data = jpeg(img)

            def post(client):
                r = client.post("/v1/analyze", files=[("files", ("photo.jpg", data, "image/jpeg"))])
                assert r.status_code == 200, r.text
                return r.json()["images"][0]
            reps = a.reps if mp < 24 else max(3, a.reps // 2)
            (base_ms, _), (coarse_ms, a_coarse), (full_ms, a_full) = interleaved(
                [lambda: coarse.analyze(img), lambda: post(fast), lambda: post(full)], reps)
            assert (a_coarse["width"], a_coarse["height"]) == (a_full["width"], a_full["height"]) == img.size
            assert len(a_coarse["faces"]) == len(a_full["faces"])
            diff = max((abs(x["age"] - y["age"]) for x, y in zip(a_coarse["faces"], a_full["faces"])), default=0.0)
            print(f"| {img.width}x{img.height} ({mp} MP) | {max(48, int(img.height * fraction))} px | "
                  f"{len(data) / 1e6:.2f} MB | {base_ms:.1f} | {coarse_ms:.1f} | {full_ms:.1f} | "
                  f"{len(a_coarse['faces'])} | {diff:.2f} years |")


if __name__ == "__main__":
    main()
