"""``faceage calibrate`` on real UTKFace faces: the 90% interval fitted to 90% coverage on held-out
faces, applied wherever the checkpoint is loaded (torch evaluation, export to ONNX), and dropped
with a warning once the checkpoint changes."""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from conftest import faceage
from faceage.config import load_config
from faceage.data.readers import read_dataset
from faceage.inference.checkpoint import load_checkpoint
from faceage.inference.runners import load_runner
from faceage.training.fit import train

# Frozen face features, a linear-ish head, two epochs: a model just good enough that some
# interval holds 90% of ages (a one-epoch model from ImageNet weights predicts one age for all).
SMALL = ["model.input_size=64", "model.freeze=backbone", "train.epochs=2", "train.progress_bar=false",
         "data.batch_size=32", "optim.lr=0.01", "schedule.warmup_epochs=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, real_subset):
    """A small face-pretrained model, and a split file that holds half its faces out as val."""
    root = tmp_path_factory.mktemp("calib")
    manifest, _ = read_dataset(str(real_subset))
    keys = sorted(s.key for s in manifest.samples)
    split = root / "split.csv"
    with split.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["key", "split"])
        # every other face (file names sort by age, so a block would hold only some ages)
        w.writerows([k, "val" if i % 2 == 0 else "train"] for i, k in enumerate(keys))
    cfg = load_config("faceres-mobilenet", SMALL + [f"data.split_file={split}", f"data.cache_dir={root / 'cache'}"])
    train(cfg, root / "run", data=str(real_subset), quiet=True)
    return root / "run"


CALIBRATION = "best.calibration.json"     # the run directory means best.ckpt


def test_calibrate_fits_coverage_and_every_loader_applies_it(run, real_subset, tmp_path):
    r = faceage("calibrate", run, "--data", real_subset)
    assert r.returncode == 0, r.stderr
    assert "tta none:" in r.stdout and "tta flip:" in r.stdout and "calibration.json" in r.stdout
    saved = json.loads((run / CALIBRATION).read_text())
    n_val = sum(1 for line in (run / "split.csv").read_text().splitlines() if line.endswith(",val"))
    assert saved["n"] == n_val >= 100 and saved["scope"].startswith("val split")
    for tta in ("none", "flip"):
        assert saved["coverage_after"][tta] >= 0.90 and saved["interval_temperature"][tta] > 0

    # Loading the checkpoint applies it: torch evaluation of the same faces reads 90%, estimates unchanged.
    metrics = tmp_path / "val.json"
    r = faceage("evaluate", "--model", run, "--data", real_subset, "--split", "val", "--json", metrics)
    assert r.returncode == 0, r.stderr
    assert json.loads(metrics.read_text())["interval90_coverage"] == pytest.approx(saved["coverage_after"]["none"], abs=2 / n_val)
    calibrated, plain = load_runner(run), load_runner(run)
    plain.graph.net.spec = replace(plain.spec, interval_temperature=1.0)
    plain.graph.net.apply_calibration()
    faces = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    a, b = calibrated.predict(faces), plain.predict(faces)
    assert np.array_equal(a["age"], b["age"]) and calibrated.spec.interval_temperature == saved["interval_temperature"]["none"]

    # Export bakes in the temperature fitted for the exported tta, and says so in the sidecar.
    r = faceage("export", run, "--out", tmp_path / "flip.onnx", "--tta", "flip")
    assert r.returncode == 0, r.stderr
    sidecar = json.loads((tmp_path / "flip.json").read_text())
    assert sidecar["model"]["interval_temperature"] == saved["interval_temperature"]["flip"]
    widths = {}
    for t in ("0.25", "4"):
        r = faceage("export", run, "--out", tmp_path / f"t{t}.onnx", "--interval-temperature", t)
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / f"t{t}.json").read_text())["model"]["interval_temperature"] == float(t)
        out = load_runner(tmp_path / f"t{t}.onnx").predict(faces)
        widths[t] = float((out["age_high"] - out["age_low"]).mean())
    assert widths["0.25"] < widths["4"]


def test_a_changed_checkpoint_is_loaded_uncalibrated_with_a_warning(run, real_subset, capsys):
    if not (run / CALIBRATION).is_file():
        assert faceage("calibrate", run, "--data", real_subset).returncode == 0
    path = run / CALIBRATION
    record = json.loads(path.read_text())
    try:
        path.write_text(json.dumps({**record, "checkpoint_digest": "0" * 32}))   # as if training went on
        loaded = load_checkpoint(run)
        assert loaded.spec.interval_temperature == 1.0
        assert "fitted to an earlier" in capsys.readouterr().err
        path.write_text("{")                                                     # a truncated file
        assert load_checkpoint(run).spec.interval_temperature == 1.0
        assert "unreadable" in capsys.readouterr().err
        path.write_text(json.dumps({**record, "age_prior_strength": {"none": 0.5, "flip": 0.5},
                                    "age_prior": [0.01] * 100 + [-1.0]}))        # a damaged prior
        assert load_checkpoint(run).spec.age_prior_strength == 0.0
        assert "out of range" in capsys.readouterr().err
        path.write_text(json.dumps({**record, "gender_temperature": {"none": [[3, 1.5]], "flip": [[3, 1.5]]}}))
        assert load_checkpoint(run).spec.gender_temperature is None                # bands must start at age 0
        assert "out of range" in capsys.readouterr().err
    finally:
        path.write_text(json.dumps(record))
    assert load_checkpoint(run).spec.interval_temperature == record["interval_temperature"]["none"]


def test_gender_confidence_is_fitted_to_the_accuracy_by_age(run, real_subset, tmp_path):
    """Calibration also fits one gender temperature per band of predicted age, so that what the
    answers say (their mean confidence) is how often they are right; which gender is answered never changes."""
    r = faceage("calibrate", run, "--data", real_subset)
    assert r.returncode == 0, r.stderr
    assert "gender calibration error" in r.stdout and "by predicted age" in r.stdout
    saved = json.loads((run / CALIBRATION).read_text())
    for tta in ("none", "flip"):
        bands, report = saved["gender_temperature"][tta], saved["gender_bands"][tta]
        assert bands[0][0] == 0 and all(t > 0 for _, t in bands) and len(bands) == len(report)
        assert sum(b["n"] for b in report) == saved["n"]
        assert all(b["confidence_after"] == pytest.approx(b["accuracy"], abs=0.002) for b in report)

    metrics = tmp_path / "val.json"
    r = faceage("evaluate", "--model", run, "--data", real_subset, "--split", "val", "--json", metrics)
    assert r.returncode == 0, r.stderr
    m = json.loads(metrics.read_text())
    assert m["gender_mean_confidence"] == pytest.approx(m["gender_accuracy"], abs=0.005)
    assert "mean confidence" in r.stdout and "calibration error" in r.stdout
    calibrated, plain = load_runner(run), load_runner(run)
    plain.graph.net.spec = replace(plain.spec, gender_temperature=None)
    plain.graph.net.apply_calibration()
    faces = np.random.default_rng(2).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    a, b = calibrated.predict(faces), plain.predict(faces)
    assert np.array_equal(a["gender_prob"] >= 0.5, b["gender_prob"] >= 0.5) and not np.allclose(a["gender_prob"], b["gender_prob"])


def test_calibrate_reads_whole_numbers_in_an_npz_y_as_ages(run, real_subset, tmp_path):
    """An .npz with x and whole-number y is ambiguous to train and evaluate (ages or class
    indices?); calibrate fits only age models, so its y are ages and no flag is needed."""
    from PIL import Image
    files = sorted(real_subset.glob("*.chip.jpg"))[::2]       # every other face: every age (names sort by age)
    x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((64, 64), Image.BILINEAR)) for f in files])
    y = np.array([int(f.name.split("_")[0]) for f in files])
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    own = shutil.copytree(run, tmp_path / "run")          # the module's run keeps its own calibration
    r = faceage("calibrate", own, "--data", tmp_path / "xy.npz")
    assert r.returncode == 0, r.stderr
    saved = json.loads((own / CALIBRATION).read_text())
    assert saved["n"] == len(files) >= 100 and "not the training dataset" in saved["scope"]
    assert saved["coverage_after"]["none"] >= 0.90


def test_calibrate_refuses_what_it_cannot_fit(run, real_subset, tmp_path):
    onnx = tmp_path / "m.onnx"
    assert faceage("export", run, "--out", onnx).returncode == 0
    r = faceage("calibrate", onnx, "--data", real_subset)
    assert r.returncode != 0 and "calibrate a checkpoint" in r.stderr and "Traceback" not in r.stderr
    few = tmp_path / "few.csv"                              # 40 held-out faces: too few for a 90% interval
    rows = list(csv.reader((run / "split.csv").open()))
    with few.open("w", newline="") as fh:
        csv.writer(fh).writerows([rows[0]] + [[k, "val" if i < 40 else "train"] for i, (k, *_) in enumerate(rows[1:])])
    r = faceage("calibrate", run, "--data", real_subset, "--split-file", few)
    assert r.returncode != 0 and "too few" in r.stderr and "Traceback" not in r.stderr
    r = faceage("export", run, "--out", tmp_path / "x.onnx", "--interval-temperature", "-1")
    assert r.returncode != 0 and "positive" in r.stderr and "Traceback" not in r.stderr
    # one-hot class rows hold no ages; calibrate has no --y-is, so the message must not send the user to one
    np.savez(tmp_path / "onehot.npz", x=np.zeros((4, 64, 64, 3), np.uint8), y=np.eye(4))
    r = faceage("calibrate", run, "--data", tmp_path / "onehot.npz")
    assert r.returncode == 2 and "ages are one number a face" in r.stderr and "hold no ages" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_age_prior_correction_is_fitted_applied_and_carried(run, real_subset, tmp_path):
    from faceage.inference.calibration import corrected_ages
    r = faceage("calibrate", run, "--data", real_subset, "--age-prior", "auto")
    assert r.returncode == 0, r.stderr
    assert "age prior strength" in r.stdout and "balanced MAE" in r.stdout
    auto = json.loads((run / CALIBRATION).read_text())
    assert len(auto["age_prior"]) == 101 and auto["mae_budget"] == 0.01
    for tta in ("none", "flip"):                        # auto: the largest strength within 1% of the MAE
        sweep = auto["prior_sweep"][tta]
        within = [row["strength"] for row in sweep if row["mae"] <= sweep[0]["mae"] * 1.01]
        assert auto["age_prior_strength"][tta] == max(within)
        assert auto["coverage_after"][tta] >= 0.90

    # A fixed strength: loading the checkpoint reads ages from the corrected distribution.
    r = faceage("calibrate", run, "--data", real_subset, "--age-prior", "0.6")
    assert r.returncode == 0, r.stderr
    saved = json.loads((run / CALIBRATION).read_text())
    assert saved["age_prior_strength"] == {"none": 0.6, "flip": 0.6} and saved["mae_budget"] is None
    calibrated = load_runner(run)
    assert calibrated.spec.age_prior_strength == 0.6
    faces = np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    import torch
    from faceage.inference.graph import InferenceGraph
    with torch.inference_mode():
        logits = InferenceGraph(calibrated.graph.net).head_outputs(torch.from_numpy(faces))["age_dist"].numpy()
    got = calibrated.predict(faces)["age"]
    assert np.allclose(got, corrected_ages(logits, 0.6, saved["age_prior"]), atol=1e-3)

    # Carried to another checkpoint by export --calibration (here: the same run's file, copied away),
    # baked into the ONNX graph: onnxruntime answers what the calibrated torch model answers.
    carried = tmp_path / "split-run-calibration.json"
    carried.write_text(json.dumps({**saved, "checkpoint": "other.ckpt", "checkpoint_digest": "0" * 32}))
    (run / CALIBRATION).unlink()
    try:
        r = faceage("export", run, "--out", tmp_path / "m.onnx", "--calibration", carried)
        assert r.returncode == 0, r.stderr
        spec = json.loads((tmp_path / "m.json").read_text())["model"]
        assert spec["age_prior_strength"] == 0.6 and spec["interval_temperature"] == saved["interval_temperature"]["none"]
        assert np.allclose(load_runner(tmp_path / "m.onnx").predict(faces)["age"], got, atol=1e-3)
        assert load_checkpoint(run).spec.age_prior_strength == 0.0       # the checkpoint itself stays uncalibrated
    finally:
        (run / CALIBRATION).write_text(json.dumps(saved))


@pytest.mark.parametrize("args, words", [(["--age-prior", "2"], "from 0 to 1"), (["--age-prior", "young"], "'auto'"),
                                         (["--age-prior", "auto", "--mae-budget", "-1"], "--mae-budget")])
def test_calibrate_refuses_bad_prior_options(run, real_subset, args, words):
    r = faceage("calibrate", run, "--data", real_subset, *args)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


def test_export_refuses_a_missing_or_broken_calibration_file(run, tmp_path):
    r = faceage("export", run, "--out", tmp_path / "m.onnx", "--calibration", tmp_path / "none.json")
    assert r.returncode != 0 and "not found" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.json").write_text("{")
    r = faceage("export", run, "--out", tmp_path / "m.onnx", "--calibration", tmp_path / "bad.json")
    assert r.returncode != 0 and "cannot be applied" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_age_prior_needs_the_runs_training_ages(run, real_subset, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "best.ckpt", alone / "best.ckpt")          # no split.csv beside it
    r = faceage("calibrate", alone / "best.ckpt", "--data", real_subset, "--age-prior", "auto")
    assert r.returncode != 0 and "split.csv" in r.stderr and "Traceback" not in r.stderr
    assert not (alone / CALIBRATION).exists()


def test_each_checkpoint_keeps_its_own_calibration(run, real_subset, tmp_path):
    """Calibrating last.ckpt leaves best.ckpt's fit alone (one file per checkpoint), and a run
    calibrated by an earlier faceage (one calibration.json per run) still loads calibrated."""
    if not (run / CALIBRATION).is_file():
        assert faceage("calibrate", run, "--data", real_subset).returncode == 0
    best_before = (run / CALIBRATION).read_text()
    r = faceage("calibrate", run / "last.ckpt", "--data", real_subset, "--age-prior", "0.5")
    assert r.returncode == 0, r.stderr
    assert "last.calibration.json" in r.stdout
    last = json.loads((run / "last.calibration.json").read_text())
    assert last["checkpoint"] == "last.ckpt" and (run / CALIBRATION).read_text() == best_before
    assert load_checkpoint(run / "last.ckpt").spec.age_prior_strength == 0.5
    best = json.loads(best_before)
    assert load_checkpoint(run).spec.interval_temperature == best["interval_temperature"]["none"]

    old = tmp_path / "old-run"                     # the layout before per-checkpoint files
    old.mkdir()
    shutil.copy(run / "best.ckpt", old / "best.ckpt")
    shutil.copy(run / CALIBRATION, old / "calibration.json")
    assert load_checkpoint(old).spec.interval_temperature == best["interval_temperature"]["none"]
    shutil.copy(run / "last.ckpt", old / "last.ckpt")     # the legacy file names best.ckpt, not last
    assert load_checkpoint(old / "last.ckpt").spec.interval_temperature == 1.0


def test_calibrating_on_faces_the_model_trained_on_warns(run, real_subset, tmp_path):
    copy = tmp_path / "run"                       # the module's run keeps its own calibration
    shutil.copytree(run, copy)
    r = faceage("calibrate", copy, "--data", real_subset, "--split", "train")
    assert r.returncode == 0, r.stderr
    assert "were used to train this model" in r.stderr and "too narrow" in r.stderr
    r = faceage("calibrate", copy, "--data", real_subset)             # held-out faces: no warning
    assert r.returncode == 0 and "were used to train" not in r.stderr
