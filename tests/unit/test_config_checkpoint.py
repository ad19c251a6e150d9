"""Config errors suggest the right key; checkpoints rebuild themselves and refuse junk."""
from __future__ import annotations

import pytest
import torch

from faceage.config import Config, load_config, parse_override
from faceage.errors import CheckpointError, ConfigError
from faceage.inference.checkpoint import AtomicCheckpointIO, describe, load_checkpoint
from faceage.models.registry import create_model


def test_overrides_and_yaml(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model:\n  name: resnet18\n  tasks: {age_dist: 1.0}\noptim:\n  lr: 0.01\n")
    cfg = load_config(f, ["optim.lr=3e-4", "train.early_stopping.patience=4", "model.head_hidden=[64, 32]"])
    assert (cfg.model.name, cfg.optim.lr, cfg.train.early_stopping.patience) == ("resnet18", 3e-4, 4)
    assert cfg.model.head_hidden == [64, 32] and cfg.model.tasks == {"age_dist": 1.0}
    assert parse_override("a.b=hello") == {"a": {"b": "hello"}}


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("train.early_stoping.patience=3", "did you mean 'train.early_stopping"),
    ("modle.name=x", "did you mean 'model"),
    ("optim.lr=fast", "must be a number"),
    ("train.epochs=2.5", "whole number"),
    ("optim.name=rmsprop", "must be one of adam, adamw, sgd"),
    ("data.split=[0.5,0.5,0.5]", "summing to 1"),
    ("lr", "key=value"),
])
def test_config_errors(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert message in str(exc.value)


def test_bad_yaml_files(tmp_path):
    (tmp_path / "a.yaml").write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")


def _save_ckpt(net, path, **extra):
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    AtomicCheckpointIO().save_checkpoint({"state_dict": state, "faceage": describe(net.spec, Config(), **extra)}, path)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = create_model("utk-custom-128", input_size=48, tasks={"age_dist": 1.0, "gender": 1.0})
    net.eval()
    _save_ckpt(net, tmp_path / "m.ckpt", dataset="somewhere")
    assert not list(tmp_path.glob("*.tmp"))
    loaded = load_checkpoint(tmp_path / "m.ckpt")
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        a, b = net(x), loaded.net(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.preprocess.size == 48 and loaded.meta["labels"]["age_bin_names"][-1] == "91+"
    assert loaded.meta["faceage_version"] and loaded.meta["dataset"] == "somewhere"


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "x.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"\x00junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not a faceage checkpoint"):
        load_checkpoint(tmp_path / "foreign.ckpt")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="no best.ckpt"):
        load_checkpoint(tmp_path / "run")


def test_checkpoint_cannot_execute_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"state_dict": {}, "faceage": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "evil.ckpt")
