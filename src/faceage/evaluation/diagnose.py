"""Diagnose a training history: overfitting, stalled, still improving, unstable, good fit.

All thresholds are *relative* (fractions of the series' own level), so the same rules work for
a cross-entropy near 1 and an MAE near 10. They are heuristics, documented here and echoed in
the evidence of every diagnosis:

- PLATEAU: a series has plateaued when the best value of its last third of epochs (at least 3)
  is less than 2% better than its best value before that.
- OVERFITTING: validation loss ended at least 3% above its minimum (and above twice its own
  epoch-to-epoch noise) while training loss fell at least 3% more after that minimum. The
  onset is the epoch of the validation minimum.
  Also overfitting: validation stopped improving (it came within 2% of its best at some epoch
  and improved less than 2% over the last third) while training improved a further 6% or more
  and the relative train/validation gap widened by 10 points or more; the onset is the epoch
  validation first came within 2% of its best.
- STILL IMPROVING: the validation best is in the last 20% of the epochs (at least the last two)
  and validation improved by more than 2% over the last third; or fewer than 4 epochs, with
  validation better at the end than at the start (too short to see a plateau).
- STALLED (underfitting): both series plateaued, the train/validation gap is under 10%, and
  training removed less than half of its loss (counted from the second epoch when there are
  6 epochs or more: the first epoch's average is dominated by the random start).
- UNSTABLE: a non-finite loss, a training-loss spike of more than 50% from one epoch to the
  next, or training loss ending 20% above its own minimum.
- NOISY VALIDATION (a qualifier): validation deviates from its 5-epoch rolling median by more
  than 5% of its level on average (6 epochs or more).
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

PLATEAU_REL = 0.02
RISE_REL = 0.03
TRAIN_FALL_REL = 0.03
SMALL_GAP_REL = 0.10
STALL_LEARNED = 0.5
SPIKE_REL = 0.5
DIVERGE_REL = 0.2
NOISE_REL = 0.05
HIGHER_IS_BETTER = re.compile(r"acc|accuracy|auc|f1|precision|recall|cs5|iou", re.I)


@dataclass
class Diagnosis:
    verdict: str
    qualifiers: list[str]
    best_epoch: int | None
    onset_epoch: int | None
    monitor: str
    evidence: dict
    summary: list[str] = field(default_factory=list)
    remedies: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        q = f" (+ {', '.join(self.qualifiers)})" if self.qualifiers else ""
        lines = [f"Verdict: {self.verdict.upper()}{q}"]
        lines += [f"  - {s}" for s in self.summary]
        if self.remedies:
            lines.append("What to try, most promising first:")
            for i, r in enumerate(self.remedies, 1):
                cfg = f"  [{r['config']}]" if r.get("config") else ""
                lines.append(f"  {i}. {r['remedy']}: {r['why']}{cfg}")
        return "\n".join(lines)


def _series(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r.get(key, math.nan) for r in rows], dtype=float)


def pick_monitor(rows: list[dict]) -> tuple[str, str]:
    """The pair to judge by: loss if both train and validation loss exist, else the first X/val_X."""
    keys = set().union(*rows)
    if {"loss", "val_loss"} <= keys:
        return "loss", "min"
    for k in sorted(keys):
        if not k.startswith("val_") and f"val_{k}" in keys and k not in ("epoch", "lr", "seconds"):
            return k, "max" if HIGHER_IS_BETTER.search(k) else "min"
    if "loss" in keys:
        return "loss", "min"
    raise ValueError("no metric to judge")


def _improvement(x: np.ndarray, mode: str) -> float:
    """Relative improvement of the best value in the last third over the best value before it
    (positive = better). Comparing bests, not endpoints, keeps one noisy epoch from deciding."""
    k = max(3, len(x) // 3)
    head, tail = x[:-k], x[-k:]
    if not len(head) or not np.isfinite(head).any() or not np.isfinite(tail).any():
        head, tail = x[:1], x[1:]
    if mode == "min":
        before, after = np.nanmin(head), np.nanmin(tail)
        return float((before - after) / (abs(before) or 1e-12))
    before, after = np.nanmax(head), np.nanmax(tail)
    return float((after - before) / (abs(before) or 1e-12))


def _noise(x: np.ndarray) -> float:
    """Mean absolute deviation from a centred 5-epoch rolling median, relative to the level."""
    if len(x) < 6:
        return 0.0
    with warnings.catch_warnings():        # windows that are all NaN (a diverged run) are fine
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.array([np.nanmedian(x[max(0, i - 2): i + 3]) for i in range(len(x))])
    level = abs(np.nanmedian(x)) or 1e-12
    return float(np.nanmean(np.abs(x - med)) / level)


def early_stopping_for(val: np.ndarray, mode: str, best_idx: int) -> dict | None:
    """The smallest patience whose early stopping would have restored (nearly) the best epoch."""
    sign = 1 if mode == "min" else -1
    best_val = val[best_idx]
    for patience in range(1, 11):
        best, wait, best_at = math.inf, 0, 0
        stop = len(val) - 1
        for i, v in enumerate(sign * val):
            if v < best:
                best, wait, best_at = v, 0, i
            else:
                wait += 1
                if wait >= patience:
                    stop = i
                    break
        restored = sign * best
        if abs(restored - best_val) <= 0.01 * abs(best_val) + 1e-12:
            return {"patience": patience, "stop_epoch": stop + 1, "restored_epoch": best_at + 1}
    return None


def diagnose(rows: list[dict]) -> Diagnosis:
    name, mode = pick_monitor(rows)
    vname = f"val_{name}"
    epochs = np.array([r["epoch"] for r in rows])
    train = _series(rows, name)
    val = _series(rows, vname)
    n = len(rows)
    has_val = np.isfinite(val).any()
    ev: dict = {"epochs": n, "monitor": name, "mode": mode}
    summary: list[str] = []
    qualifiers: list[str] = []

    # --- instability -----------------------------------------------------------------------
    finite_train = train[np.isfinite(train)]
    nonfinite = [int(e) for e, t in zip(epochs, train) if not np.isfinite(t)] + \
                ([int(e) for e, v in zip(epochs, val) if not np.isfinite(v)] if has_val else [])
    spikes = []
    if mode == "min":
        for i in range(1, n):
            if np.isfinite(train[i]) and np.isfinite(train[i - 1]) and train[i] > train[i - 1] * (1 + SPIKE_REL) and train[i - 1] > 0:
                spikes.append(int(epochs[i]))
    diverged = bool(mode == "min" and len(finite_train) > 2 and finite_train[-1] > np.min(finite_train) * (1 + DIVERGE_REL))
    ev.update({"nonfinite_epochs": sorted(set(nonfinite)), "spike_epochs": spikes, "diverged": diverged})

    # --- best epoch, gaps, noise -------------------------------------------------------------
    ref = val if has_val else train
    ok = np.isfinite(ref)
    best_idx = int(np.nanargmin(np.where(ok, ref, np.inf)) if mode == "min" else np.nanargmax(np.where(ok, ref, -np.inf)))
    best_epoch = int(epochs[best_idx])
    ev["best_epoch"] = best_epoch
    gaps = {}
    for k in sorted(set().union(*rows)):
        if not k.startswith("val_") and f"val_{k}" in rows[-1] and k in rows[-1]:
            t, v = rows[-1][k], rows[-1][f"val_{k}"]
            if np.isfinite(t) and np.isfinite(v):
                gaps[k] = {"train": t, "val": v, "gap": v - t, "gap_rel": (v - t) / (abs(t) or 1e-12)}
    ev["final_gaps"] = gaps
    noise = _noise(val) if has_val else 0.0
    ev["val_fluctuation"] = round(noise, 4)
    if noise > NOISE_REL:
        qualifiers.append("noisy validation")
        summary.append(f"Validation {name} fluctuates by {noise:.1%} of its level around its trend (threshold {NOISE_REL:.0%}): "
                       "the validation set may be small or unrepresentative.")
    train_impr = _improvement(train, mode) if len(finite_train) >= 3 else 0.0
    val_impr = _improvement(val, mode) if has_val and n >= 3 else 0.0
    ev.update({"train_improvement_last_third": round(train_impr, 4), "val_improvement_last_third": round(val_impr, 4)})
    # Measured from the second epoch when there are 6 or more: the first epoch's average is
    # dominated by the random start (and by a large initial L2 penalty), which would make any
    # model look like it learned a lot.
    start = finite_train[1] if len(finite_train) >= 6 else (finite_train[0] if len(finite_train) else 0)
    learned = float(finite_train[-1] / start) if mode == "min" and len(finite_train) and start else None
    ev["train_loss_end_over_start"] = None if learned is None else round(learned, 4)

    verdict, onset = None, None
    if nonfinite or spikes or diverged:
        verdict = "unstable"
        if nonfinite:
            summary.append(f"Non-finite {name} at epoch(s) {', '.join(map(str, sorted(set(nonfinite))[:5]))}: training diverged.")
        if spikes:
            summary.append(f"Training {name} jumped by more than {SPIKE_REL:.0%} at epoch(s) {', '.join(map(str, spikes[:5]))}.")
        if diverged:
            summary.append(f"Training {name} ended {finite_train[-1] / np.min(finite_train) - 1:.0%} above its own minimum.")

    if verdict is None and has_val and best_idx < n - 1:
        v_end, v_best = val[-1], val[best_idx]
        rise = (v_end - v_best) / (abs(v_best) or 1e-12) * (1 if mode == "min" else -1)
        t_after = (train[best_idx] - train[-1]) / (abs(train[best_idx]) or 1e-12) * (1 if mode == "min" else -1)
        ev.update({"val_rise_from_best": round(float(rise), 4), "train_change_after_best": round(float(t_after), 4)})
        if rise >= RISE_REL and rise > 2 * noise and t_after >= TRAIN_FALL_REL:
            verdict, onset = "overfitting", best_epoch
            summary.append(f"Validation {name} reached its best ({v_best:.4g}) at epoch {best_epoch} and then rose {rise:.1%} "
                           f"to {v_end:.4g} by epoch {int(epochs[-1])}, while training {name} kept improving "
                           f"({train[best_idx]:.4g} -> {train[-1]:.4g}, {t_after:.1%}).")
    if verdict is None and has_val and n >= 4 and val_impr < PLATEAU_REL:
        sign = 1 if mode == "min" else -1
        best_v = val[best_idx]
        near = int(np.argmax(sign * (val - best_v) <= PLATEAU_REL * abs(best_v)))
        t_after = sign * (train[near] - train[-1]) / (abs(train[near]) or 1e-12)
        gap_near = sign * (val[near] - train[near]) / (abs(train[near]) or 1e-12)
        gap_end = sign * (val[-1] - train[-1]) / (abs(train[-1]) or 1e-12)
        ev.update({"val_plateau_epoch": int(epochs[near]), "train_change_after_plateau": round(float(t_after), 4),
                   "gap_rel_at_plateau": round(float(gap_near), 4), "gap_rel_at_end": round(float(gap_end), 4)})
        if near < n - 1 and t_after >= 2 * TRAIN_FALL_REL and gap_end - gap_near >= SMALL_GAP_REL:
            verdict, onset = "overfitting", int(epochs[near])
            summary.append(f"Validation {name} stopped improving around epoch {onset} (within {PLATEAU_REL:.0%} of its best "
                           f"from then on) while training {name} improved a further {t_after:.1%}; the train/validation gap "
                           f"widened from {gap_near:.1%} to {gap_end:.1%}. Later epochs mostly memorise the training set.")
    short = n < 4 and has_val and (val[-1] < val[0] if mode == "min" else val[-1] > val[0])
    late_best = best_idx >= n - max(2, round(0.2 * n))
    if verdict is None and has_val and (short or (late_best and val_impr > PLATEAU_REL)):
        verdict = "still improving"
        summary.append(f"Validation {name} was still improving when training stopped: best at the last epochs "
                       f"(epoch {best_epoch} of {int(epochs[-1])})" + (f", {val_impr:.1%} better over the last third." if not short
                       else f"; only {n} epochs, too few to see a plateau."))
    if verdict is None:
        gap_rel = abs(gaps.get(name, {}).get("gap_rel", 0.0))
        plateau = train_impr < PLATEAU_REL and (val_impr < PLATEAU_REL or not has_val)
        if plateau and gap_rel < SMALL_GAP_REL and (learned is None or learned > STALL_LEARNED):
            verdict = "underfitting / stalled"
            summary.append(f"Training and validation {name} both plateaued (last-third improvement {train_impr:.1%} and "
                           f"{val_impr:.1%}) with a small gap ({gap_rel:.1%}); training removed only "
                           f"{(1 - learned) if learned else 0:.0%} of the initial loss: the model stopped learning, it is not overfitting.")
        else:
            verdict = "good fit"
            summary.append(f"Validation {name} is at or near its best at the end (best epoch {best_epoch} of {int(epochs[-1])}) "
                           f"with a train/validation gap of {gap_rel:.1%}.")
    for k, g in gaps.items():
        if k != name:
            summary.append(f"Final {k}: train {g['train']:.4g}, validation {g['val']:.4g} (gap {g['gap']:+.4g}).")
    es = early_stopping_for(val, mode, best_idx) if has_val else None
    ev["early_stopping"] = es
    ev["thresholds"] = {"plateau": PLATEAU_REL, "rise": RISE_REL, "train_fall": TRAIN_FALL_REL, "small_gap": SMALL_GAP_REL,
                        "stall_learned": STALL_LEARNED, "spike": SPIKE_REL, "diverge": DIVERGE_REL, "noise": NOISE_REL}
    return Diagnosis(verdict, qualifiers, best_epoch, onset, name, ev, summary, remedies(verdict, qualifiers, ev, name))


def remedies(verdict: str, qualifiers: list[str], ev: dict, name: str) -> list[dict]:
    r: list[dict] = []
    es = ev.get("early_stopping")
    best = ev.get("best_epoch")

    def add(remedy, why, config=""):
        r.append({"remedy": remedy, "why": why, "config": config})

    if verdict == "overfitting":
        if es:
            add(f"Early stopping, patience {es['patience']}", f"on val_{name} it would have stopped at epoch {es['stop_epoch']} "
                f"and restored epoch {es['restored_epoch']} (within 1% of the best, epoch {best})",
                f"train.early_stopping.enabled=true train.early_stopping.monitor=val_{name} "
                f"train.early_stopping.patience={es['patience']} train.early_stopping.restore_best=true")
        add("Augment the training images", "more varied inputs are the cheapest cure for memorising faces",
            "augment.flip=0.5 augment.rotation=10 augment.zoom=0.1 augment.shift=0.05 augment.brightness=0.2")
        add("Dropout after the dense layers", "try rates 0.3 then 0.5 after hidden dense layers - not after pooling, never on the output",
            "model.dense_dropout=0.3")
        add("L2 weight regularization", "penalise large weights; try 1e-4, 1e-3, 1e-2 (Keras-style kernel L2)", "model.l2=0.001")
        add("A pretrained backbone", "ImageNet features need far less data to generalise than a CNN trained from scratch",
            "model.name=mobilenetv2 model.pretrained=imagenet")
        add("Lower the learning rate", "smaller steps overfit more slowly and settle in flatter minima; try 10x lower", "optim.lr=0.0001")
    elif verdict == "underfitting / stalled":
        add("Add capacity", "more filters or one or two more dense layers: the model cannot fit even the training data",
            "model.head_hidden=[256,128]")
        add("Loosen regularization", "if dropout/L2 are on, halve them: they may be holding the fit back", "model.dense_dropout=0.2 model.l2=0.0001")
        add("Batch norm after the activation", "Conv -> ReLU -> BN often trains more easily than BN before ReLU",
            "model.batch_norm=after")
        add("Try a different learning rate", "a stalled loss can mean steps that are too large (try 10x lower) or too small",
            "optim.lr=0.0001")
        add("A pretrained backbone", "a stronger starting point than random weights", "model.name=mobilenetv2 model.pretrained=imagenet")
        add("Train longer with a schedule", "a cosine or plateau schedule can restart progress", "schedule.name=plateau")
    elif verdict == "still improving":
        add("Train longer", f"validation {name} was still falling at the last epoch; give it more epochs",
            "train.epochs=<2x> train.early_stopping.enabled=true train.early_stopping.patience=10")
        add("Keep early stopping patient", "a short patience would cut a run that is still learning", "train.early_stopping.patience=10")
    elif verdict == "unstable":
        add("Lower the learning rate", "spikes and non-finite losses usually mean steps that are too large; try 10x lower",
            "optim.lr=0.0001")
        add("Batch normalization", "normalised activations keep the loss scale steady", "model.batch_norm=after")
        add("Check the data and precision", "NaN labels or mixed precision overflow can also blow up the loss", "train.precision=32-true")
        add("Warm up the learning rate", "a few warm-up epochs avoid early blow-ups", "schedule.name=cosine schedule.warmup_epochs=2")
    else:
        add("Try a pretrained backbone or more data", "the fit is sound; further gains come from better features or more examples",
            "model.name=mobilenetv2 model.pretrained=imagenet")
    if "noisy validation" in qualifiers:
        add("A larger validation set", "validation fluctuates a lot; more validation images give a steadier signal",
            "data.split=[0.7,0.2,0.1]")
        add("A min_delta for early stopping", "ignore improvements smaller than the noise", "train.early_stopping.min_delta=0.01")
    return r


def plot_diagnosis(rows: list[dict], d: Diagnosis, path) -> None:
    from pathlib import Path

    from .plots import plt, save_figure
    name = d.monitor
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ep, _series(rows, name), "o-", ms=3, label=f"train {name}")
    if any(f"val_{name}" in r for r in rows):
        ax.plot(ep, _series(rows, f"val_{name}"), "o-", ms=3, label=f"val {name}")
    if d.best_epoch:
        ax.axvline(d.best_epoch, color="green", ls="--", lw=1, label=f"best epoch {d.best_epoch}")
    if d.onset_epoch:
        ax.axvspan(d.onset_epoch, ep[-1], color="red", alpha=0.08, label=f"overfitting from epoch {d.onset_epoch}")
    ax.set_title(f"{d.verdict}" + (f" ({', '.join(d.qualifiers)})" if d.qualifiers else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, Path(path))
