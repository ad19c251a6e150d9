"""The LightningModule: uint8 batches in, normalized + augmented on the training device."""
from __future__ import annotations

import math

import lightning as L
import torch
import torchmetrics

from ..config import METRIC_NAMES, Config  # noqa: F401  (names follow Keras: ``mae``, ``val_mae``)
from ..data.augment import BatchAugment
from ..errors import FaceageError
from ..models.network import FaceNet


class TrainingDiverged(FaceageError):
    """The loss or the weights stopped being numbers (NaN or infinity): training stops."""


def _task_metrics(spec) -> torchmetrics.MetricCollection:
    m = {}
    for task in spec.tasks:
        if task in ("age_reg", "age_dist"):
            m["mae"] = torchmetrics.MeanAbsoluteError()
        elif task == "age_bins":
            m["bin_acc"] = torchmetrics.classification.MulticlassAccuracy(len(spec.age_bins), average="micro", ignore_index=-1)
        elif task == "gender":
            m["gender_acc"] = torchmetrics.classification.BinaryAccuracy(ignore_index=-1)
        elif task == "race":
            m["race_acc"] = torchmetrics.classification.MulticlassAccuracy(5, average="micro", ignore_index=-1)
        elif task == "label":
            m["acc"] = torchmetrics.classification.MulticlassAccuracy(spec.num_classes, average="micro", ignore_index=-1)
    return torchmetrics.MetricCollection(m)


class WeightedMean(torchmetrics.Metric):
    """Sum of ``value * weight`` over sum of ``weight``; both sums are added up across the ranks of
    a DDP run. (torchmetrics' MeanMetric drops the weights when NaN checks are disabled, and a NaN
    loss must stay NaN here.)"""
    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: int) -> None:
        self.total += value.detach().float().reshape(()) * weight
        self.count += weight

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class FaceAgeModule(L.LightningModule):
    def __init__(self, net: FaceNet, cfg: Config, extra_checkpoint: dict | None = None):
        super().__init__()
        self.net, self.cfg = net, cfg
        self.extra_checkpoint = extra_checkpoint or {}
        pre = net.spec.preprocess()
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).view(1, -1, 1, 1), persistent=False)
        self.augment = BatchAugment(cfg.augment)
        self.train_metrics = _task_metrics(net.spec)
        self.val_metrics = _task_metrics(net.spec).clone(prefix="val_")
        # Epoch losses as weighted sums and counts (torchmetrics): summed over the ranks of a DDP
        # run before dividing, so uneven validation shards give the whole set's mean (Lightning's
        # own sync_dist mean divides an integer sample count by the number of ranks).
        names = ["loss"] + [f"{task}_loss" for task in net.spec.tasks]
        self.loss_means = torch.nn.ModuleDict({f"{prefix}{name}": WeightedMean() for prefix in ("", "val_") for name in names})
        # ReduceLROnPlateau is stepped here, not by Lightning: Lightning steps epoch schedulers
        # after the epoch-end checkpoint is written, so a resumed run would miss that step.
        self._plateau = None
        self._plateau_state: dict | None = None

    def images(self, batch: dict, augment: bool) -> torch.Tensor:
        x = batch["image"].permute(0, 3, 1, 2).float().div_(255.0)   # (B, C, H, W) in [0, 1]
        if augment:
            x = self.augment(x)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(x)

    def _update_metrics(self, metrics, record: dict, batch: dict) -> None:
        for name, metric in metrics.items():
            base = name.removeprefix("val_")
            if base == "mae":
                valid = ~torch.isnan(batch["age"])
                if valid.any():
                    metric.update(record["age"][valid], batch["age"][valid])
            elif base == "bin_acc":
                metric.update(record["age_bin"], batch["age_bin"])
            elif base == "gender_acc":
                metric.update(record["gender_prob"], batch["gender"])
            elif base in ("race_acc", "acc"):
                key = "race" if base == "race_acc" else "label"
                metric.update(self._logits[key], batch[key])

    def _step(self, batch: dict, train: bool):
        outputs = self.net(self.images(batch, augment=train))
        # Soft targets (distillation) reach training batches only: validation scores the labels.
        loss, parts = self.net.losses(outputs, batch, self.cfg.distill.weight if train else 0.0)
        self._logits = outputs
        record = self.net.decode({k: v.detach().float() for k, v in outputs.items()})
        metrics = self.train_metrics if train else self.val_metrics
        self._update_metrics(metrics, record, batch)
        prefix = "" if train else "val_"
        bs = batch["image"].shape[0]
        self._log_mean(f"{prefix}loss", loss, bs)
        if len(parts) > 1:
            for task, v in parts.items():
                self._log_mean(f"{prefix}{task}_loss", v, bs)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def _log_mean(self, name: str, value: torch.Tensor, bs: int) -> None:
        """The epoch's batch-size-weighted mean of ``value``, over every rank of a DDP run."""
        mean = self.loss_means[name]
        mean.update(value, bs)
        self.log(name, mean, on_step=False, on_epoch=True, batch_size=bs)

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, train=True)
        if not torch.isfinite(loss):
            # A non-finite loss would make every weight NaN at this step; nothing has been saved
            # from this epoch, so last.ckpt still holds the last good one.
            raise TrainingDiverged(
                f"training diverged in epoch {self.current_epoch + 1}, batch {batch_idx + 1}: the loss is "
                f"{float(loss.detach())}; nothing non-finite was saved. Train again with a lower optim.lr "
                f"(this run: {self.cfg.optim.lr:g})")
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, train=False)

    def configure_optimizers(self):
        o, s = self.cfg.optim, self.cfg.schedule
        # A pretrained backbone learns more slowly than the new heads (backbone_lr_scale < 1), so
        # fine-tuning adapts its features instead of overwriting them in the first epochs.
        head_ids = {id(p) for p in self.net.heads.parameters()}
        # Heads first: the history's "lr" column is param group 0's, the recipe's optim.lr.
        groups = [{"params": list(self.net.heads.parameters()), "lr": o.lr},
                  {"params": [p for p in self.net.parameters() if id(p) not in head_ids], "lr": o.lr * o.backbone_lr_scale}]
        params = [g for g in groups if g["params"]]
        if o.name == "adam":
            opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        elif o.name == "adamw":
            opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if s.name == "constant":
            return opt
        if s.name == "plateau":
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=self.cfg.train.monitor_mode,
                                                                       factor=s.factor, patience=s.patience)
            if self._plateau_state is not None:
                self._plateau.load_state_dict(self._plateau_state)
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if s.name == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in params], total_steps=total)
        else:  # cosine with linear warm-up, stepped per batch
            warm = int(total * s.warmup_epochs / max(1, self.cfg.train.epochs))

            def factor(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_epoch_end(self) -> None:
        # Runs after the History callback has recorded this epoch's lr and before the checkpoint
        # callback saves, so the saved scheduler state includes this epoch's step.
        if self._plateau is not None:
            metric = self.trainer.callback_metrics.get(self.cfg.train.monitor)
            if metric is not None:
                self._plateau.step(float(metric))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Makes every checkpoint self-describing (see inference/checkpoint.py).
        from ..inference.checkpoint import describe
        checkpoint["faceage"] = describe(self.net.spec, self.cfg, **self.extra_checkpoint)
        if self._plateau is not None:
            checkpoint["faceage_plateau"] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._plateau_state = checkpoint.get("faceage_plateau")
        if self._plateau is not None and self._plateau_state is not None:
            self._plateau.load_state_dict(self._plateau_state)
