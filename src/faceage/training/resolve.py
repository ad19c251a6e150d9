"""The config a run really uses, differences between configs, and overrides that change nothing.

* :func:`resolved_config`: the model family's defaults filled into every ``model.*`` key the
  recipe left unset (``dense_dropout: 0.3``, not ``null``), paths made absolute. This is what a
  run's ``config.yaml`` records, and what ``ablate`` keys its variants by.
* :func:`config_changes`: ``model.l2 0.01 -> 0.001`` between two resolved configs.
* :func:`ineffective_overrides`: overrides that leave the trained model exactly as it was,
  judged by what matters: the built model (module types and attributes, dropout rates, shapes,
  trainability, see :func:`faceage.models.registry.model_signature`) for ``model.*`` keys, and a
  precise rule table for options only read in some settings (``optim.momentum`` with sgd only).
"""
from __future__ import annotations

import copy
import os
from dataclasses import fields
from pathlib import Path

from ..config import Config, ModelConfig, config_from_dict, load_config

# Keys that never change what is trained: where files go, how fast data loads, what the console shows.
NOT_RESULTS = {"data.split_file", "data.cache_dir", "data.num_workers", "train.progress_bar"}


def model_spec(cfg: Config):
    from ..models.registry import resolve
    return resolve(cfg.model.name, **{k: v for k, v in vars(cfg.model).items() if k != "name"})


def _abs_if_local(value):
    if isinstance(value, str) and value and Path(value).expanduser().exists():
        return os.path.abspath(os.path.expanduser(value))
    return value


def resolved_config(cfg: Config, spec=None) -> Config:
    """A copy of ``cfg`` holding every value used: the model's own defaults in place of unset
    ``model.*`` keys (``pretrained: none`` for "no weights"), local paths absolute (the decode
    cache's folder too)."""
    out = copy.deepcopy(cfg)
    spec = spec if spec is not None else model_spec(cfg)
    for f in fields(ModelConfig):
        if f.name == "name" or not hasattr(spec, f.name):
            continue
        v = copy.deepcopy(getattr(spec, f.name))
        if f.name == "pretrained":
            v = "none" if v is None else _abs_if_local(v)
        setattr(out.model, f.name, list(v) if isinstance(v, tuple) else v)
    out.data.path = _abs_if_local(out.data.path)
    out.data.split_file = _abs_if_local(out.data.split_file)
    if out.data.cache_dir:       # always a local folder (maybe not made yet): a resume from elsewhere finds it
        out.data.cache_dir = os.path.abspath(os.path.expanduser(out.data.cache_dir))
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not (prefix + k).endswith("model.tasks"):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def config_changes(old: Config, new: Config, ignore=NOT_RESULTS) -> list[tuple[str, object, object]]:
    """``[(key, old value, new value)]`` for every key whose value differs (both resolved)."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    changes = []
    for key in b:
        if key in ignore or _same(a.get(key), b[key]):
            continue
        if key == "model.num_classes" and b[key] is None:      # counted from the data at training time
            continue
        changes.append((key, a.get(key), b[key]))
    return changes


def format_changes(changes, limit: int = 4) -> str:
    parts = [f"{k} {_show(a)} -> {_show(b)}" for k, a, b in changes[:limit]]
    if len(changes) > limit:
        parts.append(f"and {len(changes) - limit} more")
    return ", ".join(parts)


def load_run_resolved(run: Path) -> Config:
    """A run's config.yaml, resolved like a new one (old runs recorded ``null`` for defaults)."""
    from ..config import read_yaml
    return resolved_config(config_from_dict(read_yaml(Path(run) / "config.yaml")))


# -- overrides that change nothing ------------------------------------------------------------

# Options read only in some settings: why this one is not read in ``cfg`` (None: it is).
def _contextual(key: str, cfg: Config) -> str | None:
    o, s, es = cfg.optim, cfg.schedule, cfg.train.early_stopping
    if key == "optim.momentum" and o.name != "sgd":
        return f"optim.momentum is read by sgd only (optim.name is {o.name})"
    if key == "schedule.warmup_epochs" and s.name != "cosine":
        return f"schedule.warmup_epochs is read by the cosine schedule only (schedule.name is {s.name})"
    if key in ("schedule.factor", "schedule.patience") and s.name != "plateau":
        return f"{key} is read by the plateau schedule only (schedule.name is {s.name})"
    if key.startswith("train.early_stopping.") and key != "train.early_stopping.enabled" and not es.enabled:
        return f"{key} is read only with train.early_stopping.enabled=true"
    return None


def _model_hint(key: str, spec, spec_without) -> str:
    """Why a model option built the same network, in the common cases."""
    from ..models.registry import get_entry
    family = get_entry(spec.name).family
    field = key.split(".", 1)[1]
    if hasattr(spec, field) and _same(getattr(spec, field), getattr(spec_without, field)):
        return f"{key} is already {_show(getattr(spec, field))} for {spec.name} (the model's default)"
    if field in ("dense_dropout", "dropout_after", "head_batch_norm") and not spec.head_hidden:
        return (f"{spec.name} has no hidden dense layer (model.head_hidden is []): add one, e.g. "
                "model.head_hidden=[128], for dense dropout or batch norm to apply")
    if field == "dropout_after" and (len(spec.head_hidden) < 2 or spec.dense_dropout == 0):
        return "with one hidden dense layer (or no dense dropout) 'each' and 'last' are the same"
    if field in ("conv_dropout", "batch_norm", "activation") and family != "reference":
        return f"model.{field} applies to the reference CNNs' convolutions; {spec.name} keeps its own layers"
    if field == "pretrained" and family == "reference":
        return f"{spec.name} is a reference CNN: it has no pretrained weights to load"
    if field == "unfreeze_epoch":
        return "nothing is frozen (model.freeze is none)"
    if field == "dist_sigma":
        return "model.dist_sigma is read by the age_dist task only"
    if field == "label_smoothing":
        return "model.label_smoothing is read by the gender, race, label and age_bins tasks only"
    if field == "num_classes":
        return "model.num_classes is read by the label task only"
    return f"{spec.name} is built exactly as without it"


def _key_of(text: str) -> str:
    return text.split("=", 1)[0].strip()


def ineffective_overrides(recipe, base: list[str], overrides: list[str]) -> list[str]:
    """One message per override in ``overrides`` that changes nothing in what is trained, given
    the recipe plus ``base`` overrides and the other ``overrides``. Overrides are assumed valid."""
    from ..errors import ConfigError
    from ..models.registry import model_signature
    full = load_config(recipe, base + overrides)
    full_flat = flatten(full.to_dict())
    sig_cache: dict = {}

    def signature(cfg):
        spec = model_spec(cfg)
        key = repr(spec)
        if key not in sig_cache:
            sig_cache[key] = model_signature(spec)
        return sig_cache[key], spec

    messages = []
    for i, text in enumerate(overrides):
        key = _key_of(text)
        try:
            without = load_config(recipe, base + overrides[:i] + overrides[i + 1:])
        except ConfigError:
            continue                # needed by another override: it does something
        changed = {k for k, v in flatten(without.to_dict()).items() if not _same(full_flat.get(k), v)}
        if not changed:
            later = any(_key_of(t) == key for t in overrides[i + 1:])
            if recipe is None and not later:
                continue            # no recipe: spelling out a faceage default is being explicit, not a slip
            messages.append(f"{text} changes nothing: " + (f"a later override sets {key} again" if later else
                                                            f"{key} is already {_show(full_flat.get(key))}"))
            continue
        if all(k in NOT_RESULTS for k in changed):
            continue
        if all(k.startswith("model.") for k in changed):
            try:
                sig_full, spec = signature(full)
                sig_without, spec_without = signature(without)
            except (ConfigError, RuntimeError, ValueError):
                continue
            if sig_full == sig_without:
                messages.append(f"{text} changes nothing in the built model: {_model_hint(key, spec, spec_without)}")
            continue
        reasons = [_contextual(k, full) for k in changed]
        if all(reasons):
            messages.append(f"{text} changes nothing: {reasons[0]}")
    return messages


def _show(v) -> str:
    return "unset" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
