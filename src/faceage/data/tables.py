"""Parquet and Arrow tables of image bytes plus label columns, the way face datasets are shared:

- a ``.parquet`` file as on the Hugging Face hub: an ``image`` column of ``{bytes, path}``
  structs (or plain binary) and label columns ``age``, ``gender``, ``race``, ``label``;
- a folder of them (a hub snapshot: ``data/train-00000-of-00001.parquet``);
- an ``.arrow`` file, or a folder written by ``datasets``' ``save_to_disk``
  (``data-00000-of-0000N.arrow`` beside ``state.json`` and ``dataset_info.json``; a
  ``DatasetDict`` folder's splits are all read).

pyarrow reads them; the ``datasets`` package is not needed. ClassLabel columns are read by name
(a ``gender`` ClassLabel with names ["female", "male"] means what it says); a ``label``
ClassLabel's names become the class names. A cell with no bytes but a ``path`` to a file beside
the table uses that file. Rows are keyed by the image's ``path`` when those are unique (the
original file names: split files made on the image folder still apply), else ``FILE[row]``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from .manifest import Manifest, SkipReport
from .rows import rows_manifest

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("age", "gender", "race", "label")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise DataError("reading Parquet and Arrow files needs pyarrow: pip install pyarrow "
                        "(faceage's 'ray' extra includes it)") from None
    return pyarrow


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as JSON ({exc})") from None


def hf_folder_files(folder: Path) -> list[Path]:
    """The table files of a folder that holds a dataset as tables; [] for any other folder."""
    if (folder / "dataset_dict.json").is_file():             # DatasetDict.save_to_disk: one folder per split
        splits = _json(folder / "dataset_dict.json").get("splits", [])
        return [f for s in splits for f in hf_folder_files(folder / s)]
    if (folder / "state.json").is_file():                    # Dataset.save_to_disk
        files = [folder / d["filename"] for d in _json(folder / "state.json").get("_data_files", []) if "filename" in d]
        return files or sorted(folder.glob("*.arrow"))
    return sorted(folder.glob("*.parquet")) or sorted(folder.glob("data/*.parquet"))


def _features(table, folder: Path) -> dict:
    """The ``datasets`` features (column types, ClassLabel names) stored with the table or beside it."""
    meta = (table.schema.metadata or {}).get(b"huggingface")
    if meta:
        try:
            return json.loads(meta).get("info", {}).get("features") or {}
        except (ValueError, AttributeError):
            pass
    info = folder / "dataset_info.json"
    return (_json(info).get("features") or {}) if info.is_file() else {}


def _read(pa, path: Path):
    try:
        if path.suffix.lower() == ".parquet":
            return pa.parquet.read_table(path)
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_stream(source).read_all()        # what datasets writes
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_file(source).read_all()          # the Arrow file format
    except (OSError, pa.ArrowException) as exc:
        kind = "Parquet" if path.suffix.lower() == ".parquet" else "Arrow"
        raise DataError(f"cannot read {path} as {kind}: {exc}") from None


def _image_column(pa, table, path: Path) -> str:
    name = next((c for c in IMAGE_COLUMNS if c in table.column_names), None)
    if name is None:
        raise DataError(f"{path}: no image column: expected 'image' (bytes, or a struct {{bytes, path}}); "
                        f"found {', '.join(table.column_names) or 'no column'}")
    t = table.schema.field(name).type
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)):
        raise DataError(f"{path}: column '{name}' is {t}; expected encoded image bytes or a struct {{bytes, path}}")
    return name


def _cell(cell, base: Path):
    """An image cell -> (bytes | Path | None, its path name or '')."""
    if not isinstance(cell, dict):
        return cell, ""
    name = cell.get("path") or ""
    if cell.get("bytes"):
        return cell["bytes"], name
    file = base / name if name else None
    return (file if file is not None and file.is_file() else None), name


def _by_name(values: list, names: list | None) -> list:
    """ClassLabel indices -> their names (-1, HF's 'no label', -> None)."""
    if not names:
        return values
    return [names[v] if isinstance(v, int) and 0 <= v < len(names) else None if v == -1 else v for v in values]


def read_tables(root: Path, files: list[Path], report: SkipReport) -> Manifest:
    pa = _pyarrow()
    rows, class_names = [], None
    for f in files:
        table = _read(pa, f)
        features = _features(table, f.parent)
        image = _image_column(pa, table, f)
        labels = [c for c in LABEL_COLUMNS if c in table.column_names]
        if not labels:
            raise DataError(f"{f}: no label column: expected any of {', '.join(LABEL_COLUMNS)}; "
                            f"found {', '.join(table.column_names)}")
        cols = {}
        for c in labels:
            names = (features.get(c) or {}).get("names") if isinstance(features.get(c), dict) else None
            if c == "label":
                class_names = class_names or names
                names = None
            cols[c] = _by_name(table.column(c).to_pylist(), names)
        rel = f.name if f == root else f.relative_to(root).as_posix()
        for i, cell in enumerate(table.column(image).to_pylist()):
            data, name = _cell(cell, f.parent)
            rows.append([f"{rel}[{i}]", f"{f.resolve()}:{name or i}", data, {c: v[i] for c, v in cols.items()}, name])
    names = [r[4] for r in rows]
    if all(names) and len(set(names)) == len(names):
        for r in rows:
            r[0] = r[4]
    kind = "parquet" if all(f.suffix.lower() == ".parquet" for f in files) else "arrow"
    manifest = rows_manifest(root.resolve(), kind, (r[:4] for r in rows), report, class_names)
    if "label" in {c for r in rows for c in r[3]} and not manifest.class_names:
        manifest.class_names = [str(i) for i in range(1 + max((s.label for s in manifest.samples), default=-1))]
    return manifest
