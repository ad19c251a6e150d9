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

import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from ..atomic import atomic_link_or_copy, atomic_write_json, atomic_write_text, remove_stale
from ..config import (Config, apply_resume_overrides, load_run_config, read_yaml, validate,
                      validate_environment, validate_model)
from ..errors import CheckpointError, ConfigError, FaceageError

DEFAULT_DATA = "../shared/datasets/utkface/UTKFace"


def default_data_path() -> str:
    return os.environ.get("FACEAGE_DATA", DEFAULT_DATA)


def _prepare_run_dir(out: Path, overwrite: bool) -> None:
    try:
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise FaceageError(f"run directory {out} is not empty: use --resume {out} to continue it, "
                                   "--overwrite to start again, or another --out")
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FaceageError(f"cannot use {out} as the run directory: {exc.strerror or exc}") from None


def recorded_state(last: Path) -> dict | None:
    """What ``last.ckpt`` says was recorded: ``epoch`` (1-based), ``best_epoch``, ``stopped`` (by
    early stopping) and the history ``rows``. None when there is no last.ckpt yet."""
    if not last.is_file():
        return None
    import torch
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - written atomically, so only a foreign or damaged file
        raise CheckpointError(f"cannot read {last}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}; "
                              "start the run again with --overwrite") from None
    callbacks = ckpt.get("callbacks", {}) if isinstance(ckpt, dict) else {}
    rows = list(callbacks.get("History", {}).get("rows", []))
    state = dict(callbacks.get("RunCheckpoint", {}))
    return {"epoch": int(state.get("epoch", len(rows))), "best_epoch": state.get("best_epoch"),
            "stopped": bool(state.get("stopped", False)), "rows": rows}


def _finished_message(out: Path, state: dict, epochs: int) -> str:
    how = (f"stopped early at epoch {state['epoch']}" if state["stopped"]
           else f"{state['epoch']} of {epochs} epochs recorded")
    more = "" if state["stopped"] else (f"; to train it longer: faceage train --resume {out} "
                                        f"--epochs N (N > {epochs})")
    return f"{out} is already finished ({how}, best epoch {state['best_epoch']}): nothing to do{more}"


def train(cfg: Config | None, out: str | Path, *, data: str | None = None, overwrite: bool = False,
          resume: bool = False, quiet: bool = False, overrides: list[str] | None = None) -> dict:
    """Train per ``cfg`` into run directory ``out``. Returns the run summary (also run.json).

    ``resume=True`` continues ``out`` from its ``last.ckpt`` (written after every epoch) with its
    saved config and split, at the first epoch not recorded there; the result equals an unbroken
    run's. A finished run is left as it is, unless ``overrides`` (only ``train.epochs=N``) asks
    for more epochs.
    """
    out = Path(out)
    last = out / "last.ckpt"
    state = None
    if resume:
        if not (out / "config.yaml").is_file():
            raise FaceageError(f"nothing to resume in {out}: no config.yaml (was it a faceage run directory?)")
        cfg = load_run_config(out)
        planned = cfg.train.epochs
        if overrides:
            apply_resume_overrides(cfg, overrides)
        cfg.data.split_file = str(out / "split.csv") if (out / "split.csv").is_file() else cfg.data.split_file
        state = recorded_state(last)
        if state:
            if cfg.train.epochs < state["epoch"]:
                raise ConfigError(f"train.epochs={cfg.train.epochs} is fewer than the {state['epoch']} epochs {out} "
                                  "has already recorded")
            if cfg.train.epochs < planned:
                # Its learning-rate schedule was laid out for the planned epochs: cutting it short
                # would give a run that matches neither plan, and config.yaml would not say so.
                raise ConfigError(f"train.epochs={cfg.train.epochs} is fewer than the {planned} epochs {out} was planned "
                                  f"for: a resumed run keeps its schedule. Use its best.ckpt or last.ckpt as it is, or "
                                  f"start a new run with train.epochs={cfg.train.epochs}")
            if state["stopped"] and cfg.train.epochs > planned:
                raise ConfigError(f"{out} stopped early at epoch {state['epoch']} (train.early_stopping): it cannot be "
                                  "extended; start a new run")
            if (state["stopped"] or state["epoch"] >= cfg.train.epochs) and (out / "run.json").is_file():
                print(_finished_message(out, state, cfg.train.epochs), file=sys.stderr)
                summary = json.loads((out / "run.json").read_text())
                summary["already_finished"] = True
                return summary
        if cfg.train.epochs > planned and cfg.schedule.name == "onecycle":
            raise ConfigError("schedule.name is onecycle, whose schedule ends at the planned train.epochs: a run with "
                              "it cannot be extended; start a new run")
    validate(cfg)
    validate_environment(cfg)
    spec = validate_model(cfg)
    from .distill import check_distill
    check_distill(cfg, spec)
    t = cfg.train
    # DDP: checked (and this process's rank known) before anything is written or started; only
    # global rank 0 writes the run directory (see training/distributed.py).
    from .distributed import plan
    launch = plan(cfg)
    rank0 = launch.is_global_zero
    if not rank0:
        from .distributed import silence_stdout
        silence_stdout()               # rank 0 reports; the others' errors still reach stderr
    quiet = quiet or not rank0
    net = None
    if not ("label" in spec.tasks and not spec.num_classes):
        net = _build(spec, t.seed)      # before anything is written: a model that cannot be built fails fast
    if not resume and rank0:
        _prepare_run_dir(out, overwrite)

    import lightning as L

    from ..data.datamodule import FaceDataModule
    from ..inference.checkpoint import AtomicCheckpointIO
    from .callbacks import History, RunCheckpoint, UnfreezeAt, weight_ema
    from .faults import FaultInjection, armed
    from .module import FaceAgeModule

    _quiet_lightning()
    # Temporaries of a killed run (atomic writes never finished) are removed, never read.
    if rank0:
        remove_stale([*out.glob(".*.tmp"), *(out / "curves").glob(".*.tmp")], unknown_age_s=0)
    if resume and cfg.train.epochs > planned and rank0:
        print(f"extending {out} from {planned} to {cfg.train.epochs} epochs", file=sys.stderr)
        saved = read_yaml(out / "config.yaml")
        saved.setdefault("train", {})["epochs"] = cfg.train.epochs     # the only change: a later plain --resume goes on
        atomic_write_text(out / "config.yaml", yaml.safe_dump(saved, sort_keys=False))
        (out / "run.json").unlink(missing_ok=True)     # rewritten when the longer run ends
    cfg.data.path = data or cfg.data.path or default_data_path()

    dm = FaceDataModule(cfg, spec.preprocess(), cfg.data.path, run_dir=out if rank0 else None)
    dm.prepare(verbose=not quiet)
    if "label" in spec.tasks and not spec.num_classes:
        spec.num_classes = len(dm.manifest.class_names)
    if "label" in spec.tasks and dm.manifest.class_names and spec.num_classes != len(dm.manifest.class_names):
        raise ConfigError(f"model.num_classes is {spec.num_classes} but the dataset has {len(dm.manifest.class_names)} classes")
    _check_labels(spec, dm)
    if net is None:
        net = _build(spec, t.seed)

    from ..data.split import save_split
    if not resume and rank0:
        from .resolve import resolved_config      # every value used: the model's defaults filled in
        atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved_config(cfg, spec).to_dict(), sort_keys=False))
    if rank0 and (not resume or not (out / "split.csv").is_file()):    # a run killed before writing them
        save_split(dm.assignment, out / "split.csv")
    if rank0 and (not resume or not (out / "skipped.json").is_file()):
        dm.report.write(out / "skipped.json")

    module = FaceAgeModule(net, cfg, extra_checkpoint={"class_names": dm.manifest.class_names, "dataset": cfg.data.path})
    history = History(out, t.epochs)
    checkpoint = RunCheckpoint(out, t.monitor, t.monitor_mode, history)
    callbacks = [history, checkpoint]
    es = t.early_stopping
    if es.enabled:
        from lightning.pytorch.callbacks import EarlyStopping
        callbacks.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta,
                                       check_on_train_epoch_end=True))
    if spec.unfreeze_epoch:
        callbacks.append(UnfreezeAt(spec.unfreeze_epoch))
    if t.ema_decay > 0:
        callbacks.append(weight_ema(t.ema_decay))
    if armed():
        callbacks.append(FaultInjection())
    if launch.distributed:
        from .distributed import rank_callback
        callbacks.append(rank_callback(t.seed))
    from .callbacks import EpochProgressBar, progress_bar_enabled
    show_bar = progress_bar_enabled(t.progress_bar) and not quiet      # auto: only on a terminal
    if show_bar:
        callbacks.append(EpochProgressBar(leave=False))
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    # Early stopping's decision is not part of Lightning's loop state: a run that stopped (and
    # was killed before its summary) must not train on when resumed.
    max_epochs = state["epoch"] if state and state["stopped"] else t.epochs
    try:
        trainer = L.Trainer(
            max_epochs=max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
            precision=t.precision, callbacks=callbacks, logger=False, enable_progress_bar=show_bar,
            enable_model_summary=False, plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0,
            default_root_dir=str(out), log_every_n_steps=10,
            use_distributed_sampler=False,       # the data module shards every epoch itself
        )
    except (MisconfigurationException, ValueError, RuntimeError, ModuleNotFoundError) as exc:
        raise ConfigError(f"train.accelerator={t.accelerator}, devices={t.devices}, precision={t.precision}, "
                          f"strategy={t.strategy}, num_nodes={t.num_nodes} cannot run here: "
                          f"{str(exc).splitlines()[0][:300]}") from None
    if (trainer.global_rank, trainer.world_size) != (launch.global_rank, launch.world_size):
        raise FaceageError(f"internal error: rank {trainer.global_rank} of {trainer.world_size} differs from the "
                           f"planned {launch.global_rank} of {launch.world_size}")
    ckpt_path = None
    if resume:
        if state:
            ckpt_path = str(last)
            if not rank0:
                history.rows = list(state["rows"])
            else:
                _repair(out, state, history)
                if state["stopped"] or state["epoch"] >= t.epochs:
                    how = f"stopped early at epoch {state['epoch']}" if state["stopped"] else f"all {state['epoch']} epochs are recorded"
                    print(f"{out}: {how}; writing the run summary", file=sys.stderr)
                else:
                    print(f"resuming {out} at epoch {state['epoch'] + 1} of {t.epochs} (last.ckpt holds epochs 1-"
                          f"{state['epoch']})", file=sys.stderr)
        elif rank0:
            print(f"note: {out} has no last.ckpt yet; starting its first epoch again", file=sys.stderr)
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    except SystemExit:
        if trainer.interrupted:          # Lightning turns Ctrl-C into exit(1); the CLI says how to resume
            raise KeyboardInterrupt from None
        raise
    seconds = time.perf_counter() - start

    rows = history.rows
    from ..evaluation.plots import best_epoch, learning_curves
    if rank0:
        learning_curves(rows, out / "curves", t.monitor, t.monitor_mode)
    best = checkpoint.best_epoch or best_epoch(rows, t.monitor, t.monitor_mode)
    final = "best.ckpt" if (not es.enabled or es.restore_best) else "last.ckpt"
    summary = {
        "model": spec.name, "epochs_run": len(rows), "max_epochs": t.epochs, "best_epoch": best,
        "stopped_early": bool(es.enabled and (checkpoint.stopped or len(rows) < t.epochs)),
        # Sum of epoch times from the history, which checkpoints carry: survives kill + resume.
        "train_seconds": round(sum(r.get("seconds", 0.0) for r in rows), 1),
        "wall_seconds_this_session": round(seconds, 1),
        "final_checkpoint": final, "monitor": t.monitor,
        "best": next((dict(r) for r in rows if r["epoch"] == best), {}),
        "n_images": {k: len(v) for k, v in dm.parts.items()},
    }
    if trainer.is_global_zero:
        atomic_write_json(out / "run.json", summary)
    else:
        summary["rank"] = trainer.global_rank      # never in run.json: tells callers rank 0 reports
    return summary


def _build(spec, seed: int):
    """The network, initialised from ``train.seed`` (the same in a fresh and a resumed run)."""
    import lightning as L

    from ..models.registry import build_model
    L.seed_everything(seed, workers=True, verbose=False)
    try:
        return build_model(spec)
    except RuntimeError as exc:      # a stack of convolutions and poolings that shrinks the image to nothing
        raise ConfigError(f"model.input_size {spec.input_size} is too small for {spec.name}: its layers shrink a "
                          f"{spec.input_size} px image to nothing ({str(exc).splitlines()[0][:120]}); use a larger "
                          f"model.input_size (its default is {_default_size(spec.name)})") from None


def _default_size(name: str) -> int:
    from ..models.registry import get_entry
    return get_entry(name).defaults.input_size


def _repair(out: Path, state: dict, history) -> None:
    """A kill between writing last.ckpt and the files that follow it (best.ckpt, history, curves)
    left those one epoch behind: bring them up to what last.ckpt recorded."""
    last, best = out / "last.ckpt", out / "best.ckpt"
    if state["best_epoch"] is not None and state["best_epoch"] == state["epoch"]:
        atomic_link_or_copy(last, best)
    elif not best.is_file():
        print(f"warning: {best} is missing; it will be written when the monitored metric next improves", file=sys.stderr)
    history.rows = list(state["rows"])
    history.write()


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
