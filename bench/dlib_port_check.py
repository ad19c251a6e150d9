"""Proof of the dlib_resnet29 port: its 128-d descriptors against dlib's own, on real faces.

Both sides get the same 150x150 RGB chips (UTKFace test-split faces resized with Lanczos).
dlib (PyPI ``dlib-bin``, the original C++ implementation) runs in the peer venv made by
``bench/peer_setup.sh``; the port runs in faceage's venv, with the float32 weights converted
from the ``.dat`` file and with the float16 copy that ships in ``faceage/assets``.
Target: cosine similarity >= 0.999 on every face.

    .venv/bin/python bench/dlib_port_check.py --dat PATH/dlib_face_recognition_resnet_model_v1.dat [--n 200]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from faceage.data.readers import read_dataset
from faceage.data.split import load_split
from faceage.models.dlib_resnet import DLIB_INPUT_SIZE, DlibResNet29, load_dlib_resnet29, state_dict_from_dlib
from faceage.training.fit import default_data_path

DLIB_SIDE = """
import sys, numpy as np, dlib
chips = np.load(sys.argv[2])
net = dlib.face_recognition_model_v1(sys.argv[1])
out = np.array([np.array(net.compute_face_descriptor(c)) for c in chips], dtype=np.float64)
np.save(sys.argv[3], out)
print("dlib", dlib.__version__)
"""


def port_descriptors(net: DlibResNet29, chips: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float()
    mean = torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1)
    with torch.inference_mode():
        return net.descriptor((x - mean) / 256.0).double().numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dat", required=True)
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--peer-python", default=".peer-venv/bin/python")
    a = ap.parse_args()
    manifest, _ = read_dataset(a.data)
    split = load_split(a.split)
    samples = [s for s in manifest.samples if split.get(s.key) == "test"][: a.n]
    chips = np.stack([np.asarray(Image.open(s.path).convert("RGB").resize(
        (DLIB_INPUT_SIZE, DLIB_INPUT_SIZE), Image.LANCZOS)) for s in samples])
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/chips.npy", chips)
        done = subprocess.run([a.peer_python, "-c", DLIB_SIDE, a.dat, f"{tmp}/chips.npy", f"{tmp}/dlib.npy"],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"dlib side failed: {done.stderr.strip()[-500:]}")
        reference = np.load(f"{tmp}/dlib.npy")
    print(f"{len(samples)} UTKFace test faces, 150x150; reference: {done.stdout.strip()} (dlib-bin, C++)")
    exact = DlibResNet29().eval()
    exact.load_state_dict(state_dict_from_dlib(a.dat))
    rows = {"float32 from .dat": port_descriptors(exact, chips),
            "float16 shipped asset": port_descriptors(load_dlib_resnet29().eval(), chips)}
    report = {}
    for name, desc in rows.items():
        cos = cosine(desc, reference)
        dist = np.linalg.norm(desc - reference, axis=1)
        report[name] = {"min_cos": float(cos.min()), "mean_cos": float(cos.mean()), "max_l2": float(dist.max())}
        print(f"{name:24s} cosine min {cos.min():.7f} mean {cos.mean():.7f}; "
              f"max L2 distance {dist.max():.2e} (dlib's same-person threshold is 0.6)")
    ok = all(r["min_cos"] >= 0.999 for r in report.values())
    print("PASS: every face >= 0.999" if ok else "FAIL: some face below 0.999")
    Path("bench/results/dlib_port").mkdir(parents=True, exist_ok=True)
    Path("bench/results/dlib_port/check.json").write_text(json.dumps({"n": len(samples), **report}, indent=1) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
