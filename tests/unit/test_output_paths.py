"""Output paths that are not what they must be, and recipes that are not UTF-8: one line and
exit 2, never a traceback (and never after the work is done)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from faceage.atomic import atomic_write_text
from faceage.errors import FaceageError


def faceage(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faceage", *map(str, args)], capture_output=True, text=True, cwd=cwd)


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
