"""compare and ablate on tiny synthetic data: tables, files, curves, resumability."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from faceage.errors import ConfigError
from faceage.training.ablate import PRESETS, parse_variant


def test_parse_variant_keeps_commas_inside_values():
    assert parse_variant("wide:model.head_hidden=[256,128],optim.lr=0.001") == (
        "wide", ["model.head_hidden=[256,128]", "optim.lr=0.001"])
    assert parse_variant("base:") == ("base", [])
    with pytest.raises(ConfigError, match="NAME:key=value"):
        parse_variant("no-colon")


def test_builtin_preset_follows_the_write_ups_path():
    names = [n for n, _ in PRESETS["keras-120-path"]["variants"]]
    assert names == ["baseline", "batchnorm", "dropout", "l2", "augmentation", "early_stopping", "all"]


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
    assert "| base | keras-baseline-28 | 28x28x1 | 203,434 |" in r.stdout
    # A second call reruns nothing.
    r2 = subprocess.run(cmd, capture_output=True, text=True)
    assert r2.returncode == 0 and r2.stderr.count("finished earlier: kept") == 2 and "Epoch 1/2" not in r2.stdout


def test_compare_rejects_non_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "faceage", "compare", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "not a faceage run directory" in r.stderr
