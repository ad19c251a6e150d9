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
  and validation improved by more than 2% over the last third; or 3 epochs, with validation
  better at the end than at the start (too short to see a plateau).
- STALLED (underfitting): both series plateaued, the train/validation gap is under 10%, and
  training removed less than half of its loss (counted from the second epoch when there are
  6 epochs or more: the first epoch's average is dominated by the random start).
- UNSTABLE: a non-finite loss, a training-loss spike of more than 50% from one epoch to the
  next, or training loss ending 20% above its own minimum.
- NOISY VALIDATION (a qualifier): validation deviates from its 5-epoch rolling median by more
  than 5% of its level on average (6 epochs or more).
- TOO EARLY TO TELL: one or two epochs (and no instability): no curve has a shape yet.
- NO VALIDATION: the log has no validation numbers for the judged metric. Overfitting, a good
  fit and a train/validation gap cannot be seen from the training curve alone, so none is
  claimed; the remedy is to add a validation set. (Training-only instability is still UNSTABLE,
  with "no validation" as a qualifier.) Epochs that have only one of the two numbers
  (validation every few epochs) are left out of the judgement, not counted as non-finite.

Remedies are tailored twice. To the model: a remedy that cannot apply is left out, with the
reason in ``evidence["not_applicable"]`` (dropout after dense layers for a model with no hidden
dense layer; a pretrained backbone for a run that already has one; a value the run already
uses), and values are stepped from the run's own (10x lower than *its* learning rate). What is
known comes from a faceage run's config.yaml or from the model a callback watched
(:class:`ModelFacts`); unknown facts leave every remedy in. To the framework: each remedy is
said as faceage config keys for faceage runs, and as code for Keras, Lightning, plain PyTorch
or fastai logs (the detected log kind decides), with the metric names the log used.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

PLATEAU_REL = 0.02
RISE_REL = 0.03
TRAIN_FALL_REL = 0.03
SMALL_GAP_REL = 0.10
STALL_LEARNED = 0.5
SPIKE_REL = 0.5
DIVERGE_REL = 0.2
NOISE_REL = 0.05
HIGHER_IS_BETTER = re.compile(r"acc|accuracy|auc|f1|precision|recall|cs5|iou", re.I)
TOO_EARLY = 2                      # epochs: at most this many is too early to tell
NOT_MONITORED = {"epoch", "lr", "learning_rate", "seconds", "time", "step"}
FRAMEWORKS = ("faceage", "keras", "lightning", "pytorch", "fastai")


@dataclass
class ModelFacts:
    """What is known about the model and its training; None means unknown (remedies stay in).

    ``hidden_dense``: widths of the hidden dense layers ([] = none: the features go straight to
    the output layer). ``pretrained``: "" for a model trained from scratch, else what it started
    from. ``batch_norm``: faceage's ``model.batch_norm`` ("none"/"before"/"after"), or "n/a" where
    that key does not apply (library backbones keep their own normalization).
    """
    name: str | None = None
    hidden_dense: list[int] | None = None
    dense_dropout: float | None = None
    l2: float | None = None
    weight_decay: float | None = None
    pretrained: str | None = None
    batch_norm: str | None = None
    lr: float | None = None
    augment: dict | None = None
    early_stopping: dict | None = None
    warmup_epochs: int | None = None
    precision: str | None = None
    schedule: str | None = None
    backbone_lr_scale: float | None = None
    freeze: str | None = None
    max_epochs: int | None = None
    run_dir: str | None = None          # a faceage run's directory: remedies can name it


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
    framework: str = "faceage"

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
                if r.get("code"):
                    lines.append(f"       {r['code']}")
        left = self.evidence.get("not_applicable") or []
        if left:
            lines.append("Left out, as they do not apply here:")
            lines += [f"  - {r['remedy']}: {r['because']}" for r in left]
        return "\n".join(lines)

    def onset_line(self, epoch: int | None = None) -> str:
        """One line for a training callback at the epoch overfitting is first seen."""
        ev, name = self.evidence, self.monitor
        seen = f" (seen at epoch {epoch})" if epoch else ""
        if self.onset_epoch == self.best_epoch and (ev.get("val_rise_from_best") or 0) >= RISE_REL:
            line = (f"faceage: overfitting since epoch {self.onset_epoch}{seen}: validation {name} has risen "
                    f"{ev['val_rise_from_best']:.1%} from its best while training {name} kept improving")
        else:
            line = (f"faceage: overfitting since epoch {self.onset_epoch}{seen}: validation {name} stopped improving "
                    f"while training {name} kept improving")
        first = self.remedies[0] if self.remedies else None
        if first and (first.get("code") or first.get("config")):
            line += f". Try: {first.get('code') or first.get('config')}"
        return line


def _series(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r.get(key, math.nan) for r in rows], dtype=float)


def _mode(k: str) -> str:
    return "max" if HIGHER_IS_BETTER.search(k) else "min"


def pick_monitor(rows: list[dict]) -> tuple[str, str]:
    """The pair to judge by: loss if both train and validation loss exist, else the first X/val_X;
    without validation numbers, the training loss (or the first training metric).
    Raises :class:`DataError` (a clean CLI error) when there is nothing to judge."""
    keys = {k for k in set().union(*rows) if k not in NOT_MONITORED and not k.startswith("lr_")}
    if {"loss", "val_loss"} <= keys:
        return "loss", "min"
    for k in sorted(keys):
        if not k.startswith("val_") and f"val_{k}" in keys:
            return k, _mode(k)
    train = sorted(k for k in keys if not k.startswith("val_"))
    if "loss" in keys:
        return "loss", "min"
    if train:
        k = next((k for k in train if "loss" in k), train[0])
        return k, _mode(k)
    if keys:
        raise DataError(f"only validation numbers ({', '.join(sorted(keys))}): diagnose compares them with the "
                        "training curve; log the training loss too")
    raise DataError("no metric to judge: the history has epochs but no loss or metric columns")


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


def diagnose(rows: list[dict], *, framework: str = "faceage", model: ModelFacts | None = None,
             names: dict[str, str] | None = None) -> Diagnosis:
    """Judge a history. ``framework`` says the remedies in faceage keys or in Keras, Lightning,
    PyTorch or fastai code; ``model`` leaves out remedies that do not apply; ``names`` maps
    canonical metric names to the log's own (``val_loss`` -> ``valid_loss``)."""
    if not rows:
        raise DataError("no epochs to judge")
    name, mode = pick_monitor(rows)
    vname = f"val_{name}"
    # Validation every N epochs (Lightning's check_val_every_n_epoch, a killed last validation):
    # judge the epochs that have both numbers. A missing number is not a non-finite one.
    both = [r for r in rows if name in r and vname in r]
    skipped_epochs = len(rows) - len(both) if both else 0
    if both:
        rows = both
    epochs = np.array([r["epoch"] for r in rows])
    train = _series(rows, name)
    val = _series(rows, vname)
    n = len(rows)
    has_val = np.isfinite(val).any()
    ev: dict = {"epochs": n, "monitor": name, "mode": mode, "has_validation": bool(has_val)}
    if skipped_epochs:
        ev["epochs_without_both"] = skipped_epochs
        summary_note = (f"{skipped_epochs} epoch(s) without both training and validation {name} are left out "
                        f"(validation every few epochs?); the other {n} are judged.")
    else:
        summary_note = ""
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
    if has_val:
        ev["val_noise_abs"] = float(noise * abs(np.nanmedian(val)))
    # The learning rate the user set: the largest one logged (after warm-up, before decay).
    lrs = [v for r in rows for k, v in r.items() if (k in ("lr", "learning_rate") or k.startswith("lr_"))
           and isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    if lrs:
        ev["peak_lr"] = float(max(lrs))
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

    if verdict is None and n <= TOO_EARLY:
        verdict = "too early to tell"
        change = ""
        if has_val:
            change = f" Validation {name} went {val[0]:.4g} -> {val[-1]:.4g}."
        elif len(finite_train) > 1:
            change = f" Training {name} went {finite_train[0]:.4g} -> {finite_train[-1]:.4g}."
        summary.append(f"Only {n} epoch{'s' if n > 1 else ''}: a learning curve needs at least {TOO_EARLY + 2} epochs "
                       f"before it shows overfitting, a plateau or steady progress.{change}")
    if verdict is None and not has_val:
        verdict = "no validation"
        other = sorted(k for k in set().union(*rows) if k.startswith("val_"))
        trend = (f"training {name} went {finite_train[0]:.4g} -> {finite_train[-1]:.4g} over {n} epochs "
                 f"({train_impr:.1%} better over its last third)") if len(finite_train) > 1 else f"training {name} only"
        summary.append(f"The log has no validation {name}: {trend}. Overfitting, a good fit or a train/validation gap "
                       "cannot be seen from the training curve alone, so none is claimed."
                       + (f" (It has {', '.join(other)}, with no training counterpart to compare.)" if other else ""))
    if verdict != "no validation" and not has_val:
        qualifiers.append("no validation")
        if verdict == "unstable":
            summary.append(f"The log has no validation {name}: after fixing the instability, add a validation set.")
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
    if summary_note:
        summary.append(summary_note)
    for k, g in gaps.items():
        if k != name:
            summary.append(f"Final {k}: train {g['train']:.4g}, validation {g['val']:.4g} (gap {g['gap']:+.4g}).")
    es = early_stopping_for(val, mode, best_idx) if has_val else None
    ev["early_stopping"] = es
    ev["thresholds"] = {"plateau": PLATEAU_REL, "rise": RISE_REL, "train_fall": TRAIN_FALL_REL, "small_gap": SMALL_GAP_REL,
                        "stall_learned": STALL_LEARNED, "spike": SPIKE_REL, "diverge": DIVERGE_REL, "noise": NOISE_REL}
    framework = framework if framework in FRAMEWORKS else "pytorch"
    rem = remedies(verdict, qualifiers, ev, name, framework=framework, model=model, names=names)
    return Diagnosis(verdict, qualifiers, best_epoch, onset, name, ev, summary, rem, framework)


def _g(x: float) -> str:
    """A number as people write it in code: 0.0001 -> 1e-4, 0.3 -> 0.3."""
    x = float(f"{x:.2g}")
    if 0 < abs(x) < 1e-3:
        mant, exp = f"{x:.1e}".split("e")
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    return f"{x:g}"


def _list(xs) -> str:
    return "[" + ",".join(str(int(x)) for x in xs) + "]"


def remedies(verdict: str, qualifiers: list[str], ev: dict, name: str, *, framework: str = "faceage",
             model: ModelFacts | None = None, names: dict[str, str] | None = None) -> list[dict]:
    """Remedies for the verdict, most promising first, each as ``{"remedy", "why", "config",
    "code"}``: ``config`` holds faceage keys (faceage runs), ``code`` the same idea in the
    framework's own terms (other logs). Remedies that cannot apply to ``model`` go to
    ``ev["not_applicable"]`` instead."""
    r: list[dict] = []
    skipped: list[dict] = []
    m = model or ModelFacts()
    fw = framework if framework in FRAMEWORKS else "pytorch"
    es = ev.get("early_stopping")
    best = ev.get("best_epoch")
    n = int(ev.get("epochs") or 0)
    mode = ev.get("mode", "min")
    what = m.name or "this model"
    vkey = f"val_{name}"
    # The monitored name as the user's code spells it: Keras and plain PyTorch use val_X;
    # Lightning and fastai monitor the name that was logged (fastai: valid_loss).
    mon = (names or {}).get(vkey, vkey) if fw in ("lightning", "fastai") else vkey
    kmax = ', mode="max"' if mode == "max" else ""
    lr = m.lr if m.lr else ev.get("peak_lr")

    def add(remedy, why, config="", **code):
        said = code.get(fw)
        if said is None and fw in ("lightning", "pytorch", "fastai"):
            said = code.get("torch", "")
        r.append({"remedy": remedy, "why": why, "config": config if fw == "faceage" else "",
                  "code": "" if fw == "faceage" else (said or "")})

    def skip(remedy, because):
        skipped.append({"remedy": remedy, "because": because})

    def early_stopping(p, restore=True):
        return dict(
            keras=f'EarlyStopping(monitor="{mon}", patience={p}{kmax}' + (", restore_best_weights=True)" if restore else ")")
            + " in model.fit(callbacks=[...])",
            lightning=f'Trainer(callbacks=[EarlyStopping(monitor="{mon}", patience={p}{kmax}), '
                      f'ModelCheckpoint(monitor="{mon}"{kmax})]), then trainer.test(ckpt_path="best")',
            pytorch=f"stop when {mon} has not improved for {p} epoch{'s' if p > 1 else ''} and reload the best weights "
                    "(best = copy.deepcopy(model.state_dict()) at each new best; model.load_state_dict(best))",
            fastai=f'learn.fit_one_cycle(n, cbs=[EarlyStoppingCallback(monitor="{mon}", patience={p}), '
                   f'SaveModelCallback(monitor="{mon}")])')

    pretrained_code = dict(
        faceage="model.name=mobilenetv2 model.pretrained=imagenet",
        keras='base = keras.applications.MobileNetV2(include_top=False, weights="imagenet", pooling="avg"); '
              "base.trainable = False; your Dense head on top",
        torch='torchvision.models.mobilenet_v2(weights="IMAGENET1K_V2") with its last classifier layer replaced by '
              "your output layer",
        fastai="vision_learner(dls, resnet34) then learn.fine_tune(n): pretrained on ImageNet by default")

    def offer_pretrained(why):
        if m.pretrained:
            skip("A pretrained backbone", f"the run already starts from pretrained weights ({m.pretrained})")
            return False
        add("A pretrained backbone", why, pretrained_code["faceage"], **pretrained_code)
        return True

    def lower_lr(why, clip=False):
        new = _g(lr / 10) if lr else "1e-4"
        add("Lower the learning rate", why + (f" (the run used {_g(lr)})" if lr else ""), f"optim.lr={new}",
            keras=f"optimizer=keras.optimizers.Adam(learning_rate={new}" + (", clipnorm=1.0)" if clip else ")")
            + " in model.compile",
            lightning=f"lr={new} in configure_optimizers" + (", and Trainer(gradient_clip_val=1.0)" if clip else ""),
            pytorch=f"lr={new} in the optimizer" + (", and torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) "
                                                     "before optimizer.step()" if clip else ""),
            fastai=f"learn.fit_one_cycle(n, lr_max={new})" + (", cbs=GradientClip(1.0)" if clip else "")
            + " (or pick it with learn.lr_find())")

    if verdict == "overfitting":
        if es:
            on = m.early_stopping or {}
            if on.get("enabled") and on.get("restore_best", True) and int(on.get("patience", 99)) <= es["patience"]:
                skip(f"Early stopping, patience {es['patience']}", f"early stopping is already on (patience "
                     f"{on.get('patience')}) and restores the best epoch")
            else:
                add(f"Early stopping, patience {es['patience']}", f"on {vkey} it would have stopped at epoch "
                    f"{es['stop_epoch']} and restored epoch {es['restored_epoch']} (within 1% of the best, epoch {best})",
                    f"train.early_stopping.enabled=true train.early_stopping.monitor={vkey} "
                    f"train.early_stopping.patience={es['patience']} train.early_stopping.restore_best=true",
                    **early_stopping(es["patience"]))
        want = {"flip": 0.5, "rotation": 10, "zoom": 0.1, "shift": 0.05, "brightness": 0.2}
        if m.augment is not None:
            more = {k: v for k, v in want.items() if float(m.augment.get(k) or 0) < v}
            if not more:
                more = {k: 0.2 for k in ("blur", "downscale", "jpeg") if not float(m.augment.get(k) or 0)}
        else:
            more = want
        if more:
            add("Augment the training images", "more varied inputs are the cheapest cure for memorising the training images",
                " ".join(f"augment.{k}={v}" for k, v in more.items()),
                keras='layers.RandomFlip("horizontal"), layers.RandomRotation(0.03), layers.RandomZoom(0.1) as the '
                      "first layers of the model (they are active only in training)",
                torch="transforms.RandomHorizontalFlip(), transforms.RandomRotation(10), "
                      "transforms.RandomResizedCrop(size, scale=(0.8, 1.0)), transforms.ColorJitter(brightness=0.2) "
                      "in the training set's torchvision transform (not the validation set's)",
                fastai="batch_tfms=aug_transforms(max_rotate=10, max_zoom=1.1) in your DataLoaders")
        else:
            skip("Augment the training images", "the run already uses every augmentation faceage has")
        rate = 0.3
        if m.dense_dropout is not None and m.dense_dropout >= 0.3:
            rate = 0.5
        if m.hidden_dense is not None and not m.hidden_dense:
            skip("Dropout after the dense layers", f"{what} has no hidden dense layer: its features go straight to "
                 "the output layer, and dropout belongs after a hidden dense layer, never on the output")
        elif m.dense_dropout is not None and m.dense_dropout >= 0.5:
            skip("Dropout after the dense layers", f"dropout is already {m.dense_dropout:g}")
        else:
            width = m.hidden_dense[0] if m.hidden_dense else 128
            add("Dropout after the dense layers", f"try rates {rate:g} then 0.5 after hidden dense layers - not after "
                "pooling, never on the output", f"model.dense_dropout={rate:g}",
                keras=f'Dropout({rate:g}) after Dense({width}, activation="relu") (each hidden Dense; never after the '
                      "output layer)",
                torch=f"nn.Dropout({rate:g}) after each hidden nn.Linear and its activation, e.g. "
                      f"nn.Linear(n, {width}), nn.ReLU(), nn.Dropout({rate:g}) (never after the output layer)",
                fastai=f"vision_learner(dls, arch, ps={max(rate, 0.7):g}): the head's dropout (fastai's default is 0.5)")
        have = m.l2 if fw in ("faceage", "keras") else m.weight_decay
        if have is not None and have >= (1e-2 if fw in ("faceage", "keras") else 0.1):
            skip("L2 weight regularization", f"{'L2' if fw in ('faceage', 'keras') else 'weight decay'} is already "
                 f"{_g(have)}")
        else:
            l2 = _g(have * 10) if have else "0.001"
            wd = _g(have * 10) if have else "1e-4"
            add("L2 weight regularization", "penalise large weights; try 1e-4, 1e-3, 1e-2"
                + (" (Keras-style kernel L2)" if fw in ("faceage", "keras") else " (weight decay)"), f"model.l2={l2}",
                keras=f"kernel_regularizer=l2({_g(have * 10) if have else '1e-4'}) on the Dense and Conv2D layers "
                      "(from keras.regularizers import l2)",
                lightning=f"weight_decay={wd} in the optimizer of configure_optimizers, e.g. "
                          f"torch.optim.AdamW(self.parameters(), lr=..., weight_decay={wd})",
                pytorch=f"weight_decay={wd} in the optimizer, e.g. "
                        f"torch.optim.AdamW(model.parameters(), lr=..., weight_decay={wd})",
                fastai="learn.fit_one_cycle(n, wd=0.1) (fastai's default weight decay is 0.01)")
        if not offer_pretrained("ImageNet features need far less data to generalise than a CNN trained from scratch") \
                and fw == "faceage":
            if m.backbone_lr_scale is None or m.backbone_lr_scale >= 1:
                add("Fine-tune the pretrained backbone gently", "smaller steps for the pretrained layers keep a small "
                    "dataset from overwriting their features", "optim.backbone_lr_scale=0.1")
            elif m.freeze in (None, "none"):
                add("Train the heads first", "freeze the pretrained backbone for the first epochs, then fine-tune it all",
                    "model.freeze=backbone model.unfreeze_epoch=3")
        lower_lr("smaller steps overfit more slowly and settle in flatter minima; try 10x lower")
    elif verdict == "underfitting / stalled":
        hidden = m.hidden_dense
        grow = _list([2 * hidden[0]] + list(hidden)) if hidden else ("[128]" if hidden is not None else "[256,128]")
        add("Add capacity", "more filters or one or two more dense layers: the model cannot fit even the training data",
            f"model.head_hidden={grow}",
            keras='another Dense(256, activation="relu") before the output layer, or more filters in each Conv2D',
            torch="another nn.Linear(n, 256), nn.ReLU() before the output layer, or more channels in each nn.Conv2d",
            fastai="a larger architecture, e.g. vision_learner(dls, resnet50)")
        parts = []
        if m.dense_dropout:
            parts.append(f"model.dense_dropout={_g(m.dense_dropout / 2)}")
        if m.l2:
            parts.append(f"model.l2={_g(m.l2 / 2)}")
        if m.weight_decay:
            parts.append(f"optim.weight_decay={_g(m.weight_decay / 2)}")
        known = m.dense_dropout is not None and m.l2 is not None
        if known and not parts:
            skip("Loosen regularization", "the run has no dropout, L2 or weight decay to loosen")
        else:
            add("Loosen regularization", "if dropout/L2 are on, halve them: they may be holding the fit back",
                " ".join(parts) or "model.dense_dropout=0.2 model.l2=0.0001",
                keras="halve the Dropout rates and the l2(...) factors",
                torch="halve the nn.Dropout rates and the optimizer's weight_decay",
                fastai="lower ps in vision_learner and wd in fit_one_cycle")
        if m.batch_norm == "n/a":
            skip("Batch norm after the activation", f"model.batch_norm applies to faceage's reference CNNs; {what} "
                 "keeps its own normalization layers")
        elif m.batch_norm == "after":
            skip("Batch norm after the activation", "batch norm already follows the activation")
        else:
            add("Batch norm after the activation", "Conv -> ReLU -> BN often trains more easily than BN before ReLU",
                "model.batch_norm=after",
                keras='Conv2D(...), Activation("relu"), BatchNormalization() instead of BN before the activation',
                torch="nn.Conv2d(...), nn.ReLU(), nn.BatchNorm2d(channels) instead of BN before the activation")
        add("Try a different learning rate", "a stalled loss can mean steps that are too large (try 10x lower) or too "
            "small" + (f"; the run used {_g(lr)}" if lr else ""), f"optim.lr={_g(lr / 10) if lr else '0.0001'}",
            keras=f"keras.optimizers.Adam(learning_rate={_g(lr / 10) if lr else '1e-4'}) in model.compile, and "
                  f"{_g(lr * 3) if lr else '3e-3'}",
            lightning=f"lr={_g(lr / 10) if lr else '1e-4'} in configure_optimizers, and {_g(lr * 3) if lr else '3e-3'}",
            pytorch=f"lr={_g(lr / 10) if lr else '1e-4'} in the optimizer, and {_g(lr * 3) if lr else '3e-3'}",
            fastai="learn.lr_find(), then fit_one_cycle with its suggestion")
        if not offer_pretrained("a stronger starting point than random weights") and fw == "faceage" \
                and m.freeze not in (None, "none"):
            add("Unfreeze the backbone", f"the pretrained layers are frozen ({m.freeze}): let them adapt",
                "model.freeze=none")
        if m.schedule not in (None, "constant"):
            skip("Train longer with a schedule", f"the run already uses the {m.schedule} schedule")
        else:
            add("Train longer with a schedule", "a cosine or plateau schedule can restart progress", "schedule.name=plateau",
                keras=f'ReduceLROnPlateau(monitor="{mon}", factor=0.5, patience=3) in model.fit(callbacks=[...])',
                lightning='return {"optimizer": opt, "lr_scheduler": {"scheduler": '
                          f'torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3), "monitor": "{mon}"}}}} '
                          "from configure_optimizers",
                pytorch="sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3); "
                        f"sched.step({mon}) after each epoch",
                fastai="learn.fit_one_cycle(n) (one-cycle schedule)")
    elif verdict == "still improving":
        more = max(2 * n, 10)
        add("Train longer", f"validation {name} was still falling at the last epoch; give it more epochs"
            + (f" (a finished run goes on from where it stopped: faceage train --resume {m.run_dir or 'RUN'} --epochs {more})"
               if fw == "faceage" else ""),
            f"train.epochs={more} train.early_stopping.enabled=true train.early_stopping.patience=10",
            keras=f"model.fit(..., epochs={more}, callbacks=[EarlyStopping(monitor=\"{mon}\", patience=10{kmax}, "
                  "restore_best_weights=True)])",
            lightning=f'Trainer(max_epochs={more}, callbacks=[EarlyStopping(monitor="{mon}", patience=10{kmax})])',
            pytorch=f"{more} epochs, stopping only after 10 epochs without a better {mon}",
            fastai=f'learn.fit_one_cycle({more}, cbs=EarlyStoppingCallback(monitor="{mon}", patience=10))')
        on = m.early_stopping
        if on is not None and (not on.get("enabled") or int(on.get("patience", 0)) >= 10):
            skip("Keep early stopping patient", "early stopping is off in this run" if not on.get("enabled")
                 else f"its patience is already {on.get('patience')}")
        else:
            add("Keep early stopping patient", "a short patience would cut a run that is still learning",
                "train.early_stopping.patience=10",
                keras=f'EarlyStopping(monitor="{mon}", patience=10{kmax}, restore_best_weights=True)',
                lightning=f'EarlyStopping(monitor="{mon}", patience=10{kmax})',
                pytorch="a patience of 10 epochs or more",
                fastai=f'EarlyStoppingCallback(monitor="{mon}", patience=10)')
    elif verdict == "unstable":
        lower_lr("spikes and non-finite losses usually mean steps that are too large; try 10x lower", clip=True)
        if m.batch_norm == "n/a":
            skip("Batch normalization", f"model.batch_norm applies to faceage's reference CNNs; {what} keeps its own")
        elif m.batch_norm in ("before", "after"):
            skip("Batch normalization", f"batch norm is already on ({m.batch_norm} the activation)")
        else:
            add("Batch normalization", "normalised activations keep the loss scale steady", "model.batch_norm=after",
                keras="BatchNormalization() after each Conv2D and hidden Dense activation",
                torch="nn.BatchNorm2d after each nn.Conv2d activation and nn.BatchNorm1d after each hidden nn.Linear")
        full = m.precision is not None and m.precision.startswith("32")
        add("Check the data and precision", "NaN labels or mixed precision overflow can also blow up the loss"
            + ("; the run is already in full precision, so check the labels and inputs for NaN or extreme values"
               if full else ""), "" if full else "train.precision=32-true",
            keras='keras.config.set_dtype_policy("float32") while debugging, and np.isfinite(x).all() and '
                  "np.isfinite(y).all() on the data",
            lightning='Trainer(precision="32-true", detect_anomaly=True) while debugging, and '
                      "torch.isfinite(y).all() on the labels",
            pytorch="no torch.autocast/GradScaler while debugging, and assert torch.isfinite(x).all() and "
                    "torch.isfinite(y).all()",
            fastai="no .to_fp16() while debugging, and check the labels for NaN")
        if m.warmup_epochs:
            skip("Warm up the learning rate", f"the run already warms up for {m.warmup_epochs} epoch(s)")
        else:
            add("Warm up the learning rate", "a few warm-up epochs avoid early blow-ups",
                "schedule.name=cosine schedule.warmup_epochs=2",
                keras="learning_rate=keras.optimizers.schedules.CosineDecay(0.0, decay_steps, warmup_target=lr, "
                      "warmup_steps=2 * steps_per_epoch)",
                lightning="torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=2) returned from "
                          "configure_optimizers",
                pytorch="torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=2), stepped each epoch",
                fastai="learn.fit_one_cycle(n): it warms up by design")
    elif verdict == "too early to tell":
        more = 20
        add("Train longer", f"{n} epoch(s) cannot show a trend; train at least 10 with early stopping to catch the "
            "turn", f"train.epochs={more} train.early_stopping.enabled=true train.early_stopping.patience=5",
            keras=f"model.fit(..., epochs={more}, callbacks=[EarlyStopping(monitor=\"{mon}\", patience=5{kmax}, "
                  "restore_best_weights=True)])",
            lightning=f'Trainer(max_epochs={more}, callbacks=[EarlyStopping(monitor="{mon}", patience=5{kmax})])',
            pytorch=f"{more} epochs, stopping after 5 without a better {mon}",
            fastai=f'learn.fit_one_cycle({more}, cbs=EarlyStoppingCallback(monitor="{mon}", patience=5))')
    elif verdict == "no validation":
        pass                                   # the one remedy is added below
    else:
        if m.pretrained:
            skip("A pretrained backbone", f"the run already starts from pretrained weights ({m.pretrained})")
            add("More data", "the fit is sound and the backbone is pretrained: further gains come from more (and more "
                "varied) training examples")
        else:
            add("Try a pretrained backbone or more data", "the fit is sound; further gains come from better features "
                "or more examples", pretrained_code["faceage"], **pretrained_code)
    if "no validation" in qualifiers or verdict == "no validation":
        add("Add a validation set", "hold out 15-20% of the data and report the loss on it every epoch: only the gap "
            "between the two curves shows overfitting", "data.split=[0.7,0.15,0.15]",
            keras="model.fit(x, y, validation_split=0.2, ...) or validation_data=(x_val, y_val): Keras then logs "
                  "val_loss every epoch",
            lightning='a validation_step that calls self.log("val_loss", loss), and '
                      "trainer.fit(model, train_loader, val_loader)",
            pytorch="hold out 15-20% (torch.utils.data.random_split); after each epoch compute the loss on it under "
                    "model.eval() and torch.no_grad(), and print it as val_loss",
            fastai="valid_pct=0.2 in your DataLoaders (a '#na#' valid_loss means there was no validation set)")
    if "noisy validation" in qualifiers:
        add("A larger validation set", "validation fluctuates a lot; more validation images give a steadier signal",
            "data.split=[0.7,0.2,0.1]",
            keras="validation_split=0.3 in model.fit (or a larger validation_data)",
            torch="a larger held-out part, e.g. random_split(dataset, [0.7, 0.3])",
            fastai="valid_pct=0.3 in your DataLoaders")
        noise = ev.get("val_noise_abs") or 0.0
        md = _g(float(f"{noise:.1g}")) if noise > 0 else "0.01"
        add("A min_delta for early stopping", "ignore improvements smaller than the noise",
            f"train.early_stopping.min_delta={md}",
            keras=f'EarlyStopping(monitor="{mon}", min_delta={md}, patience=..., restore_best_weights=True)',
            lightning=f'EarlyStopping(monitor="{mon}", min_delta={md}, patience=...)',
            pytorch=f"count an epoch as better only if {mon} improved by more than {md}",
            fastai=f'EarlyStoppingCallback(monitor="{mon}", min_delta={md}, patience=...)')
    ev["not_applicable"] = skipped
    return r


def facts_from_run(run_dir: str | Path) -> ModelFacts | None:
    """The model and training facts of a faceage run, from its config.yaml; None without one."""
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        return None
    try:
        import yaml

        from ..config import config_from_dict
        from .histories import _read_text
        cfg = config_from_dict(yaml.safe_load(_read_text(p)) or {})
    except Exception:                     # an unreadable or foreign config: judge without it
        return None
    mc = cfg.model
    facts = ModelFacts(
        name=mc.name, hidden_dense=mc.head_hidden, dense_dropout=mc.dense_dropout, l2=mc.l2,
        weight_decay=cfg.optim.weight_decay,
        pretrained=None if mc.pretrained is None else ("" if str(mc.pretrained).lower() in ("none", "false", "off")
                                                          else str(mc.pretrained)),
        batch_norm=mc.batch_norm, lr=cfg.optim.lr, augment=dict(vars(cfg.augment)),
        early_stopping=dict(vars(cfg.train.early_stopping)), warmup_epochs=cfg.schedule.warmup_epochs,
        precision=cfg.train.precision, schedule=cfg.schedule.name, backbone_lr_scale=cfg.optim.backbone_lr_scale,
        freeze=mc.freeze, max_epochs=cfg.train.epochs, run_dir=str(run_dir))
    try:                                  # the model's own defaults fill what the recipe left unset
        from ..models.registry import get_entry, resolve
        spec = resolve(mc.name, **{k: v for k, v in vars(mc).items() if k != "name"})
        reference = get_entry(mc.name).family == "reference"
    except Exception:
        return facts
    facts.hidden_dense = list(spec.head_hidden)
    facts.dense_dropout, facts.l2, facts.freeze = spec.dense_dropout, spec.l2, spec.freeze
    facts.pretrained = spec.pretrained or ""
    facts.batch_norm = spec.batch_norm if reference else "n/a"
    return facts


def diagnose_history(h) -> Diagnosis:
    """:func:`diagnose` for a :class:`~faceage.evaluation.histories.History`: remedies in the
    log's framework, tailored to a faceage run's config.yaml."""
    facts = facts_from_run(h.run_dir) if h.run_dir is not None else None
    d = diagnose(h.rows, framework=h.framework, model=facts, names=h.names)
    d.summary += [f"Note: {n}." for n in h.notes]
    return d


class EpochLog:
    """Per-epoch rows gathered inside a training loop, for the Keras and Lightning callbacks.

    ``add`` takes the epoch's metrics under any names (canonicalised as the history readers
    do). With ``warn_onset`` it prints one line, once, when the history has read as overfitting
    with the same onset on two consecutive epochs (one epoch of delay buys a warning that does
    not move: the first detection often shifts its onset by an epoch as more data comes in).
    """

    def __init__(self, framework: str, warn_onset: bool = False, print_fn=print):
        self.framework, self.warn_onset, self.print_fn = framework, warn_onset, print_fn
        self.rows: list[dict] = []
        self.names: dict[str, str] = {}
        self.warned_onset: int | None = None
        self._candidate: int | None = None
        self.warnings: list[str] = []

    def add(self, epoch: int, metrics: dict, model: ModelFacts | None = None) -> None:
        from .histories import canonical_name
        row: dict = {"epoch": int(epoch)}
        levels: dict[str, str | None] = {}
        for raw, v in metrics.items():
            c = canonical_name(str(raw))
            if c is None:
                continue
            key, level = c
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            rank = {"epoch": 2, None: 1, "step": 0}[level]
            if key not in row or rank > {"epoch": 2, None: 1, "step": 0}[levels[key]]:
                row[key], levels[key] = v, level
                self.names[key] = str(raw)
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if self.warn_onset and self.warned_onset is None and len(self.rows) > TOO_EARLY:
            try:
                d = diagnose(self.rows, framework=self.framework, model=model, names=self.names)
            except DataError:
                return
            onset = d.onset_epoch if d.verdict == "overfitting" else None
            if onset is not None and onset == self._candidate:
                self.warned_onset = onset
                line = d.onset_line(int(epoch))
                self.warnings.append(line)
                self.print_fn(line)
            self._candidate = onset

    def finish(self, model: ModelFacts | None = None) -> Diagnosis | None:
        if not self.rows:
            return None
        try:
            return diagnose(self.rows, framework=self.framework, model=model, names=self.names)
        except DataError as exc:
            self.print_fn(f"faceage: nothing to diagnose: {exc}")
            return None

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
