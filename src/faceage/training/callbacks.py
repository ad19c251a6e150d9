"""Callbacks: per-epoch history (CSV/JSON + Keras-style console line), curves, unfreezing."""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path

import lightning as L

from ..atomic import atomic_write_json, atomic_write_text


class History(L.Callback):
    """Records one row per finished epoch.

    Its rows are part of the callback state saved in every checkpoint, so a resumed run
    continues exactly the history of the checkpoint it resumed from.
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
            self.write()
            # tqdm.write keeps an active progress bar intact and puts the line on its own row.
            from tqdm import tqdm
            tqdm.write(keras_line(row, self.total_epochs), file=sys.stdout)

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
