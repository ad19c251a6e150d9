#!/usr/bin/env bash
# node packages for the face-api comparison (bench/peer_face_api.py): @vladmandic/face-api 1.7.15
# (its node-wasm build and bundled model/ weights), the TensorFlow.js 4.22.0 it is built against
# with the WASM backend, and jpeg-js. Exact versions from package-lock.json; no native addons.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
echo "ready: .venv/bin/python bench/peer_face_api.py [--limit N]"
