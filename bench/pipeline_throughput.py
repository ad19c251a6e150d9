"""Input-pipeline benchmark: training images/s from the decode cache vs pre-made tensors.

Both paths run the same model, optimizer and batch size in this one process, interleaved
(A B A B ...) so machine noise hits both alike:
  compute : a fixed, already normalized float batch in memory (the pure-compute ceiling)
  pipeline: DataLoader over the memory-mapped uint8 cache -> float -> batch augmentation ->
            normalization, exactly as `faceage train` feeds the model
Target: pipeline >= 90% of compute.

    .venv/bin/python bench/pipeline_throughput.py [--config configs/best.yaml] [--steps 20] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from faceage.config import load_config
from faceage.data.datamodule import FaceDataModule
from faceage.models.registry import build_model, resolve
from faceage.training.fit import default_data_path
from faceage.training.module import FaceAgeModule


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/best.yaml")
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    cfg = load_config(a.config, ["data.limit=3000", "model.pretrained=none", *a.overrides])
    spec = resolve(cfg.model.name, **{k: v for k, v in vars(cfg.model).items() if k != "name"})
    dm = FaceDataModule(cfg, spec.preprocess(), a.data)
    dm.prepare(verbose=False)
    module = FaceAgeModule(build_model(spec), cfg)
    module.net.train()
    opt = torch.optim.Adam(module.net.parameters(), lr=1e-4)
    loader = dm.train_dataloader()

    def step(x, batch):
        out = module.net(x)
        loss, _ = module.net.losses(out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fixed = next(iter(loader))
    fixed_x = module.images(fixed, augment=False).detach().clone()
    bs = fixed_x.shape[0]

    def run_compute(n):
        for _ in range(n):
            step(fixed_x, fixed)

    def run_pipeline(n):
        it = iter(loader)
        for _ in range(n):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            step(module.images(batch, augment=True), batch)

    run_compute(3)
    run_pipeline(3)   # warm-up: page cache, allocator, kernels
    times = {"compute": 0.0, "pipeline": 0.0}
    for _ in range(a.rounds):
        for name, fn in (("compute", run_compute), ("pipeline", run_pipeline)):
            t = time.perf_counter()
            fn(a.steps)
            times[name] += time.perf_counter() - t
    n_img = a.rounds * a.steps * bs
    rate = {k: n_img / v for k, v in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"model {spec.name} {spec.input_size}px x{spec.channels}, batch {bs}, {a.rounds}x{a.steps} steps each, "
          f"augmentation {'on' if module.augment.active else 'off'}")
    print(f"compute  (pre-made tensors): {rate['compute']:8.1f} images/s")
    print(f"pipeline (cache + augment) : {rate['pipeline']:8.1f} images/s")
    print(f"pipeline / compute         : {rate['pipeline'] / rate['compute']:.1%}  (target >= 90%)")


if __name__ == "__main__":
    main()
