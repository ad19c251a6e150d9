"""The manifest: one record per usable image, plus a report of everything skipped."""
from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import DataError

MISSING = -1  # label value for "not labelled" (masked out of losses and metrics)


@dataclass
class Sample:
    path: str                 # absolute path of the image file (table rows: "FILE:row", for messages)
    key: str                  # path relative to the dataset root: stable across machines, used in splits
    digest: str               # hash of the image's bytes: identifies it in the decode cache
    age: float | None = None
    gender: int = MISSING     # 0 male, 1 female
    race: int = MISSING       # 0..4, see labels.RACES
    label: int = MISSING      # class index for class-per-subfolder datasets
    # The image itself when it has no file of its own (a row of a .npz, Parquet or Arrow table):
    # encoded bytes or a NumPy array. None: read ``path``.
    data: object = field(default=None, repr=False, compare=False)

    @property
    def source(self):
        """What to decode: the in-memory image, else the file."""
        return self.path if self.data is None else self.data


@dataclass
class Manifest:
    root: str
    kind: str                                  # utkface | csv | imagefolder | npz | parquet | arrow
    samples: list[Sample]
    class_names: list[str] = field(default_factory=list)

    def has(self, attr: str) -> bool:
        """Whether any sample carries this label."""
        if attr == "age":
            return any(s.age is not None for s in self.samples)
        return any(getattr(s, attr) != MISSING for s in self.samples)


class SkipReport:
    """Collects skipped files by reason; prints a short summary, writes the full list."""

    def __init__(self):
        self.by_reason: dict[str, list[tuple[str, str]]] = defaultdict(list)

    def add(self, reason: str, path: str, detail: str = "") -> None:
        self.by_reason[reason].append((str(path), detail))

    def merge(self, other: "SkipReport") -> None:
        for reason, items in other.by_reason.items():
            self.by_reason[reason].extend(items)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_reason.values())

    def summary(self, examples: int = 5) -> str:
        if not self:
            return "skipped: none"
        lines = [f"skipped {len(self)} file(s):"]
        for reason, items in sorted(self.by_reason.items()):
            lines.append(f"  {reason}: {len(items)}")
            for path, detail in _examples(items, examples):
                lines.append(f"    {os.path.basename(path)}" + (f"  ({detail})" if detail else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {r: [{"path": p, "detail": d} for p, d in items] for r, items in sorted(self.by_reason.items())}

    def write(self, path: str | Path) -> None:
        from ..atomic import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))


def _examples(items: list[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    """The first ``k`` items, those with a detail not shown yet first (five "gender '?'" must
    not hide the one "gender 'W'")."""
    seen, new, again = set(), [], []
    for item in items:
        (again if item[1] in seen else new).append(item)
        seen.add(item[1])
    return (new + again)[:k]


class NoUsableImageError(DataError):
    """Nothing usable in a dataset. The message says why, grouped by reason with examples;
    :meth:`save` writes the full skip report and names it in the message."""

    def __init__(self, where, report: SkipReport):
        self.where, self.report, self.saved = str(where), report, None
        super().__init__(self.where)

    def save(self, path: str | Path) -> None:
        self.report.write(path)
        self.saved = str(path)

    def __str__(self) -> str:
        text = f"no usable image in {self.where} ({len(self.report)} file(s) skipped)"
        if self.report:
            text += "\n" + self.report.summary()
        return text + (f"\nfull list of skipped files: {self.saved}" if self.saved else "")


def write_manifest_csv(samples: list[Sample], path: str | Path) -> None:
    from ..atomic import atomic_write_text
    import io as _io
    buf = _io.StringIO()
    names = [f.name for f in fields(Sample) if f.name != "data"]
    w = csv.DictWriter(buf, fieldnames=names)
    w.writeheader()
    for s in samples:
        w.writerow({n: getattr(s, n) for n in names})
    atomic_write_text(path, buf.getvalue())
