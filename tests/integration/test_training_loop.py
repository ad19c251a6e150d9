"""The training loop as users drive it (issue 12 part 4), on real UTKFace images with tiny
settings (keras-baseline-28: 28 px gray, 120 images, 1-2 epochs):

- a recipe by name from a directory that is not the repository;
- an override that changes nothing in the built model is a warning (train and ablate);
- `train --resume RUN --epochs N` extends a finished run;
- output that is not a terminal: no '\\r', one epoch numbering (the bar, when forced, too);
- config.yaml holds the model family's defaults, not nulls;
- ablate keeps an unchanged variant and retrains a changed one, saying which.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.integration


def faceage(*args, env, cwd) -> subprocess.CompletedProcess:
    """conftest's runner, but reading bytes: text mode would turn every '\\r' into '\\n'."""
    r = subprocess.run([sys.executable, "-m", "faceage", *map(str, args)], capture_output=True, env=env, cwd=cwd)
    r.stdout, r.stderr = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    return r


TINY = ["data.limit=120", "data.batch_size=32"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = os.environ.copy()
    e["FACEAGE_CACHE"] = str(tmp_path_factory.mktemp("loop_cache"))
    return e


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """A working directory with no configs/ folder in it."""
    return tmp_path_factory.mktemp("elsewhere")


@pytest.fixture(scope="module")
def trained(real_subset, env, elsewhere):
    r = faceage("train", "--config", "keras-baseline-28", "--data", real_subset, "--out", "run", "--epochs", "1",
                "model.dense_dropout=0.3", *TINY, env=env, cwd=elsewhere)
    return r, elsewhere / "run"


def test_recipe_by_name_from_another_directory(trained):
    r, run = trained
    assert r.returncode == 0, r.stdout + r.stderr
    assert (run / "run.json").is_file() and (run / "best.ckpt").is_file()


def test_override_that_changes_nothing_is_a_warning_at_train(trained):
    r, _ = trained
    assert ("warning: model.dense_dropout=0.3 changes nothing in the built model: keras-baseline-28 has no hidden "
            "dense layer") in r.stderr


def test_output_to_a_pipe_has_no_progress_debris_and_one_epoch_numbering(trained):
    r, _ = trained
    assert "\r" not in r.stdout and "\r" not in r.stderr
    assert "Epoch 1/1 - " in r.stdout and "Epoch 0" not in r.stdout + r.stderr
    assert (r.stdout + r.stderr).count("Epoch ") == 1          # the per-epoch line only, once


def test_config_yaml_holds_every_value_used(trained):
    _, run = trained
    saved = yaml.safe_load((run / "config.yaml").read_text())
    m = saved["model"]
    assert m["l2"] == 0.0 and m["dense_dropout"] == 0.3 and m["head_hidden"] == [] and m["input_size"] == 28
    assert m["channels"] == 1 and m["tasks"] == {"age_bins": 1.0} and m["pretrained"] == "none"
    assert None not in (m["batch_norm"], m["activation"], m["conv_dropout"], m["dropout_after"])
    assert os.path.isabs(saved["data"]["path"])


def test_resume_with_epochs_extends_a_finished_run(trained, env, tmp_path):
    _, run = trained
    r = faceage("train", "--resume", run, "--epochs", "2", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "extending" in r.stderr and "from 1 to 2 epochs" in r.stderr
    assert "Epoch 2/2 - " in r.stdout and "Epoch 1/" not in r.stdout and "\r" not in r.stdout + r.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["epochs_run"] == 2 and info["max_epochs"] == 2
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2


def test_ablate_keeps_unchanged_and_retrains_changed_variants(real_subset, env, elsewhere):
    args = ["ablate", "--config", "keras-baseline-28", "--epochs", "1", "--data", real_subset, "--out", "abl",
            "--variant", "base:", "--variant", "drop:model.dense_dropout=0.5"]
    first = faceage(*args, "--variant", "l2:model.l2=0.01", *TINY, "train.progress_bar=true", env=env, cwd=elsewhere)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "warning: variant 'drop': model.dense_dropout=0.5 changes nothing in the built model" in first.stderr
    assert first.stderr.count("] training") == 3
    # The forced bar (Lightning writes it to stdout) numbers epochs as the per-epoch line does.
    assert "\rEpoch 1/1: " in first.stdout and "Epoch 0" not in first.stdout + first.stderr

    second = faceage(*args, "--variant", "l2:model.l2=0.001", *TINY, env=env, cwd=elsewhere)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "[base] kept (unchanged)" in second.stderr and "[drop] kept (unchanged)" in second.stderr
    assert "[l2] retraining (config changed: model.l2 0.01 -> 0.001)" in second.stderr
    assert second.stdout.count("Epoch 1/1 - ") == 1 and "\r" not in second.stdout + second.stderr
    abl = elsewhere / "abl"
    assert yaml.safe_load((abl / "l2/config.yaml").read_text())["model"]["l2"] == 0.001
    assert yaml.safe_load((abl / ".previous/l2/config.yaml").read_text())["model"]["l2"] == 0.01
    assert [row["run"] for row in csv.DictReader((abl / "compare.csv").open())] == ["base", "drop", "l2"]


def test_resume_finds_the_runs_own_decode_cache(real_subset, tmp_path):
    """A run trained with `data.cache_dir=DIR` (a path given on the command line, relative to the
    current directory as README says) is resumed from another directory: `--resume` reads the
    run's saved config, finds that cache and decodes nothing again, and writes no cache anywhere
    else (neither under the new directory nor in FACEAGE_CACHE)."""
    env = {k: v for k, v in os.environ.items() if k != "FACEAGE_TEST_KILL_AT"}
    env["FACEAGE_CACHE"] = str(tmp_path / "default-cache")
    first_cwd, other_cwd = tmp_path / "a", tmp_path / "b"
    first_cwd.mkdir()
    other_cwd.mkdir()
    killed = faceage("train", "--config", "keras-baseline-28", "--data", real_subset, "--out", "run", "--epochs", "2",
                     "data.cache_dir=mycache", "train.progress_bar=false", *TINY,
                     env={**env, "FACEAGE_TEST_KILL_AT": "epoch_end:1"}, cwd=first_cwd)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert "decoding images into cache: 120/120" in killed.stderr
    cache = first_cwd / "mycache"
    chunks = sorted(p.name for p in cache.rglob("*.u8"))
    assert chunks, "the run's decode cache is empty"
    run = first_cwd / "run"
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [1]
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["cache_dir"] == str(cache.resolve())   # saved absolute

    r = faceage("train", "--resume", run, "--data", real_subset, env=env, cwd=other_cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "decoding images" not in r.stderr, "the resumed run decoded its images again: " + r.stderr
    assert sorted(p.name for p in cache.rglob("*.u8")) == chunks
    assert not (other_cwd / "mycache").exists() and not (tmp_path / "default-cache").exists()
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [1, 2]
