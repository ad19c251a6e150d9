"""Issue 11 in-process: config values refused up front, atomic writes (modes, debris), and
numbers that are not numbers (NaN weights refused, never NaN in JSON)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from faceage.config import METRIC_NAMES, TASKS, load_config, metric_names, validate_environment, validate_model
from faceage.errors import CheckpointError, ConfigError


@pytest.mark.parametrize("overrides, key", [
    (["optim.lr=-1"], "optim.lr"),
    (["optim.lr=0"], "optim.lr"),
    (["optim.lr=nan"], "optim.lr"),
    (["optim.lr=.inf"], "optim.lr"),
    (["model.dist_sigma=0"], "model.dist_sigma"),
    (["model.label_smoothing=1"], "model.label_smoothing"),
    (["model.label_smoothing=-0.1"], "model.label_smoothing"),
    (["model.input_size=0"], "model.input_size"),
    (["model.input_size=-1"], "model.input_size"),
    (["model.input_size=1"], "model.input_size"),
    (["model.input_size=.nan"], "model.input_size"),
    (["train.precision=bogus"], "train.precision"),
    (["model.tasks={foo: 1}"], "model.tasks"),
    (["model.tasks={}"], "model.tasks"),
    (["model.tasks={gender: .nan}"], "model.tasks.gender"),
    (["data.num_workers=-1"], "data.num_workers"),
    (["train.monitor=bogus"], "train.monitor"),
    (["train.early_stopping.enabled=true", "train.early_stopping.monitor=bogus"], "train.early_stopping.monitor"),
    (["train.num_nodes=0"], "train.num_nodes"),
    (["model.head_hidden=[-5]"], "model.head_hidden"),
    (["data.split=[nan,0.5,0.5]"], "data.split"),
    (["data.split=[0.5,0,0.5]"], "data.split"),
    (["train.devices=0"], "train.devices"),
    (["train.devices=abc"], "train.devices"),
    (["train.epochs=0"], "train.epochs"),
    (["train.seed=-1"], "train.seed"),
    (["augment.flip=2"], "augment.flip"),
    (["model.dense_dropout=1"], "model.dense_dropout"),
    (["schedule.factor=1.5"], "schedule.factor"),
    (["train.accelerator=quantum"], "train.accelerator"),
])
def test_invalid_values_are_one_clear_line(overrides, key):
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    msg = str(exc.value)
    assert f"'{key}'" in msg or msg.startswith(key), msg
    assert "\n" not in msg


def test_the_readme_example_message_is_the_one_given():
    """README quotes it word for word: one line naming the key and what is allowed."""
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["optim.lr=-1"])
    assert str(exc.value) == "config key 'optim.lr' must be a positive number, e.g. 0.001; got -1.0"
    r = subprocess.run([sys.executable, "-m", "faceage", "train", "optim.lr=-1"], capture_output=True, text=True)
    assert r.returncode == 2 and "config key 'optim.lr' must be a positive number, e.g. 0.001; got -1.0" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_every_shipped_recipe_is_valid():
    from pathlib import Path
    for recipe in sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")):
        validate_model(load_config(recipe))


def test_monitor_is_checked_against_the_models_tasks():
    with pytest.raises(ConfigError, match="train.monitor.*keras-baseline-28.*bin_acc"):
        validate_model(load_config(None, ["model.name=keras-baseline-28", "train.monitor=val_mae"]))
    validate_model(load_config(None, ["model.name=keras-baseline-28", "train.monitor=val_bin_acc", "train.monitor_mode=max"]))
    assert metric_names({"age_dist": 1.0}) == ["loss", "mae", "val_loss", "val_mae"]


def test_task_names_match_the_heads():
    from faceage.models.heads import TASKS as HEAD_TASKS
    assert TASKS == HEAD_TASKS and set(METRIC_NAMES) == set(TASKS)


def test_environment_checks(tmp_path):
    import torch
    with pytest.raises(ConfigError, match="data.cache_dir.*cannot hold"):
        validate_environment(load_config(None, ["data.cache_dir=/proc/nope"]))
    with pytest.raises(ConfigError, match="train.devices"):
        validate_environment(load_config(None, ["train.accelerator=cpu", f"train.devices={(os.cpu_count() or 1) + 1}"]))
    with pytest.raises(ConfigError, match="train.strategy"):
        validate_environment(load_config(None, ["train.strategy=bogus"]))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.accelerator.*no usable CUDA GPU"):
            validate_environment(load_config(None, ["train.accelerator=gpu"]))
    validate_environment(load_config(None, [f"data.cache_dir={tmp_path}", "train.devices=1"]))


def test_ablate_epochs_zero_is_an_error(tmp_path):
    from faceage.training.ablate import ablate
    with pytest.raises(ConfigError, match="train.epochs"):
        ablate(None, [("a", ["model.name=keras-baseline-28"])], tmp_path, epochs=0)
    assert not any(tmp_path.iterdir())


# -- atomic writes ---------------------------------------------------------------------------

def test_atomic_writes_respect_the_umask(tmp_path):
    import torch

    from faceage.atomic import atomic_link_or_copy, atomic_write_text
    from faceage.inference.checkpoint import AtomicCheckpointIO
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "hi")
        AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(2)}, tmp_path / "c.ckpt")
        atomic_link_or_copy(tmp_path / "c.ckpt", tmp_path / "d.ckpt")
        atomic_link_or_copy(tmp_path / "c.ckpt", tmp_path / "d.ckpt")   # already the same file
    finally:
        os.umask(old)
    for name in ("a.txt", "c.ckpt", "d.ckpt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.ckpt", "d.ckpt"]


def test_remove_stale_keeps_live_writers(tmp_path):
    from faceage.atomic import owner_pid, remove_stale
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f".x.ckpt.p{gone.pid}.0123abcd.tmp"
    mine = tmp_path / f".x.ckpt.p{os.getpid()}.0123abcd.tmp"
    live = tmp_path / f".x.ckpt.p{os.getppid()}.0123abcd.tmp"
    untagged_new, untagged_old = tmp_path / ".y.abc.tmp", tmp_path / ".z.abc.tmp"
    folder = tmp_path / f"digest.p{gone.pid}.0123abcd.partial"
    for p in (dead, mine, live, untagged_new, untagged_old):
        p.write_text("x")
    folder.mkdir()
    (folder / "f").write_text("x")
    os.utime(untagged_old, (0, 0))
    removed = remove_stale(tmp_path.iterdir())
    assert sorted(p.name for p in removed) == sorted([dead.name, untagged_old.name, folder.name])
    assert mine.exists() and live.exists() and untagged_new.exists()
    assert owner_pid(".best.p1.ckpt.p42.0123abcd.tmp") == 42      # the last tag is the writer's


# -- numbers that are not numbers ------------------------------------------------------------

def _face(**kw):
    from faceage.inference.results import Face
    base = dict(number=1, box=[0.0, 0.0, 10.0, 10.0], landmarks=None, score=None, age=31.2, age_low=25.0, age_high=38.0,
                age_bin="31-40", gender="male", gender_prob=0.9, gender_probs={"female": 0.1, "male": 0.9},
                low_quality=False)
    base.update(kw)
    return Face(**base)


def test_json_never_holds_nan():
    from faceage.inference.results import PhotoResult
    d = _face(age=float("nan"), age_low=float("nan"), gender_prob=float("inf"),
              gender_probs={"female": float("nan"), "male": float("nan")}).to_dict()
    assert d["age"] is None and d["age_bin"] is None and d["age_low"] is None and d["age_high"] is None
    assert d["gender"] is None and d["gender_prob"] is None and d["gender_probs"] is None
    text = json.dumps(PhotoResult(0, "a.jpg", [_face(age=float("nan"))]).to_dict(), allow_nan=False)
    assert "NaN" not in text
    ok = _face().to_dict()
    assert ok["age"] == 31.2 and ok["age_bin"] == "31-40" and ok["gender"] == "male"


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    from faceage.config import Config
    from faceage.inference.checkpoint import AtomicCheckpointIO, describe, load_checkpoint
    from faceage.models.registry import create_model
    net = create_model("keras-baseline-28")
    state = {f"net.{k}": v.clone() for k, v in net.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key][...] = float("inf")
    AtomicCheckpointIO().save_checkpoint({"state_dict": state, "faceage": describe(net.spec, Config())}, tmp_path / "m.ckpt")
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_checkpoint(tmp_path / "m.ckpt")


def test_onnx_with_nan_weights_is_refused(tmp_path):
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from faceage.inference.predictor import DEFAULT_MODEL
    from faceage.inference.runners import OnnxRunner
    src = DEFAULT_MODEL
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).dtype.kind == "f"
                and numpy_helper.to_array(i).size > 1)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(tmp_path / "m.onnx"))
    shutil.copy(src.with_suffix(".json"), tmp_path / "m.json")
    with pytest.raises(CheckpointError, match="non-finite"):
        OnnxRunner(tmp_path / "m.onnx")


def test_overrides_may_sit_among_the_options(monkeypatch, capsys):
    # `train --config X a=1 --epochs 2 b=2`: argparse leaves `b=2` unparsed; it is an override too.
    import faceage.cli as cli
    seen = {}
    monkeypatch.setattr(cli, "_cmd_train", lambda args: seen.update(overrides=args.overrides, epochs=args.epochs) or 0)
    assert cli.main(["train", "--config", "demo", "model.l2=0.01", "--epochs", "2", "optim.lr=0.01"]) == 0
    assert seen["overrides"] == ["model.l2=0.01", "optim.lr=0.01"] and seen["epochs"] == 2
    with pytest.raises(SystemExit) as exc:                     # anything else is still argparse's error
        cli.main(["train", "--config", "demo", "model.l2=0.01", "--bogus", "1"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
