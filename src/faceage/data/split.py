"""Deterministic train/val/test splits, stratified by age decade and gender.

A split is saved as ``split.csv`` (``key,split``) in the run directory; passing it back with
``--split FILE`` reproduces the same partition on any machine, because keys are paths
relative to the dataset root.
"""
from __future__ import annotations

import base64
import csv
import gzip
import io
import random
from collections import defaultdict
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import DataError
from .manifest import Sample

SPLITS = ("train", "val", "test")
# A final model trained on every image still logs a validation curve: rows marked "train+val"
# are trained on AND validated on (that curve is then not held out, and reports say so).
BOTH = "train+val"


def _stratum(s: Sample) -> tuple:
    decade = int(s.age // 10) if s.age is not None else -1
    return (decade, s.gender, s.label)


def _stratified_groups(samples: list[Sample], seed: int, salt: str = "split") -> list[list[Sample]]:
    groups: dict[tuple, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.key):
        groups[_stratum(s)].append(s)
    # The salt decorrelates subset selection from split assignment (same seed, different order).
    rng = random.Random(f"{salt}-{seed}")
    out = []
    for k in sorted(groups):
        g = groups[k]
        rng.shuffle(g)
        out.append(g)
    return out


def stratified_subset(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """A deterministic sample of ``n`` records keeping the strata's proportions."""
    if n >= len(samples):
        return list(samples)
    picked: list[Sample] = []
    groups = _stratified_groups(samples, seed, salt="subset")
    total = len(samples)
    # Largest-remainder allocation so the counts add up to exactly n.
    quotas = [len(g) * n / total for g in groups]
    counts = [int(q) for q in quotas]
    for i in sorted(range(len(groups)), key=lambda i: quotas[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for g, c in zip(groups, counts):
        picked.extend(g[:c])
    return sorted(picked, key=lambda s: s.key)


def make_split(samples: list[Sample], fractions=(0.7, 0.15, 0.15), seed: int = 42) -> dict[str, str]:
    """Map each sample key to 'train', 'val' or 'test'."""
    assignment: dict[str, str] = {}
    for g in _stratified_groups(samples, seed):
        n = len(g)
        n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
        n_train = n - n_val - n_test
        for i, s in enumerate(g):
            assignment[s.key] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return assignment


def save_split(assignment: dict[str, str], path: str | Path) -> None:
    atomic_write_text(path, split_csv_text(assignment))


def split_csv_text(assignment: dict[str, str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["key", "split"])
    for key in sorted(assignment):
        w.writerow([key, assignment[key]])
    return buf.getvalue()


def encode_split(assignment: dict[str, str]) -> dict:
    """The split as a JSON-ready record (gzip + base64 of its CSV: ~19k keys in ~100 kB), so an
    exported model knows which images it was trained on."""
    data = base64.b64encode(gzip.compress(split_csv_text(assignment).encode(), mtime=0)).decode()
    return {"encoding": "csv+gzip+base64", "n": len(assignment), "data": data}


def decode_split(record: dict) -> dict[str, str]:
    if record.get("encoding") != "csv+gzip+base64":
        raise DataError(f"unknown split encoding {record.get('encoding')!r}")
    rows = csv.DictReader(io.StringIO(gzip.decompress(base64.b64decode(record["data"])).decode()))
    return {r["key"]: r["split"] for r in rows}


def trained_on(assignment: dict[str, str], samples) -> int:
    """How many of ``samples`` the split put in training or validation (seen while fitting)."""
    return sum(assignment.get(s.key) in ("train", "val", BOTH) for s in samples)


def split_path(path: str | Path) -> Path:
    """The split file that ``path`` names: itself, or the ``split.csv`` of a run directory."""
    if not str(path).strip():
        raise DataError("the split file's path is empty: name a split.csv or a run directory")
    path = Path(path)
    return path / "split.csv" if path.is_dir() else path


def load_split(path: str | Path) -> dict[str, str]:
    path = split_path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or set(rows[0]) != {"key", "split"}:
        raise DataError(f"{path} is not a faceage split file (expected columns key,split)")
    bad = [r for r in rows if r["split"] not in SPLITS + (BOTH,)]
    if bad:
        raise DataError(f"{path}: unknown split name {bad[0]['split']!r} (use train, val, test or train+val)")
    return {r["key"]: r["split"] for r in rows}


def apply_split(samples: list[Sample], assignment: dict[str, str]) -> tuple[dict[str, list[Sample]], int]:
    """Partition samples by a saved split. Returns the parts and how many samples it did not name."""
    parts: dict[str, list[Sample]] = {k: [] for k in SPLITS}
    unassigned = 0
    for s in samples:
        name = assignment.get(s.key)
        if name is None:
            unassigned += 1
        else:
            for part in (("train", "val") if name == BOTH else (name,)):
                parts[part].append(s)
    if not parts["train"]:
        raise DataError("the split file names no training image that exists in this dataset")
    return parts, unassigned
