"""Real data end to end through the CLI: train a tiny model on ~300 UTKFace images,
evaluate it, and kill-and-resume a run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import faceage

pytestmark = pytest.mark.integration

TINY = ["model.input_size=48", "data.batch_size=32", "train.progress_bar=false", "augment.rotation=10"]


@pytest.fixture(scope="module")
def trained_run(real_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    r = faceage("train", "--config", "configs/utk-custom-128.yaml", "--data", real_subset, "--out", out,
                "train.epochs=2", "optim.lr=0.001", *TINY)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def test_train_writes_a_complete_run_directory(trained_run):
    out, r = trained_run
    for name in ("config.yaml", "split.csv", "skipped.json", "history.csv", "history.json", "best.ckpt",
                 "last.ckpt", "run.json", "curves/loss.png", "curves/mae.png", "curves/gender_acc.png"):
        assert (out / name).is_file(), name
    assert "Epoch 2/2 - " in r.stdout and " - val_mae: " in r.stdout
    assert "Verdict: " in r.stdout and "What to try" in r.stdout      # train ends with its diagnosis
    rows = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["loss"] < rows[0]["loss"], "training loss should fall on real faces"
    assert {"val_loss", "mae", "val_mae", "gender_acc", "lr", "seconds"} <= set(rows[0])
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["epoch", "seconds", "lr"]


def test_evaluate_json_has_sane_values(trained_run, real_subset):
    out, _ = trained_run
    r = faceage("evaluate", "--model", out, "--data", real_subset, "--split", "test", "--json", out / "metrics.json")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert 20 <= m["n"] <= 80                         # ~15% of ~320 images
    assert 0 < m["mae"] < 40 and 0 <= m["cs5"] <= 1 and m["rmse"] >= m["mae"]
    assert 0 <= m["gender_accuracy"] <= 1 and "per_age_band" in m and "per_race" in m
    assert sum(v["n"] for v in m["per_age_band"].values()) == m["n"]
    assert 0 <= m["bin_one_off_accuracy"] <= 1 and m["bin_accuracy"] <= m["bin_one_off_accuracy"]
    cm = np.array(m["bin_confusion"])
    assert cm.shape == (len(m["age_bin_names"]),) * 2 and cm.sum() == m["n"]
    assert abs(np.trace(cm) / m["n"] - m["bin_accuracy"]) < 1e-9
    assert sum(v["n"] for v in m["per_gender"].values()) == m["n"] and all(v["mae"] >= 0 for v in m["per_gender"].values())
    assert 0 <= m["gender_f1"] <= 1
    for plot in ("predicted_vs_true", "error_by_age", "age_bin_confusion"):   # README: plots beside the JSON
        assert (out / "eval_plots" / f"{plot}.png").is_file(), plot
    assert "MAE" in r.stdout and "CS@5" in r.stdout and "age bins: accuracy" in r.stdout and "F1" in r.stdout


def test_split_file_makes_a_second_run_see_the_same_images(trained_run, real_subset, tmp_path):
    """README: `--split runs/A/split.csv` so that two runs see exactly the same images (even with
    another split seed, which would otherwise draw another split)."""
    out, _ = trained_run
    second = tmp_path / "second"
    r = faceage("train", "--config", "configs/utk-custom-128.yaml", "--data", real_subset, "--out", second,
                "--split", out / "split.csv", "train.epochs=1", "data.split_seed=7", *TINY)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (second / "split.csv").read_text() == (out / "split.csv").read_text()


def test_split_given_a_run_directory_reuses_that_runs_split(trained_run, real_subset, tmp_path):
    """`faceage train --split` takes "a split.csv (or a run directory's)": given the run directory
    itself, the new run sees exactly the images of that run's split.csv (here with another split
    seed, which alone would draw another split); a folder with no split.csv is one clear error."""
    out, _ = trained_run
    second = tmp_path / "from_dir"
    r = faceage("train", "--config", "configs/utk-custom-128.yaml", "--data", real_subset, "--out", second,
                "--split", out, "train.epochs=1", "data.split_seed=7", *TINY)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (second / "split.csv").read_text() == (out / "split.csv").read_text()
    no_split = tmp_path / "not_a_run"
    no_split.mkdir()
    r = faceage("train", "--config", "configs/utk-custom-128.yaml", "--data", real_subset, "--out", tmp_path / "x",
                "--split", no_split, "train.epochs=1", *TINY)
    assert r.returncode == 2 and "split file not found" in r.stderr and str(no_split) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_evaluate_on_a_foreign_folder_scores_every_image(trained_run, tmp_path, real_subset):
    out, _ = trained_run
    folder = tmp_path / "other"
    folder.mkdir()
    for p in sorted(real_subset.iterdir())[:7]:
        (folder / ("x" + p.name[p.name.index("_"):]).replace("x_", "33_", 1)).write_bytes(p.read_bytes()[:-1] + b"\xd9")
    r = faceage("evaluate", "--model", out / "best.ckpt", "--data", folder, "--json", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 7


def test_train_refuses_to_clobber_and_reports_bad_data(trained_run, tmp_path):
    out, _ = trained_run
    r = faceage("train", "--config", "configs/utk-custom-128.yaml", "--out", out, "train.epochs=1")
    assert r.returncode == 2 and "not empty" in r.stderr and "Traceback" not in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = faceage("train", "--config", "configs/utk-custom-128.yaml", "--data", empty, "--out", tmp_path / "o")
    assert r.returncode == 2 and "no usable image" in r.stderr and "Traceback" not in r.stderr
    r = faceage("train", "--config", "configs/utk-custom-128.yaml", "optim.lrr=1")
    assert r.returncode == 2 and "did you mean 'optim.lr'" in r.stderr


def test_kill_and_resume_ends_where_an_unbroken_run_would(real_subset, tmp_path):
    out = tmp_path / "resumable"
    args = ["train", "--config", "configs/utk-custom-128.yaml", "--data", real_subset, "--out", out,
            "train.epochs=4", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "faceage", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "last.ckpt").is_file():
        time.sleep(0.2)
    assert (out / "last.ckpt").is_file(), "no checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(json.loads((out / "history.json").read_text()))
    assert done_before < 4, "the run finished before it could be killed"
    r = faceage("train", "--resume", out)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert json.loads((out / "run.json").read_text())["epochs_run"] == 4
    assert "resuming" in r.stderr
