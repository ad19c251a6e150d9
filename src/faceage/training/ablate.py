"""``faceage ablate``: variants of one recipe on the same split and seed, then a comparison.

Each variant is an ordinary run directory under ``OUT/NAME``, keyed by its resolved config
(every default filled in): rerunning keeps a finished variant whose config is unchanged,
resumes an interrupted one, and trains again (moving the old run to ``OUT/.previous/NAME``) one
whose config changed, saying which and what changed. All variants share the first variant's
split (or ``--split``) so their test numbers are comparable. Variants that would train the
same model as the base or as each other are warned about before anything trains.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from ..config import load_config, validate_environment, validate_model
from ..errors import ConfigError, FaceageError

# The reference write-ups' path on the 120 px grayscale bins model: each remedy alone on the
# baseline, then all together. Batch norm goes after the activation (the advice the author got),
# so that variant also switches the activation on - BN after "no activation" is not a thing.
PRESETS: dict[str, dict] = {
    "keras-120-path": {
        "base": "keras-baseline-120",        # a shipped recipe, by name
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


def variant_warnings(base: str | None, variants: list[tuple[str, list[str]]], common: list[str]) -> list[str]:
    """Variants that would train exactly what another does: an override that changes nothing in
    the built model (or is not read in this config), a variant equal to the base recipe, two
    variants equal to each other."""
    from .resolve import config_changes, ineffective_overrides, resolved_config
    out, told = [], set()
    for name, ov in variants:
        found = [f"variant '{name}': {m}" for m in ineffective_overrides(base, common, ov)]
        out += found
        told |= {name} if found else set()
    base_cfg = resolved_config(load_config(base, common))
    seen: dict[str, str] = {}
    for name, ov in variants:
        cfg = resolved_config(load_config(base, common + ov))
        if ov and name not in told and not config_changes(base_cfg, cfg):
            out.append(f"variant '{name}' is the base recipe itself: its overrides ({', '.join(ov)}) change nothing")
        key = repr(sorted(cfg.to_dict().items()))
        if key in seen and ov and name not in told:
            out.append(f"variant '{name}' trains the same config as variant '{seen[key]}'")
        seen.setdefault(key, name)
    return out


def _move_aside(run: Path) -> Path:
    """A finished or interrupted variant whose config changed: kept as ``OUT/.previous/NAME``
    (replacing an older one) until the new run is done; the rename is atomic."""
    import shutil
    keep = run.parent / ".previous" / run.name
    keep.parent.mkdir(parents=True, exist_ok=True)
    if keep.exists():
        shutil.rmtree(keep)
    run.rename(keep)
    return keep


def ablate(base: str | None, variants: list[tuple[str, list[str]]], out: str | Path, *, data: str | None = None,
           common: list[str] | None = None, epochs: int | None = None, split: str | None = None) -> list[Path]:
    """Train each variant into ``OUT/NAME``, keyed by its resolved config: a variant whose run
    directory holds the same resolved config is kept (or resumed, if interrupted); one whose
    config changed is moved aside and trained again. Says which, per variant."""
    from ..evaluation.evaluate import evaluate
    from .fit import default_data_path, train
    from .resolve import config_changes, format_changes, load_run_resolved, resolved_config

    out = Path(out)
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"variant names must be unique: {names}")
    # `--epochs 0` is an error (train.epochs must be at least 1), not "the recipe's epochs".
    extra = list(common or []) + ([f"train.epochs={epochs}"] if epochs is not None else [])
    # Validate every variant before spending time on the first.
    configs = [(name, load_config(base, extra + ov)) for name, ov in variants]
    for name, cfg in configs:
        validate_model(cfg)
        validate_environment(cfg)
        # Lightning's DDP launcher re-runs the whole command in each child: every child would
        # train every variant. One `faceage train` per variant is the way to use DDP here.
        devices = cfg.train.devices
        if cfg.train.num_nodes > 1 or not (devices in ("auto", 1, "1") or isinstance(devices, list) and len(devices) == 1):
            raise ConfigError(f"variant '{name}': ablate trains in one process; for several devices or nodes run "
                              "`faceage train` once per variant (train.devices=1 and train.num_nodes=1 here)")
    for message in variant_warnings(base, variants, extra):
        print(f"warning: {message}", file=sys.stderr)
    runs = []
    for name, cfg in configs:
        run = out / name
        runs.append(run)
        if split:
            cfg.data.split_file = split
        cfg.data.path = data or cfg.data.path or default_data_path()
        changes = None
        if (run / "config.yaml").is_file():
            try:
                changes = config_changes(load_run_resolved(run), resolved_config(cfg))
            except FaceageError as exc:
                changes = [("config.yaml", "unreadable", str(exc))]
        finished = (run / "run.json").is_file()
        if changes == [] and finished:
            print(f"[{name}] kept (unchanged)", file=sys.stderr)
        elif changes == []:
            print(f"[{name}] resuming (unchanged, interrupted)", file=sys.stderr)
            train(None, run, data=data, resume=True)
        elif changes:
            keep = _move_aside(run)
            print(f"[{name}] retraining (config changed: {format_changes(changes)}); the previous run is in {keep}",
                  file=sys.stderr)
            train(cfg, run, data=data, overwrite=True)
        else:
            print(f"[{name}] training", file=sys.stderr)
            train(cfg, run, data=data, overwrite=True)
        if not (run / "metrics.json").is_file():
            evaluate(str(run), cfg.data.path, split="test", json_path=str(run / "metrics.json"), quiet=True)
        split = split or str(runs[0] / "split.csv")
    return runs
