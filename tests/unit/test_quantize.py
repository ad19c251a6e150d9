"""``faceage export --int8``: which convolutions become int8, what the sidecar records, and the
options' errors. (Accuracy on real faces: tests/integration/test_export_int8.py.)"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from conftest import faceage
from faceage.config import Config
from faceage.errors import FaceageError
from faceage.inference.checkpoint import AtomicCheckpointIO, describe
from faceage.inference.export import export_onnx
from faceage.inference.runners import OnnxRunner
from faceage.models.registry import create_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    net = create_model("faceres_mobilenet", input_size=64, tasks={"age_dist": 1.0, "gender": 1.0})   # 27 convolutions
    folder = tmp_path_factory.mktemp("run")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                                          "faceage": describe(net.spec, Config())}, folder / "last.ckpt")
    return folder


def conv_weight_sources(path) -> dict[str, str]:
    """For each Conv node: the op that produces its weight (DequantizeLinear once quantized)."""
    graph = onnx.load(str(path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    return {n.name: producer.get(n.input[1], "initializer") for n in graph.node if n.op_type == "Conv"}


def test_int8_export_quantizes_the_inner_convolutions(run_dir, synthetic_utk):
    report = export_onnx(run_dir / "last.ckpt", int8=True, int8_data=str(synthetic_utk), int8_faces=16)
    out = run_dir / "model-int8.onnx"                         # the default name beside the checkpoint
    assert report["onnx"] == str(out) and out.is_file()
    sources = conv_weight_sources(out)
    names = list(sources)
    kept = [n for n, src in sources.items() if src != "DequantizeLinear"]
    assert sorted(kept) == sorted({*names[:3], names[-1]}) == report["quantization"]["kept_float"]
    assert len(names) > 4 and all(sources[n] == "DequantizeLinear" for n in names[3:-1])

    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["quantization"] == report["quantization"]
    assert meta["quantization"]["calibration_faces"] == 16 and meta["quantization"]["check"]["faces"] == 16
    assert meta["verification"]["max_abs_diff"] <= 1e-4          # the float graph against torch

    # The recorded check is what the two models answer on faces; recompute it independently.
    export_onnx(run_dir / "last.ckpt", run_dir / "float.onnx")
    x = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    a, b = OnnxRunner(out).predict(x), OnnxRunner(run_dir / "float.onnx").predict(x)
    assert set(a) == set(b) and all(np.isfinite(v).all() for v in a.values())
    assert np.abs(a["age"] - b["age"]).mean() < 3.0
    assert not np.array_equal(a["age"], b["age"])                # it is a different (quantized) model


def test_int8_export_is_repeatable(run_dir, synthetic_utk, tmp_path):
    """The same faces in the same order: the same file, byte for byte."""
    for name in ("a.onnx", "b.onnx"):
        export_onnx(run_dir / "last.ckpt", tmp_path / name, int8=True, int8_data=str(synthetic_utk), int8_faces=16)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_int8_options_are_checked_before_any_work(run_dir, synthetic_utk, tmp_path):
    r = faceage("export", run_dir, "--out", tmp_path / "m.onnx", "--int8-faces", "100")
    assert r.returncode == 2 and "add --int8" in r.stderr and "Traceback" not in r.stderr
    r = faceage("export", run_dir, "--out", tmp_path / "m.onnx", "--int8", "--data", synthetic_utk, "--int8-faces", "8")
    assert r.returncode == 2 and "at least 16" in r.stderr and "Traceback" not in r.stderr
    r = faceage("export", run_dir, "--out", tmp_path / "m.onnx", "--int8", "--data", synthetic_utk, "--int8-faces", "40")
    assert r.returncode == 2 and "needs 80 face images" in r.stderr and "found 60" in r.stderr
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(FaceageError, match="needs 80"):
        export_onnx(run_dir / "last.ckpt", tmp_path / "m.onnx", int8=True, int8_data=str(synthetic_utk), int8_faces=40)


def test_cli_int8_export_reports_the_measured_difference(run_dir, synthetic_utk, tmp_path):
    r = faceage("export", run_dir, "--out", tmp_path / "q.onnx", "--int8", "--data", synthetic_utk, "--int8-faces", "20")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "q.json").read_text())
    check = meta["quantization"]["check"]
    assert f"on {check['faces']} other faces" in r.stdout and f"{check['age_mean_abs_diff']:.2f} years" in r.stdout
    assert "Collecting tensor data" not in r.stdout               # onnxruntime's progress goes to stderr


def test_int8_max_diff_refuses_a_model_too_far_from_float(run_dir, synthetic_utk, tmp_path):
    """--int8-max-diff: the measured difference decides; a refused model leaves nothing behind,
    and an existing file of that name is not touched."""
    out = tmp_path / "q.onnx"
    out.write_bytes(b"an earlier export")
    r = faceage("export", run_dir, "--out", out, "--int8", "--data", synthetic_utk, "--int8-faces", "20",
                "--int8-max-diff", "0.000001")
    assert r.returncode == 2 and "more than --int8-max-diff" in r.stderr and "not written" in r.stderr
    assert "Traceback" not in r.stderr and out.read_bytes() == b"an earlier export" and not out.with_suffix(".json").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    r = faceage("export", run_dir, "--out", out, "--int8", "--data", synthetic_utk, "--int8-faces", "20",
                "--int8-max-diff", "100")
    assert r.returncode == 0, r.stderr
    assert json.loads(out.with_suffix(".json").read_text())["quantization"]["check"]["age_mean_abs_diff"] <= 100
    assert conv_weight_sources(out)                              # a real model replaced the placeholder
    for bad in (["--int8-max-diff", "1"], ["--int8", "--data", str(synthetic_utk), "--int8-max-diff", "-1"]):
        r = faceage("export", run_dir, "--out", tmp_path / "x.onnx", *bad)
        assert r.returncode == 2 and "--int8" in r.stderr and "Traceback" not in r.stderr
