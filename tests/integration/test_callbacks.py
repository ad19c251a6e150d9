"""faceage's diagnosis inside a user's own training: ``faceage.keras.Diagnose`` in a real Keras 3
``model.fit`` (torch backend, no TensorFlow) and ``faceage.lightning.Diagnose`` in a real Lightning
``Trainer``, each on tiny random data that a small network memorises in a few seconds.

Each fit also writes the logs its framework writes (Keras: CSVLogger, ``history.history`` JSON,
the verbose console; Lightning: CSVLogger's metrics.csv, TensorBoardLogger), and ``faceage
diagnose`` must read each of them to the same verdict and onset as the callback saw live.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from faceage.evaluation.diagnose import diagnose_history
from faceage.evaluation.histories import read_history

EPOCHS = 20
# Keras' torch backend converts tensors with np.array(x, copy=False)-style calls NumPy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def noisy_task(seed=0, n=64, n_val=128, dim=16, flip=0.3):
    """A learnable rule (the sign of x0) with 30% of the training labels flipped: a wide network
    first learns the rule, then memorises the flips, and validation loss turns up."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    noise = rng.random(n) < flip
    y[noise] = 1 - y[noise]
    xv = rng.normal(size=(n_val, dim)).astype("float32")
    yv = (xv[:, 0] > 0).astype("float32")
    return x, y, xv, yv


def same_story(source, live, framework):
    h = read_history(source)
    d = diagnose_history(h)
    assert h.framework == framework
    assert len(h.rows) == EPOCHS
    assert (d.verdict, d.onset_epoch, d.best_epoch) == (live.verdict, live.onset_epoch, live.best_epoch)
    return h


# --- Keras ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras_mod():
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    return pytest.importorskip("keras", reason="Keras 3 is not installed: pip install -e '.[dev]' (or 'faceage[keras]')")


def test_keras_callback_in_a_real_fit(keras_mod, tmp_path, capsys):
    keras = keras_mod
    from faceage.keras import Diagnose, model_facts
    assert keras.backend.backend() == "torch"
    keras.utils.set_random_seed(0)
    x, y, xv, yv = noisy_task()
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy", metrics=["accuracy"])
    printed: list[str] = []
    cb = Diagnose(warn_onset=True, print_fn=printed.append)
    hist = model.fit(x, y, validation_data=(xv, yv), epochs=EPOCHS, batch_size=16, verbose=2,
                     callbacks=[cb, keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))])
    console = capsys.readouterr().out
    d = cb.diagnosis
    assert d is not None and d.framework == "keras" and d.verdict == "overfitting"
    # One warning, during the fit, naming the onset the final diagnosis names.
    warned = [p for p in printed if p.startswith("faceage: overfitting since epoch")]
    assert len(warned) == 1 and printed == [warned[0], d.format()]
    assert warned[0].startswith(f"faceage: overfitting since epoch {d.onset_epoch} (seen at epoch ")
    # Remedies in Keras, fitted to this model (its hidden Dense is 128 wide; it used lr 0.01).
    text = d.format()
    assert 'Dropout(0.3) after Dense(128, activation="relu")' in text
    assert 'EarlyStopping(monitor="val_loss", patience=' in text and "restore_best_weights=True" in text
    assert "kernel_regularizer=l2(1e-4)" in text and "learning_rate=0.001" in text and "model.dense_dropout" not in text
    assert model_facts(model).hidden_dense == [128]
    # The logs Keras wrote read the same.
    (tmp_path / "history.json").write_text(json.dumps(hist.history))
    (tmp_path / "console.txt").write_text(console)
    for f in ("log.csv", "history.json", "console.txt"):
        same_story(tmp_path / f, d, "keras")
    r = subprocess.run([sys.executable, "-m", "faceage", "diagnose", str(tmp_path / "console.txt"), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["onset_epoch"] == d.onset_epoch


def test_keras_remedies_follow_the_model(keras_mod):
    keras = keras_mod
    from faceage.evaluation.diagnose import diagnose
    from faceage.keras import model_facts
    rows = [{"epoch": e, "loss": 2.0 * 0.88 ** e, "val_loss": v}
            for e, v in enumerate([2.1, 1.98, 1.86, 1.74, 1.62, 1.68, 1.74, 1.8, 1.86, 1.92], 1)]
    flat = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                             keras.layers.Dense(10, activation="softmax")])
    facts = model_facts(flat)
    assert facts.hidden_dense == [] and facts.dense_dropout == 0.0
    d = diagnose(rows, framework="keras", model=facts)
    assert "Dropout after the dense layers" not in [r["remedy"] for r in d.remedies]
    assert any("no hidden dense layer" in r["because"] for r in d.evidence["not_applicable"])
    dropped = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu",
                                                                       kernel_regularizer=keras.regularizers.l2(0.01)),
                                keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    d = diagnose(rows, framework="keras", model=model_facts(dropped))
    left = {r["remedy"]: r["because"] for r in d.evidence["not_applicable"]}
    assert left["Dropout after the dense layers"] == "dropout is already 0.5"
    assert left["L2 weight regularization"] == "L2 is already 0.01"


# --- Lightning ---------------------------------------------------------------------------------

def test_lightning_callback_in_a_real_fit(tmp_path):
    import lightning as L
    import torch
    import torch.nn as nn
    from lightning.pytorch.loggers import CSVLogger

    from faceage.lightning import Diagnose

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 1))

        def _loss(self, batch):
            return nn.functional.binary_cross_entropy_with_logits(self.net(batch[0]).squeeze(1), batch[1])

        def training_step(self, batch, i):
            loss = self._loss(batch)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch, i):
            self.log("val_loss", self._loss(batch))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    L.seed_everything(0, verbose=False)
    x, y, xv, yv = (torch.from_numpy(a) for a in noisy_task())
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xv, yv), batch_size=64)
    loggers = [CSVLogger(str(tmp_path), name="lightning_logs")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger
        loggers.append(TensorBoardLogger(str(tmp_path), name="tb"))
    except ImportError:
        pass
    printed: list[str] = []
    cb = Diagnose(warn_onset=True, print_fn=printed.append)
    trainer = L.Trainer(max_epochs=EPOCHS, logger=loggers, callbacks=[cb], enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=1,
                        accelerator="cpu", devices=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Net(), train, val)
    d = cb.diagnosis
    assert d is not None and d.framework == "lightning" and d.verdict == "overfitting"
    assert [r["epoch"] for r in cb.rows] == list(range(1, EPOCHS + 1))
    assert set(cb.rows[0]) == {"epoch", "loss", "val_loss"}          # train_loss_epoch -> loss; _step dropped
    warned = [p for p in printed if p.startswith("faceage: overfitting since epoch")]
    assert len(warned) == 1 and printed == [warned[0], d.format()]
    assert warned[0].startswith(f"faceage: overfitting since epoch {d.onset_epoch} (seen at epoch ")
    text = d.format()
    assert 'EarlyStopping(monitor="val_loss", patience=' in text and "nn.Dropout(0.3)" in text
    assert "weight_decay=1e-4 in the optimizer of configure_optimizers" in text and "lr=0.001 in configure_optimizers" in text
    h = same_story(tmp_path / "lightning_logs", d, "lightning")
    assert h.kind == "Lightning CSVLogger metrics.csv"
    if len(loggers) > 1:
        assert same_story(tmp_path / "tb", d, "lightning").kind == "Lightning TensorBoardLogger"
