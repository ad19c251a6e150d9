"""Read the weights out of a dlib DNN file (``dlib_face_recognition_resnet_model_v1.dat``).

dlib serializes a network from its input layer outwards; each layer's details start with its
version string (``con_4``, ``affine_``, ``fc_2`` ...). Integers use dlib's variable-length
``pack_int`` (a control byte: bit 7 = negative, low 4 bits = byte count, then little-endian
bytes), strings are a packed length and the bytes, and tensors are
``version(2), num_samples, k, nr, nc`` followed by little-endian float32 (dlib/cuda/tensor.h).

Only the layers that carry weights are decoded, in file order: that order is the network's
forward order, which is all the PyTorch port needs (checked by shape when loading).
No dlib installation is needed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

# [0x01, len(name)] + name: how dlib writes a short std::string (a 1-byte packed length).
_LAYER_NAME = re.compile(rb"\x01([\x03-\x20])((?:con_[456]|affine_2?|bn_con2|fc_[23]|relu_2?|max_pool_2|"
                         rb"avg_pool_2|add_prev_|input_rgb_image_sized|loss_metric_2?))")


@dataclass
class DlibLayer:
    kind: str                          # "con", "affine", "fc", "relu", "max_pool", "avg_pool", "add_prev"
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, int] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def int(self) -> int:
        ctrl = self.byte()
        size, negative = ctrl & 0x0F, bool(ctrl & 0x80)
        if not 1 <= size <= 8:
            raise CheckpointError(f"dlib file: bad integer control byte {ctrl:#x} at offset {self.pos - 1}")
        value = int.from_bytes(self.data[self.pos:self.pos + size], "little")
        self.pos += size
        return -value if negative else value

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise CheckpointError(f"dlib file: unexpected tensor version at offset {self.pos}")
        shape = tuple(self.int() for _ in range(4))       # num_samples, k, nr, nc
        count = int(np.prod(shape))
        arr = np.frombuffer(self.data, "<f4", count, self.pos).reshape(shape)
        self.pos += 4 * count
        return arr.astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        if self.int() != 1:
            raise CheckpointError(f"dlib file: unexpected alias_tensor version at offset {self.pos}")
        return tuple(self.int() for _ in range(4))


def _split(params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """dlib keeps a layer's tensors as aliases into one flat ``params`` tensor, in order."""
    flat, out, at = params.reshape(-1), [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[at:at + n].reshape(shape))
        at += n
    if at != flat.size:
        raise CheckpointError(f"dlib file: params hold {flat.size} values, the layer's tensors {at}")
    return out


def _read_con(r: _Reader) -> DlibLayer:
    params = r.tensor()
    filters = r.int()
    nr, nc, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(6))
    w_shape, b_shape = r.alias(), r.alias()
    w, b = _split(params, w_shape, b_shape)
    return DlibLayer("con", {"weight": w, "bias": b.reshape(-1)},
                     {"filters": filters, "kernel": nr, "stride": stride_y, "padding": pad_y})


def _read_affine(r: _Reader) -> DlibLayer:
    params = r.tensor()
    g_shape, b_shape = r.alias(), r.alias()
    gamma, beta = _split(params, g_shape, b_shape)
    return DlibLayer("affine", {"gamma": gamma.reshape(-1), "beta": beta.reshape(-1)})


def _read_fc(r: _Reader) -> DlibLayer:
    outputs, inputs = r.int(), r.int()
    params = r.tensor()
    w_shape, _ = r.alias(), r.alias()
    # fc computes x (N, inputs) @ W (inputs, outputs); a bias row follows only in FC_HAS_BIAS mode.
    if w_shape[:2] != (inputs, outputs):
        raise CheckpointError(f"dlib file: fc weights {w_shape} do not match {inputs} inputs x {outputs} outputs")
    weight = params.reshape(-1)[: inputs * outputs].reshape(inputs, outputs)
    return DlibLayer("fc", {"weight": weight}, {"outputs": outputs, "inputs": inputs})


def _read_pool(r: _Reader, kind: str) -> DlibLayer:
    nr, nc, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(6))
    return DlibLayer(kind, meta={"kernel": nr, "stride": stride_y, "padding": pad_y})


def read_dlib_network(path: str | Path) -> list[DlibLayer]:
    """Layers of a dlib DNN file in forward order (input first); weights as float32 arrays."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"dlib model file not found: {p}")
    data = p.read_bytes()
    layers: list[DlibLayer] = []
    pos = 0
    while (m := _LAYER_NAME.search(data, pos)) is not None:
        length = m.group(1)[0]
        name = m.group(2)[:length].decode()
        r = _Reader(data, m.start(2) + length)
        if name.startswith("con_"):
            layers.append(_read_con(r))
        elif name.startswith("affine"):
            layers.append(_read_affine(r))
        elif name.startswith("fc_"):
            layers.append(_read_fc(r))
        elif name == "max_pool_2":
            layers.append(_read_pool(r, "max_pool"))
        elif name == "avg_pool_2":
            layers.append(_read_pool(r, "avg_pool"))
        elif name == "bn_con2":
            raise CheckpointError(f"{p} holds a network saved during training (bn_con); save it for inference")
        else:
            layers.append(DlibLayer(name.rstrip("_0123456789")))
        pos = r.pos
    if not any(layer.kind == "con" for layer in layers):
        raise CheckpointError(f"{p} is not a dlib DNN file (no convolution layers found)")
    return layers
