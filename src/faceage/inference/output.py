"""`faceage predict`'s outputs: text table, CSV, JSON and JSON Lines, written as photos finish.

One convention everywhere: faces are numbered from 1 in reading order (the number drawn on the
annotated copy), and a photo without faces gets the note "no face found" in every format.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Iterable

from .results import PhotoResult

CSV_COLUMNS = ["path", "time", "face", "x1", "y1", "x2", "y2", "score", "age", "age_low", "age_high", "age_bin",
               "gender", "gender_prob", "female_prob", "low_quality", "note", "error"]


def _where(r: PhotoResult) -> str:
    return r.path if r.time is None else f"{r.path} @ {_clock(r.time)}"


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m):02d}:{s:04.1f}"


class Writer:
    """Streams results to ``out`` in one format; ``close`` finishes a JSON array."""

    def __init__(self, fmt: str, out=None):
        self.fmt, self.out, self.n = fmt, out or sys.stdout, 0
        if fmt == "csv":
            self.csv = csv.writer(self.out)
            self.csv.writerow(CSV_COLUMNS)

    def write(self, r: PhotoResult) -> None:
        getattr(self, f"_{self.fmt}")(r)
        self.n += 1
        self.out.flush()   # a pipeline downstream sees each photo as soon as it is done

    def close(self) -> None:
        if self.fmt == "json":
            self.out.write("[]\n" if self.n == 0 else "\n]\n")

    def _json(self, r: PhotoResult) -> None:
        text = json.dumps(r.to_dict(), indent=2)
        self.out.write(("[\n" if self.n == 0 else ",\n") + "\n".join("  " + line for line in text.splitlines()))

    def _jsonl(self, r: PhotoResult) -> None:
        self.out.write(json.dumps(r.to_dict()) + "\n")

    def _csv(self, r: PhotoResult) -> None:
        t = "" if r.time is None else r.time
        if not r.faces:
            self.csv.writerow([r.path, t, *[""] * (len(CSV_COLUMNS) - 4), r.note or "", r.error or ""])
        for f in r.faces:
            female = "" if f.gender_probs is None else f.gender_probs["female"]
            self.csv.writerow([r.path, t, f.number, *f.box, "" if f.score is None else f.score, f.age, f.age_low,
                               f.age_high, f.age_bin, f.gender, f.gender_prob, female, f.low_quality, "", ""])

    def _text(self, r: PhotoResult) -> None:
        if r.error:
            self.out.write(f"{_where(r)}: ERROR {r.error}\n")
        elif not r.faces:
            self.out.write(f"{_where(r)}: no face found\n")
        for f in r.faces:
            interval = f" ({f.age_low:.0f}-{f.age_high:.0f}, 90%)" if f.age_low is not None else ""
            age = f"age {f.age:.0f}{interval}" if f.age is not None else f"age bin {f.age_bin}"
            gender = f"  {f.gender} {f.gender_prob:.0%}" if f.gender else ""
            flag = "  [low quality]" if f.low_quality else ""
            self.out.write(f"{_where(r)}  face {f.number}: {age}{gender}  box {[round(v) for v in f.box]}{flag}\n")


def collect_inputs(paths: Iterable[str], suffixes) -> list[tuple[Path, Path | None]]:
    """(file, root folder or None) for every photo or video named or found under a folder."""
    files: list[tuple[Path, Path | None]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += [(f, p) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in suffixes]
        else:
            files.append((p, None))
    return files
