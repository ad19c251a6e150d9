"""Every registered model trains a step without NaNs; reference counts match the write-ups;
pretrained weights load from local files (and through the library hub's cache)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO
from faceage.errors import CheckpointError, ConfigError
from faceage.models.registry import count_parameters, create_model, list_models
from faceage.models.summary import format_summary

WEIGHTS = Path(os.environ.get("FACEAGE_WEIGHTS", REPO / ".." / "shared" / "weights"))

# Small inputs keep the parametrized test fast; reference CNNs with Flatten adapt to any size.
SMALL = {"keras-baseline-28": 28, "cifar10-tutorial": 32, "dlib_resnet29": 104}  # dlib: its minimum


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_no_nan(name):
    torch.manual_seed(0)
    size = SMALL.get(name, 32 if name not in ("keras-baseline-120", "keras-regularized-120", "utk-custom-128") else 48)
    net = create_model(name, pretrained="none", input_size=size)
    net.train()
    x = torch.randn(2, net.spec.channels, size, size)
    out = net(x)
    batch = {"age": torch.tensor([23.0, 61.0]), "age_bin": torch.tensor([2, 6]), "gender": torch.tensor([0, 1]),
             "race": torch.tensor([1, 4]), "label": torch.tensor([3, 7])}
    loss, parts = net.losses(out, batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    record = net.decode(out)
    assert "age" in record or "label" in record


def test_reference_parameter_counts():
    assert count_parameters(create_model("keras-baseline-28")) == (203_434, 203_434)
    total, trainable = count_parameters(create_model("utk-vgg16-128", pretrained="none"))
    assert (total, trainable, total - trainable) == (15_241_026, 7_605_762, 7_635_264)
    total, _ = count_parameters(create_model("utk-custom-128"))
    assert round(total / 1e6, 2) == 5.17


def test_summary_table_like_keras():
    text = format_summary(create_model("keras-baseline-28"))
    assert "(None, 64, 26, 26)" in text and "(None, 18432)" in text and "Total params: 203,434" in text


def test_options_override_only_what_is_set():
    net = create_model("utk-custom-128", tasks={"age_dist": 1.0}, dense_dropout=0.5)
    assert list(net.heads) == ["age_dist"] and net.spec.l2 == 0.01 and net.spec.head_hidden == [256, 128]
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in net.modules())
    bn_after = create_model("keras-regularized-120", batch_norm="after")
    kinds = [type(m).__name__ for m in bn_after.backbone[0]][:3]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d"]
    with pytest.raises(ConfigError, match="did you mean 'utk-custom-128'"):
        create_model("utk-custom128")
    with pytest.raises(ConfigError, match="reference CNNs"):
        create_model("resnet18", batch_norm="after")


def test_freeze_blocks_and_backbone():
    net = create_model("mobilenetv2", freeze="backbone")
    total, trainable = count_parameters(net)
    assert trainable == sum(p.numel() for p in net.heads.parameters())
    net.train()
    assert all(not m.training for m in net.backbone.modules())     # frozen BN keeps running stats
    net.set_frozen(False)
    assert count_parameters(net)[1] == total


def _need_weights(name: str) -> Path:
    p = WEIGHTS / name
    if not p.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{p} missing: CI needs ../shared/weights")
        pytest.skip(f"{p} not present")
    return p


def test_local_mobilenetv2_weights_load_and_change_the_network():
    path = _need_weights("mobilenet_v2-b0353104.pth")
    sd = torch.load(path, weights_only=True)
    net = create_model("mobilenetv2", pretrained=str(path))
    assert torch.equal(net.backbone.body[0][0].weight, sd["features.0.0.weight"])
    gray = create_model("mobilenetv2", pretrained=str(path), channels=1)
    assert torch.allclose(gray.backbone.body[0][0].weight, sd["features.0.0.weight"].sum(1, keepdim=True))


def test_local_efficientnet_lite0_weights_map_key_names():
    path = _need_weights("efficientnet-lite0-57934424.pth")
    sd = torch.load(path, weights_only=True)
    net = create_model("efficientnet_lite0", pretrained=str(path))
    assert torch.equal(net.backbone.conv_stem.weight, sd["_conv_stem.weight"])
    assert torch.equal(net.backbone.blocks[1][0].conv_pwl.weight, sd["_blocks.1._project_conv.weight"])
    assert torch.equal(net.backbone.blocks[6][0].conv_dw.weight, sd["_blocks.15._depthwise_conv.weight"])


def test_imagenet_hub_path_uses_the_library_cache(tmp_path, monkeypatch):
    """``pretrained: imagenet`` goes through torchvision's real hub loader; a populated cache
    (TORCH_HOME) means no download, which is how offline users pre-seed it."""
    path = _need_weights("mobilenet_v2-b0353104.pth")
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    shutil.copy(path, ckpt_dir / path.name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net = create_model("mobilenetv2", pretrained="imagenet")
    assert torch.equal(net.backbone.body[0][0].weight, torch.load(path, weights_only=True)["features.0.0.weight"])


def test_wrong_or_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_model("mobilenetv2", pretrained=str(tmp_path / "none.pth"))
    torch.save(create_model("resnet18").backbone.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="does not fit"):
        create_model("mobilenetv2", pretrained=str(tmp_path / "r18.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        create_model("resnet18", pretrained=str(tmp_path / "junk.pth"))


@pytest.mark.parametrize("where, order", [("none", ["Linear", "ReLU"]), ("before", ["Linear", "BatchNorm1d", "ReLU"]),
                                          ("after", ["Linear", "ReLU", "BatchNorm1d"])])
def test_head_batch_norm_goes_where_it_says_in_every_heads_hidden_layers(where, order):
    """README key table: `model.head_batch_norm` is `none`, `before` or `after` the activation, as
    `model.batch_norm` is, for each head's hidden dense layers."""
    from faceage.config import load_config
    from faceage.training.resolve import model_spec
    from faceage.models.registry import build_model
    cfg = load_config("keras-baseline-28", ["model.head_hidden=[32, 16]", f"model.head_batch_norm={where}",
                                            "model.tasks={age_dist: 1, gender: 1}"])
    net = build_model(model_spec(cfg))
    assert set(net.heads) == {"age_dist", "gender"}
    for name, head in net.heads.items():
        layers = [type(m).__name__ for m in head.hidden if type(m).__name__ in ("Linear", "ReLU", "BatchNorm1d")]
        assert layers == order * 2, (name, layers)                      # one block per hidden layer
        norms = [m for m in head.hidden if isinstance(m, torch.nn.BatchNorm1d)]
        assert [m.num_features for m in norms] == ([] if where == "none" else [32, 16])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())   # the trunk's own batch_norm: untouched
