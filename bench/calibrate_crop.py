"""Calibrate the canonical face crop to UTKFace's aligned-and-cropped framing.

Runs the face detector on UTKFace chips (already aligned, 200x200) and prints the mean
position of each of the 5 landmarks as a fraction of the chip side. Those numbers are
``CANONICAL_LANDMARKS`` in src/faceage/inference/align.py: aligning a detected face to them
reproduces the framing the models were trained on.

    .venv/bin/python bench/calibrate_crop.py [DATA] [N]
"""
import sys
from pathlib import Path

import numpy as np

from faceage.inference.detector import RetinaFaceDetector
from faceage.preprocess import open_image

data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/utkface/UTKFace")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 400
files = sorted(data.glob("*.chip.jpg"))[::40][:n]
det = RetinaFaceDetector(score_threshold=0.5)
pts, missed = [], 0
for f in files:
    img = open_image(f).convert("RGB")
    faces = det.detect(img)
    if not faces:
        missed += 1
        continue
    best = max(faces, key=lambda d: d.score)
    pts.append(best.landmarks / np.array(img.size))
pts = np.array(pts)
print(f"{len(pts)} chips, {missed} without a detection")
print("CANONICAL_LANDMARKS =", np.round(pts.mean(0), 4).tolist())
print("spread (std)        =", np.round(pts.std(0), 4).tolist())
