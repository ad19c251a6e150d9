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
    progress_bar: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

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


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value against a field's annotated type."""
    if value is None or tp is Any:
        return value
    origin = get_origin(tp)
    if origin is not None and type(None) in get_args(tp):   # Optional[X]
        inner = [a for a in get_args(tp) if a is not type(None)][0]
        return _coerce(value, inner, key)
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
        if tp is int and float(value) != int(value):
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
        else:
            setattr(obj, k, _coerce(v, tp, key))


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
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return nested


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (model:, data:, ...)")
        _apply(cfg, data)
    for text in overrides or []:
        _apply(cfg, parse_override(text))
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    _apply(cfg, data)
    return cfg


CHOICES = {
    "optim.name": ("adam", "adamw", "sgd"),
    "schedule.name": ("constant", "cosine", "plateau", "onecycle"),
    "train.monitor_mode": ("min", "max"),
    "train.early_stopping.mode": ("min", "max"),
}


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        obj = cfg
        *parents, last = key.split(".")
        for p in parents:
            obj = getattr(obj, p)
        if getattr(obj, last) not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}; got {getattr(obj, last)!r}")
    s = cfg.data.split
    if len(s) != 3 or any(x < 0 for x in s) or abs(sum(s) - 1.0) > 1e-6:
        raise ConfigError(f"data.split must be three non-negative fractions summing to 1, got {s}")
    if cfg.data.batch_size < 1 or cfg.train.epochs < 1:
        raise ConfigError("data.batch_size and train.epochs must be at least 1")
    bins = cfg.model.age_bins
    if len(bins) < 2 or any(hi <= lo for lo, hi in zip(bins, bins[1:])):
        raise ConfigError(f"model.age_bins must be increasing lower edges, got {bins}")
