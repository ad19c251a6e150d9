"""The reference CNNs of ``shared/docs/reference-models.md``, as Keras-style layer stacks.

Each is described as data (conv blocks + head defaults) and built by one function, so the
regularization switches (batch norm placement, activation, dropout, L2) apply uniformly.
Convolutions use Keras padding names: "valid" (none) or "same".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .spec import ModelSpec


@dataclass(frozen=True)
class ConvBlock:
    filters: tuple[int, ...]      # one Conv 3x3 per entry
    padding: str = "valid"
    bias: bool = True
    pool: bool = True             # MaxPool 2x2 after the block's convolutions


@dataclass(frozen=True)
class ReferenceCNN:
    blocks: tuple[ConvBlock, ...]
    flatten: bool = True          # Flatten (True) or global average pooling (False)


ARCHITECTURES: dict[str, ReferenceCNN] = {
    "keras-baseline-28": ReferenceCNN((ConvBlock((64, 32), pool=False),)),
    "keras-baseline-120": ReferenceCNN((ConvBlock((64, 32), bias=False),)),
    "keras-regularized-120": ReferenceCNN((ConvBlock((64, 32), bias=False),)),
    "utk-custom-128": ReferenceCNN(tuple(ConvBlock((f,)) for f in (32, 64, 128, 256))),
    "cifar10-tutorial": ReferenceCNN(tuple(ConvBlock((f, f), padding="same") for f in (32, 64, 128))),
}


def build_reference_backbone(spec: ModelSpec) -> tuple[nn.Module, list[nn.Module]]:
    """Returns the feature extractor ``(B, C, H, W) -> (B, F)`` and its blocks (for freezing)."""
    arch = ARCHITECTURES[spec.name]
    blocks: list[nn.Module] = []
    in_ch = spec.channels
    for block in arch.blocks:
        layers: list[nn.Module] = []
        for f in block.filters:
            layers.append(nn.Conv2d(in_ch, f, 3, padding=0 if block.padding == "valid" else 1, bias=block.bias))
            act = [nn.ReLU()] if spec.activation == "relu" else []
            bn = [nn.BatchNorm2d(f)] if spec.batch_norm != "none" else []
            layers.extend(bn + act if spec.batch_norm == "before" else act + bn)
            in_ch = f
        if block.pool:
            layers.append(nn.MaxPool2d(2, 2))
        if spec.conv_dropout > 0:
            layers.append(nn.Dropout(spec.conv_dropout))
        blocks.append(nn.Sequential(*layers))
    tail = nn.Flatten() if arch.flatten else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return nn.Sequential(*blocks, tail), blocks
