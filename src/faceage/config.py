"""Typed training configuration: YAML recipes plus dotted ``key=value`` overrides.

Every recipe key has a home in one of the dataclasses below. An unknown key anywhere (file or
command line) is a :class:`ConfigError` naming the closest valid key, so a typo never trains
the wrong model silently.

Model options default to ``None``: unset means "the model's own default" (the registry entry
decides), so a recipe only states what it changes.

Examples
--------
>>> cfg = load_config(None, ["model.name=keras-baseline-28", "optim.lr=0.01"])
>>> cfg.model.name, cfg.optim.lr
('keras-baseline-28', 0.01)
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError
from .labels import DEFAULT_AGE_BIN_EDGES


@dataclass
class ModelConfig:
    name: str = "utk-custom-128"
    # Tasks and their loss weights, e.g. {"age_dist": 1.0, "gender": 1.0}.
    # Known tasks: age_reg, age_bins, age_dist, gender, race, label.
    tasks: dict[str, float] | None = None
    input_size: int | None = None
    channels: int | None = None
    pretrained: str | None = None          # None | "imagenet" | path to a state dict
    freeze: str | None = None              # "none" | "backbone" (all but heads) | "blocks:N"
    unfreeze_epoch: int | None = None      # unfreeze everything at the start of this epoch
    batch_norm: str | None = None          # "none" | "before" (conv->BN->act) | "after" (conv->act->BN)
    head_batch_norm: str | None = None     # the same for the hidden dense layers of each head
    activation: str | None = None          # "relu" | "none" (reference models only)
    conv_dropout: float | None = None      # dropout after each pooling block (reference CNNs)
    dense_dropout: float | None = None     # dropout after hidden dense layers of each head
    dropout_after: str | None = None       # "each" hidden dense layer or only the "last"
    head_hidden: list[int] | None = None   # hidden dense widths of each head
    l2: float | None = None                # Keras-style kernel L2 on dense layers: loss += l2 * sum(w^2)
    age_bins: list[int] = field(default_factory=lambda: list(DEFAULT_AGE_BIN_EDGES))
    num_classes: int | None = None         # for the "label" task (class-per-subfolder data)
    dist_sigma: float = 2.0                # label-distribution width (years) for age_dist
    # Softened one-hot targets for the classification tasks (gender, race, label, age_bins): the
    # target class gets 1 - s + s/K, the others s/K. A remedy for overconfidence and wrong labels.
    label_smoothing: float = 0.0
    tta: str | None = None                 # inference: "none" | "flip" (average with the mirror image)


@dataclass
class DataConfig:
    path: str | None = None                # dataset folder, archive or CSV; --data overrides
    limit: int | None = None               # use at most this many usable images (stratified sample)
    split: list[float] = field(default_factory=lambda: [0.70, 0.15, 0.15])
    split_seed: int = 42
    split_file: str | None = None          # reuse a saved split (--split)
    cache_dir: str | None = None           # default: $FACEAGE_CACHE or ~/.cache/faceage
    batch_size: int = 32
    num_workers: int = 0                   # the cache is memory-mapped: workers rarely help
    age_balance: float = 0.0               # sample 5-year age bands ~ count**-age_balance (0 off, 1 uniform)
    y_is: str | None = None                # a .npz's y: age | label | onehot (needed when y holds whole numbers)


@dataclass
class AugmentConfig:
    # Strengths; 0 disables. Applied to batches of tensors on the training set only.
    flip: float = 0.5            # probability of a horizontal flip
    rotation: float = 0.0        # max degrees
    zoom: float = 0.0            # max relative zoom in/out (0.1 = +-10%)
    shift: float = 0.0           # max shift as a fraction of the image size
    brightness: float = 0.0      # max relative brightness change
    contrast: float = 0.0        # max relative contrast change
    # Photo-to-chip gap: UTKFace chips are soft, low-resolution JPEGs; photos are sharp.
    blur: float = 0.0            # probability of a Gaussian blur (sigma up to 1.5 px at 128 px)
    downscale: float = 0.0       # probability of shrinking to 35-100% and scaling back up
    jpeg: float = 0.0            # probability of re-encoding as JPEG at quality 20-90


@dataclass
class OptimConfig:
    name: str = "adam"           # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0    # optimizer weight decay (decoupled for adamw)
    momentum: float = 0.9        # sgd only
    backbone_lr_scale: float = 1.0  # backbone lr = lr * this (heads use lr); e.g. 0.1 to fine-tune gently


@dataclass
class ScheduleConfig:
    name: str = "constant"       # constant | cosine | plateau | onecycle
    warmup_epochs: int = 0       # cosine: linear warm-up
    factor: float = 0.5          # plateau
    patience: int = 3            # plateau


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 10
    min_delta: float = 0.0
    restore_best: bool = True


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 42
    precision: str = "32-true"   # e.g. "16-mixed", "bf16-mixed" on GPUs
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"       # DDP is chosen by Lightning when devices > 1
    monitor: str = "val_loss"    # what "best" means for best.ckpt
    monitor_mode: str = "min"
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    progress_bar: Any = "auto"   # auto (only on a terminal) | true | false
    # Exponential moving average of the weights (0 off; e.g. 0.999 averages about the last 1,000
    # steps): validation, best/last.ckpt and export use the averaged weights (training/callbacks.py).
    ema_decay: float = 0.0


@dataclass
class DistillConfig:
    # Soft targets from teacher models (faceage teach; see training/distill.py).
    targets: str | None = None   # the .npz faceage teach wrote; None: train on the labels alone
    weight: float = 0.5          # the teachers' share of each training target (0 labels only, 1 teachers only)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    hints = get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(_all_keys(hints[f.name], key + "."))
    return keys


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _null_hint(key: str) -> str:
    """What to write instead of null: a key of the recipe's own, or an entry of a mapping such as
    model.tasks (whose entries have no default: leaving one out keeps the recipe's)."""
    section, _, rest = key.partition(".")
    field_name = rest.split(".")[0]
    section_cls = get_type_hints(Config).get(section)
    tp = get_type_hints(section_cls).get(field_name) if dataclasses.is_dataclass(section_cls) else None
    if rest.count(".") >= 1 and tp is not None and dict in (get_origin(tp), *map(get_origin, get_args(tp))):
        return f"to drop an entry, write the whole mapping without it, e.g. {section}.{field_name}={{...}}"
    return "leave the key out for its default"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value against a field's annotated type."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is not None and type(None) in get_args(tp):   # Optional[X]
        if value is None:
            return value
        inner = [a for a in get_args(tp) if a is not type(None)][0]
        return _coerce(value, inner, key)
    if value is None:                  # YAML's null / ~ / an empty value, for a key that needs one
        raise ConfigError(f"config key '{key}' needs a value, got null ({_null_hint(key)})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, str):
            try:                       # YAML 1.1 reads "3e-4" (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        if tp is int and (not math.isfinite(value) or float(value) != int(value)):
            raise ConfigError(f"config key '{key}' must be a whole number, got {value!r}")
        return tp(value)
    if tp is str:
        return str(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        _, val_tp = get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    return value


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise _unknown_key(key)
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' is a section; give it keys, not {v!r}")
            _apply(getattr(obj, k), v, key + ".")
        elif isinstance(v, _Dotted) and isinstance(getattr(obj, k), dict):
            # `model.tasks.gender=8` changes one entry of the recipe's mapping; `model.tasks={...}` replaces it.
            setattr(obj, k, {**getattr(obj, k), **_coerce(v, tp, key)})
        else:
            setattr(obj, k, _coerce(v, tp, key))


class _Dotted(dict):
    """A level of an override that came from a dotted key, not from a written mapping."""


def parse_override(text: str) -> dict:
    """``'optim.lr=0.01'`` -> ``{'optim': {'lr': 0.01}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. optim.lr=0.001")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    nested: dict = {}
    cur = nested
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, _Dotted())
    cur[parts[-1]] = value
    return nested


def read_yaml(path: str | Path) -> dict:
    """A run's or recipe's YAML as a dict; anything unreadable is a one-line ConfigError."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model:, data:, ...)")
    return data


def load_run_config(run_dir: str | Path) -> Config:
    """The config a run directory recorded (``config.yaml``), validated like a recipe."""
    path = Path(run_dir) / "config.yaml"
    try:
        return config_from_dict(read_yaml(path))
    except ConfigError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a faceage run config: {exc}") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """A recipe (a YAML path, or a shipped recipe's name: see :mod:`faceage.recipebook`) plus
    overrides. Paths inside the recipe are resolved against its folder, never the current one."""
    from .recipebook import find_recipe, resolve_paths
    cfg = Config()
    if path is not None:
        path = find_recipe(path)
        _apply(cfg, resolve_paths(read_yaml(path), path))
    for text in overrides or []:
        _apply(cfg, parse_override(text))
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    _apply(cfg, data)
    return cfg


# Task names (as in models.heads.TASKS) and the metric each logs, Keras-style (``mae``,
# ``val_mae``), so that train.monitor can be checked before any training.
TASKS = ("age_reg", "age_bins", "age_dist", "gender", "race", "label")
METRIC_NAMES = {"age_reg": "mae", "age_dist": "mae", "age_bins": "bin_acc", "gender": "gender_acc",
                "race": "race_acc", "label": "acc"}

CHOICES = {
    "optim.name": ("adam", "adamw", "sgd"),
    "schedule.name": ("constant", "cosine", "plateau", "onecycle"),
    "train.monitor_mode": ("min", "max"),
    "train.early_stopping.mode": ("min", "max"),
    "model.batch_norm": (None, "none", "before", "after"),
    "model.head_batch_norm": (None, "none", "before", "after"),
    "model.activation": (None, "relu", "none"),
    "model.dropout_after": (None, "each", "last"),
    "model.tta": (None, "none", "flip"),
    "model.channels": (None, 1, 3),
    "data.y_is": (None, "age", "label", "onehot"),
    "train.accelerator": ("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
    "train.progress_bar": ("auto", True, False),
    # Lightning's precision names; "transformer-engine" needs a package faceage does not install.
    "train.precision": ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16", "bf16", "64"),
}

# (key, test, what is allowed) for numbers; every float must also be finite (NaN passes every
# comparison, so "lr < 0" alone would let it through).
def _positive(v): return v > 0
def _non_negative(v): return v >= 0
def _at_least(n): return lambda v: v >= n
def _fraction(v): return 0 <= v <= 1
def _rate(v): return 0 <= v < 1


RANGES = [
    ("model.input_size", lambda v: v is None or 16 <= v <= 2048, "a whole number of pixels from 16 to 2048 (or unset)"),
    ("model.unfreeze_epoch", lambda v: v is None or v >= 1, "an epoch number, at least 1 (or unset)"),
    ("model.conv_dropout", lambda v: v is None or _rate(v), "a rate in [0, 1) (or unset)"),
    ("model.dense_dropout", lambda v: v is None or _rate(v), "a rate in [0, 1) (or unset)"),
    ("model.l2", lambda v: v is None or v >= 0, "a non-negative number (or unset)"),
    ("model.num_classes", lambda v: v is None or v >= 2, "at least 2 (or unset: counted from the data)"),
    ("model.dist_sigma", _positive, "a positive number of years (e.g. 2)"),
    ("model.label_smoothing", _rate, "a share in [0, 1), e.g. 0.1 (0: off)"),
    ("data.limit", lambda v: v is None or v >= 1, "at least 1 image (or unset: every image)"),
    ("data.batch_size", _at_least(1), "at least 1"),
    ("data.num_workers", _non_negative, "0 (load in the training process) or more worker processes"),
    ("data.age_balance", _non_negative, "a non-negative power (0 off, 1 every age band equally often)"),
    ("augment.flip", _fraction, "a probability in [0, 1]"),
    ("augment.rotation", lambda v: 0 <= v <= 180, "degrees in [0, 180]"),
    ("augment.zoom", _rate, "a fraction in [0, 1)"),
    ("augment.shift", _fraction, "a fraction of the image size in [0, 1]"),
    ("augment.brightness", _fraction, "a relative change in [0, 1]"),
    ("augment.contrast", _fraction, "a relative change in [0, 1]"),
    ("augment.blur", _fraction, "a probability in [0, 1]"),
    ("augment.downscale", _fraction, "a probability in [0, 1]"),
    ("augment.jpeg", _fraction, "a probability in [0, 1]"),
    ("optim.lr", _positive, "a positive number, e.g. 0.001"),
    ("optim.weight_decay", _non_negative, "a non-negative number"),
    ("optim.momentum", _rate, "in [0, 1)"),
    ("optim.backbone_lr_scale", _non_negative, "a non-negative factor (0 freezes the backbone's learning)"),
    ("schedule.warmup_epochs", _non_negative, "0 or more epochs"),
    ("schedule.factor", lambda v: 0 < v < 1, "a factor in (0, 1)"),
    ("schedule.patience", _non_negative, "0 or more epochs"),
    ("train.epochs", _at_least(1), "at least 1"),
    ("train.seed", lambda v: 0 <= v < 2 ** 32, "a whole number from 0 to 4294967295"),
    ("train.num_nodes", _at_least(1), "at least 1"),
    ("train.ema_decay", _rate, "a decay in [0, 1) (0 off; e.g. 0.999)"),
    ("train.early_stopping.patience", _non_negative, "0 or more epochs"),
    ("train.early_stopping.min_delta", _non_negative, "a non-negative number"),
    ("distill.weight", _fraction, "the teachers' share of each target, in [0, 1]"),
]


def _get(cfg, key: str):
    obj = cfg
    for p in key.split("."):
        obj = getattr(obj, p)
    return obj


def _bad(key: str, allowed: str, value) -> ConfigError:
    return ConfigError(f"config key '{key}' must be {allowed}; got {value!r}")


def _finite_floats(obj, prefix: str = ""):
    """(key, value) of every float anywhere in the config, lists and mappings included."""
    for f in fields(obj):
        key, v = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            yield from _finite_floats(v, key + ".")
        elif isinstance(v, float):
            yield key, v
        elif isinstance(v, list):
            yield from ((key, x) for x in v if isinstance(x, float))
        elif isinstance(v, dict):
            yield from ((f"{key}.{k}", x) for k, x in v.items() if isinstance(x, float))


def metric_names(tasks) -> list[str]:
    """What training logs for these tasks (each also with a ``val_`` prefix)."""
    names = ["loss"] + ([f"{t}_loss" for t in tasks] if len(tasks) > 1 else [])
    names += sorted({METRIC_NAMES[t] for t in tasks if t in METRIC_NAMES})
    return names + ["val_" + n for n in names]


ALL_METRICS = set(metric_names(TASKS))


def validate(cfg: Config) -> None:
    """Everything that can be checked without the model registry, the data or the hardware.
    One :class:`ConfigError` per problem, naming the key and what it allows."""
    for key, v in _finite_floats(cfg):
        if not math.isfinite(v):
            raise ConfigError(f"config key '{key}' must be a finite number; got {v!r}")
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            shown = ", ".join(str(a) for a in allowed if a is not None)
            raise ConfigError(f"config key '{key}' must be one of {shown}; got {_get(cfg, key)!r}")
    for key, ok, allowed in RANGES:
        v = _get(cfg, key)
        if not ok(v):
            raise _bad(key, allowed, v)
    from .recipebook import PATH_KEYS
    for section, name in PATH_KEYS:
        # An empty path (`--split "$UNSET"`) would otherwise read as "not given": a new random split,
        # no pretrained weights, the default cache. Say so instead of silently doing something else.
        value = _get(cfg, f"{section}.{name}")
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"config key '{section}.{name}' is an empty path: name a file or folder, or leave the key out")
    s = cfg.data.split
    if len(s) != 3 or any(x < 0 for x in s) or abs(sum(s) - 1.0) > 1e-6:
        raise ConfigError(f"data.split must be three non-negative fractions summing to 1, got {s}")
    if s[0] <= 0 or s[1] <= 0:
        raise ConfigError(f"data.split must give the training and validation parts a positive fraction, got {s}")
    bins = cfg.model.age_bins
    if len(bins) < 2 or any(hi <= lo for lo, hi in zip(bins, bins[1:])) or bins[0] < 0:
        raise ConfigError(f"model.age_bins must be increasing non-negative lower edges, got {bins}")
    if cfg.model.head_hidden is not None and any(w < 1 for w in cfg.model.head_hidden):
        raise _bad("model.head_hidden", "a list of layer widths, each at least 1 (e.g. [256, 128]; [] for none)",
                   cfg.model.head_hidden)
    tasks = cfg.model.tasks
    if tasks is not None:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise _bad("model.tasks", f"a mapping of tasks ({', '.join(TASKS)}) to loss weights, e.g. "
                       "{age_dist: 1, gender: 1}", tasks)
        if any(w < 0 for w in tasks.values()) or not any(w > 0 for w in tasks.values()):
            raise _bad("model.tasks", "non-negative loss weights, at least one positive", tasks)
    freeze = cfg.model.freeze
    if freeze is not None and not (freeze in ("none", "backbone") or (freeze.startswith("blocks:") and freeze[7:].isdigit())):
        raise _bad("model.freeze", "none, backbone or blocks:N", freeze)
    _check_devices(cfg.train.devices)
    for key in _monitor_keys(cfg):
        allowed = metric_names(tasks) if tasks else ALL_METRICS
        if _get(cfg, key) not in allowed:
            shown = (", ".join(allowed) if tasks else
                     "loss, a task's loss (e.g. gender_loss) or metric (" + ", ".join(sorted(set(METRIC_NAMES.values())))
                     + "), each also with val_ for the validation set")
            raise _bad(key, f"a logged metric: {shown}", _get(cfg, key))


def _monitor_keys(cfg: Config) -> list[str]:
    return ["train.monitor"] + (["train.early_stopping.monitor"] if cfg.train.early_stopping.enabled else [])


def _check_devices(devices) -> None:
    ok = devices == "auto" or devices == -1
    if isinstance(devices, bool):
        ok = False
    elif isinstance(devices, int):
        ok = ok or devices >= 1
    elif isinstance(devices, list):
        ok = bool(devices) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
    elif isinstance(devices, str):
        text = devices.strip()
        ok = ok or text == "-1" or (text.isdigit() and int(text) >= 1) or (
            "," in text and all(p.strip().isdigit() for p in text.split(",") if p.strip()))
    if not ok:
        raise _bad("train.devices", "auto, a number of devices (at least 1; -1 for all) or a list of device indices",
                   devices)


def _device_count(devices) -> int | None:
    """How many devices ``train.devices`` asks for; None for "all there are"."""
    if devices in ("auto", -1, "-1"):
        return None
    if isinstance(devices, int):
        return devices
    if isinstance(devices, list):
        return max(devices) + 1
    text = str(devices).strip()
    if "," in text:
        return max(int(p) for p in text.split(",") if p.strip()) + 1
    return int(text)


def validate_model(cfg: Config):
    """Checks that need the model registry (it imports torch): the model name, its resolved
    options, and the monitored metrics against the tasks the model will really have. Returns
    the resolved :class:`~faceage.models.spec.ModelSpec`."""
    from .models.registry import resolve
    spec = resolve(cfg.model.name, **{k: v for k, v in vars(cfg.model).items() if k != "name"})
    names = metric_names(spec.tasks)
    for key in _monitor_keys(cfg):
        if _get(cfg, key) not in names:
            raise _bad(key, f"a metric model {spec.name} logs with tasks {', '.join(spec.tasks)} ({', '.join(names)})",
                       _get(cfg, key))
    return spec


def validate_environment(cfg: Config) -> None:
    """Checks against this machine: the decode cache folder can be written, and the accelerator
    and device count asked for exist."""
    import os

    cache = cfg.data.cache_dir
    key = "data.cache_dir"
    if cache is None:
        key = "FACEAGE_CACHE" if os.environ.get("FACEAGE_CACHE") else "the default cache folder"
        from .data.cache import default_cache_dir
        cache = str(default_cache_dir())
    path = Path(cache).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        where = f"config key '{key}'" if key == "data.cache_dir" else key
        raise ConfigError(f"{where} ({cache}) cannot hold the decode cache: {exc.strerror or exc}; "
                  "give data.cache_dir a writable folder") from None
    t = cfg.train
    import torch
    acc = t.accelerator
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'train.accelerator' is {acc!r} but this machine has no usable CUDA GPU; "
                  "use auto or cpu")
    if acc == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("config key 'train.accelerator' is 'mps' but this machine has no Apple GPU; use auto or cpu")
    if acc == "tpu":
        raise ConfigError("config key 'train.accelerator' is 'tpu', which faceage does not support here; use auto, cpu or gpu")
    on_gpu = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    have = torch.cuda.device_count() if on_gpu else (os.cpu_count() or 1)
    want = _device_count(t.devices)
    if want is not None and want > have:
        kind = "GPU(s)" if on_gpu else "CPU core(s) (one process each)"
        raise ConfigError(f"config key 'train.devices' asks for {t.devices!r} but this machine has {have} {kind}")
    if t.strategy != "auto":
        from lightning.pytorch.strategies import StrategyRegistry
        if t.strategy not in StrategyRegistry.available_strategies():
            raise _bad("train.strategy", "auto or one of " + ", ".join(StrategyRegistry.available_strategies()), t.strategy)


# Settings that change how a run is carried out, not what it computes: a resume may set them.
RESUME_SETTINGS = ("train.epochs", "train.progress_bar", "data.num_workers", "data.cache_dir")


def apply_resume_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``faceage train --resume RUN train.epochs=N``: a saved run may only be extended (or told
    how to show progress, load data or where its cache is; none of these changes a result)."""
    for text in overrides:
        change = parse_override(text)
        key = text.split("=", 1)[0].strip()
        if key not in RESUME_SETTINGS:
            raise ConfigError(f"with --resume only train.epochs=N (or --epochs N: to train a finished run longer) and "
                              f"{', '.join(RESUME_SETTINGS[1:])} may be given; got '{text}'")
        _apply(cfg, change)
    validate(cfg)
    return cfg
