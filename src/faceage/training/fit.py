"""``faceage train``: config -> data -> model -> Lightning fit -> run directory.

Run directory contents::

    config.yaml      resolved config (every default filled in)
    split.csv        the train/val/test assignment (reuse with --split)
    skipped.json     every skipped file with its reason
    history.csv/json one row per epoch: losses, metrics, lr, seconds
    curves/*.png     train vs val learning curves, best epoch marked
    best.ckpt        weights at the best monitored epoch; last.ckpt: the latest epoch
    run.json         summary: best/stop epoch, train time, which checkpoint is final
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from ..atomic import atomic_write_json, atomic_write_text
from ..config import Config, config_from_dict
from ..errors import ConfigError, FaceageError

DEFAULT_DATA = "../shared/datasets/utkface/UTKFace"


def default_data_path() -> str:
    return os.environ.get("FACEAGE_DATA", DEFAULT_DATA)


def _prepare_run_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FaceageError(f"run directory {out} is not empty: use --resume {out} to continue it, "
                               "--overwrite to start again, or another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def train(cfg: Config, out: str | Path, *, data: str | None = None, overwrite: bool = False,
          resume: bool = False, quiet: bool = False) -> dict:
    """Train per ``cfg`` into run directory ``out``. Returns the run summary (also run.json)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from ..data.datamodule import FaceDataModule
    from ..inference.checkpoint import AtomicCheckpointIO
    from ..models.registry import build_model, resolve
    from .callbacks import History, UnfreezeAt
    from .module import FaceAgeModule

    _quiet_lightning()
    out = Path(out)
    last = out / "last.ckpt"
    if resume:
        if not (out / "config.yaml").is_file():
            raise FaceageError(f"nothing to resume in {out}: no config.yaml (was it a faceage run directory?)")
        cfg = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()))
        cfg.data.split_file = str(out / "split.csv") if (out / "split.csv").is_file() else cfg.data.split_file
    else:
        _prepare_run_dir(out, overwrite)
    cfg.data.path = data or cfg.data.path or default_data_path()

    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    spec = resolve(cfg.model.name, **{k: v for k, v in vars(cfg.model).items() if k != "name"})
    dm = FaceDataModule(cfg, spec.preprocess(), cfg.data.path, run_dir=out)
    dm.prepare(verbose=not quiet)
    if "label" in spec.tasks and not spec.num_classes:
        spec.num_classes = len(dm.manifest.class_names)
    if "label" in spec.tasks and dm.manifest.class_names and spec.num_classes != len(dm.manifest.class_names):
        raise ConfigError(f"model.num_classes is {spec.num_classes} but the dataset has {len(dm.manifest.class_names)} classes")
    _check_labels(spec, dm)

    if not resume:
        from ..data.split import save_split
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        save_split(dm.assignment, out / "split.csv")
        dm.report.write(out / "skipped.json")

    net = build_model(spec)
    module = FaceAgeModule(net, cfg, extra_checkpoint={"class_names": dm.manifest.class_names, "dataset": cfg.data.path})
    t = cfg.train
    history = History(out, t.epochs)
    callbacks = [
        history,
        # save_on_train_epoch_end: saved after History has recorded the epoch, so a checkpoint
        # always carries the history up to and including its own epoch.
        ModelCheckpoint(dirpath=out, filename="best", monitor=t.monitor, mode=t.monitor_mode, save_top_k=1,
                        save_last=True, save_on_train_epoch_end=True, enable_version_counter=False),
    ]
    es = t.early_stopping
    if es.enabled:
        callbacks.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta,
                                       check_on_train_epoch_end=True))
    if spec.unfreeze_epoch:
        callbacks.append(UnfreezeAt(spec.unfreeze_epoch))
    if t.progress_bar and not quiet:
        from lightning.pytorch.callbacks import TQDMProgressBar
        callbacks.append(TQDMProgressBar(leave=False))
    trainer = L.Trainer(
        max_epochs=t.epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, callbacks=callbacks, logger=False, enable_progress_bar=t.progress_bar and not quiet,
        enable_model_summary=False, plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0,
        default_root_dir=str(out), log_every_n_steps=10,
    )
    ckpt_path = None
    if resume:
        if last.is_file():
            ckpt_path = str(last)
            print(f"resuming {out} from {last.name}", file=sys.stderr)
        else:
            print(f"note: {out} has no last.ckpt yet; starting its first epoch again", file=sys.stderr)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    seconds = time.perf_counter() - start

    rows = history.rows
    from ..evaluation.plots import best_epoch, learning_curves
    learning_curves(rows, out / "curves", t.monitor, t.monitor_mode)
    best = best_epoch(rows, t.monitor, t.monitor_mode)
    final = "best.ckpt" if (not es.enabled or es.restore_best) else "last.ckpt"
    summary = {
        "model": spec.name, "epochs_run": len(rows), "max_epochs": t.epochs, "best_epoch": best,
        "stopped_early": bool(es.enabled and len(rows) < t.epochs),
        # Sum of epoch times from the history, which checkpoints carry: survives kill + resume.
        "train_seconds": round(sum(r.get("seconds", 0.0) for r in rows), 1),
        "wall_seconds_this_session": round(seconds, 1),
        "final_checkpoint": final, "monitor": t.monitor,
        "best": next((dict(r) for r in rows if r["epoch"] == best), {}),
        "n_images": {k: len(v) for k, v in dm.parts.items()},
    }
    if trainer.is_global_zero:
        atomic_write_json(out / "run.json", summary)
    return summary


def _quiet_lightning() -> None:
    """Keep the console to faceage's own lines: no device banners, tips or known-benign warnings."""
    import logging
    import warnings
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def _check_labels(spec, dm) -> None:
    """A task whose labels the dataset lacks would train on nothing: say so up front."""
    need = {"age_reg": "age", "age_bins": "age", "age_dist": "age", "gender": "gender", "race": "race", "label": "label"}
    for task in spec.tasks:
        if not dm.manifest.has(need[task]):
            raise ConfigError(f"model task '{task}' needs '{need[task]}' labels, which {dm.data_path} does not have; "
                              f"set model.tasks to what the data provides")
