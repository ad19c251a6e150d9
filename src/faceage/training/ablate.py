"""``faceage ablate``: variants of one recipe on the same split and seed, then a comparison.

Each variant is an ordinary run directory under ``OUT/NAME``. Finished variants (run.json
present) are not rerun; an interrupted one is resumed. All variants share the first variant's
split (or ``--split``) so their test numbers are comparable.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from ..config import load_config, validate_environment, validate_model
from ..errors import ConfigError

# The reference write-ups' path on the 120 px grayscale bins model: each remedy alone on the
# baseline, then all together. Batch norm goes after the activation (the advice the author got),
# so that variant also switches the activation on - BN after "no activation" is not a thing.
PRESETS: dict[str, dict] = {
    "keras-120-path": {
        "base": "configs/keras-baseline-120.yaml",
        "variants": [
            ("baseline", []),
            ("batchnorm", ["model.activation=relu", "model.batch_norm=after", "model.head_batch_norm=after"]),
            ("dropout", ["model.dense_dropout=0.5"]),
            ("l2", ["model.l2=0.01"]),
            ("augmentation", ["augment.flip=0.5", "augment.rotation=10", "augment.zoom=0.1", "augment.shift=0.05"]),
            ("early_stopping", ["train.early_stopping.enabled=true", "train.early_stopping.patience=3"]),
            ("all", ["model.activation=relu", "model.batch_norm=after", "model.head_batch_norm=after",
                     "model.dense_dropout=0.5", "model.l2=0.01", "augment.flip=0.5", "augment.rotation=10",
                     "augment.zoom=0.1", "augment.shift=0.05", "train.early_stopping.enabled=true",
                     "train.early_stopping.patience=3"]),
        ],
    },
}


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``'dropout:model.dense_dropout=0.5,model.l2=0.01'`` -> ``('dropout', [...])``.
    Commas inside values (``data.split=[0.7,0.2,0.1]``) are kept: a split happens only
    before ``key=``."""
    if ":" not in text:
        raise ConfigError(f"variant '{text}' must look like NAME:key=value,key=value")
    name, rest = text.split(":", 1)
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ConfigError(f"variant name '{name}' may use letters, digits, _ . + - only")
    overrides = [p for p in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", rest) if p.strip()] if rest.strip() else []
    return name, [o.strip() for o in overrides]


def ablate(base: str | None, variants: list[tuple[str, list[str]]], out: str | Path, *, data: str | None = None,
           common: list[str] | None = None, epochs: int | None = None, split: str | None = None) -> list[Path]:
    from ..evaluation.evaluate import evaluate
    from .fit import default_data_path, train

    out = Path(out)
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"variant names must be unique: {names}")
    # `--epochs 0` is an error (train.epochs must be at least 1), not "the recipe's epochs".
    extra = list(common or []) + ([f"train.epochs={epochs}"] if epochs is not None else [])
    # Validate every variant before spending time on the first.
    configs = [(name, load_config(base, extra + ov)) for name, ov in variants]
    for _, cfg in configs:
        validate_model(cfg)
        validate_environment(cfg)
    runs = []
    for name, cfg in configs:
        run = out / name
        runs.append(run)
        if split:
            cfg.data.split_file = split
        if (run / "run.json").is_file():
            print(f"[{name}] finished earlier: kept", file=sys.stderr)
        elif (run / "config.yaml").is_file():
            print(f"[{name}] resuming", file=sys.stderr)
            train(None, run, data=data, resume=True)
        else:
            print(f"[{name}] training", file=sys.stderr)
            train(cfg, run, data=data, overwrite=True)
        if not (run / "metrics.json").is_file():
            evaluate(str(run), data or cfg.data.path or default_data_path(), split="test", json_path=str(run / "metrics.json"), quiet=True)
        split = split or str(runs[0] / "split.csv")
    return runs
