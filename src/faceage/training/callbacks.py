"""Callbacks: per-epoch history (CSV/JSON + Keras-style console line), curves, unfreezing, weight
averaging, and the run's checkpoints (``last.ckpt`` after every epoch, ``best.ckpt`` when the monitor improves)."""
from __future__ import annotations

import csv
import io
import math
import random
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar, WeightAveraging

from ..atomic import atomic_link_or_copy, atomic_write_json, atomic_write_text
from ..errors import ConfigError
from .faults import kill_point


class History(L.Callback):
    """Records one row per finished epoch.

    Its rows are part of the callback state saved in every checkpoint, so a resumed run
    continues exactly the history of the checkpoint it resumed from. The files
    (history.json/csv, curves) are written by :class:`RunCheckpoint` after ``last.ckpt``, so
    they never get ahead of what a resume can continue from.
    """

    def __init__(self, run_dir: Path, total_epochs: int, plot: bool = True):
        self.run_dir, self.total_epochs, self.plot = Path(run_dir), total_epochs, plot
        self.rows: list[dict] = []
        self._t0 = 0.0

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state.get("rows", []))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch + 1, "seconds": round(time.perf_counter() - self._t0, 3),
               "lr": trainer.optimizers[0].param_groups[0]["lr"]}
        for k, v in sorted(trainer.callback_metrics.items()):
            row[k] = float(v)
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if trainer.is_global_zero:
            # tqdm.write keeps an active progress bar intact and puts the line on its own row.
            from tqdm import tqdm
            tqdm.write(keras_line(row, self.total_epochs), file=sys.stdout)
            sys.stdout.flush()               # a log file or pipe gets each epoch as it ends

    def write(self) -> None:
        atomic_write_json(self.run_dir / "history.json", self.rows)
        keys = ["epoch", "seconds", "lr"] + sorted({k for r in self.rows for k in r} - {"epoch", "seconds", "lr"})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(self.run_dir / "history.csv", buf.getvalue())
        if self.plot:
            from ..evaluation.plots import learning_curves
            learning_curves(self.rows, self.run_dir / "curves")


def keras_line(row: dict, total_epochs: int) -> str:
    """``Epoch 3/50 - 41s - loss: 9.812 - mae: 9.812 - val_loss: 8.377 - val_mae: 8.377``"""
    train = [k for k in row if k not in ("epoch", "seconds", "lr") and not k.startswith("val_")]
    order = sorted(train, key=lambda k: (k != "loss", k))
    parts = [f"Epoch {row['epoch']}/{total_epochs}", f"{row['seconds']:.0f}s"]
    for k in order + ["val_" + k for k in order if "val_" + k in row]:
        v = row[k]
        parts.append(f"{k}: {v:.4f}" if math.isfinite(v) else f"{k}: {v}")
    return " - ".join(parts)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):       # closed, or a stand-in without isatty
        return False


def progress_bar_enabled(setting) -> bool:
    """``train.progress_bar``: ``auto`` shows the bar only when stdout and stderr are both a
    terminal, so a pipe, a log file or a notebook gets the per-epoch lines and no ``\\r`` debris;
    ``true``/``false`` force it."""
    if setting == "auto":
        return _isatty(sys.stdout) and _isatty(sys.stderr)
    return bool(setting)


class EpochProgressBar(TQDMProgressBar):
    """Lightning's bar, numbered as the per-epoch line (``Epoch 22/30``, from 1), not from 0."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        # Lightning's own, with the description set once (its "Epoch N-1" would flash first).
        from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset()
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self.train_progress_bar.initial = 0
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


class UnfreezeAt(L.Callback):
    """Unfreezes the frozen part of the network at the start of epoch ``epoch`` (1-based)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epoch and pl_module.net.frozen_modules():
            if not all(p.requires_grad for p in pl_module.net.parameters()):
                pl_module.net.set_frozen(False)
                pl_module.net.train()
                print(f"unfroze all layers at epoch {trainer.current_epoch + 1}", file=sys.stderr)


class WarmedUpEMA:
    """The moving-average rule for :func:`weight_ema`: ``decay`` once enough steps have been
    averaged, ``(1 + n) / (10 + n)`` before (as timm's and TensorFlow's EMA), so a short run
    is not an average dominated by the untrained start. A class, not a closure: it is pickled
    with the trainer where processes are spawned."""

    def __init__(self, decay: float):
        self.decay = decay

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = min(self.decay, (1.0 + float(num_averaged)) / (10.0 + float(num_averaged)))
        return averaged + (current - averaged) * (1.0 - d)


def weight_ema(decay: float) -> WeightAveraging:
    """Lightning's weight averaging with an exponential moving average of every parameter and
    buffer (batch-norm statistics too), updated after each optimizer step.

    Lightning swaps the averaged weights in for validation (so the history, the monitor and
    best.ckpt are the averaged model's) and writes them as the checkpoint's ``state_dict``
    (what inference, export and evaluation load); the weights being trained travel beside them
    as ``current_model_state``, so ``--resume`` goes on from both."""
    return WeightAveraging(avg_fn=WarmedUpEMA(decay))


# -- random number generators ---------------------------------------------------------------

def rng_state() -> dict:
    """Every generator training draws from: torch (augmentation, dropout, the data loader's
    worker seeds), CUDA, NumPy and Python. The sampler's order needs none of them: it is a
    pure function of (train.seed, epoch) (``data.datamodule.EpochShuffle``)."""
    keys, pos, has_gauss, gauss = np.random.get_state()[1:]
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "gauss": float(gauss)},
             "python": {"version": version, "state": list(internal), "gauss": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- checkpoints ------------------------------------------------------------------------------

def nonfinite_weights(module: torch.nn.Module) -> list[str]:
    return [name for name, t in module.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


class RunCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` after every epoch and makes ``best.ckpt`` a copy of it when the
    monitored metric improves; then the history files.

    Order, so that a kill at any point leaves a consistent run directory: (1) ``last.ckpt``,
    atomically: the epoch counts as recorded once it is there; (2) ``best.ckpt`` (a hard link to
    that file, or a copy); (3) history.json/csv and the curves. A resume restores everything in
    ``last.ckpt`` (weights, optimizer, schedulers, early stopping, this state, the history rows)
    and repairs (2) and (3) if the kill fell between them.

    The random generators are snapshotted here at each epoch's end and put back at the next
    epoch's first batch, in an unbroken run as in a resumed one, so both draw the same numbers:
    whatever happens in between (a new data-loader iterator draws its worker seed from torch's
    generator) cannot make them differ.
    """

    def __init__(self, run_dir: Path, monitor: str, mode: str, history: History):
        self.run_dir, self.monitor, self.mode, self.history = Path(run_dir), monitor, mode, history
        self.epoch = 0                   # last recorded epoch (1-based)
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.stopped = False             # early stopping ended the run at self.epoch
        self._rng: dict | None = None    # snapshot at the end of self.epoch
        self._restore_rng: dict | None = None
        # DDP: every rank's snapshot (rank order), saved with rank 0's checkpoint; on resume each
        # rank takes its own (training/distributed.py). None in a one-process run.
        self._rng_ranks: list | None = None
        self._loaded_rng_ranks: list | None = None

    @property
    def state_key(self) -> str:
        return "RunCheckpoint"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.ckpt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.ckpt"

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch, "stopped": self.stopped,
                 "monitor": self.monitor, "mode": self.mode, "rng": self._rng}
        if self._rng_ranks is not None:
            state["rng_ranks"] = self._rng_ranks
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.best_score, self.best_epoch = state.get("best_score"), state.get("best_epoch")
        self.stopped = bool(state.get("stopped", False))
        self._rng = self._restore_rng = state.get("rng")
        self._loaded_rng_ranks = state.get("rng_ranks")

    def _improved(self, score: float) -> bool:
        if not math.isfinite(score):
            return False
        if self.best_score is None:
            return True
        return score < self.best_score if self.mode == "min" else score > self.best_score

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0 and self._restore_rng is not None:
            if self._loaded_rng_ranks is not None:      # resumed DDP run: this rank's own state
                from .distributed import rng_for_rank
                self._restore_rng = rng_for_rank(trainer, self._restore_rng, self._loaded_rng_ranks)
                self._loaded_rng_ranks = None
            set_rng_state(self._restore_rng)
            self._restore_rng = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        bad = nonfinite_weights(pl_module)
        if bad:
            from .module import TrainingDiverged
            raise TrainingDiverged(f"training diverged in epoch {epoch}: the weights hold NaN or infinity ('{bad[0]}'"
                                   f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); nothing was saved for this "
                                   "epoch. Train again with a lower optim.lr")
        if self.monitor not in trainer.callback_metrics:
            raise ConfigError(f"train.monitor '{self.monitor}' is not a logged metric; logged: "
                              f"{', '.join(sorted(trainer.callback_metrics))}")
        score = float(trainer.callback_metrics[self.monitor])
        improved = self._improved(score)
        if improved:
            self.best_score, self.best_epoch = score, epoch
        self.epoch, self.stopped = epoch, bool(trainer.should_stop)
        self._rng = rng_state()
        from .distributed import gather_rng
        self._rng_ranks = gather_rng(trainer, self._rng)
        trainer.save_checkpoint(self.last_path, weights_only=False)
        if trainer.is_global_zero:
            if improved:
                atomic_link_or_copy(self.last_path, self.best_path)
            self.history.write()
        kill_point("epoch_end", epoch)
        self._restore_rng = self._rng
