"""Training-step speed on this CPU: does a memory layout or a compiler make CPU epochs cheaper?

One recipe's network (default: the shipped ``faceres-mobilenet`` at 160 px, batch 64), one random
batch, a full step (forward, the recipe's losses, backward, AdamW). Variants take turns in
rounds, so a machine that slows down mid-run slows every variant alike:

* ``nchw``: the batch in PyTorch's default layout (NCHW);
* ``faceage``: the batch in NHWC (``channels_last``), which oneDNN's CPU convolutions prefer, as
  ``training/module.py`` hands it to the network;
* ``compile``: that, with ``torch.compile`` of the network (the inductor back-end, C++ on CPU).

    PYTHONPATH=src .venv/bin/python bench/train_step_speed.py [--recipe R] [--steps N] [--rounds K]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from faceage.config import load_config, validate_model
from faceage.models.registry import build_model


def batch_for(spec, n: int, rng: torch.Generator) -> dict:
    s = spec.input_size
    return {"image": torch.rand(n, spec.channels, s, s, generator=rng),
            "age": torch.randint(0, 90, (n,), generator=rng).float(),
            "gender": torch.randint(0, 2, (n,), generator=rng).float(),
            "race": torch.randint(0, 5, (n,), generator=rng)}


def make_step(net, batch: dict):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = net.losses(net(batch["image"]), batch, 0.0)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="faceres-mobilenet")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="faceage,nchw,compile")
    args = ap.parse_args()
    cfg = load_config(args.recipe, [])
    spec = validate_model(cfg)
    print(f"{args.recipe}: {spec.name} {spec.input_size} px, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    steps = {}
    for name in args.variants.split(","):
        torch.manual_seed(0)
        net = build_model(spec).train()
        batch = batch_for(spec, args.batch, torch.Generator().manual_seed(1))
        if name != "nchw":
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        if name == "compile":
            net.forward = torch.compile(net.forward)
        steps[name] = make_step(net, batch)
        t0 = time.perf_counter()
        steps[name]()                       # warm-up (and compilation)
        steps[name]()
        print(f"  {name}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s/step" for k, v in times.items()), flush=True)
    base = np.median(times["faceage"]) if "faceage" in times else None
    for name, t in times.items():
        med = float(np.median(t))
        rel = f"  x{base / med:.2f} vs faceage" if base else ""
        print(f"{name:<14} median {med:.3f} s per step of {args.batch}: {args.batch / med:6.1f} images/s{rel}")


if __name__ == "__main__":
    main()
