"""Training options on tiny synthetic data: optimizers, schedules, early stopping, unfreezing,
and the class-per-subfolder task."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import face_image
from faceage.config import load_config
from faceage.errors import ConfigError
from faceage.training.fit import train

FAST = ["train.progress_bar=false", "data.batch_size=16", "augment.flip=0.5"]


def _train(tmp_path, data, overrides, name="run"):
    cfg = load_config(None, FAST + overrides)
    return train(cfg, tmp_path / name, data=str(data), quiet=True)


@pytest.mark.parametrize("opt, sched", [("sgd", "onecycle"), ("adamw", "cosine"), ("adam", "plateau"), ("adam", "constant")])
def test_optimizers_and_schedules(tmp_path, synthetic_utk, opt, sched):
    s = _train(tmp_path, synthetic_utk, ["model.name=keras-baseline-28", f"optim.name={opt}", f"schedule.name={sched}",
                                         "schedule.warmup_epochs=1", "train.epochs=2"])
    rows = json.loads((tmp_path / "run" / "history.json").read_text())
    assert s["epochs_run"] == 2 and all(r["lr"] >= 0 for r in rows)  # cosine ends at 0
    if sched in ("cosine", "onecycle"):
        assert rows[0]["lr"] != rows[1]["lr"]          # the schedule moved the learning rate


def test_early_stopping_stops_and_restores_best(tmp_path, synthetic_utk):
    s = _train(tmp_path, synthetic_utk, ["model.name=keras-baseline-28", "train.epochs=10", "train.early_stopping.enabled=true",
                                         "train.early_stopping.patience=1", "train.early_stopping.min_delta=1000"])
    assert s["epochs_run"] == 2 and s["stopped_early"] and s["final_checkpoint"] == "best.ckpt"


def test_unfreeze_after_epoch(tmp_path, synthetic_utk, capsys):
    _train(tmp_path, synthetic_utk, ["model.name=mobilenetv3_small", "model.input_size=32", "model.freeze=backbone",
                                     "model.unfreeze_epoch=2", "train.epochs=2"])
    assert "unfroze all layers at epoch 2" in capsys.readouterr().err


def test_class_per_subfolder_with_the_cifar_tutorial_model(tmp_path):
    for k, c in enumerate(("airplane", "cat", "ship")):
        (tmp_path / "ds" / c).mkdir(parents=True)
        for i in range(12):
            face_image(100 * k + i, size=32).save(tmp_path / "ds" / c / f"{i}.png")
    s = _train(tmp_path, tmp_path / "ds", ["model.name=cifar10-tutorial", "model.num_classes=3", "train.epochs=1",
                                           "data.split=[0.6,0.4,0.0]", "model.batch_norm=after", "model.conv_dropout=0.2"])
    assert s["epochs_run"] == 1 and "acc" in s["best"] and "val_acc" in s["best"]


def test_task_without_labels_is_a_config_error(tmp_path):
    (tmp_path / "ds" / "a").mkdir(parents=True)
    (tmp_path / "ds" / "b").mkdir(parents=True)
    for i in range(6):
        face_image(i).save(tmp_path / "ds" / ("a" if i % 2 else "b") / f"{i}.png")
    with pytest.raises(ConfigError, match="needs 'age' labels"):
        _train(tmp_path, tmp_path / "ds", ["model.name=utk-custom-128", "train.epochs=1", "data.split=[0.5,0.5,0.0]"])


def test_backbone_learns_at_a_scaled_rate(tmp_path, synthetic_utk):
    """optim.backbone_lr_scale: the heads train at optim.lr, the backbone at lr * scale."""
    from faceage.models.registry import create_model
    from faceage.training.module import FaceAgeModule
    cfg = load_config(None, ["model.name=keras-baseline-28", "optim.lr=0.01", "optim.backbone_lr_scale=0.1"])
    module = FaceAgeModule(create_model("keras-baseline-28"), cfg)
    opt = module.configure_optimizers()
    heads, backbone = opt.param_groups
    assert heads["lr"] == 0.01 and backbone["lr"] == pytest.approx(0.001)
    assert {id(p) for p in heads["params"]} == {id(p) for p in module.net.heads.parameters()}
    assert len(backbone["params"]) == len(list(module.net.backbone.parameters()))
    s = _train(tmp_path, synthetic_utk, ["model.name=keras-baseline-28", "optim.backbone_lr_scale=0.1", "train.epochs=1"])
    assert s["epochs_run"] == 1


# -- resume (issue 11): in-process, on synthetic data -----------------------------------------

def _rows(run):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((run / "history.json").read_text())]


def test_extending_equals_an_unbroken_run_with_plateau_and_early_stopping(tmp_path, synthetic_utk):
    """2 epochs, then `--resume train.epochs=3`: the same history as 3 epochs unbroken (plateau
    and early stopping do not depend on the planned length). The plateau scheduler's state,
    stepped after the epoch's checkpoint in Lightning, and the random generators (flip
    augmentation, dropout) must travel in last.ckpt for this to hold."""
    common = ["model.name=keras-baseline-28", "model.dense_dropout=0.3", "model.head_hidden=[16]",
              "schedule.name=plateau", "schedule.patience=0", "train.monitor=val_bin_acc", "train.monitor_mode=max",
              "train.early_stopping.enabled=true", "train.early_stopping.patience=5"]
    _train(tmp_path, synthetic_utk, common + ["train.epochs=3"], name="unbroken")
    _train(tmp_path, synthetic_utk, common + ["train.epochs=2"], name="resumed")
    s = train(None, tmp_path / "resumed", data=str(synthetic_utk), resume=True, quiet=True, overrides=["train.epochs=3"])
    assert s["epochs_run"] == 3
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "unbroken")
    assert len({r["lr"] for r in _rows(tmp_path / "unbroken")}) > 1        # the plateau did lower the lr


def test_stopped_run_killed_before_its_summary_trains_no_further(tmp_path, synthetic_utk, capsys):
    s = _train(tmp_path, synthetic_utk, ["model.name=keras-baseline-28", "train.epochs=10", "train.early_stopping.enabled=true",
                                         "train.early_stopping.patience=1", "train.early_stopping.min_delta=1000"])
    assert s["epochs_run"] == 2
    run = tmp_path / "run"
    (run / "run.json").unlink()                       # as if killed between the last checkpoint and run.json
    s = train(None, run, data=str(synthetic_utk), resume=True, quiet=True)
    assert s["epochs_run"] == 2 and s["stopped_early"] and "stopped early at epoch 2" in capsys.readouterr().err
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    s = train(None, run, data=str(synthetic_utk), resume=True, quiet=True)
    assert s["already_finished"] and "already finished" in capsys.readouterr().err
    assert before == {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="cannot be extended"):
        train(None, run, data=str(synthetic_utk), resume=True, quiet=True, overrides=["train.epochs=12"])


def test_resume_accepts_only_more_epochs(tmp_path, synthetic_utk):
    _train(tmp_path, synthetic_utk, ["model.name=keras-baseline-28", "train.epochs=2"])
    with pytest.raises(ConfigError, match="only train.epochs=N"):
        train(None, tmp_path / "run", data=str(synthetic_utk), resume=True, overrides=["optim.lr=0.1"])
    with pytest.raises(ConfigError, match="only train.epochs=N"):               # the split is the run's own
        train(None, tmp_path / "run", data=str(synthetic_utk), resume=True, overrides=["data.split_file=x.csv"])
    s = train(None, tmp_path / "run", data=str(synthetic_utk), resume=True, quiet=True,
              overrides=["train.progress_bar=false", "data.num_workers=0",       # how, not what: accepted
                         f"data.cache_dir={tmp_path / 'moved-cache'}"])
    assert s["already_finished"]
    with pytest.raises(ConfigError, match="fewer than the 2 epochs"):
        train(None, tmp_path / "run", data=str(synthetic_utk), resume=True, overrides=["train.epochs=1"])
    # A run planned for 4 epochs and killed after 2 cannot be cut to 3: its schedule was laid out for 4.
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["train"]["epochs"] = 4
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    (run / "run.json").unlink()
    with pytest.raises(ConfigError, match="fewer than the 4 epochs .* was planned for"):
        train(None, run, data=str(synthetic_utk), resume=True, overrides=["train.epochs=3"])
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4 and not (run / "run.json").exists()


def test_onecycle_run_cannot_be_extended(tmp_path, synthetic_utk):
    _train(tmp_path, synthetic_utk, ["model.name=keras-baseline-28", "train.epochs=1", "schedule.name=onecycle"])
    with pytest.raises(ConfigError, match="onecycle"):
        train(None, tmp_path / "run", data=str(synthetic_utk), resume=True, overrides=["train.epochs=2"])
