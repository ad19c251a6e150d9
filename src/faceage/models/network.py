"""FaceNet: a backbone plus one head per task, with weighted losses and a merged decoding."""
from __future__ import annotations

import torch
import torch.nn as nn

from .heads import build_head
from .spec import ModelSpec


class FaceNet(nn.Module):
    def __init__(self, spec: ModelSpec, backbone: nn.Module, blocks: list[nn.Module], feature_dim: int):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.blocks = blocks                    # ordered backbone parts, for freeze: blocks:N
        self.heads = nn.ModuleDict({
            task: build_head(task, feature_dim, age_bins=spec.age_bins, num_classes=spec.num_classes,
                             dist_sigma=spec.dist_sigma, hidden=spec.head_hidden, dropout=spec.dense_dropout,
                             dropout_after=spec.dropout_after, batch_norm=spec.head_batch_norm,
                             activation=spec.activation, bias=spec.head_bias, l2=spec.l2,
                             label_smoothing=spec.label_smoothing)
            for task in spec.tasks
        })
        self.register_buffer("bin_edges", torch.tensor(spec.age_bins, dtype=torch.float32), persistent=False)
        self.apply_calibration()

    def apply_calibration(self) -> None:
        """Give the heads the spec's inference-only calibration (interval temperature, age prior
        correction, gender temperatures by age; see ``inference/calibration.py``)."""
        head = self.heads["age_dist"] if "age_dist" in self.heads else None
        if head is not None:
            head.interval_temperature = float(self.spec.interval_temperature)
            head.set_age_prior(float(self.spec.age_prior_strength), self.spec.age_prior)
        if "gender" in self.heads:
            self.heads["gender"].set_temperatures(self.spec.gender_temperature)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)             # (B, F)
        return {task: head(features) for task, head in self.heads.items()}

    def losses(self, outputs: dict, batch: dict, teacher_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of task losses plus Keras-style L2 penalties; also each part alone.
        ``teacher_weight``: the teachers' share of the targets when the batch carries soft targets."""
        parts = {task: self.heads[task].loss(out, batch, teacher_weight) for task, out in outputs.items()}
        total = sum(self.spec.tasks[t] * v for t, v in parts.items())
        l2 = sum(h.l2_penalty() for h in self.heads.values())
        return total + l2, parts

    @torch.no_grad()
    def decode(self, outputs: dict) -> dict[str, torch.Tensor]:
        return self.decode_graph(outputs)

    def decode_graph(self, outputs: dict) -> dict[str, torch.Tensor]:
        """Decoding as plain tensor ops (no autograd context), so it can live inside an ONNX graph."""
        record: dict[str, torch.Tensor] = {}
        # age_bins first so that a dedicated regression/distribution age estimate wins; gender
        # last, since its confidence may depend on the predicted age.
        for task in sorted(outputs, key=lambda t: (t != "age_bins", t == "gender")):
            if task == "gender":
                record.update(self.heads[task].decode(outputs[task], record.get("age")))
            else:
                record.update(self.heads[task].decode(outputs[task]))
        if "age" in record and "age_bin" not in record:
            # Index of the last bin edge <= age (comparisons export to ONNX; bucketize does not).
            record["age_bin"] = ((record["age"].unsqueeze(1) >= self.bin_edges).sum(dim=1) - 1).clamp(min=0)
        return record

    def frozen_modules(self) -> list[nn.Module]:
        f = self.spec.freeze
        if f == "backbone":
            return [self.backbone]
        if f.startswith("blocks:"):
            return self.blocks[: int(f[7:])]
        return []

    def set_frozen(self, frozen: bool) -> None:
        for m in self.frozen_modules():
            for p in m.parameters():
                p.requires_grad_(not frozen)

    def train(self, mode: bool = True) -> "FaceNet":
        # Frozen parts keep BatchNorm in inference mode (running statistics stay pretrained),
        # as Keras does for layers with trainable=False.
        super().train(mode)
        if mode:
            for m in self.frozen_modules():
                if not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self
