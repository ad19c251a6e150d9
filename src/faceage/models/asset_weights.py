"""Reading a ported face backbone's converted weights (the shipped float16 asset or a user's .pt)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError


def read_converted_weights(path: Path, model_name: str) -> dict[str, torch.Tensor]:
    """A converted ``.pt`` (a state dict, or ``{"state_dict": ...}`` with provenance) as float32."""
    if not path.is_file():
        raise CheckpointError(f"{model_name} weights not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"cannot read {model_name} weights {path}: {exc}") from None
    sd = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    return {k: v.float() for k, v in sd.items()}
