"""Training on several processes (``train.devices`` > 1 and/or ``train.num_nodes`` > 1, DDP).

How a DDP run is laid out:

- **Checked before anything starts.** :func:`plan` builds the Lightning trainer's strategy from
  ``train.accelerator/devices/num_nodes/strategy`` without starting anything, and turns whatever
  cannot run here (more devices than the machine has, ``fsdp`` without a GPU, ``deepspeed`` not
  installed, an unknown name, a multi-node run without its rendezvous variables) into one
  :class:`~faceage.errors.ConfigError`, before the run directory is made or any process started.
- **Processes.** ``ddp`` (and ``auto`` with several devices) starts the other processes of this
  machine by running the same command line again with ``LOCAL_RANK`` set (Lightning's subprocess
  launcher), or joins processes started by ``torchrun`` / ``srun`` (their ``RANK``/``SLURM_*``
  variables). The spawn/fork variants (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) are refused:
  they train in children whose callbacks (history, run state) never come back to the parent.
- **Only global rank 0 writes** the run directory (config, split, checkpoints, history, curves,
  run.json) and prints; every other rank reads the same data, trains its shard and writes nothing.
  The "run directory is not empty" check runs on rank 0 only, so a re-run command line of a
  child never trips over the files its parent has just written.
- **Data.** Each rank trains on its own shard of every epoch's seeded permutation (the
  permutation cut to a multiple of the world size, then every ``world_size``-th item from the
  rank's offset: no image twice in an epoch, the same number of batches on every rank) and
  validates on its own part of the validation set; metrics are summed over ranks before they are
  logged (``sync_dist``, torchmetrics), so history.csv holds whole-dataset numbers.
- **Randomness and resume.** Ranks > 0 reseed their generators from ``train.seed`` and their rank
  at the start of training (so augmentation differs between ranks); every rank's generator state is
  gathered into ``last.ckpt`` at each epoch end and each rank gets its own back on ``--resume``,
  so a resumed DDP run ends where an unbroken one does.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

# Test hook: a folder; each rank appends the sample ids its data loaders hand out, per epoch.
SAMPLE_LOG_ENV = "FACEAGE_TEST_SAMPLE_LOG"

SPAWNING = ("ddp_spawn", "ddp_fork", "ddp_notebook")
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


@dataclass
class Launch:
    """What this process is in the run: its global rank among ``world_size`` processes."""
    world_size: int = 1
    global_rank: int = 0
    strategy: str = "SingleDeviceStrategy"

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _settings(t) -> str:
    return (f"train.accelerator={t.accelerator}, devices={t.devices}, num_nodes={t.num_nodes}, "
            f"strategy={t.strategy}, precision={t.precision}")


def plan(cfg) -> Launch:
    """Check ``cfg.train``'s distributed settings against this machine and its environment, and
    say which rank this process is; starts nothing, writes nothing."""
    import logging
    import warnings

    t = cfg.train
    name = str(t.strategy)
    if name.startswith(SPAWNING):
        raise ConfigError(f"config key 'train.strategy' is {name!r}, which trains in child processes whose history and "
                          "run state never reach the run directory; use ddp (one process per device)")
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                                precision=t.precision, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    except (MisconfigurationException, ValueError, RuntimeError, TypeError, ImportError) as exc:
        raise ConfigError(f"{_settings(t)} cannot run here: {str(exc).splitlines()[0][:300]}") from None
    strategy = trainer.strategy
    env = getattr(strategy, "cluster_environment", None)
    launcher = getattr(strategy, "launcher", None)
    if env is not None and launcher is not None and hasattr(launcher, "num_processes"):
        try:    # torchrun / SLURM: their process counts must match train.devices and num_nodes
            env.validate_settings(num_devices=launcher.num_processes, num_nodes=launcher.num_nodes)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"{_settings(t)} cannot run here: {str(exc).splitlines()[0][:300]}") from None
    launch = Launch(int(trainer.world_size), int(trainer.global_rank), type(strategy).__name__)
    from lightning.fabric.plugins.environments import LightningEnvironment
    if t.num_nodes > 1 and isinstance(env, LightningEnvironment):
        missing = [k for k in RENDEZVOUS if not os.environ.get(k)]
        if missing:
            raise ConfigError(f"train.num_nodes={t.num_nodes} needs one `faceage train` per node, started with "
                              f"{', '.join(RENDEZVOUS)} set (or under torchrun / srun); {', '.join(missing)} "
                              "not set here (see the README, 'Training on several GPUs or machines')")
    return launch


def silence_stdout() -> None:
    """Ranks > 0: nothing on stdout (epoch lines, the summary, the verdict are rank 0's)."""
    import sys
    sys.stdout.flush()
    sys.stdout = open(os.devnull, "w")


# -- randomness ---------------------------------------------------------------------------------

def rank_seed(seed: int, rank: int) -> int:
    return (seed + 1_000_003 * rank) % 2 ** 32


def gather_rng(trainer, state: dict) -> list | None:
    """Every rank's generator state (this rank's is ``state``), in rank order, on every rank;
    None for a one-process run. A collective: every rank calls it."""
    if getattr(trainer, "world_size", 1) <= 1:
        return None
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return None
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, state)
    return out


def rng_for_rank(trainer, saved: dict, by_rank: list | None) -> dict:
    """The generator state this rank resumes from: its own when the checkpoint has every rank's
    (and the run has as many ranks as when it was saved), else the one saved (rank 0's)."""
    if by_rank and len(by_rank) == getattr(trainer, "world_size", 1):
        return by_rank[trainer.global_rank]
    return saved


def rank_callback(seed: int):
    """A callback that reseeds ranks > 0 from (seed, rank) when training starts, so their
    augmentation differs from rank 0's. (A resumed run's first batch puts back each rank's saved
    state afterwards.)"""
    import lightning as L

    class RankSeed(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            if trainer.world_size > 1 and trainer.global_rank > 0:
                import random

                import numpy as np
                import torch
                s = rank_seed(seed, trainer.global_rank)
                random.seed(s)
                np.random.seed(s)
                torch.manual_seed(s)

    return RankSeed()


# -- test hook: which samples each rank sees -------------------------------------------------

class LoggedSampler:
    """Wraps a sampler; each epoch appends ``{"rank", "part", "epoch", "ids"}`` (one JSON line)
    to ``<folder>/rank<R>.jsonl``. Only when ``FACEAGE_TEST_SAMPLE_LOG`` is set (tests)."""

    def __init__(self, inner, ids: list[str], folder: str, part: str, rank: int):
        self.inner, self.ids, self.part, self.rank = inner, ids, part, rank
        self.path = Path(folder) / f"rank{rank}.jsonl"
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        order = list(iter(self.inner))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"rank": self.rank, "part": self.part, "epoch": self.epoch,
                                 "ids": [self.ids[i] for i in order]}) + "\n")
        return iter(order)
