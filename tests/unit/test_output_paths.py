"""Output paths that are not what they must be, and recipes that are not UTF-8: one line and
exit 2, never a traceback (and never after the work is done)."""
from __future__ import annotations


import pytest

from conftest import faceage

from faceage.atomic import atomic_write_text
from faceage.errors import FaceageError


def test_atomic_writes_refuse_a_folder_before_writing(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FaceageError, match="is a folder"):
        atomic_write_text(tmp_path / "out", "x")
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]          # no temporary left behind


@pytest.mark.parametrize("case", ["yaml", "annotate", "compare", "train_out"])
def test_cli_says_what_is_wrong_with_a_path(tmp_path, case):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe\x00model: {}")
    args = {"yaml": ["train", "--config", tmp_path / "bad.yaml"],
            "annotate": ["predict", tmp_path / "missing.jpg", "--annotate", tmp_path / "afile"],
            "compare": ["compare", tmp_path, "--out", tmp_path / "afile"],
            "train_out": ["train", "--config", "configs/demo.yaml", "--out", tmp_path / "afile"]}[case]
    r = faceage(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("faceage: error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_damaged_run_files_are_one_line_errors(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: [\n")
    (run / "last.ckpt").write_bytes(b"x")
    r = faceage("train", "--resume", run)
    assert r.returncode == 2 and "not valid YAML" in r.stderr and "Traceback" not in r.stderr
    (run / "config.yaml").write_text("model:\n  name: keras-baseline-28\n")
    (run / "history.json").write_text('[{"epoch": 1, "loss": 2.0, "val_loss": 2.1}]')
    (run / "run.json").write_text("{bad")
    r = faceage("compare", run)
    assert r.returncode == 2 and "run.json is not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_models_depth_must_be_positive():
    r = faceage("models", "keras-baseline-28", "--depth", "-1")
    assert r.returncode == 2 and "--depth must be at least 1" in r.stderr and "Traceback" not in r.stderr
