"""The shipped recipes (``faceage/recipes/*.yaml``): names, lookup and the paths inside them.

``faceage train --config NAME`` works from any directory: ``--config`` takes a recipe name
(``keras-baseline-28``) or a path to a YAML file. An existing file wins over a name.

Paths inside a recipe (``model.pretrained``, ``data.path``, ``data.split_file``,
``data.cache_dir``) never depend on the current directory:

* ``~`` and ``$VAR`` / ``${VAR}`` are expanded; ``${FACEAGE_WEIGHTS}`` is the folder of
  pretrained weight files (default: ``../shared/weights`` beside a faceage source checkout
  when there is one, else ``~/.cache/faceage/weights``);
* a path that is still relative is relative to the folder of the recipe file.

Overrides given on the command line (``model.pretrained=PATH``) are ordinary command-line
paths: relative to the current directory. No torch import here: listing recipes is instant.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

from .errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"

# Recipe keys that hold file or folder paths.
PATH_KEYS = (("model", "pretrained"), ("data", "path"), ("data", "split_file"), ("data", "cache_dir"), ("distill", "targets"))
# model.pretrained values that are not paths.
PRETRAINED_WORDS = ("none", "false", "off", "imagenet", "face")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_description(name: str) -> str:
    """The first sentence of the recipe's leading comment (or which recipe it is a link to)."""
    path = RECIPES_DIR / f"{name}.yaml"
    if path.is_symlink():
        return f"the same file as {Path(os.readlink(path)).stem}"
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("# ").strip())
    text = " ".join(words)
    m = re.search(r"(?<=[a-z0-9)])\.(\s|$)", text)
    text = text[: m.start()] if m else text
    return text if len(text) <= 100 else text[:97].rstrip(" ,;") + "..."


def default_weights_dir() -> Path:
    checkout = Path(__file__).resolve().parents[2]       # src/faceage -> the repository, in a checkout
    if (checkout / "pyproject.toml").is_file() and (checkout.parent / "shared" / "weights").is_dir():
        return checkout.parent / "shared" / "weights"
    return Path("~/.cache/faceage/weights").expanduser()


def weights_dir() -> Path:
    env = os.environ.get("FACEAGE_WEIGHTS")
    return Path(env).expanduser() if env else default_weights_dir()


_NOTED: set[str] = set()


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path as given, else a shipped recipe by name (``NAME`` or
    ``NAME.yaml``; also ``configs/NAME.yaml`` run from outside the repository)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    text = str(name_or_path)
    stem = p.stem if p.suffix in (".yaml", ".yml") else p.name
    shipped = RECIPES_DIR / f"{stem}.yaml"
    bare = os.sep not in text and "/" not in text
    if shipped.is_file() and (bare or p.parent.name in ("configs", "recipes")):
        if not bare and text not in _NOTED:
            _NOTED.add(text)
            print(f"note: {text} is not here; using the shipped recipe '{stem}' ({shipped})", file=sys.stderr)
        return shipped
    if p.exists():
        raise ConfigError(f"config {text} is a folder: give a recipe YAML file or a recipe name")
    names = recipe_names()
    close = difflib.get_close_matches(stem, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"config file not found: {text}{hint} (--config takes a YAML path or a recipe name: "
                      f"{', '.join(names)}; `faceage recipes` lists them)")


_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand(value: str, key: str, recipe: Path) -> str:
    """``~`` and ``$VAR``/``${VAR}`` expanded; a relative path made relative to the recipe's folder."""
    def var(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name == "FACEAGE_WEIGHTS":
            return str(weights_dir())
        if name not in os.environ:
            raise ConfigError(f"{recipe}: config key '{key}' uses ${{{name}}}, which is not set in the environment")
        return os.environ[name]
    out = os.path.expanduser(_VAR.sub(var, value))
    if not os.path.isabs(out):
        out = os.path.normpath(os.path.join(recipe.parent.absolute(), out))
    return out


def resolve_paths(data: dict, recipe: Path) -> dict:
    """The recipe's path keys made independent of the current directory (in place; returned)."""
    for section, key in PATH_KEYS:
        sec = data.get(section)
        if not isinstance(sec, dict) or not isinstance(sec.get(key), str) or not sec[key].strip():
            continue
        if key == "pretrained" and sec[key].strip().lower() in PRETRAINED_WORDS:
            continue
        sec[key] = expand(sec[key], f"{section}.{key}", recipe)
    return data
