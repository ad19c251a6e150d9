"""Every log format people have, written by the tests, read and judged: golden verdicts and
onset epochs; remedies said in the log's framework and filtered by a faceage run's config."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import yaml

from faceage.config import load_config
from faceage.errors import DataError
from faceage.evaluation.diagnose import diagnose, diagnose_history
from faceage.evaluation.histories import canonical_name, read_history

# One overfitting story in every format: validation is best at epoch 5, then rises while
# training keeps falling.
TRAIN = [round(2.0 * 0.88 ** i, 4) for i in range(12)]
VAL = [round(2.1 - 0.12 * i, 4) for i in range(5)] + [round(1.62 + 0.06 * i, 4) for i in range(7)]
EPOCHS = list(range(1, 13))


def lines(fmt):
    return "".join(fmt(e, t, v) for e, t, v in zip(EPOCHS, TRAIN, VAL))


def lightning_csv():
    """CSVLogger's metrics.csv: 4 step rows, a validation row and a train-epoch row per epoch."""
    out = ["epoch,step,train_loss_epoch,train_loss_step,val_loss"]
    step = 0
    for e, t, v in zip(EPOCHS, TRAIN, VAL):
        for f in (1.1, 0.9, 1.05, 0.95):
            out.append(f"{e - 1},{step},,{t * f},")
            step += 1
        out.append(f"{e - 1},{step - 1},,,{v}")
        out.append(f"{e - 1},{step - 1},{t},,")
    return "\n".join(out) + "\n"


FASTAI_TABLE = ("epoch     train_loss  valid_loss  accuracy  time    \n"
                + lines(lambda e, t, v: f"{e - 1:<9} {t:<11.6f} {v:<11.6f} {0.5 + 0.01 * e:<9.6f} 00:07     \n"))
FASTAI_FINE_TUNE = ("epoch     train_loss  valid_loss  error_rate  time\n"
                    f"0         {TRAIN[0]:.6f}    {VAL[0]:.6f}    0.300000    00:10\n\n"
                    "epoch     train_loss  valid_loss  error_rate  time\n"
                    + "".join(f"{i}         {t:.6f}    {v:.6f}    0.200000    00:12\n"
                              for i, (t, v) in enumerate(zip(TRAIN[1:], VAL[1:]))))
STEP_LINES = "".join(
    "".join(f"Epoch [{e}/12], Step [{s * 10}/40], Loss: {t * f:.4f}\n" for s, f in enumerate((1.1, 0.9, 1.05, 0.95), 1))
    + f"Epoch [{e}/12] done. Val Loss: {v:.4f}, Val Acc: {50 + e}%\n"
    + (f"Epoch {e}: val_loss improved from inf to {v:.5f}, saving model to best.pt\n" if e == 1 else "")
    for e, t, v in zip(EPOCHS, TRAIN, VAL))
PROGRESS_BAR = "".join(
    f"\rEpoch {e - 1}: 100%|##########| 32/32 [00:01<00:00, 25.3it/s, v_num=0, train_loss_step={t * 1.2:.3f}, "
    f"val_loss={VAL[max(0, e - 2)]:.3f}]"
    f"\rEpoch {e - 1}: 100%|##########| 32/32 [00:01<00:00, 25.1it/s, v_num=0, train_loss_step={t * 0.8:.3f}, "
    f"val_loss={v:.3f}, train_loss_epoch={t:.4f}]\n" for e, t, v in zip(EPOCHS, TRAIN, VAL))

TEXT_FORMATS = {
    "plain.csv": ("epoch,train_loss,val_loss\n" + lines(lambda e, t, v: f"{e},{t},{v}\n"), "CSV history", "pytorch"),
    "history.csv": ("epoch,train_loss,valid_loss,accuracy,time\n"
                    + lines(lambda e, t, v: f"{e - 1},{t},{v},{0.5 + 0.01 * e},00:07\n"), "fastai CSVLogger history",
                    "fastai"),
    "metrics.csv": (lightning_csv(), "Lightning CSVLogger metrics.csv", "lightning"),
    "keras_csvlogger.csv": ("epoch,accuracy,loss,val_accuracy,val_loss\n"
                            + lines(lambda e, t, v: f"{e - 1},{0.5 + 0.01 * e},{t},{0.5},{v}\n"), "Keras CSVLogger",
                            "keras"),
    "brackets.txt": (lines(lambda e, t, v: f"Epoch [{e}/12], Train Loss: {t:.4f}, Val Loss: {v:.4f}\n"),
                     "training log (print lines)", "pytorch"),
    "spaces.txt": (lines(lambda e, t, v: f"epoch {e} train_loss {t:.4f} val_loss {v:.4f}\n"),
                   "training log (print lines)", "pytorch"),
    "equals.log": (lines(lambda e, t, v: f"Epoch {e}: train_loss={t:.4f} val_loss={v:.4f}\n"),
                   "training log (print lines)", "pytorch"),
    "sections.txt": (lines(lambda e, t, v: f"[12:00:0{e % 10}] epoch {e:3d} | train: loss {t:.4f} acc 0.9 | "
                                          f"val: loss {v:.4f} acc 0.8 | 3.1s\n"), "training log (print lines)", "pytorch"),
    "tensors.txt": (lines(lambda e, t, v: f"Epoch {e}, train loss: tensor({t:.4f}, grad_fn=<MeanBackward0>), "
                                         f"test loss: tensor({v:.4f})\n"), "training log (print lines)", "pytorch"),
    "steps.txt": (STEP_LINES, "training log (print lines)", "pytorch"),
    "bar.txt": (PROGRESS_BAR, "Lightning progress bar", "lightning"),
    "tutorial.txt": ("".join(f"Epoch {e - 1}/11\n----------\ntrain Loss: {t:.4f} Acc: 0.{50 + e}\n"
                             f"val Loss: {v:.4f} Acc: 0.{40 + e}\n\n" for e, t, v in zip(EPOCHS, TRAIN, VAL))
                     + "Training complete in 1m 12s\nBest val Acc: 0.520000\n", "training log (print lines)", "pytorch"),
    "fastai.txt": (FASTAI_TABLE, "fastai console table", "fastai"),
    "fine_tune.txt": (FASTAI_FINE_TUNE, "fastai console table", "fastai"),
    "keras_verbose.txt": (lines(lambda e, t, v: f"Epoch {e}/12\n32/32 ━━━━━━━━━━━━━━━━━━━━ 1s 9ms/step - loss: {t:.4f} "
                                               f"- val_loss: {v:.4f}\n"), "Keras log", "keras"),
    "history.json": (json.dumps({"loss": TRAIN, "val_loss": VAL}), "Keras history (JSON)", "keras"),
    "nested.json": (json.dumps({"history": {"loss": TRAIN, "val_loss": VAL}, "params": {"epochs": 12}}),
                    "Keras history (JSON)", "keras"),
}


@pytest.mark.parametrize("fname", sorted(TEXT_FORMATS))
def test_every_log_format_reads_the_same_story(tmp_path, fname):
    text, kind, framework = TEXT_FORMATS[fname]
    (tmp_path / fname).write_text(text)
    h = read_history(tmp_path / fname)
    assert (h.kind, h.framework) == (kind, framework)
    assert [r["epoch"] for r in h.rows] == EPOCHS
    assert [r["loss"] for r in h.rows] == pytest.approx(TRAIN, rel=2e-3)
    assert [r["val_loss"] for r in h.rows] == pytest.approx(VAL, rel=2e-3)
    d = diagnose_history(h)
    assert (d.verdict, d.onset_epoch, d.best_epoch, d.framework) == ("overfitting", 5, 5, framework)


def test_split_words_carry_to_the_pairs_after_them(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT_FORMATS["tutorial.txt"][0])
    row = read_history(tmp_path / "t.txt").rows[2]
    assert row == {"epoch": 3, "loss": TRAIN[2], "acc": 0.53, "val_loss": VAL[2], "val_acc": 0.43}


def test_lightning_rows_merge_by_epoch_and_prefer_epoch_values(tmp_path):
    (tmp_path / "metrics.csv").write_text(lightning_csv())
    h = read_history(tmp_path / "metrics.csv")
    assert len(h.rows) == 12 and h.rows[0] == {"epoch": 1, "loss": TRAIN[0], "val_loss": VAL[0]}
    assert h.names == {"loss": "train_loss_epoch", "val_loss": "val_loss"}
    # self.log("train_loss", loss) in training_step logs on_step only: the epoch's steps are averaged.
    steps = ["epoch,step,train_loss,val_loss"]
    for e, t, v in zip(EPOCHS, TRAIN, VAL):
        steps += [f"{e - 1},{4 * e + i},{t * f}," for i, f in enumerate((1.1, 0.9, 1.05, 0.95))] + [f"{e - 1},{4 * e + 3},,{v}"]
    (tmp_path / "steps.csv").write_text("\n".join(steps) + "\n")
    rows = read_history(tmp_path / "steps.csv").rows
    assert [r["loss"] for r in rows] == pytest.approx(TRAIN) and len(rows) == 12


def test_lightning_logs_folder_reads_its_latest_version(tmp_path):
    for v, val in ((0, [1.0] * 12), (3, VAL)):
        d = tmp_path / "lightning_logs" / f"version_{v}"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text("epoch,step,train_loss,val_loss\n"
                                       + "".join(f"{e - 1},{e},{t},{x}\n" for e, t, x in zip(EPOCHS, TRAIN, val)))
    h = read_history(tmp_path / "lightning_logs")
    assert h.framework == "lightning" and [r["val_loss"] for r in h.rows] == VAL
    assert any("version_3" in n for n in h.notes)


def test_fine_tune_tables_continue_the_epochs(tmp_path):
    (tmp_path / "ft.txt").write_text(FASTAI_FINE_TUNE)
    h = read_history(tmp_path / "ft.txt")
    assert [r["epoch"] for r in h.rows] == EPOCHS
    assert "val_error_rate" in h.rows[0] and "error_rate" not in h.rows[0]   # fastai metrics are validation metrics
    assert h.names["val_loss"] == "valid_loss"


@pytest.mark.parametrize("raw,expected", [
    ("Train Loss", ("loss", None)), ("valid_loss", ("val_loss", None)), ("val/acc", ("val_acc", None)),
    ("Loss_train", ("loss", None)), ("loss/validation", ("val_loss", None)), ("train_loss_step", ("loss", "step")),
    ("train_loss_epoch", ("loss", "epoch")), ("epoch_accuracy", ("accuracy", "epoch")), ("eval_loss", ("val_loss", None)),
    ("lr-Adam", ("lr_adam", None)), ("epoch", None), ("v_num", None), ("batch_loss", None),
    ("evaluation_loss_vs_iterations", None), ("Test Loss", ("test_loss", None)),
])
def test_canonical_names(raw, expected):
    assert canonical_name(raw) == expected


# --- TensorBoard ------------------------------------------------------------------------------

def _summary_writer(path):
    pytest.importorskip("tensorboard", reason="TensorBoard logs need the optional tensorboard package (faceage[tensorboard])")
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(path))


def test_tensorboard_summary_writer_tags(tmp_path):
    w = _summary_writer(tmp_path / "runs" / "exp1")
    for e, t, v in zip(EPOCHS, TRAIN, VAL):
        w.add_scalar("Loss/train", t, e)
        w.add_scalar("Loss/val", v, e)
    w.close()
    h = read_history(tmp_path / "runs" / "exp1")
    assert (h.kind, h.framework) == ("TensorBoard event files", "pytorch")
    assert [r["val_loss"] for r in h.rows] == pytest.approx(VAL)
    d = diagnose_history(h)
    assert (d.verdict, d.onset_epoch) == ("overfitting", 5)


def test_tensorboard_add_scalars_and_per_step_training(tmp_path):
    w = _summary_writer(tmp_path / "run")
    step = 0
    for e, t, v in zip(EPOCHS, TRAIN, VAL):
        for f in (1.1, 0.9, 1.05, 0.95):            # training logged every batch, at the global step
            w.add_scalars("loss", {"train": t * f}, step)
            step += 1
        w.add_scalars("loss", {"val": v}, step - 1)
    w.close()
    h = read_history(tmp_path / "run")
    assert [r["loss"] for r in h.rows] == pytest.approx(TRAIN, rel=1e-5) and len(h.rows) == 12
    assert (diagnose_history(h).verdict, diagnose_history(h).onset_epoch) == ("overfitting", 5)


def test_tensorboard_keras_layout(tmp_path):
    """Keras' TensorBoard callback: train/ and validation/ event files, epoch_* tensor summaries."""
    pytest.importorskip("tensorboard", reason="TensorBoard logs need the optional tensorboard package (faceage[tensorboard])")
    from tensorboard.compat.proto import types_pb2
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
    for sub, series in (("train", TRAIN), ("validation", VAL)):
        w = EventFileWriter(str(tmp_path / "logs" / sub))
        for i, x in enumerate(series):
            values = [Summary.Value(tag="epoch_loss", metadata=meta, tensor=TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[x]))]
            if sub == "train":
                values.append(Summary.Value(tag="epoch_learning_rate", metadata=meta,
                                            tensor=TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1e-3])))
            w.add_event(Event(wall_time=time.time(), step=i, summary=Summary(value=values)))
        w.close()
    h = read_history(tmp_path / "logs")
    assert (h.kind, h.framework) == ("Keras TensorBoard logs", "keras")
    assert [r["val_loss"] for r in h.rows] == pytest.approx(VAL) and h.rows[0]["learning_rate"] == pytest.approx(1e-3)
    # One event file of the pair reads the pair.
    one = next((tmp_path / "logs" / "train").glob("*tfevents*"))
    assert read_history(one).rows == h.rows
    d = diagnose_history(h)
    assert (d.verdict, d.onset_epoch) == ("overfitting", 5)
    assert "optimizer=keras.optimizers.Adam(learning_rate=1e-4)" in d.format()     # 10x below the logged 1e-3


# --- verdicts that must not invent evidence -------------------------------------------------

def test_no_validation_says_so_and_what_to_add(tmp_path):
    (tmp_path / "train_only.csv").write_text("epoch,train_loss\n" + lines(lambda e, t, v: f"{e},{t}\n"))
    d = diagnose_history(read_history(tmp_path / "train_only.csv"))
    assert d.verdict == "no validation" and d.onset_epoch is None
    text = d.format()
    assert "GOOD FIT" not in text and not re.search(r"gap (of )?\d", text)     # no invented train/validation gap
    assert d.evidence["has_validation"] is False and d.evidence["final_gaps"] == {}
    assert [r["remedy"] for r in d.remedies] == ["Add a validation set"]
    assert "random_split" in d.remedies[0]["code"]
    keras_rows = [{"epoch": e, "loss": t} for e, t in zip(EPOCHS, TRAIN)]
    assert "validation_split=0.2" in diagnose(keras_rows, framework="keras").remedies[0]["code"]


@pytest.mark.parametrize("n", [1, 2])
def test_one_or_two_epochs_are_too_early_to_tell(n):
    rows = [{"epoch": e, "loss": t, "val_loss": v} for e, t, v in zip(EPOCHS[:n], TRAIN, VAL)]
    d = diagnose(rows)
    assert d.verdict == "too early to tell" and d.onset_epoch is None
    assert d.remedies[0]["remedy"] == "Train longer"
    d = diagnose([{k: v for k, v in r.items() if k != "val_loss"} for r in rows])
    assert d.verdict == "too early to tell" and "no validation" in d.qualifiers
    assert "Add a validation set" in [r["remedy"] for r in d.remedies]


def test_unstable_without_validation_keeps_the_instability_verdict():
    rows = [{"epoch": i + 1, "loss": x} for i, x in enumerate([2.0, 1.5, 1.2, float("nan"), float("nan")])]
    d = diagnose(rows)
    assert d.verdict == "unstable" and "no validation" in d.qualifiers


def test_nothing_to_judge_is_a_clean_error(tmp_path):
    with pytest.raises(DataError, match="only validation numbers"):
        diagnose([{"epoch": 1, "val_loss": 1.0}, {"epoch": 2, "val_loss": 0.9}])
    (tmp_path / "val_only.csv").write_text("epoch,val_loss\n1,1.0\n2,0.9\n")
    r = subprocess.run([sys.executable, "-m", "faceage", "diagnose", str(tmp_path / "val_only.csv")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "only validation numbers" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("fname", ["plain.csv", "history.csv", "metrics.csv"])
def test_cli_reads_the_logs_it_used_to_crash_on(tmp_path, fname):
    (tmp_path / fname).write_text(TEXT_FORMATS[fname][0])
    r = subprocess.run([sys.executable, "-m", "faceage", "diagnose", str(tmp_path / fname), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["verdict"], out["onset_epoch"], out["framework"]) == ("overfitting", 5, TEXT_FORMATS[fname][2])


# --- remedies in the user's terms ------------------------------------------------------------

def _remedy_text(d):
    return "\n".join(f"{r['remedy']} | {r['config']} | {r['code']}" for r in d.remedies)


def test_remedies_are_said_in_the_logs_framework(tmp_path):
    said = {}
    for fname in ("keras_verbose.txt", "metrics.csv", "brackets.txt", "history.csv", "plain.csv"):
        (tmp_path / fname).write_text(TEXT_FORMATS[fname][0])
        said[fname] = _remedy_text(diagnose_history(read_history(tmp_path / fname)))
    keras = said["keras_verbose.txt"]
    assert 'Dropout(0.3) after Dense(128, activation="relu")' in keras
    assert 'EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)' in keras
    assert "kernel_regularizer=l2(1e-4)" in keras and "model.dense_dropout" not in keras
    lit = said["metrics.csv"]
    assert 'EarlyStopping(monitor="val_loss", patience=1)' in lit and "weight_decay=1e-4" in lit
    assert "nn.Dropout(0.3)" in lit and "configure_optimizers" in lit
    torch = said["brackets.txt"]
    assert "transforms.RandomHorizontalFlip()" in torch and "nn.Dropout(0.3)" in torch and "weight_decay=1e-4" in torch
    assert 'monitor="valid_loss"' in said["history.csv"]
    assert "EarlyStopping(" not in torch and "Dropout(0.3) after Dense" not in torch


def _run_dir(tmp_path, config, overrides, train=TRAIN, val=VAL, name="run"):
    run = tmp_path / name
    run.mkdir()
    cfg = load_config(config, overrides)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run / "history.json").write_text(json.dumps([{"epoch": e, "seconds": 1.0, "lr": cfg.optim.lr, "loss": t, "val_loss": v}
                                                  for e, t, v in zip(EPOCHS, train, val)]))
    return diagnose_history(read_history(run))


def test_faceage_remedies_apply_to_the_runs_model(tmp_path):
    d = _run_dir(tmp_path, "configs/keras-baseline-28.yaml", [])
    assert d.framework == "faceage" and d.verdict == "overfitting"
    text = _remedy_text(d)
    assert "model.dense_dropout" not in text                      # keras-baseline-28 has no hidden dense layer
    assert "optim.lr=1e-4" in text and "model.pretrained=imagenet" in text
    left = {r["remedy"]: r["because"] for r in d.evidence["not_applicable"]}
    assert "no hidden dense layer" in left["Dropout after the dense layers"]
    assert "Left out" in d.format() and all(r["code"] == "" for r in d.remedies)


def test_pretrained_run_is_not_told_to_use_a_pretrained_backbone(tmp_path):
    d = _run_dir(tmp_path, "configs/dlib-resnet29.yaml", [])
    text = _remedy_text(d)
    assert "model.pretrained" not in text and "mobilenetv2" not in text
    assert "model.dense_dropout=0.5" in text                      # the recipe already has 0.3
    assert "optim.weight_decay" not in text and "model.l2=0.001" in text
    assert "model.freeze=backbone model.unfreeze_epoch=3" in text  # backbone_lr_scale is already 0.1
    left = {r["remedy"]: r["because"] for r in d.evidence["not_applicable"]}
    assert "(face)" in left["A pretrained backbone"]


def test_stalled_reference_model_gets_its_own_numbers(tmp_path):
    train = [2.30, 2.10, 2.00] + [1.95 - 0.001 * i for i in range(9)]
    val = [2.28, 2.08, 2.01] + [1.97 - 0.0005 * i for i in range(9)]
    d = _run_dir(tmp_path, "configs/keras-regularized-120.yaml", [], train, val)
    assert d.verdict == "underfitting / stalled"
    text = _remedy_text(d)
    assert "model.head_hidden=[256,128,64]" in text               # one more layer on its [128, 64]
    assert "model.dense_dropout=0.25 model.l2=0.005" in text     # halves of its 0.5 and 0.01
    assert "model.batch_norm=after" in text                       # it has BN before the activation
    d = _run_dir(tmp_path, "configs/dlib-resnet29.yaml", [], train, val, name="dlib")
    assert "model.batch_norm" not in _remedy_text(d) and "model.pretrained" not in _remedy_text(d)


def test_validation_every_other_epoch_is_not_instability(tmp_path):
    """Lightning's check_val_every_n_epoch=2: validation cells are empty on odd epochs."""
    csv_text = "epoch,step,train_loss,val_loss\n" + "".join(
        f"{e - 1},{e},{t},{v if e % 2 == 0 else ''}\n" for e, t, v in zip(EPOCHS, TRAIN, VAL))
    (tmp_path / "metrics.csv").write_text(csv_text)
    d = diagnose_history(read_history(tmp_path / "metrics.csv"))
    assert d.verdict == "overfitting" and d.evidence["nonfinite_epochs"] == [] and d.evidence["epochs_without_both"] == 6


def test_epoch_log_warns_once_when_the_onset_holds():
    from faceage.evaluation.diagnose import EpochLog
    printed: list[str] = []
    log = EpochLog("lightning", warn_onset=True, print_fn=printed.append)
    for e, t, v in zip(EPOCHS, TRAIN, VAL):
        log.add(e, {"train_loss_step": t * 1.3, "train_loss_epoch": t, "val_loss": v, "epoch": e - 1})
    assert log.rows[0] == {"epoch": 1, "loss": TRAIN[0], "val_loss": VAL[0]}
    assert len(printed) == 1 and printed[0].startswith("faceage: overfitting since epoch 5 (seen at epoch ")
    assert 'EarlyStopping(monitor="val_loss"' in printed[0]
    assert log.finish().onset_epoch == 5
