"""Which photos a distributed job scores: a folder, a text file of paths or URIs, or a Parquet
or CSV table with a path column.

Paths may be local or any URI that ``pyarrow.fs`` reads (``s3://``, ``gs://``, ``hdfs://``,
``abfs://``, ``file://``). Relative entries in a list or table are taken relative to the file
that lists them (as in faceage's CSV manifests). Needs pyarrow (the ``ray`` extra).
"""
from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from ..data.readers import IMAGE_SUFFIXES
from ..errors import DataError

LIST_SUFFIXES = (".txt", ".lst", ".list")
TABLE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}
# A table's path column, when none is named: the first of these present (case-insensitive).
PATH_COLUMNS = ("path", "uri", "url", "file", "filename", "file_path", "image", "image_path")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_uri(text: str) -> bool:
    """``s3://b/k``, ``file:///x`` (a Windows drive, ``C:\\``, is not one)."""
    return bool(_SCHEME.match(text))


def filesystem(uri_or_path: str):
    """(pyarrow FileSystem, path inside it) for a URI or a local path."""
    from pyarrow import fs as pafs
    if is_uri(uri_or_path):
        return pafs.FileSystem.from_uri(uri_or_path)
    return pafs.LocalFileSystem(), os.path.abspath(uri_or_path)


_OPENED: dict = {}    # "scheme://netloc" -> (file system, where the inner path starts in a URI)


def read_uri(uri: str) -> bytes:
    """The bytes of one file named by a URI; file systems are made once per scheme and host
    (an S3 one resolves its bucket's region when made)."""
    key = "/".join(uri.split("/", 3)[:3])
    if key not in _OPENED:
        fs, inner = filesystem(uri)
        offset = len(uri) - len(inner) if uri.endswith(inner) else None
        _OPENED[key] = (fs, offset)
    fs, offset = _OPENED[key]
    inner = uri[offset:] if offset is not None else filesystem(uri)[1]
    with fs.open_input_stream(inner) as fh:
        return fh.read()


def _uri_prefix(uri: str, inner: str) -> str:
    """What to put before a path inside the file system to make it a URI again
    (``s3://`` for S3's ``bucket/key``, ``hdfs://host:8020`` for HDFS's ``/data``)."""
    bare = uri.split("?", 1)[0].rstrip("/")
    inner = inner.rstrip("/")
    if inner and bare.endswith(inner):
        return bare[: len(bare) - len(inner)]
    return uri.split("://", 1)[0] + "://"


def list_photos(sources, path_column: str | None = None) -> list[str]:
    """Every photo named by ``sources`` (one source or several), duplicates dropped, first
    occurrence kept. A source that does not exist, or a table without a usable path column,
    raises :class:`faceage.errors.DataError`."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    photos: list[str] = []
    for source in sources:
        photos += _one_source(os.fspath(source), path_column)
    return list(dict.fromkeys(photos))


def _one_source(source: str, path_column: str | None) -> list[str]:
    from pyarrow import fs as pafs

    if not is_uri(source):                   # local: named exactly as `faceage predict` names them
        p = Path(source)
        if p.is_dir():
            return [str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        if not p.exists():
            raise DataError(f"source not found: {source}")
    fs, inner = filesystem(source)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"source not found: {source}")
    if info.type == pafs.FileType.Directory:
        prefix = _uri_prefix(source, inner)
        found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
        return sorted(prefix + f.path for f in found
                      if f.type == pafs.FileType.File and posixpath.splitext(f.path)[1].lower() in IMAGE_SUFFIXES)
    suffix = posixpath.splitext(inner)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return [source]
    if suffix in TABLE_FORMATS:
        entries = _table_column(fs, inner, TABLE_FORMATS[suffix], path_column, source)
    else:
        with fs.open_input_stream(inner) as fh:
            text = fh.read().decode("utf-8-sig", errors="replace")
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    return [_resolve(e, source) for e in entries]


def _table_column(fs, inner: str, fmt: str, path_column: str | None, source: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            with fs.open_input_file(inner) as fh:
                names = pq.read_schema(fh).names
                column = _pick_column(names, path_column, source)
                table = pq.read_table(fh, columns=[column])
        else:
            parse = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
            with fs.open_input_stream(inner) as fh:
                table = pacsv.read_csv(fh, parse_options=parse)
            column = _pick_column(table.column_names, path_column, source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {source} as a {fmt.upper()} table: {str(exc).splitlines()[0]}") from None
    values = table.column(column).cast(pa.string()).to_pylist()
    return [v.strip() for v in values if v is not None and v.strip()]


def _pick_column(names: list[str], wanted: str | None, source: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise DataError(f"{source} has no column {wanted!r}; its columns: {', '.join(names)}")
        return wanted
    lower = {n.lower(): n for n in names}
    for candidate in PATH_COLUMNS:
        if candidate in lower:
            return lower[candidate]
    if len(names) == 1:
        return names[0]
    raise DataError(f"{source}: which column holds the photo paths? None is named {', '.join(PATH_COLUMNS[:3])}, ...; "
                    f"give --path-column (its columns: {', '.join(names)})")


def _resolve(entry: str, listed_in: str) -> str:
    """An entry of a list or table: a URI or absolute path as it is; a relative path beside the
    file that lists it."""
    if is_uri(entry) or os.path.isabs(entry):
        return entry
    if is_uri(listed_in):
        return posixpath.join(posixpath.dirname(listed_in), entry)
    return str(Path(listed_in).parent / entry)
