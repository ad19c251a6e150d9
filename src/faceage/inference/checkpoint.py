"""Self-describing checkpoints: weights + model spec + preprocessing + labels + version.

``load_checkpoint`` needs nothing but the file and reads it with ``weights_only=True``, so a
checkpoint cannot run code on load. Writes are atomic (temporary file + rename).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..errors import CheckpointError
from ..labels import bin_labels
from ..models.registry import build_model
from ..models.spec import ModelSpec

FORMAT = 1


def _version() -> str:
    from .. import __version__
    return __version__


def describe(spec: ModelSpec, cfg=None, class_names: list[str] | None = None, dataset: str | None = None) -> dict:
    return {
        "format": FORMAT,
        "faceage_version": _version(),
        "model": spec.to_dict(),
        "preprocess": spec.preprocess().to_dict(),
        "labels": {"tasks": dict(spec.tasks), "age_bins": list(spec.age_bins), "age_bin_names": bin_labels(spec.age_bins),
                   "class_names": list(class_names or [])},
        "config": cfg.to_dict() if cfg is not None else None,
        "dataset": dataset,
    }


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that never leaves a half-written .ckpt behind.

    The file is written under a temporary name tagged with this process's id, flushed to disk,
    then renamed over the target; a temporary left by a killed run is removed by the next one
    (``faceage.atomic.remove_stale``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        from ..atomic import atomic_output
        with atomic_output(path) as fh:
            torch.save(checkpoint, fh)
            fh.flush()
            if isinstance(checkpoint.get("epoch"), int):   # tests: kill while the file is being written
                from ..training.faults import kill_point
                kill_point("checkpoint_write", checkpoint["epoch"] + 1)


def nonfinite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding NaN or infinity."""
    bad = []
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def check_finite_state(state: dict, what: str) -> None:
    """Refuse weights that are not numbers: a diverged run's model answers NaN for every face."""
    bad = nonfinite_tensors(state)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(f"{what} holds non-finite weights (NaN or infinity in '{bad[0]}'{more}): the training run "
                              "diverged; it cannot be used. Train again with a lower optim.lr")


def resolve_checkpoint_path(model: str | Path) -> Path:
    """A run directory means its chosen checkpoint (best.ckpt unless the run kept the last weights)."""
    p = Path(model)
    if p.is_dir():
        import json
        choice = "best.ckpt"
        info = p / "run.json"
        if info.is_file():
            choice = json.loads(info.read_text()).get("final_checkpoint", choice)
        for name in (choice, "best.ckpt", "last.ckpt"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p} holds no best.ckpt or last.ckpt: is it a faceage run directory?")
    if not p.is_file():
        raise CheckpointError(f"model not found: {p}")
    return p


class LoadedModel:
    def __init__(self, net, meta: dict, path: Path):
        self.net, self.meta, self.path = net, meta, path

    @property
    def spec(self) -> ModelSpec:
        return self.net.spec

    def set_spec(self, spec: ModelSpec) -> None:
        """A changed inference setting (tta, calibration), kept in the description too."""
        self.net.spec = spec
        self.net.apply_calibration()
        self.meta["model"] = spec.to_dict()

    @property
    def preprocess(self):
        return self.spec.preprocess()


def load_checkpoint(model: str | Path, calibrated: bool = True) -> LoadedModel:
    """``calibrated``: apply the calibration (interval temperature, age prior correction) of a
    ``calibration.json`` beside the checkpoint that was fitted to it (see ``inference/calibration.py``)."""
    path = resolve_checkpoint_path(model)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict) or "faceage" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a faceage checkpoint (no model description inside)")
    meta = ckpt["faceage"]
    spec = ModelSpec.from_dict(meta["model"])
    spec.pretrained = None                      # the weights come from the checkpoint, never a hub
    net = build_model(spec)
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    check_finite_state(state, str(path))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the described model ({len(missing)} missing, {len(unexpected)} unexpected)")
    net.eval()
    loaded = LoadedModel(net, dict(meta), path)
    if calibrated:
        from .calibration import saved_calibration
        fields = saved_calibration(path, spec.tta)
        if fields is not None:
            loaded.set_spec(replace(spec, **fields))
    return loaded
