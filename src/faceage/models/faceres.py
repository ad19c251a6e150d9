"""HSE "FaceRes": Andrey Savchenko's MobileNet-v1 face-identification network, in PyTorch.

Keras MobileNet v1 (alpha 1, 224 px) trained to tell people apart on VGGFace2 (upstream
github.com/HSE-asavchenko/HSE_FaceRec_tf, Apache-2.0). The weights faceage converts are the
TF.js graph model that npm ``@vladmandic/human@3.3.6`` ships as ``models/faceres.json`` +
``faceres.bin`` (float16, BatchNorm folded). Only the trunk is kept: HSE's age/gender/descriptor
heads are dropped and ``forward`` returns the 1024-d global-average-pooled features.

What an exact port needs (read from the TF.js graph and checked by :func:`state_dict_from_tfjs`):

* TF ``SAME`` padding: stride-1 3x3 layers pad 1 all round; stride-2 layers pad asymmetrically
  (at even sizes 0 before and 1 after), which PyTorch's symmetric ``padding`` cannot express.
* ReLU6 after every convolution; the depthwise BatchNorm stays a per-channel multiply-add
  (kept as :class:`~faceage.models.dlib_resnet.Affine`, trainable); the stem's and pointwise
  BatchNorms are folded into kernel and bias.
* HSE feeds BGR pixels 0..255 minus the Caffe means. The converter flips the stem's input
  channels so the stored network takes RGB like every other faceage model; the mean and scale
  live in the spec (:data:`FACERES_MEAN`, :data:`FACERES_STD`) and so travel in checkpoints.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError
from .weights_file import read_state_dict
from .dlib_resnet import Affine

FACERES_INPUT_SIZE = 224
# Caffe's BGR means (103.939, 116.779, 123.68) in RGB order, on faceage's 0..1 pixels; std 1/255
# gives HSE's 0..255 scale: (p/255 - m/255) / (1/255) = p - m.
FACERES_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
FACERES_STD = (1 / 255,) * 3
# (output width, depthwise stride) of MobileNet v1's 13 depthwise-separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1))


class SamePad2(nn.Module):
    """TF ``SAME`` padding in front of a 3x3 stride-2 layer: total (out-1)*2+3-in, the extra
    pixel after. Computed from the input, so any input size (160..224 and others) is exact."""

    def forward(self, x):
        def split(n):
            total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
            return total // 2, total - total // 2
        top, bottom = split(x.shape[-2])
        left, right = split(x.shape[-1])
        return F.pad(x, (left, right, top, bottom))


def _conv3x3(cin: int, cout: int, stride: int, groups: int = 1, bias: bool = True) -> nn.Module:
    if stride == 1:
        return nn.Conv2d(cin, cout, 3, 1, padding=1, groups=groups, bias=bias)
    return nn.Sequential(SamePad2(), nn.Conv2d(cin, cout, 3, 2, groups=groups, bias=bias))


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dw = _conv3x3(cin, cin, stride, groups=cin, bias=False)
        self.dw_affine = Affine(cin)                  # TF.js kept this BatchNorm as mul + sub
        self.pw = nn.Conv2d(cin, cout, 1)             # BatchNorm folded into kernel and bias

    def forward(self, x):
        return F.relu6(self.pw(F.relu6(self.dw_affine(self.dw(x)))))


class FaceResMobileNet(nn.Module):
    feature_dim = 1024

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(3, 32, 2), nn.ReLU6())
        blocks, cin = [], 32
        for cout, stride in BLOCKS:
            blocks.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB, FaceRes-normalized -> (B, 1024): HSE's ``global_pooling/Mean``."""
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def parts(self) -> list[nn.Module]:
        """Forward-ordered parts for ``freeze: blocks:N``: the stem, then the 13 blocks."""
        return [self.stem, *self.blocks]

    def stem_conv(self) -> nn.Conv2d:
        return self.stem[0][1]


# --- converting the TF.js graph model ------------------------------------------------------

def read_tfjs(json_path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A TF.js graph model's topology and weights (as float32), from ``model.json`` + its shards."""
    path = Path(json_path)
    if not path.is_file():
        raise CheckpointError(f"TF.js model not found: {path}")
    manifest = json.loads(path.read_text())
    weights = {}
    for group in manifest["weightsManifest"]:
        buf = b"".join((path.parent / p).read_bytes() for p in group["paths"])
        at = 0
        for w in group["weights"]:
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            stored = w.get("quantization", {}).get("dtype", w["dtype"])      # float16 here; int32 = op constants
            dtype = np.dtype({"float16": "<f2", "float32": "<f4", "int32": "<i4"}[stored])
            weights[w["name"]] = np.frombuffer(buf, dtype, n, at).astype(np.float32).reshape(w["shape"])
            at += n * dtype.itemsize
        if at != len(buf):
            raise CheckpointError(f"{path}: the manifest describes {at} bytes, the shards hold {len(buf)}")
    return manifest["modelTopology"], weights


def state_dict_from_tfjs(json_path: str | Path) -> dict[str, torch.Tensor]:
    """FaceRes's ``faceres.json`` (+ ``faceres.bin``) -> a :class:`FaceResMobileNet` state dict."""
    topology, w = read_tfjs(json_path)
    strides = [int(n["attr"]["strides"]["list"]["i"][1]) for n in topology["node"]
               if n["op"] in ("Conv2D", "DepthwiseConv2dNative") and "/depthwise" in n["name"]]
    clips = {float(v) for k, v in w.items() if k.endswith(("_relu/Cast", "_relu/Const_1"))}
    if strides != [s for _, s in BLOCKS] or clips != {0.0, 6.0}:
        raise CheckpointError(f"{json_path}: not FaceRes's MobileNet v1 (depthwise strides {strides}, clips {clips})")

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))
    # TF kernels are (kh, kw, in, out), depthwise (kh, kw, C, 1); PyTorch's are (out, in, kh, kw).
    stem = w["conv1/convolution/merged_input"].transpose(3, 2, 0, 1)[:, ::-1]   # BGR -> RGB input
    sd = {"stem.0.1.weight": t(stem), "stem.0.1.bias": t(w["conv1_bn/batchnorm_1/sub"])}
    for i, (_, stride) in enumerate(BLOCKS):
        p, n = f"blocks.{i}.", i + 1
        dw = "dw.1." if stride == 2 else "dw."
        sd[p + dw + "weight"] = t(w[f"conv_dw_{n}/depthwise_kernel"].transpose(2, 3, 0, 1))
        sd[p + "dw_affine.weight"] = t(w[f"conv_dw_{n}_bn/batchnorm_1/mul"])
        sd[p + "dw_affine.bias"] = t(w[f"conv_dw_{n}_bn/batchnorm_1/sub"])
        sd[p + "pw.weight"] = t(w[f"conv_pw_{n}/convolution/merged_input"].transpose(3, 2, 0, 1))
        sd[p + "pw.bias"] = t(w[f"conv_pw_{n}_bn/batchnorm_1/sub"])
    target = FaceResMobileNet().state_dict()
    bad = [k for k in target if k not in sd or sd[k].shape != target[k].shape]
    if bad:
        raise CheckpointError(f"{json_path}: tensors missing or misshapen for faceres_mobilenet, e.g. {bad[:3]}")
    return sd


# The shipped weights: npm @vladmandic/human@3.3.6 models/faceres.{json,bin} converted by
# ``faceage.models.faceres.save_asset``; float16 as upstream (no extra rounding). Loaded offline.
ASSET = Path(__file__).resolve().parent.parent / "assets" / "faceres_mobilenet.pt"


def save_asset(json_path: str | Path, out: Path = ASSET) -> Path:
    import hashlib

    json_path = Path(json_path)
    sd = {k: v.half() for k, v in state_dict_from_tfjs(json_path).items()}
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (json_path, json_path.with_suffix(".bin"))}
    payload = {"state_dict": sd, "source": "npm @vladmandic/human@3.3.6 models/faceres.json + faceres.bin",
               "source_sha256": digests, "licence": "Apache-2.0 (HSE_FaceRec_tf); npm packaging MIT",
               "input": "RGB (stem channels flipped from HSE's BGR); pixels 0..255 minus the Caffe means"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(out)
    return out


def load_faceres(source: str | Path | None = None) -> FaceResMobileNet:
    """The shipped asset by default, or a TF.js ``faceres.json`` / converted ``.pt`` file."""
    path = Path(source).expanduser() if source else ASSET
    sd = state_dict_from_tfjs(path) if path.suffix == ".json" else read_state_dict(path, "faceres_mobilenet")
    net = FaceResMobileNet()
    try:
        net.load_state_dict({k: v.float() for k, v in sd.items()})
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit faceres_mobilenet: {str(exc).splitlines()[0]}") from None
    return net


def build_faceres_backbone(spec) -> tuple[FaceResMobileNet, list[nn.Module]]:
    """The zoo's ``faceres_mobilenet``: ``pretrained`` is ``face`` (the shipped weights), a TF.js
    ``.json`` or converted ``.pt`` path, or None (random init). Fully convolutional: any size."""
    if spec.pretrained == "imagenet":
        raise CheckpointError("faceres_mobilenet has no ImageNet weights here; use model.pretrained=face "
                              "(VGGFace2 face-identification weights, shipped) or model.pretrained=none")
    if spec.pretrained:
        net = load_faceres(None if spec.pretrained == "face" else spec.pretrained)
    else:
        net = FaceResMobileNet()
    if spec.channels == 1:       # grayscale input: the RGB stem filters summed over colour
        conv = net.stem_conv()
        gray = nn.Conv2d(1, conv.out_channels, 3, 2)
        with torch.no_grad():
            gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
            gray.bias.copy_(conv.bias)
        net.stem[0][1] = gray
    return net, net.parts()
