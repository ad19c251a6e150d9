"""``faceage.lightning.Diagnose``: faceage's diagnosis inside your own Lightning ``Trainer``.

>>> from faceage.lightning import Diagnose                  # doctest: +SKIP
>>> trainer = L.Trainer(max_epochs=30, callbacks=[Diagnose(warn_onset=True)])

It reads the epoch's logged metrics (``self.log("train_loss", ..., on_epoch=True)``,
``self.log("val_loss", ...)``; ``_step``/``_epoch`` suffixes and ``train_``/``val_``/``valid_``
prefixes are understood) and at the end of ``fit`` prints the verdict and the remedies that
apply to *this* module, said in Lightning and PyTorch terms (``EarlyStopping(monitor="val_loss",
patience=3)``, ``weight_decay=1e-4`` in ``configure_optimizers``, ``nn.Dropout(0.3)``). With
``warn_onset=True`` it also prints one line at the epoch overfitting is first seen. The
diagnosis stays on the callback as ``.diagnosis``. Only the global-zero process prints.
"""
from __future__ import annotations

import lightning as L

from .evaluation.diagnose import Diagnosis, EpochLog, ModelFacts
from .evaluation.histories import canonical_name

__all__ = ["Diagnose", "module_facts"]


def module_facts(pl_module, trainer=None) -> ModelFacts:
    """Hidden ``nn.Linear`` widths (all but the last Linear), dropout, batch norm, and the first
    optimizer's learning rate and weight decay."""
    import torch.nn as nn
    linears = [m for m in pl_module.modules() if isinstance(m, nn.Linear)]
    rates = [float(m.p) for m in pl_module.modules() if isinstance(m, nn.Dropout)]
    bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pl_module.modules())
    lr = wd = None
    opts = getattr(trainer, "optimizers", None) or []
    if opts:
        group = opts[0].param_groups[0]
        lr, wd = group.get("lr"), group.get("weight_decay")
    return ModelFacts(name=type(pl_module).__name__, hidden_dense=[m.out_features for m in linears[:-1]],
                      dense_dropout=max(rates) if rates else 0.0, batch_norm="after" if bn else None,
                      lr=float(lr) if lr else None, weight_decay=float(wd) if wd is not None else None)


class Diagnose(L.Callback):
    """Prints faceage's diagnosis of this fit at its end; ``warn_onset=True`` also warns, in one
    line, at the epoch overfitting is first seen. ``print_fn`` replaces ``print``."""

    def __init__(self, warn_onset: bool = False, print_fn=print):
        self.epoch_log = EpochLog("lightning", warn_onset=warn_onset, print_fn=self._print)
        self.print_fn = print_fn
        self.diagnosis: Diagnosis | None = None
        self._val_epoch: int | None = None
        self._zero = True

    def _print(self, text: str) -> None:
        if self._zero:
            self.print_fn(text)

    @property
    def rows(self) -> list[dict]:
        return self.epoch_log.rows

    def state_dict(self) -> dict:
        return {"rows": self.epoch_log.rows, "names": self.epoch_log.names}

    def load_state_dict(self, state: dict) -> None:
        self.epoch_log.rows = list(state.get("rows", []))
        self.epoch_log.names = dict(state.get("names", {}))

    def on_fit_start(self, trainer, pl_module) -> None:
        self._zero = trainer.is_global_zero
        self.diagnosis = None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._val_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {}
        for k, v in trainer.callback_metrics.items():
            try:
                value = float(v)
            except (TypeError, ValueError):
                continue
            c = canonical_name(k)
            if c and c[0].startswith("val_") and self._val_epoch != trainer.current_epoch:
                continue                     # a stale value from an earlier validation run
            metrics[k] = value
        facts = self._facts(trainer, pl_module) if self.epoch_log.warn_onset else None
        self.epoch_log.add(trainer.current_epoch + 1, metrics, facts)

    def _facts(self, trainer, pl_module) -> ModelFacts | None:
        try:
            return module_facts(pl_module, trainer)
        except Exception:                    # never let advice break a user's fit
            return None

    def on_fit_end(self, trainer, pl_module) -> None:
        self.diagnosis = self.epoch_log.finish(self._facts(trainer, pl_module))
        if self.diagnosis is not None:
            self._print(self.diagnosis.format())
