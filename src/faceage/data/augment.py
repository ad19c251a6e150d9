"""Augmentation on whole batches of tensors (no per-image PIL work in the training loop).

Geometric changes (flip, rotation, zoom, shift) are folded into one affine matrix per image
and applied with a single ``grid_sample``; photometric ones (brightness, contrast) are
per-image scalars; blur, down-up scaling and JPEG re-compression degrade the chosen images one
by one. Every strength of 0 disables that transform.
"""
from __future__ import annotations

import math
from io import BytesIO

import numpy as np

import torch
import torch.nn.functional as F
from PIL import Image

from ..config import AugmentConfig


class BatchAugment(torch.nn.Module):
    def __init__(self, cfg: AugmentConfig):
        super().__init__()
        self.cfg = cfg

    @property
    def active(self) -> bool:
        c = self.cfg
        return any(v > 0 for v in (c.flip, c.rotation, c.zoom, c.shift, c.brightness, c.contrast, c.blur, c.downscale,
                                        c.jpeg))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x``: (B, C, H, W) floats in [0, 1]. Returns a tensor of the same shape."""
        c = self.cfg
        if not self.active:
            return x
        b = x.shape[0]
        dev = x.device

        def uniform(scale: float) -> torch.Tensor:        # U(-scale, scale), shape (B,)
            return (torch.rand(b, generator=generator, device="cpu") * 2 - 1).to(dev) * scale

        if c.rotation > 0 or c.zoom > 0 or c.shift > 0 or c.flip > 0:
            angle = uniform(math.radians(c.rotation))
            scale = 1.0 + uniform(c.zoom)                 # >1 zooms in
            flip = torch.where(torch.rand(b, generator=generator).to(dev) < c.flip, -1.0, 1.0)
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.zeros(b, 2, 3, device=dev)
            # Output->input sampling matrix; the flip negates the x input coordinate.
            theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin * flip
            theta[:, 1, 0], theta[:, 1, 1] = sin, cos
            theta[:, 0, 2], theta[:, 1, 2] = uniform(2 * c.shift), uniform(2 * c.shift)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if c.brightness > 0:
            x = x * (1.0 + uniform(c.brightness)).view(b, 1, 1, 1)
        if c.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (1.0 + uniform(c.contrast)).view(b, 1, 1, 1) + mean
        if c.downscale > 0:
            x = _down_up(x, torch.rand(b, generator=generator) < c.downscale,
                         0.35 + 0.65 * torch.rand(b, generator=generator))
        if c.blur > 0:
            sigma = 0.3 + 1.2 * torch.rand(b, generator=generator) * x.shape[-1] / 128
            x = _gaussian_blur(x, torch.rand(b, generator=generator) < c.blur, sigma)
        if c.jpeg > 0:
            quality = 20 + (71 * torch.rand(b, generator=generator)).long()     # 20-90
            x = _jpeg(x.clamp(0.0, 1.0), torch.rand(b, generator=generator) < c.jpeg, quality)
        return x.clamp_(0.0, 1.0)


def _down_up(x: torch.Tensor, chosen: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Shrink the chosen images by ``factor`` (area filter) and scale back (bilinear): lost detail."""
    out = x.clone()
    side = x.shape[-1]
    for i in torch.nonzero(chosen).flatten().tolist():
        small = max(8, round(side * float(factor[i])))
        low = F.interpolate(x[i:i + 1], size=(small, small), mode="area")
        out[i:i + 1] = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def _gaussian_blur(x: torch.Tensor, chosen: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma, on the chosen images only."""
    out = x.clone()
    radius = 4
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    for i in torch.nonzero(chosen).flatten().tolist():
        k = torch.exp(-(t ** 2) / (2 * float(sigma[i]) ** 2))
        k = (k / k.sum()).repeat(x.shape[1], 1, 1)                      # (C, 1, K)
        img = F.pad(x[i:i + 1], (radius, radius, radius, radius), mode="reflect")
        img = F.conv2d(img, k.unsqueeze(2), groups=x.shape[1])           # along x
        out[i:i + 1] = F.conv2d(img, k.unsqueeze(3), groups=x.shape[1])  # along y
    return out


def _jpeg(x: torch.Tensor, chosen: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Re-encode the chosen images as JPEG at their ``quality``: the blocking and ringing of
    web photos and of UTKFace's own chips (Pillow's libjpeg, on the CPU)."""
    out = x.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        img = (x[i] * 255).round().to(torch.uint8).cpu().permute(1, 2, 0).numpy()
        buf = BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, "JPEG", quality=int(quality[i]))
        coded = np.asarray(Image.open(buf)).reshape(img.shape)
        out[i] = torch.from_numpy(coded.copy()).permute(2, 0, 1).to(x.device, x.dtype) / 255
    return out
