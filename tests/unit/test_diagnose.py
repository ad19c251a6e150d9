"""Diagnosis on histories built to show each verdict, and on Keras logs in every format."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from faceage.evaluation.diagnose import ModelFacts, diagnose, early_stopping_for
from faceage.evaluation.histories import load_history, parse_keras_log


def hist(train, val, **extra):
    rows = []
    for i, (t, v) in enumerate(zip(train, val)):
        r = {"epoch": i + 1, "loss": t, "val_loss": v}
        for k, (a, b) in extra.items():
            r[k], r[f"val_{k}"] = a[i], b[i]
        rows.append(r)
    return rows


def test_overfitting_onset_rise_and_early_stopping_remedy():
    train = [2.0 * 0.9 ** i for i in range(20)]
    val = [2.0 - 0.1 * i for i in range(8)] + [1.3 + 0.05 * i for i in range(12)]   # min at epoch 8
    d = diagnose(hist(train, val))
    assert d.verdict == "overfitting" and d.onset_epoch == 8 and d.best_epoch == 8
    assert d.evidence["val_rise_from_best"] > 0.3
    assert d.remedies[0]["remedy"] == "Early stopping, patience 1"
    assert "stopped at epoch 9 and restored epoch 8" in d.remedies[0]["why"]
    names = [r["remedy"] for r in d.remedies]
    assert "Dropout after the dense layers" in names and "L2 weight regularization" in names
    assert "never on the output" in next(r["why"] for r in d.remedies if r["remedy"].startswith("Dropout"))


def test_overfitting_as_a_plateau_with_widening_gap():
    train = [3.0 * 0.93 ** i for i in range(30)]
    val = [3.0 * 0.93 ** i for i in range(10)] + [3.0 * 0.93 ** 10 * (1 + 0.002 * ((-1) ** i)) for i in range(20)]
    d = diagnose(hist(train, val))
    assert d.verdict == "overfitting" and 9 <= d.onset_epoch <= 11


def test_stalled_model():
    # The keras-regularized-120 story: both curves flat at a poor level, small gap.
    train = [2.30, 2.10, 2.00] + [1.95 - 0.001 * i for i in range(27)]
    val = [2.28, 2.08, 2.01] + [1.97 - 0.0005 * i for i in range(27)]
    acc = ([0.30, 0.38, 0.41] + [0.42] * 27, [0.31, 0.39, 0.41] + [0.425] * 27)
    d = diagnose(hist(train, val, acc=acc))
    assert d.verdict == "underfitting / stalled" and d.onset_epoch is None
    assert d.remedies[0]["remedy"] == "Add capacity"
    assert "not overfitting" in " ".join(d.summary)


def test_good_fit():
    train = [2.0 * 0.6 ** i + 0.3 for i in range(25)]   # converged: flat for the last third
    val = [2.0 * 0.6 ** i + 0.33 for i in range(25)]
    assert diagnose(hist(train, val)).verdict == "good fit"


def test_still_improving():
    train = [3.0 * 0.9 ** i for i in range(12)]
    val = [3.1 * 0.92 ** i for i in range(12)]
    d = diagnose(hist(train, val))
    assert d.verdict == "still improving" and d.remedies[0]["remedy"] == "Train longer"
    assert "faceage train --resume RUN --epochs 24" in d.remedies[0]["why"]       # no run known: a placeholder
    d = diagnose(hist(train, val), model=ModelFacts(run_dir="runs/mine"))
    assert "faceage train --resume runs/mine --epochs 24" in d.remedies[0]["why"]  # a faceage run: its own path


@pytest.mark.parametrize("train", [
    [2.0, 1.5, 1.2, math.nan, math.nan, math.nan],
    [2.0, 1.5, 1.2, 1.1, 4.0, 1.0, 0.9],
    [2.0, 1.0, 0.8, 0.9, 1.2, 1.5, 1.9],
])
def test_unstable(train):
    d = diagnose(hist(train, [x * 1.05 for x in train]))
    assert d.verdict == "unstable" and d.remedies[0]["remedy"] == "Lower the learning rate"


def test_noisy_validation_qualifier():
    train = [2.0 * 0.85 ** i + 0.5 for i in range(20)]
    val = [2.0 * 0.85 ** i + 0.55 + (0.25 if i % 2 else -0.2) for i in range(20)]
    d = diagnose(hist(train, val))
    assert "noisy validation" in d.qualifiers
    assert any(r["remedy"] == "A larger validation set" for r in d.remedies)


def test_accuracy_only_history_uses_max_mode():
    rows = [{"epoch": i + 1, "acc": 0.5 + 0.04 * i, "val_acc": min(0.7, 0.5 + 0.04 * i) - (0.02 * max(0, i - 5))}
            for i in range(15)]
    d = diagnose(rows)
    assert d.monitor == "acc" and d.verdict == "overfitting" and d.best_epoch in (6, 7)


def test_early_stopping_simulation():
    import numpy as np
    val = np.array([5, 4, 3, 3.5, 2.5, 2.6, 2.7, 2.8, 2.9])
    assert early_stopping_for(val, "min", 4) == {"patience": 2, "stop_epoch": 7, "restored_epoch": 5}


OLD_STYLE = """Train on 50000 samples, validate on 2938 samples
Epoch 1/3
50000/50000 [==============================] - 41s 820us/sample - loss: 2.1035 - acc: 0.2521 - val_loss: 1.9801 - val_acc: 0.3012
Epoch 2/3
  128/50000 [..............................] - ETA: 39s - loss: 1.8011 - acc: 0.3281
50000/50000 [==============================] - 40s 800us/sample - loss: 1.7522 - acc: 0.3650 - val_loss: 1.8900 - val_acc: 0.3520
Epoch 3/3
50000/50000 [==============================] - 40s 801us/sample - loss: 1.5012 - acc: 0.4501 - val_loss: 1.9710 - val_acc: 0.3716
"""

NEW_STYLE = """Epoch 1/3
1563/1563 ━━━━━━━━━━━━━━━━━━━━ 12s 7ms/step - accuracy: 0.3512 - loss: 1.7723 - val_accuracy: 0.4810 - val_loss: 1.4402 - learning_rate: 0.0010
Epoch 2/3
1563/1563 ━━━━━━━━━━━━━━━━━━━━ 11s 7ms/step - accuracy: 0.5201 - loss: 1.3390 - val_accuracy: 0.5502 - val_loss: 1.2610 - learning_rate: 0.0010
Epoch 3/3
1563/1563 ━━━━━━━━━━━━━━━━━━━━ 11s 7ms/step - accuracy: 0.5954 - loss: 1.1402 - val_accuracy: 0.5901 - val_loss: 1.1702 - learning_rate: 1.0000e-04
"""

PROGRESS_NOISE = ("Epoch 1/2\n" + "".join(f"\r  {i}/100 [====>....] - ETA: 0:0{9 - i // 12} - loss: {3 - i / 100:.4f} - mae: {9 - i / 50:.4f}"
                                             for i in range(0, 100, 12))
                  + "\r100/100 [==============================] - 9s 90ms/step - loss: 2.0000 - mae: 7.0000 - val_loss: 2.5000 - val_mae: 7.5000\n"
                  "Epoch 00001: val_loss improved from inf to 2.50000, saving model to best.h5\n"
                  "Epoch 2/2\n100/100 [==============================] - 9s 90ms/step - loss: 1.5000 - mae: 6.0000 - val_loss: 2.2000 - val_mae: 7.1000\n")


@pytest.mark.parametrize("text", [OLD_STYLE, NEW_STYLE, PROGRESS_NOISE])
def test_keras_logs_in_every_format(text):
    rows = parse_keras_log(text)
    flat = parse_keras_log(text.replace("\n", " ").replace("\r", " "))     # line breaks lost in a web paste
    assert rows == flat and len(rows) in (2, 3)
    assert all({"loss", "val_loss"} <= set(r) for r in rows)


def test_keras_log_values():
    rows = parse_keras_log(OLD_STYLE)
    assert rows[1] == {"epoch": 2, "loss": 1.7522, "acc": 0.365, "val_loss": 1.89, "val_acc": 0.352}
    new = parse_keras_log(NEW_STYLE)
    assert new[2]["learning_rate"] == 1e-4 and new[2]["val_accuracy"] == 0.5901
    noisy = parse_keras_log(PROGRESS_NOISE)
    assert noisy[0] == {"epoch": 1, "loss": 2.0, "mae": 7.0, "val_loss": 2.5, "val_mae": 7.5}


def test_csv_logger_counts_from_zero(tmp_path):
    (tmp_path / "log.csv").write_text("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.3,1.9,0.35,1.8\n1,0.4,1.6,0.4,1.7\n")
    rows, kind = load_history(tmp_path / "log.csv")
    assert kind == "Keras CSVLogger" and [r["epoch"] for r in rows] == [1, 2] and rows[1]["val_loss"] == 1.7


def test_cli_diagnose_json_plot_and_errors(tmp_path):
    log = tmp_path / "fit.txt"
    log.write_text(OLD_STYLE.replace("\n", " "))
    r = subprocess.run([sys.executable, "-m", "faceage", "diagnose", str(log), "--json", "--plot", str(tmp_path / "d.png")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"verdict", "qualifiers", "best_epoch", "onset_epoch", "evidence", "remedies"} <= set(out)
    assert out["kind"] == "Keras log" and out["best_epoch"] == 2
    assert (tmp_path / "d.png").stat().st_size > 1000
    (tmp_path / "empty.txt").write_text("no epochs here")
    r = subprocess.run([sys.executable, "-m", "faceage", "diagnose", str(tmp_path / "empty.txt")], capture_output=True, text=True)
    assert r.returncode == 2 and "no readable epochs" in r.stderr and "Traceback" not in r.stderr
