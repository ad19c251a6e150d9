"""Reading a local weights file (ImageNet .pth, a ported face backbone's converted .pt): one
place for the "not found" / "cannot read" messages and the ``{"state_dict": ...}`` wrapper."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` as stored (a bare state dict, or one wrapped with provenance
    under ``"state_dict"``); ``what`` names the weights in the error messages."""
    if not path.is_file():
        raise CheckpointError(f"{what} weights not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"cannot read {what} weights {path}: {exc}") from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        return payload["state_dict"]
    return payload
