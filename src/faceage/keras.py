"""``faceage.keras.Diagnose``: faceage's diagnosis inside your own Keras 3 ``model.fit``.

>>> from faceage.keras import Diagnose                     # doctest: +SKIP
>>> model.fit(x, y, validation_split=0.2, epochs=30, callbacks=[Diagnose(warn_onset=True)])

At the end of ``fit`` it prints the verdict (overfitting and since when, stalled, still
improving, unstable, good fit, no validation) and the remedies that apply to *this* model, said in
Keras (``Dropout(0.3)`` after your ``Dense(128)``, ``EarlyStopping(...)``,
``kernel_regularizer=l2(1e-4)``). With ``warn_onset=True`` it also prints one line at the epoch
overfitting is first seen. The diagnosis stays on the callback as ``.diagnosis``.

Needs Keras 3 (``pip install 'faceage[keras]'``). Any backend works; when TensorFlow is not
installed and no backend was chosen, this module picks PyTorch's (faceage already depends on
torch). Importing :mod:`faceage` does not import Keras; importing this module does.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

if "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ \
        and importlib.util.find_spec("tensorflow") is None and not (Path.home() / ".keras" / "keras.json").exists():
    os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402

from .evaluation.diagnose import Diagnosis, EpochLog, ModelFacts  # noqa: E402

__all__ = ["Diagnose", "model_facts"]


def _layers(layer):
    yield layer
    for sub in getattr(layer, "layers", None) or []:
        yield from _layers(sub)


def model_facts(model) -> ModelFacts:
    """What the remedies need to know about a Keras model: hidden Dense widths, dropout, L2,
    batch norm and the optimizer's learning rate."""
    layers = list(_layers(model))[1:]
    dense = [la for la in layers if isinstance(la, keras.layers.Dense)]
    outputs = set()
    try:
        outputs = {id(t) for t in model.outputs}
    except (AttributeError, ValueError):
        pass
    hidden = []
    for la in dense:
        try:
            is_output = id(la.output) in outputs
        except (AttributeError, ValueError):
            is_output = False
        if not is_output:
            hidden.append(la)
    if dense and len(hidden) == len(dense):          # outputs not traceable: the last Dense is the output
        hidden = dense[:-1]
    rates = [float(la.rate) for la in layers if isinstance(la, keras.layers.Dropout)]
    l2s = [float(getattr(reg, "l2", 0.0) or 0.0) for la in layers
           if (reg := getattr(la, "kernel_regularizer", None)) is not None]
    bn = any(isinstance(la, keras.layers.BatchNormalization) for la in layers)
    lr = None
    opt = getattr(model, "optimizer", None)
    if opt is not None:
        try:
            lr = float(keras.ops.convert_to_numpy(opt.learning_rate))
        except Exception:
            lr = None
    return ModelFacts(name=getattr(model, "name", None), hidden_dense=[int(la.units) for la in hidden],
                      dense_dropout=max(rates) if rates else 0.0, l2=max(l2s) if l2s else 0.0,
                      batch_norm="after" if bn else None, lr=lr)


class Diagnose(keras.callbacks.Callback):
    """Prints faceage's diagnosis of this fit at its end; ``warn_onset=True`` also warns, in one
    line, at the epoch overfitting is first seen. ``print_fn`` replaces ``print``."""

    def __init__(self, warn_onset: bool = False, print_fn=print):
        super().__init__()
        self.epoch_log = EpochLog("keras", warn_onset=warn_onset, print_fn=print_fn)
        self.print_fn = print_fn
        self.diagnosis: Diagnosis | None = None

    @property
    def rows(self) -> list[dict]:
        return self.epoch_log.rows

    def on_train_begin(self, logs=None):
        self.epoch_log.rows.clear()
        self.diagnosis = None

    def _facts(self) -> ModelFacts | None:
        try:
            return model_facts(self.model)
        except Exception:                  # never let advice break a user's fit
            return None

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_log.add(epoch + 1, dict(logs or {}), self._facts() if self.epoch_log.warn_onset else None)

    def on_train_end(self, logs=None):
        self.diagnosis = self.epoch_log.finish(self._facts())
        if self.diagnosis is not None:
            self.print_fn(self.diagnosis.format())
