"""Task heads: a small dense stack plus an output layer, its loss, and its decoding.

Every head decodes to the same prediction record (a dict of per-image tensors), so
evaluation, export and prediction never care which head produced an age:

    age        float years              (all age heads)
    age_low    5% quantile, age_high 95% quantile   (age_dist only: a 90% interval)
    age_bin    bin index                (age_bins; derived from ``age`` for the other heads)
    gender_prob probability of "female" (gender)
    race       class index, race_prob   (race)
    label      class index, label_prob  (label)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..labels import DIST_MAX_AGE, bin_centers

TASKS = ("age_reg", "age_bins", "age_dist", "gender", "race", "label")


def dense_stack(in_features: int, hidden: list[int], *, dropout: float, dropout_after: str,
                batch_norm: str, activation: str, bias: bool) -> tuple[nn.Sequential, list[nn.Linear]]:
    """Keras-style hidden Dense layers. Returns the stack and its Linear layers (for L2).

    ``batch_norm``: "none", "before" (Dense -> BN -> act) or "after" (Dense -> act -> BN).
    ``dropout_after``: "each" hidden layer or only the "last" one. Dropout never follows the
    output layer (that lives outside this stack).
    """
    layers: list[nn.Module] = []
    linears: list[nn.Linear] = []
    width = in_features
    for i, h in enumerate(hidden):
        lin = nn.Linear(width, h, bias=bias)
        linears.append(lin)
        layers.append(lin)
        act = [nn.ReLU()] if activation == "relu" else []
        bn = [nn.BatchNorm1d(h)] if batch_norm != "none" else []
        layers.extend(bn + act if batch_norm == "before" else act + bn)
        if dropout > 0 and (dropout_after == "each" or i == len(hidden) - 1):
            layers.append(nn.Dropout(dropout))
        width = h
    return nn.Sequential(*layers), linears


class TaskHead(nn.Module):
    task = ""
    classifies = False      # a softmax/sigmoid classifier: its loss reads model.label_smoothing

    def __init__(self, in_features: int, out_features: int, *, hidden=(), dropout=0.0, dropout_after="each",
                 batch_norm="none", activation="relu", bias=True, l2=0.0, label_smoothing=0.0):
        super().__init__()
        # Kept only where the loss reads it, so an ineffective override is reported as one
        # (training/resolve.py compares the modules' attributes).
        self.label_smoothing = label_smoothing if self.classifies else 0.0
        self.hidden, linears = dense_stack(in_features, list(hidden), dropout=dropout, dropout_after=dropout_after,
                                           batch_norm=batch_norm, activation=activation, bias=bias)
        self.out = nn.Linear(hidden[-1] if hidden else in_features, out_features)
        self.l2 = l2
        # As the reference listings: L2 on the hidden Dense layers, not the output layer. A head
        # without hidden layers regularizes its output layer, so model.l2 is never a no-op.
        self._l2_layers = linears or [self.out]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(features))

    def l2_penalty(self) -> torch.Tensor:
        """Keras ``kernel_regularizer=l2(l2)``: l2 * sum of squared kernel weights."""
        if self.l2 <= 0:
            return self.out.weight.new_zeros(())
        return self.l2 * sum((lin.weight ** 2).sum() for lin in self._l2_layers)

    # Subclasses implement. ``teacher_weight``: the teachers' share of the target where the batch
    # carries soft targets (distillation, training/distill.py); heads no teacher teaches ignore it.
    def loss(self, out: torch.Tensor, batch: dict, teacher_weight: float = 0.0) -> torch.Tensor: ...
    def decode(self, out: torch.Tensor) -> dict[str, torch.Tensor]: ...

    @staticmethod
    def _masked(out: torch.Tensor, target: torch.Tensor, valid: torch.Tensor):
        return out[valid], target[valid]


def _zero(out: torch.Tensor) -> torch.Tensor:
    return out.sum() * 0.0   # keeps the graph connected when a batch has no label for a task


class AgeRegressionHead(TaskHead):
    """Age as one linear output; L1 loss, i.e. the MAE itself (as in ``utk-custom-128``)."""
    task = "age_reg"

    def __init__(self, in_features: int, **kw):
        super().__init__(in_features, 1, **kw)

    def loss(self, out, batch, teacher_weight=0.0):
        valid = ~torch.isnan(batch["age"])
        if not valid.any():
            return _zero(out)
        return F.l1_loss(out.squeeze(1)[valid], batch["age"][valid])

    def decode(self, out):
        return {"age": out.squeeze(1)}


class AgeBinsHead(TaskHead):
    """Age as classes over bins; cross-entropy. Its age estimate is the expected bin centre."""
    task = "age_bins"
    classifies = True

    def __init__(self, in_features: int, *, edges, **kw):
        super().__init__(in_features, len(edges), **kw)
        self.register_buffer("centers", torch.tensor(bin_centers(edges), dtype=torch.float32), persistent=False)

    def loss(self, out, batch, teacher_weight=0.0):
        valid = batch["age_bin"] >= 0
        if not valid.any():
            return _zero(out)
        return F.cross_entropy(out[valid], batch["age_bin"][valid], label_smoothing=self.label_smoothing)

    def decode(self, out):
        p = out.softmax(dim=1)
        return {"age_bin": p.argmax(dim=1), "age": p @ self.centers, "age_bin_prob": p.max(dim=1).values}


class AgeDistributionHead(TaskHead):
    """Age as a distribution over single years 0..100 (the last class means 100+).

    Loss (DLDL-v2, Gao et al. 2018): cross-entropy against a Gaussian label distribution of
    width ``sigma`` around the true age, plus the L1 error of the expected age. The estimate is
    the expected value; the 5% and 95% quantiles of the predicted distribution give a 90%
    interval (read at the interval temperature, see ``inference/calibration.py``).

    Decoding adds ``logit_offset`` to the logits first: zero after training; ``faceage calibrate
    --age-prior`` sets it to ``-strength * log(prior)`` (logit adjustment, Menon et al. 2021), which
    divides the training ages' distribution out of the prediction in part, so that rare (old) ages
    are no longer pulled toward the common ones as hard.
    """
    task = "age_dist"
    n_classes = DIST_MAX_AGE + 1

    def __init__(self, in_features: int, *, sigma: float = 2.0, **kw):
        super().__init__(in_features, self.n_classes, **kw)
        self.sigma = sigma
        self.interval_temperature = 1.0     # set from the spec by FaceNet (faceage calibrate fits it)
        self.register_buffer("years", torch.arange(self.n_classes, dtype=torch.float32), persistent=False)
        self.register_buffer("logit_offset", torch.zeros(self.n_classes), persistent=False)   # ditto

    def set_age_prior(self, strength: float, prior: list[float] | None) -> None:
        """Decode from ``logits - strength * log(prior)``; strength 0 (or no prior) decodes the logits as trained."""
        if strength == 0 or prior is None:
            self.logit_offset.zero_()
            return
        p = torch.as_tensor(prior, dtype=torch.float64)
        if p.shape != (self.n_classes,) or not bool(torch.isfinite(p).all()) or bool((p <= 0).any()):
            raise ValueError(f"age_prior must be {self.n_classes} positive frequencies (ages 0..{DIST_MAX_AGE})")
        self.logit_offset.copy_((-strength * torch.log(p / p.sum())).float())

    def target_distribution(self, age: torch.Tensor) -> torch.Tensor:
        a = age.clamp(0, DIST_MAX_AGE).unsqueeze(1)
        logp = -0.5 * ((self.years.unsqueeze(0) - a) / self.sigma) ** 2
        return logp.softmax(dim=1)

    def loss(self, out, batch, teacher_weight=0.0):
        valid = ~torch.isnan(batch["age"])
        if not valid.any():
            return _zero(out)
        out, age = out[valid], batch["age"][valid]
        target = self.target_distribution(age)
        if teacher_weight > 0 and "teacher_age_dist" in batch:
            target = (1 - teacher_weight) * target + teacher_weight * batch["teacher_age_dist"][valid]
        soft_ce = F.cross_entropy(out, target)
        expected = out.softmax(dim=1) @ self.years
        return soft_ce + F.l1_loss(expected, age.clamp(0, DIST_MAX_AGE))

    def decode(self, out):
        out = out + self.logit_offset
        p = out.softmax(dim=1)
        # The interval may come from a tempered distribution (calibrated coverage); the estimate never does.
        t = self.interval_temperature
        cdf = (p if t == 1.0 else (out / t).softmax(dim=1)).cumsum(dim=1)
        # First year whose cumulative probability reaches the quantile.
        low = (cdf < 0.05).sum(dim=1).clamp(max=DIST_MAX_AGE).float()
        high = (cdf < 0.95).sum(dim=1).clamp(max=DIST_MAX_AGE).float()
        return {"age": p @ self.years, "age_low": low, "age_high": high}


class GenderHead(TaskHead):
    """One logit; binary cross-entropy. Decodes to the probability of 'female'.

    The probability may be read at a temperature that depends on the face's predicted age
    (``faceage calibrate`` fits one per age band, see ``inference/calibration.py``): a network
    trained on adults' and children's faces alike is as sure of a baby's gender as of an adult's,
    and right far less often. The answer (which side of 0.5) never changes, only how sure it says it is.
    """
    task = "gender"
    classifies = True

    def __init__(self, in_features: int, **kw):
        super().__init__(in_features, 1, **kw)
        # Band starts (years) and temperatures; one band at T 1 decodes the logit as trained.
        self.register_buffer("band_from", torch.zeros(1), persistent=False)
        self.register_buffer("band_temperature", torch.ones(1), persistent=False)

    def set_temperatures(self, bands: list[list[float]] | None) -> None:
        """``bands``: ``[[from_age, T], ...]``, ascending, the first from 0; None: T 1 for every age."""
        bands = bands or [[0.0, 1.0]]
        starts = [float(a) for a, _ in bands]
        temps = [float(t) for _, t in bands]
        if starts[0] != 0 or starts != sorted(set(starts)) or not all(t > 0 and t < float("inf") for t in temps):
            raise ValueError(f"gender_temperature must be [[from_age, T], ...] ascending from age 0 with T > 0; got {bands}")
        self.band_from = torch.tensor(starts, dtype=torch.float32, device=self.band_from.device)
        self.band_temperature = torch.tensor(temps, dtype=torch.float32, device=self.band_from.device)

    def loss(self, out, batch, teacher_weight=0.0):
        valid = batch["gender"] >= 0
        if not valid.any():
            return _zero(out)
        target = batch["gender"][valid].float()
        if self.label_smoothing > 0:      # two classes: 1 -> 1 - s/2, 0 -> s/2 (as cross_entropy's smoothing)
            target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        if teacher_weight > 0 and "teacher_gender_prob" in batch:
            teacher = batch["teacher_gender_prob"][valid]
            target = torch.where(torch.isnan(teacher), target, (1 - teacher_weight) * target + teacher_weight * teacher)
        return F.binary_cross_entropy_with_logits(out.squeeze(1)[valid], target)

    def decode(self, out, age: torch.Tensor | None = None):
        logit = out.squeeze(1)
        if age is not None and self.band_from.numel() > 1:
            # The temperature of the last band starting at or below the age (comparisons export to ONNX).
            band = ((age.unsqueeze(1) >= self.band_from).sum(dim=1) - 1).clamp(min=0)
            logit = logit / self.band_temperature[band]
        elif self.band_from.numel() == 1:
            logit = logit / self.band_temperature[0]
        return {"gender_prob": torch.sigmoid(logit)}


class ClassHead(TaskHead):
    """Plain softmax classification for ``race`` (5 classes) or a folder ``label``."""
    classifies = True

    def __init__(self, in_features: int, *, task: str, n_classes: int, **kw):
        super().__init__(in_features, n_classes, **kw)
        self.task = task

    def loss(self, out, batch, teacher_weight=0.0):
        target = batch[self.task]
        valid = target >= 0
        if not valid.any():
            return _zero(out)
        return F.cross_entropy(out[valid], target[valid], label_smoothing=self.label_smoothing)

    def decode(self, out):
        p = out.softmax(dim=1)
        return {self.task: p.argmax(dim=1), f"{self.task}_prob": p.max(dim=1).values}


def build_head(task: str, in_features: int, *, age_bins, num_classes: int | None, dist_sigma: float, **kw) -> TaskHead:
    if task == "age_reg":
        return AgeRegressionHead(in_features, **kw)
    if task == "age_bins":
        return AgeBinsHead(in_features, edges=age_bins, **kw)
    if task == "age_dist":
        return AgeDistributionHead(in_features, sigma=dist_sigma, **kw)
    if task == "gender":
        return GenderHead(in_features, **kw)
    if task == "race":
        return ClassHead(in_features, task="race", n_classes=5, **kw)
    if task == "label":
        if not num_classes:
            raise ValueError("the 'label' task needs model.num_classes")
        return ClassHead(in_features, task="label", n_classes=num_classes, **kw)
    raise ValueError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
