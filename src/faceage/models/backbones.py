"""Library backbones (timm, torchvision) as faceage feature extractors, and pretrained loading.

``pretrained: imagenet`` asks the library's own hub (timm / torchvision; needs internet the
first time, then their local caches). ``pretrained: PATH`` loads a local state dict with
``weights_only=True``; key styles from other packages are mapped (efficientnet_pytorch's
``_conv_stem`` / ``_blocks.N`` names for EfficientNet-Lite0), and a 3-channel stem is summed
to 1 channel for grayscale inputs.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import CheckpointError
from .spec import ModelSpec
from .weights_file import read_state_dict

# zoo name -> (library, library's model name)
LIBRARY_BACKBONES = {
    "resnet18": ("timm", "resnet18"),
    "resnet34": ("timm", "resnet34"),
    "resnet50": ("timm", "resnet50"),
    "mobilenetv2": ("torchvision", "mobilenet_v2"),
    "mobilenetv3_large": ("timm", "mobilenetv3_large_100"),
    "mobilenetv3_small": ("timm", "mobilenetv3_small_100"),
    "efficientnet_b0": ("timm", "efficientnet_b0"),
    "efficientnet_lite0": ("timm", "efficientnet_lite0"),
    "vgg16": ("torchvision", "vgg16"),
    "convnext_atto": ("timm", "convnext_atto"),
    "convnext_tiny": ("timm", "convnext_tiny"),
}

_CONTAINERS = ("blocks", "stages", "layers")


def _timm_blocks(model: nn.Module) -> list[nn.Module]:
    """Top-level parts in forward order, with the main stage container expanded."""
    out = []
    for name, child in model.named_children():
        if name in _CONTAINERS and isinstance(child, nn.Sequential):
            out.extend(child.children())
        elif any(p.numel() for p in child.parameters()):
            out.append(child)
    return out


def _vgg_blocks(features: nn.Sequential) -> list[nn.Sequential]:
    """Split torchvision VGG ``features`` into its five conv blocks (each ends at a MaxPool)."""
    blocks, cur = [], []
    for layer in features:
        cur.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*cur))
            cur = []
    return blocks


def _adapt_stem(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    if conv.in_channels == channels:
        return conv
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _build_torchvision(lib_name: str, spec: ModelSpec, imagenet: bool) -> tuple[nn.Module, nn.Module, list, int]:
    import torchvision.models as tvm

    # IMAGENET1K_V1: the classic weights, the same file ../shared/weights carries for MobileNetV2.
    weights = "IMAGENET1K_V1" if imagenet else None
    model = getattr(tvm, lib_name)(weights=weights)
    if lib_name == "mobilenet_v2":
        blocks = list(model.features)
        dim = model.last_channel
    else:  # vgg16
        blocks = _vgg_blocks(model.features)
        dim = 512
    return model, nn.Sequential(*blocks), blocks, dim


class _TorchvisionBackbone(nn.Module):
    """Feature extractor ``features -> global average pool -> flatten`` around a torchvision net."""

    def __init__(self, body: nn.Sequential):
        super().__init__()
        self.body = body
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.pool(self.body(x))


def build_library_backbone(spec: ModelSpec, zoo_name: str) -> tuple[nn.Module, list[nn.Module], int]:
    try:
        return _build_library_backbone(spec, zoo_name)
    except OSError as exc:  # hub download failed: offline, proxy, ...
        if spec.pretrained != "imagenet":
            raise
        raise CheckpointError(f"could not fetch ImageNet weights for {spec.name} from the library hub ({exc}); "
                              "offline, give a local file with model.pretrained=PATH or use model.pretrained=none") from None


def _build_library_backbone(spec: ModelSpec, zoo_name: str) -> tuple[nn.Module, list[nn.Module], int]:
    lib, lib_name = LIBRARY_BACKBONES[zoo_name]
    imagenet = spec.pretrained == "imagenet"
    if lib == "timm":
        import timm
        model = timm.create_model(lib_name, pretrained=imagenet, num_classes=0, in_chans=spec.channels)
        if spec.pretrained and not imagenet:
            load_backbone_weights(model, spec.pretrained, spec.channels)
        return model, _timm_blocks(model), model.num_features
    full, body, blocks, dim = _build_torchvision(lib_name, spec, imagenet)
    if spec.pretrained and not imagenet:
        load_backbone_weights(full, spec.pretrained, 3)
    if spec.channels != 3:
        first = body[0][0] if isinstance(body[0], nn.Sequential) else body[0]
        parent = body[0] if isinstance(body[0], nn.Sequential) else body
        parent[0] = _adapt_stem(first, spec.channels)
    return _TorchvisionBackbone(body), blocks, dim


# --- local state dicts -------------------------------------------------------------------

def _map_efficientnet_pytorch(sd: dict, target: nn.Module) -> dict:
    """efficientnet_pytorch (``_blocks.N._depthwise_conv``) -> timm (``blocks.S.I.conv_dw``)."""
    flat = [(s, i) for s, stage in enumerate(target.blocks) for i in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expand = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    no_expand = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                 "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    has_expand = {int(k.split(".")[1]) for k in sd if "._expand_conv." in k}
    out = {}
    for key, value in sd.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            n, part, rest = int(m.group(1)), m.group(2), m.group(3)
            names = expand if n in has_expand else no_expand
            s, i = flat[n]
            out[f"blocks.{s}.{i}.{names[part]}.{rest}"] = value
        else:
            head, rest = key.split(".", 1)
            out[f"{top.get(head, head)}.{rest}"] = value
    return out


def load_backbone_weights(model: nn.Module, path: str, channels: int) -> None:
    """Load a local state dict into a library model; the classifier is ignored (faceage adds heads)."""
    p = Path(path).expanduser()
    sd = read_state_dict(p, "pretrained")
    if any(k.startswith("_conv_stem") for k in sd):
        sd = _map_efficientnet_pytorch(sd, model)
    target = model.state_dict()
    loadable, mismatched = {}, []
    for k, v in sd.items():
        if k not in target:
            continue
        t = target[k]
        if v.shape != t.shape and v.dim() == 4 and v.shape[1] == 3 and t.shape[1] == channels == 1:
            v = v.sum(dim=1, keepdim=True)           # RGB stem -> grayscale stem
        if v.shape != t.shape:
            mismatched.append(f"{k} {tuple(v.shape)} vs {tuple(t.shape)}")
            continue
        loadable[k] = v
    missing = [k for k in target if k not in loadable and not k.startswith(("classifier", "fc.", "head.fc"))]
    if mismatched or missing:
        detail = (mismatched or missing)[:3]
        raise CheckpointError(f"{p} does not fit this backbone: {len(missing)} missing and {len(mismatched)} "
                              f"mismatched tensors, e.g. {detail}")
    model.load_state_dict(loadable, strict=False)
