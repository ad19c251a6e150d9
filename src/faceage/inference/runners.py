"""Model runners: uint8 face crops in, decoded prediction records out (NumPy).

``TorchRunner`` wraps a checkpoint, ``OnnxRunner`` an exported ``.onnx`` file (onnxruntime
only: no torch import). Both run the same graph: pixel normalization -> network -> decoding,
built once by :class:`InferenceGraph`, so they cannot drift apart.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

# onnxruntime (1.31) writes a device id and a telemetry database under
# ~/.cache/Microsoft/DeveloperTools/.onnxruntime when it is imported, unless this variable is
# "1"/"true" (checked by the library at import). faceage's sessions never need it; a caller
# who sets the variable otherwise keeps their choice.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def import_onnxruntime():
    """onnxruntime, imported with its telemetry off (see ORT_DISABLE_TELEMETRY above)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort
    if os.environ.get("ORT_DISABLE_TELEMETRY", "").lower() in ("1", "true"):
        ort.disable_telemetry_events()    # the event side (a no-op on builds without it)
    return ort


def load_runner(model: str | Path, threads: int | None = None, spinning: bool = True):
    """A run directory or ``.ckpt`` -> TorchRunner; an ``.onnx`` file -> OnnxRunner."""
    p = Path(model)
    if p.suffix.lower() == ".onnx":
        return OnnxRunner(p, threads=threads, spinning=spinning)
    return TorchRunner(p)


def onnx_options(threads: int | None = None, spinning: bool = True):
    """onnxruntime session options. Two sessions called in turn (detector, then age model) each
    keep their idle threads spinning by default and slow each other down: a 1 MP photo took
    74-77 ms with spinning and 58-59 ms without (2 cores, bench/session_spinning.py). A lone
    model called back to back is faster with spinning, so that stays the default for a bare runner."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class TorchRunner:
    def __init__(self, model: str | Path):
        import torch

        from .checkpoint import load_checkpoint
        from .graph import InferenceGraph
        self.loaded = load_checkpoint(model)
        self.path, self.meta, self.spec = self.loaded.path, self.loaded.meta, self.loaded.spec
        self.preprocess = self.loaded.preprocess
        self.graph = InferenceGraph(self.loaded.net).eval()
        self._torch = torch

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images``: (B, H, W, C) uint8 at the model's input size."""
        torch = self._torch
        with torch.inference_mode():
            out = self.graph(torch.from_numpy(np.ascontiguousarray(images)))
        return {k: v.float().numpy() for k, v in out.items()}


class OnnxRunner:
    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True):
        """``threads``: onnxruntime intra-op threads; None lets onnxruntime use every core.
        A server running several sessions side by side sets 1 so they don't oversubscribe.
        ``spinning=False`` stops idle threads from busy-waiting, which pays when another
        session (the face detector) runs in between (see ``onnx_options``)."""
        from ..preprocess import PreprocessSpec
        ort = import_onnxruntime()
        self.path = Path(path)
        sidecar = self.path.with_suffix(".json")
        if not self.path.is_file():
            raise CheckpointError(f"model not found: {self.path}")
        if not sidecar.is_file():
            raise CheckpointError(f"{sidecar} is missing: an exported model needs its sidecar JSON (faceage export writes both)")
        self.meta = json.loads(sidecar.read_text())
        self.preprocess = PreprocessSpec.from_dict(self.meta["preprocess"])
        from ..models.spec import ModelSpec
        self.spec = ModelSpec.from_dict(self.meta["model"])
        try:
            options = onnx_options(threads, spinning)
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
            raise CheckpointError(f"onnxruntime cannot load {self.path}: {str(exc).splitlines()[0][:200]}") from None
        self.outputs = [o.name for o in self.session.get_outputs()]
        from .export import check_finite_onnx
        check_finite_onnx(self.path)         # a diverged model's NaN weights: refuse once, here

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        res = self.session.run(None, {"image": np.ascontiguousarray(images, dtype=np.uint8)})
        return {k: np.asarray(v, dtype=np.float32) for k, v in zip(self.outputs, res)}
