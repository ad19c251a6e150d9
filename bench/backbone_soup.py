"""Average the backbones of runs fine-tuned from the same face-pretrained weights (a "model soup",
Wortsman et al., ICML 2022) and score the result against each run and the runs' output ensemble.

An ensemble of several runs costs one network pass per run, which the 5 ms per face target does not
allow. The face backbones move little in fine-tuning (two faceres-deep runs at a 0.1x backbone
learning rate end 1.1% of the weights' norm apart, BENCHMARKS.md 11m), so runs started from the
same weights can share one averaged backbone. Their heads start from different random weights
(different seeds) and cannot be averaged weight by weight; the soup keeps them all and averages
their logits, the way flip averaging does, at the cost of the heads only.

    PYTHONPATH=src .venv/bin/python bench/backbone_soup.py CKPT CKPT [CKPT ...] [--split bench/utkface_split.csv]

Scores (flip-averaged, uncalibrated, validation and test split of the split file): each run, the
runs' output ensemble (mean of their decoded answers, as bench/accuracy_targets.py --ensemble), the
averaged backbone with each run's heads, and the averaged backbone with all heads' logits averaged.
"""
from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
import torch.nn as nn

from accuracy_targets import score, split_samples
from faceage.inference.checkpoint import load_checkpoint
from faceage.inference.graph import InferenceGraph
from faceage.models.registry import model_signature
from faceage.preprocess import load_image
from faceage.training.fit import default_data_path


class LogitAverage(nn.Module):
    """Several heads of one task on the same features: their logits averaged; decoding and
    calibration are the first head's."""

    def __init__(self, heads: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(heads)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([h(features) for h in self.members]).mean(dim=0)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.members[0], name)


def averaged_backbone(nets: list[nn.Module]) -> dict[str, torch.Tensor]:
    states = [n.backbone.state_dict() for n in nets]
    return {k: (torch.stack([s[k].float() for s in states]).mean(dim=0).to(v.dtype) if v.is_floating_point() else v)
            for k, v in states[0].items()}


def soup(nets: list[nn.Module], heads_from: list[int]) -> nn.Module:
    net = copy.deepcopy(nets[0])
    net.backbone.load_state_dict(averaged_backbone(nets))
    for task in net.heads:
        members = [copy.deepcopy(nets[i].heads[task]) for i in heads_from]
        net.heads[task] = members[0] if len(members) == 1 else LogitAverage(members)
    return net.eval()


def answers(net: nn.Module, images: np.ndarray, batch: int = 64) -> tuple[dict, dict]:
    """Decoded answers for the images and for their mirror images (flip-averaged both)."""
    graph = InferenceGraph(net).eval()
    out: list[dict] = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            out.append({k: v.numpy() for k, v in graph(torch.from_numpy(images[i:i + batch])).items()})
    plain = {k: np.concatenate([o[k] for o in out]) for k in out[0]}
    return plain, plain                 # flip-averaged in the graph: a face and its mirror answer alike


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--split", default="bench/utkface_split.csv")
    ap.add_argument("--limit", type=int, help="score only the first N faces of each split (a quick check)")
    a = ap.parse_args()
    loaded = [load_checkpoint(p, calibrated=False) for p in a.checkpoints]
    if len({model_signature(m.spec) for m in loaded}) != 1:
        raise SystemExit("the checkpoints are not the same network: nothing to average")
    nets = []
    for m in loaded:
        m.net.spec.tta = "flip"
        nets.append(m.net.float().eval())
    variants = {f"run {i + 1} ({p})": nets[i] for i, p in enumerate(a.checkpoints)}
    variants.update({f"averaged backbone + heads of run {i + 1}": soup(nets, [i]) for i in range(len(nets))})
    variants["averaged backbone + all heads (logits averaged)"] = soup(nets, list(range(len(nets))))

    parts = split_samples(a.data, a.split)
    spec = loaded[0].preprocess
    print(f"{len(nets)} runs; backbone weights' change from run 1, relative to its norm: " + ", ".join(
        f"run {i + 1} {change(nets[0], n):.4f}" for i, n in enumerate(nets[1:], 1)))
    for part in ("val", "test"):
        samples = parts[part][:a.limit]
        images = np.stack([load_image(s.path, spec) for s in samples])
        age, gender = np.array([s.age for s in samples], float), np.array([s.gender for s in samples])
        results = {name: answers(net, images) for name, net in variants.items()}
        runs = [results[n] for n in list(results)[:len(nets)]]
        mean = {k: np.mean([r[0][k] for r in runs], axis=0) for k in runs[0][0]}
        results["output ensemble of the runs (one pass each)"] = (mean, mean)
        print(f"{part} split, {len(samples)} faces, flip-averaged, uncalibrated:")
        for name, (out, out_flip) in results.items():
            r = score(age, gender, out, out_flip)
            print(f"  {name:<52} MAE {r['mae']:.3f}  CS@5 {r['cs5']:.1%}  gender {r['gender_acc']:.2%}  "
                  f"MAE60+ {r['mae_60plus']:.2f}  worst signed 13+ {r['worst_signed_13plus']:.2f}")


def change(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    keys = [k for k, v in sa.items() if v.is_floating_point() and "running" not in k]
    diff = sum((sa[k].float() - sb[k].float()).pow(2).sum() for k in keys)
    return float((diff / sum(sa[k].float().pow(2).sum() for k in keys)).sqrt())


if __name__ == "__main__":
    main()
