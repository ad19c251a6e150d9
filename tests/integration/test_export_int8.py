"""``faceage export --int8`` on real UTKFace faces: a face-pretrained model keeps its answers (the
8-bit ranges are fitted on real crops), the ranges come from the run's validation faces and never
its test faces, and an int8 model serves like any exported one."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import faceage
from faceage.config import load_config
from faceage.data.readers import read_dataset
from faceage.inference.checkpoint import load_checkpoint
from faceage.inference.quantize import calibration_faces
from faceage.inference.runners import OnnxRunner
from faceage.training.fit import train

SMALL = ["model.input_size=64", "model.freeze=backbone", "train.epochs=2", "train.progress_bar=false",
         "data.batch_size=32", "optim.lr=0.01", "schedule.warmup_epochs=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, real_subset):
    """A small FaceRes model on real faces; its split holds a third out as val and a third as test."""
    root = tmp_path_factory.mktemp("int8")
    keys = sorted(s.key for s in read_dataset(str(real_subset))[0].samples)
    split = root / "split.csv"
    with split.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["key", "split"])
        w.writerows([k, ("train", "val", "test")[i % 3]] for i, k in enumerate(keys))
    cfg = load_config("faceres-mobilenet", SMALL + [f"data.split_file={split}", f"data.cache_dir={root / 'cache'}"])
    train(cfg, root / "run", data=str(real_subset), quiet=True)
    return root / "run"


def test_shipped_model_in_int8_answers_like_the_float_one_on_real_faces(real_subset, tmp_path):
    """The shipped FaceRes model quantized with ranges from 64 real faces, measured on the others."""
    from faceage.data.cache import ImageCache
    from faceage.inference.predictor import DEFAULT_MODEL
    from faceage.inference.quantize import quantize_onnx
    from faceage.preprocess import PreprocessSpec
    spec = PreprocessSpec.from_dict(json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())["preprocess"])
    manifest, report = read_dataset(str(real_subset))
    cache = ImageCache(spec, tmp_path / "cache")
    samples = cache.build(manifest.samples, report)
    faces, ages = cache.gather([s.digest for s in samples]), np.array([s.age for s in samples], float)
    female = np.array([s.gender == 1 for s in samples])
    fit = np.arange(len(faces)) % 4 == 0
    info = quantize_onnx(DEFAULT_MODEL, tmp_path / "int8.onnx", faces[fit][:64])
    (tmp_path / "int8.json").write_text(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert info["calibration_faces"] == 64 and len(info["kept_float"]) == 4
    a, b = OnnxRunner(tmp_path / "int8.onnx").predict(faces[~fit]), OnnxRunner(DEFAULT_MODEL).predict(faces[~fit])
    assert np.abs(a["age"] - b["age"]).mean() < 1.0 and np.median(np.abs(a["age"] - b["age"])) < 0.8
    assert ((a["gender_prob"] >= 0.5) == (b["gender_prob"] >= 0.5)).mean() >= 0.97
    mae_int8, mae_float = np.abs(a["age"] - ages[~fit]).mean(), np.abs(b["age"] - ages[~fit]).mean()
    assert abs(mae_int8 - mae_float) < 0.3
    assert ((a["gender_prob"] >= 0.5) == female[~fit]).mean() >= ((b["gender_prob"] >= 0.5) == female[~fit]).mean() - 0.02


def test_cli_int8_export_of_a_run_evaluates_like_any_export(run, real_subset, tmp_path):
    r = faceage("export", run, "--out", tmp_path / "int8.onnx", "--int8", "--data", real_subset, "--int8-faces", "48")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "int8.json").read_text())
    assert meta["quantization"]["calibration_faces"] == 48 and meta["quantization"]["check"]["faces"] == 48
    assert "int8: ranges fitted on 48 faces" in r.stdout
    n_test = sum(1 for line in (run / "split.csv").read_text().splitlines() if line.endswith(",test"))
    r = faceage("evaluate", "--model", tmp_path / "int8.onnx", "--data", real_subset, "--split", "test",
                "--json", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["n"] == n_test


def test_int8_ranges_come_from_validation_faces_never_test_faces(run, real_subset):
    loaded = load_checkpoint(run)
    roles = dict(row for row in csv.reader((run / "split.csv").open()))
    manifest, _ = read_dataset(str(real_subset))
    digest_role = {s.digest: roles[s.key] for s in manifest.samples}
    from faceage.data.cache import ImageCache
    cache = ImageCache(loaded.preprocess, None)
    by_pixels = {cache.gather([s.digest])[0].tobytes(): digest_role[s.digest] for s in cache.build(manifest.samples, _)}
    for n, expected in ((16, {"val"}), (80, {"train", "val"})):      # 106 val faces: enough for 16 + 16, not 80 + 80
        fit, check = calibration_faces(loaded, str(real_subset), n)
        assert len(fit) == n and len(check) == n
        used = {by_pixels[f.tobytes()] for f in (*fit, *check)}
        assert used == expected
