"""compare and ablate on tiny synthetic data: tables, files, curves, resumability."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from faceage.errors import ConfigError
from faceage.recipebook import recipe_names
from faceage.training.ablate import PRESETS, parse_variant, variant_warnings
from faceage.training.resolve import ineffective_overrides


def test_parse_variant_keeps_commas_inside_values():
    assert parse_variant("wide:model.head_hidden=[256,128],optim.lr=0.001") == (
        "wide", ["model.head_hidden=[256,128]", "optim.lr=0.001"])
    assert parse_variant("base:") == ("base", [])
    with pytest.raises(ConfigError, match="NAME:key=value"):
        parse_variant("no-colon")


def test_builtin_preset_follows_the_write_ups_path():
    names = [n for n, _ in PRESETS["keras-120-path"]["variants"]]
    assert names == ["baseline", "batchnorm", "dropout", "l2", "augmentation", "early_stopping", "all"]


def test_builtin_preset_names_a_shipped_recipe_and_every_variant_does_something(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                      # works from any directory
    preset = PRESETS["keras-120-path"]
    assert preset["base"] in recipe_names()
    assert variant_warnings(preset["base"], preset["variants"], []) == []


def test_ineffective_overrides():
    check = ineffective_overrides
    # keras-baseline-28 has no hidden dense layer: its dense dropout changes nothing.
    msg = check("keras-baseline-28", [], ["model.dense_dropout=0.3"])
    assert len(msg) == 1 and "changes nothing in the built model" in msg[0] and "no hidden dense layer" in msg[0]
    assert check("keras-baseline-28", [], ["model.head_hidden=[32]", "model.dense_dropout=0.3"]) == []
    assert check("keras-baseline-28", [], ["model.l2=0.01", "optim.lr=0.01", "model.batch_norm=after"]) == []
    assert "already 0.3" in check("utk-custom-128", [], ["model.dense_dropout=0.3"])[0]      # the model's default
    assert "already 0.001" in check("keras-baseline-28", [], ["optim.lr=0.001"])[0]
    assert "sgd only" in check("keras-baseline-28", [], ["optim.momentum=0.5"])[0]
    assert check("keras-baseline-28", [], ["optim.name=sgd", "optim.momentum=0.5"]) == []
    assert "early_stopping.enabled" in check("keras-baseline-28", [], ["train.early_stopping.patience=3"])[0]
    assert "no pretrained weights" in check("keras-baseline-28", [], ["model.pretrained=imagenet"])[0]
    assert "reference CNNs" in check(None, ["model.name=resnet18"], ["model.conv_dropout=0.2"])[0]
    assert check(None, ["model.name=resnet18"], ["model.dense_dropout=0.5"]) == []
    age_only = ["model.name=resnet18", "model.tasks={age_dist: 1}"]
    assert "gender, race, label and age_bins tasks only" in check(None, age_only, ["model.label_smoothing=0.1"])[0]
    assert check(None, ["model.name=resnet18", "model.tasks={age_dist: 1, gender: 1}"], ["model.label_smoothing=0.1"]) == []


def test_variant_warnings_name_the_variant():
    variants = [("base", []), ("same", ["optim.lr=0.001"]), ("drop", ["model.dense_dropout=0.5"]),
                ("lr", ["optim.lr=0.01"]), ("lr2", ["optim.lr=0.01"])]
    w = variant_warnings("keras-baseline-28", variants, ["train.epochs=1"])
    assert any(m.startswith("variant 'same':") and "already 0.001" in m for m in w)
    assert any(m.startswith("variant 'drop':") and "built model" in m for m in w)
    assert any("variant 'lr2' trains the same config as variant 'lr'" in m for m in w)
    assert not any("'base'" in m or m.startswith("variant 'lr':") for m in w)
    w = variant_warnings("keras-baseline-28", [("b", []), ("aug", ["augment.flip=0"])], [])
    assert w and "aug" in w[0]                                   # keras-baseline-28 already has flip 0


def test_config_changes_are_said_in_keys():
    from faceage.config import load_config
    from faceage.training.resolve import config_changes, format_changes, resolved_config
    a = resolved_config(load_config("keras-regularized-120"))
    b = resolved_config(load_config("keras-regularized-120", ["model.l2=0.001", "train.progress_bar=false"]))
    assert format_changes(config_changes(a, b)) == "model.l2 0.01 -> 0.001"
    assert config_changes(a, resolved_config(load_config("keras-regularized-120", ["model.l2=0.01"]))) == []


def test_ablate_then_compare_and_resume(tmp_path, synthetic_utk):
    cmd = [sys.executable, "-m", "faceage", "ablate", "--config", "configs/keras-baseline-28.yaml",
           "--variant", "base:", "--variant", "drop:model.dense_dropout=0.5,model.head_hidden=[32]",
           "--epochs", "2", "--data", str(synthetic_utk), "--out", str(tmp_path / "abl"),
           "train.progress_bar=false", "data.batch_size=16"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("compare.csv", "compare.html", "curves.png", "base/run.json", "drop/run.json", "drop/metrics.json"):
        assert (tmp_path / "abl" / name).is_file(), name
    # Same split for every variant.
    assert (tmp_path / "abl/base/split.csv").read_text() == (tmp_path / "abl/drop/split.csv").read_text()
    rows = list(csv.DictReader((tmp_path / "abl/compare.csv").open()))
    assert [row["run"] for row in rows] == ["base", "drop"]
    assert rows[0]["params"] == "203434" and rows[0]["stop epoch"] == "2" and rows[0]["verdict"]
    assert rows[0]["tasks"] and all(t.split()[0] in ("age_reg", "age_bins", "age_dist", "gender", "race")
                                    for t in rows[0]["tasks"].split(", "))
    assert "| base | keras-baseline-28 | 28x28x1 | 203,434 |" in r.stdout
    # A second call reruns nothing.
    r2 = subprocess.run(cmd, capture_output=True, text=True)
    assert r2.returncode == 0 and r2.stderr.count("kept (unchanged)") == 2 and "Epoch 1/2" not in r2.stdout


def test_ablate_resumes_an_interrupted_variant_and_warns_about_one_equal_to_the_base(tmp_path, synthetic_utk):
    """README: rerunning `ablate` says `resuming (unchanged, interrupted)` for a variant that was killed
    mid-way (and continues it rather than starting over), and before training it warns about a variant
    equal to the base recipe (here one whose only override is where the decode cache goes)."""
    import json
    import os
    out = tmp_path / "abl"
    cmd = [sys.executable, "-m", "faceage", "ablate", "--config", "configs/keras-baseline-28.yaml",
           "--variant", "base:", "--variant", f"cached:data.cache_dir={tmp_path / 'other-cache'}",
           "--epochs", "2", "--data", str(synthetic_utk), "--out", str(out),
           "train.progress_bar=false", "data.batch_size=16"]
    env = {k: v for k, v in os.environ.items() if k != "FACEAGE_TEST_KILL_AT"}
    killed = subprocess.run(cmd, capture_output=True, text=True, env={**env, "FACEAGE_TEST_KILL_AT": "epoch_end:1"})
    assert killed.returncode == -9, killed.stdout + killed.stderr            # SIGKILL right after epoch 1 of 'base'
    assert ("warning: variant 'cached' is the base recipe itself: its overrides "
            f"(data.cache_dir={tmp_path / 'other-cache'}) change nothing") in killed.stderr
    assert "warning: variant 'base'" not in killed.stderr
    assert (out / "base/last.ckpt").is_file() and not (out / "base/run.json").exists()
    assert [row["epoch"] for row in json.loads((out / "base/history.json").read_text())] == [1]
    assert not (out / "cached").exists()

    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[base] resuming (unchanged, interrupted)" in r.stderr and "[base] training" not in r.stderr
    assert "[cached] training" in r.stderr
    assert r.stdout.count("Epoch 1/2 - ") == 1 and r.stdout.count("Epoch 2/2 - ") == 2   # base went on at epoch 2
    assert [row["epoch"] for row in json.loads((out / "base/history.json").read_text())] == [1, 2]
    assert json.loads((out / "base/run.json").read_text())["epochs_run"] == 2
    assert (out / "base/metrics.json").is_file() and (out / "compare.csv").is_file()
    assert not (out / ".previous").exists()                                   # nothing was set aside


def test_compare_rejects_non_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "faceage", "compare", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "not a faceage run directory" in r.stderr


@pytest.mark.parametrize("setting", ["train.devices=2", "train.num_nodes=2"])
def test_ablate_refuses_ddp_before_training(tmp_path, synthetic_utk, setting):
    # Lightning's launcher re-runs the command per process: each would train every variant.
    from faceage.training.ablate import ablate
    with pytest.raises(ConfigError, match="once per variant"):
        ablate("keras-baseline-28", [("base", [])], tmp_path / "abl", data=str(synthetic_utk),
               common=["train.accelerator=cpu", setting])
    assert not (tmp_path / "abl").exists()
