"""InferenceGraph: the whole inference path as one torch module (and so one ONNX graph).

Input ``image``: uint8 ``(B, H, W, C)`` pixels at the model's input size, exactly what the
decode cache and the aligner produce. With the spec's ``tta: flip`` the network also sees the
mirror image and the two are averaged (twice the work, mirror-consistent by construction). Output: the decoded prediction record (see
``models/heads.py``), one tensor per field, in sorted key order.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..models.network import FaceNet


class InferenceGraph(nn.Module):
    def __init__(self, net: FaceNet):
        super().__init__()
        self.net = net
        pre = net.spec.preprocess()
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def head_outputs(self, image: torch.Tensor, flip: bool | None = None) -> dict[str, torch.Tensor]:
        """The heads' raw outputs (logits) for uint8 ``image``; ``flip`` (default: the spec's
        ``tta``) averages them with the mirror image's."""
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std      # (B, C, H, W), normalized
        if (self.net.spec.tta == "flip") if flip is None else flip:
            # A face and its mirror image are the same person: average the heads' raw outputs
            # (logits) of both, so the answer cannot depend on which way the face looks.
            b = x.shape[0]
            both = self.net(torch.cat([x, x.flip(3)]))                        # (2B, ...)
            return {k: (v[:b] + v[b:]) / 2 for k, v in both.items()}
        return self.net(x)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        record = self.net.decode_graph(self.head_outputs(image))
        return {k: record[k].float() for k in sorted(record)}


def cached_head_outputs(net: FaceNet, cache, digests: list[str], batch_size: int = 64,
                        progress=None) -> tuple[dict, dict]:
    """The heads' raw outputs (float32 NumPy, one array per task) for decode-cached crops, and for
    their mirror images: what distillation's teachers and interval calibration both read."""
    graph = InferenceGraph(net).eval()
    plain: dict[str, list] = {}
    mirrored: dict[str, list] = {}
    with torch.inference_mode():
        for i in range(0, len(digests), batch_size):
            images = torch.from_numpy(cache.gather(digests[i:i + batch_size]))
            for into, x in ((plain, images), (mirrored, images.flip(2))):      # (B, H, W, C): flip W
                for task, out in graph.head_outputs(x, flip=False).items():
                    into.setdefault(task, []).append(out.float().numpy())
            if progress:
                progress(min(i + batch_size, len(digests)), len(digests))
    return ({k: np.concatenate(v) for k, v in plain.items()}, {k: np.concatenate(v) for k, v in mirrored.items()})
