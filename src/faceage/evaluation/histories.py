"""Read training histories from any source into one shape: a list of per-epoch dicts.

Sources: a faceage run directory; a Keras ``model.fit(verbose=1)`` log pasted into a text file
(old ``acc`` and new ``accuracy`` names, progress bars, per-step timing, and logs whose line
breaks were lost); a Keras ``CSVLogger`` file or any CSV with an epoch column and
``X`` / ``val_X`` columns.

Every row has ``epoch`` (1-based) and float metrics named as in the source.
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from ..errors import DataError

NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf|NaN|Inf"
# "name: value" pairs as Keras prints them ("loss: 0.6931 - accuracy: 0.5000").
PAIR = re.compile(rf"\b([A-Za-z_][A-Za-z0-9_]*)\s*:\s*({NUMBER})(?![\d:])")
EPOCH = re.compile(r"\bEpoch\s+(\d+)\s*/\s*(\d+)")
NOT_METRICS = {"ETA", "eta", "Epoch", "epoch", "step", "steps", "ms", "s"}


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def parse_keras_log(text: str) -> list[dict]:
    """Epoch rows from a ``model.fit(verbose=1)`` log, with or without line breaks.

    The log is cut at each ``Epoch N/M`` marker; within an epoch's segment the last value of
    each metric wins, because progress-bar updates print running values before the final ones.
    """
    marks = list(EPOCH.finditer(text))
    rows = []
    for i, m in enumerate(marks):
        segment = text[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)]
        values: dict[str, float] = {}
        for name, value in PAIR.findall(segment):
            if name not in NOT_METRICS:
                values[name] = _to_float(value)
        if values:
            rows.append({"epoch": int(m.group(1)), **values})
    # A log pasted twice or a restarted fit: keep the last occurrence of each epoch number.
    by_epoch = {r["epoch"]: r for r in rows}
    return [by_epoch[e] for e in sorted(by_epoch)]


def parse_csv_history(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in reader.fieldnames or []]
        epoch_col = next((c for c in cols if c.lower() == "epoch"), None)
        if epoch_col is None:
            raise DataError(f"{path}: a history CSV needs an 'epoch' column; found {cols}")
        raw = list(reader)
    rows = []
    for r in raw:
        r = {k.strip(): v for k, v in r.items() if k}
        try:
            epoch = int(float(r[epoch_col]))
        except (TypeError, ValueError):
            continue
        metrics = {k: _to_float(v) for k, v in r.items() if k != epoch_col and v not in (None, "")}
        rows.append({"epoch": epoch, **metrics})
    # Keras' CSVLogger counts epochs from 0; faceage and Keras' console count from 1.
    if rows and min(r["epoch"] for r in rows) == 0:
        for r in rows:
            r["epoch"] += 1
    return rows


def load_history(source: str | Path) -> tuple[list[dict], str]:
    """Returns (rows, kind). Raises :class:`DataError` when no epoch can be read."""
    p = Path(source)
    if not p.exists():
        raise DataError(f"not found: {p}")
    if p.is_dir():
        h = p / "history.json"
        if not h.is_file():
            raise DataError(f"{p} has no history.json: is it a faceage run directory?")
        rows, kind = json.loads(h.read_text()), "faceage run"
    elif p.suffix.lower() == ".json":
        rows, kind = json.loads(p.read_text()), "faceage history"
    elif p.suffix.lower() == ".csv" or p.read_text(errors="replace")[:200].lower().lstrip().startswith("epoch,"):
        rows, kind = parse_csv_history(p), "CSV history"
    else:
        rows, kind = parse_keras_log(p.read_text(errors="replace")), "Keras log"
    rows = [r for r in rows if len(r) > 1]
    if not rows:
        raise DataError(f"no readable epochs in {p} (expected a faceage run, a Keras fit log or a CSV with an epoch column)")
    return rows, kind
