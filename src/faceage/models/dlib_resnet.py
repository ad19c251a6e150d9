"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

The network (Davis King, 2017; released CC0) was trained on about 3 million faces to map a
150x150 RGB face chip to a 128-d descriptor. It is a ResNet-34-like stack with half the
filters: a 7x7 stem, then 3+4+3+3+1 residual blocks at 32/64/128/256/256 filters, 29
convolutions in all, ~5.6 M parameters. dlib's definition (dlib/examples/dnn_face_recognition_ex.cpp):

    block     = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,stride,stride, x>>>>>
    ares      = relu<add_prev1<block<N, 1, tag1<x>>>>
    ares_down = relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<N, 2, tag1<x>>>>>>>
    net       = fc_no_bias<128, avg_pool_everything< levels ... max_pool<3,3,2,2,
                relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>

Three dlib semantics matter for an exact port:

* ``affine`` is inference-time BatchNorm (per-channel ``gamma * x + beta``); :class:`Affine`
  keeps it as such, trainable, with no batch statistics.
* Strided convolutions and pools have no padding (dlib's default when stride != 1).
* ``add_prev`` adds tensors of different shapes by zero-padding both to the larger one, aligned
  top-left: the shortcut's extra channels (32 -> 64) and, at 150 px, an extra row and column
  (a 3x3 block output plus a 4x4 pooled shortcut gives 4x4).

``DlibResNet29.forward`` returns the 256-d pooled features (what faceage's heads use);
``descriptor`` adds dlib's final 128-d projection.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError
from .weights_file import read_state_dict

# dlib's input_rgb_image: (pixel - mean) / 256 per channel, pixels in 0..255.
DLIB_MEAN = (122.782 / 255, 117.001 / 255, 104.298 / 255)
DLIB_STD = (256 / 255,) * 3
DLIB_INPUT_SIZE = 150
# (filters, blocks, downsample first) per level, input to output.
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class Affine(nn.Module):
    """Per-channel scale and shift: dlib's ``affine`` layer (a BatchNorm folded for inference)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum over the overlap, each input zero-padded to the larger shape."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t):
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))
    return pad(a) + pad(b)


def _conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding=0 if stride != 1 else kernel // 2)


class ResidualBlock(nn.Module):
    """``ares`` / ``ares_down``: two 3x3 convolutions with affine, plus the (pooled) input."""

    def __init__(self, cin: int, cout: int, downsample: bool):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1, self.affine1 = _conv(cin, cout, 3, stride), Affine(cout)
        self.conv2, self.affine2 = _conv(cout, cout, 3, 1), Affine(cout)
        self.shortcut = nn.AvgPool2d(2, 2) if downsample else nn.Identity()

    def forward(self, x):
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(add_zero_padded(y, self.shortcut(x)))


class Stem(nn.Sequential):
    def __init__(self):
        super().__init__(_conv(3, 32, 7, 2), Affine(32), nn.ReLU(), nn.MaxPool2d(3, 2))


class DlibResNet29(nn.Module):
    feature_dim = 256

    def __init__(self):
        super().__init__()
        self.stem = Stem()
        blocks, cin = [], 32
        for filters, count, down in LEVELS:
            for i in range(count):
                blocks.append(ResidualBlock(cin, filters, down and i == 0))
                cin = filters
        self.blocks = nn.Sequential(*blocks)
        self.embedding = nn.Linear(256, 128, bias=False)   # dlib's fc_no_bias<128>

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) dlib-normalized -> (B, 256) pooled features."""
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """dlib's 128-d face descriptor for 150x150 chips (the output of ``compute_face_descriptor``)."""
        return self.embedding(self.forward(x))

    def parts(self) -> list[nn.Module]:
        """Forward-ordered parts for ``freeze: blocks:N``: the stem, then each residual block."""
        return [self.stem, *self.blocks]

    def convs_and_affines(self) -> list[tuple[nn.Conv2d, Affine]]:
        pairs = [(self.stem[0], self.stem[1])]
        for b in self.blocks:
            pairs += [(b.conv1, b.affine1), (b.conv2, b.affine2)]
        return pairs


def state_dict_from_dlib(path: str | Path) -> dict[str, torch.Tensor]:
    """Convert dlib's ``.dat`` file into a :class:`DlibResNet29` state dict (float32, exact)."""
    from .dlib_format import read_dlib_network

    layers = read_dlib_network(path)
    convs = [layer for layer in layers if layer.kind == "con"]
    affines = [layer for layer in layers if layer.kind == "affine"]
    fcs = [layer for layer in layers if layer.kind == "fc"]
    net = DlibResNet29()
    names = {id(m): n for n, m in net.named_modules()}
    pairs = net.convs_and_affines()
    if (len(convs), len(affines), len(fcs)) != (len(pairs), len(pairs), 1):
        raise CheckpointError(f"{path}: {len(convs)} convolutions, {len(affines)} affine and {len(fcs)} fc layers; "
                              f"dlib_resnet29 has {len(pairs)}, {len(pairs)} and 1")
    sd = {}
    for (conv, affine), c, a in zip(pairs, convs, affines):
        cn, an = names[id(conv)], names[id(affine)]
        for key, value in ((f"{cn}.weight", c.arrays["weight"]), (f"{cn}.bias", c.arrays["bias"]),
                           (f"{an}.weight", a.arrays["gamma"]), (f"{an}.bias", a.arrays["beta"])):
            sd[key] = torch.from_numpy(value.copy())
        if c.meta["stride"] != conv.stride[0] or c.meta["padding"] != conv.padding[0]:
            raise CheckpointError(f"{path}: convolution {cn} has stride/padding {c.meta}, expected {conv}")
    sd["embedding.weight"] = torch.from_numpy(fcs[0].arrays["weight"].T.copy())
    target = net.state_dict()
    for key, value in sd.items():
        if value.shape != target[key].shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(target[key].shape)}")
    return sd


# The shipped weights: dlib_face_recognition_resnet_model_v1.dat (CC0, Davis King) converted by
# ``faceage.models.dlib_resnet.save_asset`` and stored as float16 (half the size; descriptors stay
# within cosine 0.9999 of dlib's, bench/dlib_port_check.py). Loaded offline: no download ever.
ASSET = Path(__file__).resolve().parent.parent / "assets" / "dlib_resnet29.pt"


def save_asset(dat_path: str | Path, out: Path = ASSET) -> Path:
    import hashlib

    sd = {k: v.half() for k, v in state_dict_from_dlib(dat_path).items()}
    digest = hashlib.sha256(Path(dat_path).read_bytes()).hexdigest()
    payload = {"state_dict": sd, "source": Path(dat_path).name, "source_sha256": digest, "licence": "CC0-1.0"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(out)
    return out


def face_pretrained_state_dict(source: str | Path | None = None) -> dict[str, torch.Tensor]:
    """float32 weights: the shipped asset by default, or a dlib ``.dat`` / converted ``.pt`` file."""
    path = Path(source).expanduser() if source else ASSET
    if path.suffix == ".dat":
        return state_dict_from_dlib(path)
    return {k: v.float() for k, v in read_state_dict(path, "dlib_resnet29").items()}


def load_dlib_resnet29(source: str | Path | None = None) -> DlibResNet29:
    net = DlibResNet29()
    try:
        net.load_state_dict(face_pretrained_state_dict(source))
    except RuntimeError as exc:
        raise CheckpointError(f"{source or ASSET} does not fit dlib_resnet29: {str(exc).splitlines()[0]}") from None
    return net


def final_grid(size: int) -> int:
    """Side of the last feature map for a ``size`` px input (0: too small for the network)."""
    side = (size - 7) // 2 + 1                       # 7x7 stride-2 stem, no padding
    side = (side - 3) // 2 + 1                       # 3x3 stride-2 max pool
    for _ in LEVELS[1:]:                             # each downsampling block: conv vs pooled shortcut
        if side < 3:
            return 0
        side = max((side - 3) // 2 + 1, (side - 2) // 2 + 1)
    return side


MIN_INPUT_SIZE = next(s for s in range(16, 512) if final_grid(s) >= 1)


def build_dlib_backbone(spec) -> tuple[DlibResNet29, list[nn.Module]]:
    """The zoo's ``dlib_resnet29``: ``pretrained`` is ``face`` (the shipped weights), a ``.dat``
    or converted ``.pt`` path, or None (random init)."""
    if spec.input_size < MIN_INPUT_SIZE:
        raise ConfigError(f"dlib_resnet29 needs model.input_size >= {MIN_INPUT_SIZE} (its strided layers have no "
                          f"padding); got {spec.input_size}")
    if spec.pretrained == "imagenet":
        raise CheckpointError("dlib_resnet29 has no ImageNet weights; use model.pretrained=face "
                              "(face-recognition weights, shipped) or model.pretrained=none")
    net = load_dlib_resnet29(None if spec.pretrained == "face" else spec.pretrained) if spec.pretrained else DlibResNet29()
    if spec.channels == 1:       # grayscale input: the RGB stem filters summed over colour
        conv = net.stem[0]
        gray = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
        with torch.no_grad():
            gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
            gray.bias.copy_(conv.bias)
        net.stem[0] = gray
    # The 128-d projection is not on the feature path (heads read the 256-d pooled features);
    # kept, frozen, so a fine-tuned network can still give descriptors.
    net.embedding.requires_grad_(False)
    return net, net.parts()
