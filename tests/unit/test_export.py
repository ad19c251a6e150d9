"""ONNX export: dynamic batch, sidecar, agreement with torch, and evaluation through onnxruntime."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from faceage.config import Config
from faceage.errors import CheckpointError
from faceage.inference.checkpoint import AtomicCheckpointIO, describe
from faceage.inference.export import export_onnx
from faceage.inference.runners import OnnxRunner, TorchRunner, load_runner
from faceage.models.registry import create_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = create_model("utk-custom-128", input_size=48, tasks={"age_dist": 1.0, "gender": 1.0, "race": 0.5})
    path = tmp_path_factory.mktemp("ckpt") / "m.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                                          "faceage": describe(net.spec, Config())}, path)
    return path


def test_export_matches_torch_and_has_a_dynamic_batch(checkpoint, tmp_path):
    report = export_onnx(checkpoint, tmp_path / "m.onnx")
    assert report["max_abs_diff"] <= 1e-4
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["preprocess"]["size"] == 48 and meta["input"]["dtype"] == "uint8"
    assert meta["outputs"] == ["age", "age_bin", "age_high", "age_low", "gender_prob", "race", "race_prob"]
    assert meta["verification"]["max_abs_diff"] == report["max_abs_diff"]
    onnx_runner, torch_runner = load_runner(tmp_path / "m.onnx"), load_runner(checkpoint)
    assert isinstance(onnx_runner, OnnxRunner) and isinstance(torch_runner, TorchRunner)
    for batch in (1, 3, 17):
        x = np.random.default_rng(batch).integers(0, 256, (batch, 48, 48, 3), dtype=np.uint8)
        a, b = onnx_runner.predict(x), torch_runner.predict(x)
        assert set(a) == set(b) and all(a[k].shape == (batch,) for k in a)
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-4
        assert np.all(a["age_low"] <= a["age"] + 1) and np.all(a["age"] <= a["age_high"] + 1)


def test_onnx_runner_needs_no_torch(checkpoint, tmp_path):
    export_onnx(checkpoint, tmp_path / "m.onnx")
    code = ("import sys, numpy as np; from faceage.inference.runners import OnnxRunner; "
            f"r = OnnxRunner({str(tmp_path / 'm.onnx')!r}); "
            "out = r.predict(np.zeros((2, 48, 48, 3), np.uint8)); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(sorted(out))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "gender_prob" in r.stdout


def test_cli_export_and_evaluate_with_onnx(checkpoint, tmp_path, synthetic_utk):
    r = subprocess.run([sys.executable, "-m", "faceage", "export", str(checkpoint), "--out", str(tmp_path / "x.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "max abs diff vs torch" in r.stdout
    r = subprocess.run([sys.executable, "-m", "faceage", "evaluate", "--model", str(tmp_path / "x.onnx"), "--data",
                        str(synthetic_utk), "--json", str(tmp_path / "m.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 60


def test_onnx_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        OnnxRunner(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="sidecar"):
        OnnxRunner(tmp_path / "bad.onnx")
    (tmp_path / "bad.json").write_text(json.dumps({"preprocess": {"size": 8, "channels": 3, "mean": [0], "std": [1],
                                                                  "crop": "center_square"}, "model": {"name": "x", "tasks": {},
                                                                                                       "input_size": 8, "channels": 3}}))
    with pytest.raises(CheckpointError, match="onnxruntime cannot load"):
        OnnxRunner(tmp_path / "bad.onnx")


def test_face_backbone_exports_and_matches_torch(tmp_path):
    """dlib_resnet29's zero-padded residual sums and its own normalization survive export."""
    torch.manual_seed(0)
    net = create_model("dlib_resnet29", input_size=112)       # 112 px: a 3x3 block output meets a 4x4 shortcut
    path = tmp_path / "dlib.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                                          "faceage": describe(net.spec, Config())}, path)
    report = export_onnx(path, tmp_path / "dlib.onnx")
    assert report["max_abs_diff"] <= 1e-4
    meta = json.loads((tmp_path / "dlib.json").read_text())
    assert meta["preprocess"]["size"] == 112 and meta["preprocess"]["std"][0] == pytest.approx(256 / 255)
    x = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    a, b = load_runner(tmp_path / "dlib.onnx").predict(x), load_runner(path).predict(x)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-4


def test_faceres_backbone_exports_and_matches_torch(tmp_path):
    """faceres_mobilenet's input-dependent TF "SAME" padding and Caffe-mean normalization survive
    export, at the recipe's 160 px and at an odd size (where the padding turns symmetric)."""
    torch.manual_seed(0)
    for size in (160, 161):
        net = create_model("faceres_mobilenet", input_size=size)
        path = tmp_path / f"faceres{size}.ckpt"
        AtomicCheckpointIO().save_checkpoint({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                                              "faceage": describe(net.spec, Config())}, path)
        report = export_onnx(path, tmp_path / f"faceres{size}.onnx")
        assert report["max_abs_diff"] <= 1e-4
        meta = json.loads((tmp_path / f"faceres{size}.json").read_text())
        assert meta["preprocess"]["size"] == size and meta["preprocess"]["std"][0] == pytest.approx(1 / 255)
        x = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
        a, b = load_runner(tmp_path / f"faceres{size}.onnx").predict(x), load_runner(path).predict(x)
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-4


def test_flip_tta_set_in_a_recipe_reaches_the_graph_without_an_export_option(tmp_path):
    """README: `model.tta=flip` in a recipe puts flip averaging in the exported graph."""
    from faceage.config import load_config
    from faceage.models.registry import build_model
    from faceage.training.resolve import model_spec
    cfg = load_config("utk-custom-128", ["model.tta=flip", "model.input_size=48", "model.pretrained=null"])
    torch.manual_seed(0)
    net = build_model(model_spec(cfg))
    path = tmp_path / "flip.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                                          "faceage": describe(net.spec, cfg)}, path)
    export_onnx(path, tmp_path / "flip.onnx")                   # no tta= here: the recipe's own
    assert json.loads((tmp_path / "flip.json").read_text())["model"]["tta"] == "flip"
    runner = load_runner(tmp_path / "flip.onnx")
    x = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    a, b = runner.predict(x), runner.predict(x[:, :, ::-1].copy())
    assert np.allclose(a["age"], b["age"], atol=1e-3) and np.allclose(a["gender_prob"], b["gender_prob"], atol=1e-4)
    # `faceage export --tta none` (the CLI's choice; default: the checkpoint's) overrides the recipe's flip.
    export_onnx(path, tmp_path / "plain.onnx", tta="none")
    assert json.loads((tmp_path / "plain.json").read_text())["model"]["tta"] == "none"
    plain = load_runner(tmp_path / "plain.onnx")
    p, q = plain.predict(x), plain.predict(x[:, :, ::-1].copy())
    assert np.abs(p["age"] - q["age"]).max() > 1e-3                   # no averaging: mirror images differ


def test_flip_tta_in_the_graph_is_mirror_consistent(checkpoint, tmp_path):
    """--tta flip: a face and its mirror image get the same answer, through ONNX and torch."""
    report = export_onnx(checkpoint, tmp_path / "tta.onnx", tta="flip")
    assert report["max_abs_diff"] <= 1e-4
    meta = json.loads((tmp_path / "tta.json").read_text())
    assert meta["model"]["tta"] == "flip"
    x = np.random.default_rng(1).integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    runner, plain = load_runner(tmp_path / "tta.onnx"), load_runner(checkpoint)
    a, b = runner.predict(x), runner.predict(x[:, :, ::-1].copy())
    assert np.abs(a["age"] - b["age"]).max() < 1e-3 and np.abs(a["gender_prob"] - b["gender_prob"]).max() < 1e-5
    p, q = plain.predict(x), plain.predict(x[:, :, ::-1].copy())
    assert np.abs(p["age"] - q["age"]).max() > 1e-3                   # without it, mirror images differ
    assert np.all(np.minimum(p["age"], q["age"]) - 1e-3 <= a["age"]) and np.all(a["age"] <= np.maximum(p["age"], q["age"]) + 1e-3)


def test_evaluate_takes_a_split_file(checkpoint, synthetic_utk, tmp_path):
    """--split-file scores the named part of any split file (or a run directory's); a missing file is a clear error."""
    from faceage.errors import DataError
    from faceage.evaluation.evaluate import evaluate
    keys = sorted(p.name for p in synthetic_utk.iterdir())
    split = tmp_path / "holdout.csv"
    split.write_text("key,split\n" + "".join(f"{k},{'test' if i < 7 else 'train'}\n" for i, k in enumerate(keys)))
    m = evaluate(str(checkpoint), str(synthetic_utk), split="test", split_file=str(split), quiet=True)
    assert m["n"] == 7 and str(split) in m["scope"]
    run = tmp_path / "other-run"                         # a run directory stands for the split.csv inside it
    run.mkdir()
    (run / "split.csv").write_text(split.read_text())
    m = evaluate(str(checkpoint), str(synthetic_utk), split="test", split_file=str(run), quiet=True)
    assert m["n"] == 7 and str(run / "split.csv") in m["scope"]
    assert evaluate(str(checkpoint), str(synthetic_utk), split="test", quiet=True)["n"] == len(keys)  # no split: whole
    with pytest.raises(DataError, match="split file not found"):
        evaluate(str(checkpoint), str(synthetic_utk), split="test", split_file=str(tmp_path / "none.csv"), quiet=True)
    with pytest.raises(DataError, match="path is empty"):                # not "." read as a run directory
        evaluate(str(checkpoint), str(synthetic_utk), split="test", split_file="", quiet=True)


def test_gender_temperatures_by_age_are_baked_into_the_graph(checkpoint, tmp_path):
    """A calibration.json's gender temperatures (per band of predicted age) reach onnxruntime:
    its gender probabilities are sigmoid(logit / T(age)) of the torch model's logits."""
    from faceage.inference.graph import InferenceGraph
    x = np.random.default_rng(2).integers(0, 256, (64, 48, 48, 3), dtype=np.uint8)
    plain = load_runner(checkpoint).predict(x)
    cut = float(np.median(plain["age"]))                 # half the faces on each side of a band edge
    bands = [[0.0, 3.0], [cut, 0.5]]
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"checkpoint": "other.ckpt", "checkpoint_digest": "0" * 32,
                                       "interval_temperature": {"none": 1.0, "flip": 1.0},
                                       "gender_temperature": {"none": bands, "flip": bands}}))
    report = export_onnx(checkpoint, tmp_path / "g.onnx", calibration=calibration)
    assert report["max_abs_diff"] <= 1e-4
    assert json.loads((tmp_path / "g.json").read_text())["model"]["gender_temperature"] == bands
    got = load_runner(tmp_path / "g.onnx").predict(x)
    with torch.inference_mode():
        logit = InferenceGraph(load_runner(checkpoint).graph.net).head_outputs(torch.from_numpy(x))["gender"][:, 0].numpy()
    t = np.where(plain["age"] >= cut, 0.5, 3.0)
    assert np.allclose(got["gender_prob"], 1 / (1 + np.exp(-logit / t)), atol=1e-5)
    assert np.array_equal(got["gender_prob"] >= 0.5, plain["gender_prob"] >= 0.5) and np.allclose(got["age"], plain["age"], atol=1e-4)


@pytest.mark.parametrize("given, expected", [(None, "1"), ("0", "0")])
def test_onnxruntime_telemetry_off_unless_the_user_set_the_variable(tmp_path, given, expected):
    """README: faceage sets ORT_DISABLE_TELEMETRY=1 before importing onnxruntime, unless you set
    the variable yourself; with it on, nothing is written under HOME."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["HOME"] = str(tmp_path)
    if given is not None:
        env["ORT_DISABLE_TELEMETRY"] = given
    code = ("import os; from faceage.inference.runners import import_onnxruntime; import_onnxruntime(); "
            "print(os.environ['ORT_DISABLE_TELEMETRY'])")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected
    if given is None:
        assert not (tmp_path / ".cache" / "Microsoft").exists()
