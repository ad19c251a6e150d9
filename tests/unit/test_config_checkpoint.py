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
    ("model.label_smoothing=null", "'model.label_smoothing' needs a value, got null"),
    ("augment.zoom=", "'augment.zoom' needs a value"),
    ("data.batch_size=~", "'data.batch_size' needs a value"),
    ("optim.lr=null", "'optim.lr' needs a value, got null (leave the key out for its default)"),
    # an entry of a mapping has no default of its own: leaving it out keeps the recipe's weight
    ("model.tasks.gender=null", "(to drop an entry, write the whole mapping without it, e.g. model.tasks={...})"),
    # an empty path would read as "not given": a new random split, no weights, the default cache
    ('data.split_file=" "', "config key 'data.split_file' is an empty path"),
    ("model.pretrained=''", "config key 'model.pretrained' is an empty path"),
    ("data.cache_dir=''", "config key 'data.cache_dir' is an empty path"),
])
def test_config_errors(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert message in str(exc.value)


def test_train_with_an_empty_split_stops_before_anything_is_made(tmp_path, capsys):
    """`--split "$UNSET"` is not "no split given": a new random split would train on other faces."""
    from faceage.cli import main
    assert main(["train", "--config", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--split", ""]) == 2
    assert "config key 'data.split_file' is an empty path" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_null_stays_allowed_where_a_key_may_be_unset():
    cfg = load_config(None, ["model.input_size=null", "data.limit=~", "model.dense_dropout="])
    assert (cfg.model.input_size, cfg.data.limit, cfg.model.dense_dropout) == (None, None, None)


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


# -- recipes by name, paths inside recipes (issue 12 part 4) ----------------------------------

def test_recipe_by_name_from_any_directory(tmp_path, monkeypatch):
    from faceage.recipebook import RECIPES_DIR, recipe_names
    monkeypatch.chdir(tmp_path)
    assert {"keras-baseline-28", "utk-custom-128", "dlib-resnet29"} <= set(recipe_names())
    assert load_config("keras-baseline-28").train.epochs == 100
    assert load_config("keras-baseline-28.yaml").model.name == "keras-baseline-28"
    assert load_config("configs/keras-baseline-28.yaml").model.name == "keras-baseline-28"   # an old command line
    # A file that exists wins over a name.
    (tmp_path / "keras-baseline-28").write_text("model: {name: utk-custom-128}\n")
    assert load_config("keras-baseline-28").model.name == "utk-custom-128"
    with pytest.raises(ConfigError, match="did you mean 'keras-baseline-28'"):
        load_config("keras-basline-28")
    assert (RECIPES_DIR / "keras-baseline-28.yaml").is_file()


def test_configs_folder_is_the_packaged_recipes():
    """One copy: the repository's configs/ is a link to the package's recipes/."""
    from pathlib import Path

    from faceage.recipebook import RECIPES_DIR
    configs = Path(__file__).parents[2] / "configs"
    assert configs.resolve() == RECIPES_DIR.resolve()


def test_paths_in_a_recipe_are_relative_to_the_recipe(tmp_path, monkeypatch):
    sub = tmp_path / "recipes"
    sub.mkdir()
    (sub / "r.yaml").write_text("model:\n  name: mobilenetv2\n  pretrained: weights/w.pth\n"
                                "data:\n  path: ../faces\n  split_file: ${MY_SPLITS}/s.csv\n")
    monkeypatch.setenv("MY_SPLITS", str(tmp_path / "splits"))
    monkeypatch.chdir("/")
    cfg = load_config(sub / "r.yaml")
    assert cfg.model.pretrained == str(sub / "weights" / "w.pth")
    assert cfg.data.path == str(tmp_path / "faces")
    assert cfg.data.split_file == str(tmp_path / "splits" / "s.csv")
    # Words are not paths; command-line overrides stay command-line paths.
    (sub / "k.yaml").write_text("model: {name: mobilenetv2, pretrained: imagenet}\n")
    assert load_config(sub / "k.yaml").model.pretrained == "imagenet"
    assert load_config(sub / "r.yaml", ["model.pretrained=x.pth"]).model.pretrained == "x.pth"
    monkeypatch.delenv("MY_SPLITS")
    with pytest.raises(ConfigError, match=r"data.split_file.*\$\{MY_SPLITS\}.*not set"):
        load_config(sub / "r.yaml")


def test_shipped_weights_paths_use_faceage_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEAGE_WEIGHTS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert load_config("mobilenetv2-dldl").model.pretrained == str(tmp_path / "mobilenet_v2-b0353104.pth")
    from faceage.recipebook import PATH_KEYS, recipe_names
    for name in recipe_names():           # no shipped recipe depends on the current directory
        cfg = load_config(name)
        for section, key in PATH_KEYS:
            v = getattr(getattr(cfg, section), key)
            assert v is None or v in ("imagenet", "face", "none") or v.startswith("/"), (name, key, v)


def test_faceage_weights_defaults_beside_the_checkout_else_in_the_home_cache(tmp_path, monkeypatch):
    """README: `FACEAGE_WEIGHTS` defaults to `../shared/weights` beside a faceage source checkout,
    else `~/.cache/faceage/weights`."""
    from pathlib import Path

    from faceage import recipebook
    monkeypatch.delenv("FACEAGE_WEIGHTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # A source checkout (pyproject.toml two folders above the package) beside a shared/weights folder.
    checkout = tmp_path / "work" / "faceage"
    (checkout / "src" / "faceage").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("[project]\nname = 'faceage'\n")
    (tmp_path / "work" / "shared" / "weights").mkdir(parents=True)
    monkeypatch.setattr(recipebook, "__file__", str(checkout / "src" / "faceage" / "recipebook.py"))
    assert recipebook.weights_dir() == (tmp_path / "work" / "shared" / "weights").resolve()
    (checkout / "pyproject.toml").unlink()                            # the same folders, no checkout: the home cache
    assert recipebook.weights_dir() == tmp_path / "home" / ".cache" / "faceage" / "weights"
    # An installed package (no pyproject.toml two folders up) reads the home cache, even beside a shared/ folder.
    site = tmp_path / "env" / "lib" / "site-packages"
    (tmp_path / "env" / "shared" / "weights").mkdir(parents=True)     # where a checkout's would be
    monkeypatch.setattr(recipebook, "__file__", str(site / "faceage" / "recipebook.py"))
    assert recipebook.weights_dir() == tmp_path / "home" / ".cache" / "faceage" / "weights"
    assert load_config("mobilenetv2-dldl").model.pretrained == str(
        tmp_path / "home" / ".cache" / "faceage" / "weights" / "mobilenet_v2-b0353104.pth")
    monkeypatch.setenv("FACEAGE_WEIGHTS", "~/w")                      # the variable wins, ~ expanded
    assert recipebook.weights_dir() == tmp_path / "home" / "w"


# -- config.yaml holds every value used ------------------------------------------------------

def test_resolved_config_fills_the_model_family_defaults(tmp_path):
    import yaml

    from faceage.config import config_from_dict, load_run_config
    from faceage.training.resolve import config_changes, load_run_resolved, resolved_config
    cfg = load_config("utk-custom-128")
    assert cfg.model.dense_dropout is None and cfg.model.l2 is None
    r = resolved_config(cfg)
    assert (r.model.dense_dropout, r.model.l2, r.model.head_hidden, r.model.batch_norm) == (0.3, 0.01, [256, 128], "before")
    assert r.model.pretrained == "none" and r.model.input_size == 128 and r.model.tasks == {"age_reg": 1.0, "gender": 1.0}
    assert resolved_config(load_config(None, ["model.name=utk-vgg16-128"])).model.pretrained == "imagenet"
    # It loads back to the same model, and an old run's config.yaml (nulls) resolves the same.
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(r.to_dict())))
    assert config_changes(r, resolved_config(again)) == []
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_run_config(tmp_path).model.l2 is None                 # old run directories still load
    assert config_changes(load_run_resolved(tmp_path), r) == []


def test_progress_bar_setting():
    import io
    import sys

    from faceage.training.callbacks import progress_bar_enabled
    assert load_config(None).train.progress_bar == "auto"
    for v in ("auto", "true", "false"):
        load_config(None, [f"train.progress_bar={v}"])
    with pytest.raises(ConfigError, match="train.progress_bar.*auto"):
        load_config(None, ["train.progress_bar=sometimes"])
    saved = sys.stdout
    try:
        sys.stdout = io.StringIO()           # a pipe, a log file, a notebook: no bar unless forced
        assert not progress_bar_enabled("auto") and progress_bar_enabled(True) and not progress_bar_enabled(False)
    finally:
        sys.stdout = saved


def test_progress_bar_counts_epochs_from_one():
    """The bar says "Epoch 22/30" in the epoch whose line says "Epoch 22/30" (Lightning's: "Epoch 21")."""
    import io
    from types import SimpleNamespace

    from tqdm import tqdm

    from faceage.training.callbacks import EpochProgressBar, keras_line
    bar = EpochProgressBar()
    trainer = SimpleNamespace(current_epoch=21, max_epochs=30, num_training_batches=5, max_steps=-1, global_step=0)
    bar._trainer = trainer
    bar.train_progress_bar = tqdm(total=5, file=io.StringIO())
    bar.on_train_epoch_start(trainer)
    assert bar.train_progress_bar.desc.startswith("Epoch 22/30")
    assert keras_line({"epoch": 22, "seconds": 1.0, "lr": 0.1, "loss": 1.0}, 30).startswith("Epoch 22/30 ")


def test_train_epochs_flag_is_train_epochs(monkeypatch, tmp_path):
    import faceage.training.fit as fit
    from faceage import cli
    seen = {}

    def fake_train(cfg, out, **kw):
        seen.update(cfg=cfg, out=out, **kw)
        raise SystemExit(0)
    monkeypatch.setattr(fit, "train", fake_train)
    with pytest.raises(SystemExit):
        cli.main(["train", "--resume", str(tmp_path), "--epochs", "7"])
    assert seen["resume"] and seen["overrides"] == ["train.epochs=7"]
    with pytest.raises(SystemExit):
        cli.main(["train", "--config", "keras-baseline-28", "--epochs", "3", "--out", str(tmp_path / "r")])
    assert seen["cfg"].train.epochs == 3


def test_dotted_override_changes_one_entry_of_a_mapping():
    # `model.tasks.gender=8` re-weights gender and keeps the recipe's age task; a written mapping replaces.
    assert load_config("dlib-resnet29", ["model.tasks.gender=8"]).model.tasks == {"age_dist": 1.0, "gender": 8.0}
    replaced = load_config("dlib-resnet29", ["model.tasks={gender: 8}", "train.monitor=val_loss"])
    assert replaced.model.tasks == {"gender": 8.0}
