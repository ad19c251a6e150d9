"""A Keras-style ``summary()``: layer, output shape, parameters, trainable.

Parameters are counted as Keras counts them, so the table and its totals equal Keras'
``model.summary()`` and ``count_params()`` for the reference models
(tests/integration/test_keras_equivalence.py): BatchNorm's moving mean and variance, which
PyTorch keeps as buffers, are Keras' non-trainable weights and are counted here as such.
Output shapes are PyTorch's ``(None, C, H, W)``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .network import FaceNet
from .registry import count_parameters


def batchnorm_statistics(m: nn.Module) -> int:
    """BatchNorm moving means and variances inside ``m``: buffers in PyTorch, non-trainable
    weights in Keras."""
    return sum(b.running_mean.numel() + b.running_var.numel() for b in m.modules()
               if isinstance(b, nn.modules.batchnorm._BatchNorm) and b.running_mean is not None)


def layer_table(net: FaceNet, max_depth: int = 4) -> list[tuple[str, str, str, int, bool]]:
    """Rows of (name, type, output shape, parameters, trainable) from one forward pass.

    Modules deeper than ``max_depth`` dots are folded into their ancestor, so large library
    backbones stay readable.
    """
    rows: dict[str, list] = {}
    hooks = []

    def listed(name: str, m: nn.Module) -> bool:
        depth = name.count(".") + 1
        return (not list(m.children()) and depth <= max_depth) or depth == max_depth

    for name, m in net.named_modules():
        if name and listed(name, m) and not any(name.startswith(p + ".") for p in rows):
            params = sum(p.numel() for p in m.parameters())
            trainable = params > 0 and all(p.requires_grad for p in m.parameters())
            params += batchnorm_statistics(m)
            rows[name] = [name, type(m).__name__, "-", params, trainable]

            def hook(mod, inp, out, name=name):
                if isinstance(out, torch.Tensor):
                    rows[name][2] = "(None, " + ", ".join(str(s) for s in out.shape[1:]) + ")"
            hooks.append(m.register_forward_hook(hook))
    s = net.spec
    was_training = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(2, s.channels, s.input_size, s.input_size))
    net.train(was_training)
    for h in hooks:
        h.remove()
    return [tuple(r) for r in rows.values()]


def format_summary(net: FaceNet, max_depth: int = 4) -> str:
    rows = layer_table(net, max_depth)
    w = max(len(r[0]) + len(r[1]) + 3 for r in rows)
    lines = [f"Model: {net.spec.name}   input ({net.spec.input_size}, {net.spec.input_size}, {net.spec.channels})",
             f"{'Layer (type)':<{w}}  {'Output Shape':<22} {'Param #':>12}  Trainable", "=" * (w + 48)]
    for name, typ, shape, params, trainable in rows:
        lines.append(f"{name + ' (' + typ + ')':<{w}}  {shape:<22} {params:>12,}  {'yes' if trainable else 'no' if params else '-'}")
    torch_total, trainable = count_parameters(net)
    stats = batchnorm_statistics(net)
    total = torch_total + stats
    lines += ["=" * (w + 48), f"Total params: {total:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}"]
    if stats:
        lines.append(f"(counted as Keras does: {stats:,} of them are BatchNorm moving means and variances, which "
                     f"PyTorch keeps as buffers; PyTorch's parameter count is {torch_total:,})")
    if net.blocks:
        names = {id(m): n for n, m in net.named_modules()}
        lines.append("Freezable blocks (model.freeze=blocks:N freezes the first N): "
                     + ", ".join(f"{i + 1}={names.get(id(b), '?')}" for i, b in enumerate(net.blocks)))
    return "\n".join(lines)
