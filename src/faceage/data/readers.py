"""Dataset readers: a UTKFace folder or archive, a CSV manifest, or a class-per-subfolder folder.

Every reader yields a :class:`Manifest` of usable samples and a :class:`SkipReport`. Files are
skipped, never fatal: malformed names, zero-byte files, ages outside 0-120, byte-identical
duplicates and (when ``verify=True`` or while building the decode cache) images that do not
decode. No usable image at all is a :class:`DataError`.
"""
from __future__ import annotations

import csv
import hashlib
import re
import shutil
import tarfile
import uuid
import zipfile
from pathlib import Path

from ..errors import DataError
from ..labels import MAX_AGE, MIN_AGE
from .manifest import MISSING, Manifest, Sample, SkipReport

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".heic", ".heif"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

# [age]_[gender]_[race]_[date&time].jpg.chip.jpg  (gender and race are single digits)
UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.jpg\.chip\.jpg$")


def file_digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _is_image_name(p: Path) -> bool:
    name = p.name.lower()
    return p.suffix.lower() in IMAGE_SUFFIXES or name.endswith(".chip.jpg")


def _age_ok(age: float, path: Path, report: SkipReport) -> bool:
    if not (MIN_AGE <= age <= MAX_AGE):
        report.add("age outside 0-120", str(path), f"age {age:g}")
        return False
    return True


class _Deduper:
    """Drops zero-byte files and byte-identical duplicates (the first path in sort order wins)."""

    def __init__(self, report: SkipReport):
        self.report, self.seen = report, {}

    def digest(self, path: Path) -> str | None:
        if path.stat().st_size == 0:
            self.report.add("empty file", str(path))
            return None
        d = file_digest(path)
        if d in self.seen:
            self.report.add("duplicate file", str(path), f"same bytes as {self.seen[d].name}")
            return None
        self.seen[d] = path
        return d


def read_utkface(root: Path, report: SkipReport) -> Manifest:
    dedupe = _Deduper(report)
    samples = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        m = UTK_NAME.match(path.name)
        if not m:
            if _is_image_name(path) or path.suffix == "":
                report.add("malformed name", str(path), "expected age_gender_race_datetime.jpg.chip.jpg")
            else:
                report.add("not an image", str(path), "unexpected file type")
            continue
        age, gender, race = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if not _age_ok(age, path, report):
            continue
        digest = dedupe.digest(path)
        if digest:
            samples.append(Sample(str(path.resolve()), str(path.relative_to(root)), digest, float(age), gender, race))
    return Manifest(str(root), "utkface", samples)


def _parse_int(text: str | None, lo: int, hi: int) -> int | None:
    """'' -> MISSING, valid int -> int, anything else -> None (invalid)."""
    if text is None or text.strip() == "":
        return MISSING
    try:
        v = int(float(text))
    except ValueError:
        return None
    return v if lo <= v <= hi else None


def read_csv(csv_path: Path, report: SkipReport) -> Manifest:
    base = csv_path.parent
    dedupe = _Deduper(report)
    samples = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower() for c in (reader.fieldnames or [])}
        if not {"path", "age"} <= cols:
            raise DataError(f"{csv_path}: a manifest needs the columns path,age[,gender][,race]; found {sorted(cols)}")
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            rel = row["path"]
            path = (base / rel)
            if not path.is_file():
                report.add("missing file", str(path))
                continue
            try:
                age = float(row["age"])
            except ValueError:
                report.add("bad label", str(path), f"age {row['age']!r}")
                continue
            if not _age_ok(age, path, report):
                continue
            gender, race = _parse_int(row.get("gender"), 0, 1), _parse_int(row.get("race"), 0, 4)
            if gender is None or race is None:
                report.add("bad label", str(path), f"gender {row.get('gender')!r}, race {row.get('race')!r}")
                continue
            digest = dedupe.digest(path)
            if digest:
                samples.append(Sample(str(path.resolve()), rel, digest, age, gender, race))
    return Manifest(str(base), "csv", samples)


def read_image_folder(root: Path, report: SkipReport) -> Manifest:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    dedupe = _Deduper(report)
    samples = []
    for idx, cls in enumerate(classes):
        for path in sorted(p for p in (root / cls).rglob("*") if p.is_file()):
            if not _is_image_name(path):
                report.add("not an image", str(path), "unexpected file type")
                continue
            digest = dedupe.digest(path)
            if digest:
                samples.append(Sample(str(path.resolve()), str(path.relative_to(root)), digest, label=idx))
    return Manifest(str(root), "imagefolder", samples, class_names=classes)


def _extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Unpack once into the cache (keyed by the archive's bytes) and return the folder."""
    digest = file_digest(archive)[:16]
    dest = cache_dir / "archives" / digest
    if (dest / ".complete").exists():
        return dest
    # A private temporary folder + rename: concurrent runs on the same archive never collide.
    tmp = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir(parents=True)
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")   # "data" refuses absolute paths and links out
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot unpack {archive}: {exc}") from None
    (tmp / ".complete").touch()
    try:
        tmp.rename(dest)
    except OSError:              # another run finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _archive_root(folder: Path) -> Path:
    """An archive often wraps everything in one top folder (UTKFace.tar.gz -> UTKFace/)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def detect_kind(root: Path) -> str:
    """A folder whose image files live only in subfolders is class-per-subfolder; else UTKFace."""
    top_images = any(p.is_file() and _is_image_name(p) for p in root.iterdir())
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return "imagefolder" if subdirs and not top_images else "utkface"


def read_dataset(path: str | Path, cache_dir: str | Path | None = None, kind: str | None = None) -> tuple[Manifest, SkipReport]:
    """Read any supported dataset source. Raises :class:`DataError` when nothing is usable."""
    from .cache import default_cache_dir

    src = Path(path).expanduser()
    if not src.exists():
        raise DataError(f"dataset not found: {src}")
    report = SkipReport()
    if src.is_file() and src.name.lower().endswith(ARCHIVE_SUFFIXES):
        src = _archive_root(_extract_archive(src, Path(cache_dir or default_cache_dir())))
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise DataError(f"{src}: expected a folder, a .csv manifest or a .tar.gz/.zip archive")
        manifest = read_csv(src, report)
    else:
        kind = kind or detect_kind(src)
        manifest = read_image_folder(src, report) if kind == "imagefolder" else read_utkface(src, report)
    if not manifest.samples:
        raise DataError(f"no usable image in {path} ({len(report)} file(s) skipped)")
    return manifest, report


def verify_images(manifest: Manifest, report: SkipReport) -> Manifest:
    """Decode every image (cheaply, at reduced size) and drop those that fail."""
    from ..preprocess import ImageDecodeError, open_image

    good = []
    for s in manifest.samples:
        try:
            open_image(s.path)
        except ImageDecodeError as exc:
            report.add(exc.reason, s.path, exc.detail)
            continue
        good.append(s)
    manifest.samples = good
    if not good:
        raise DataError(f"no usable image in {manifest.root} ({len(report)} file(s) skipped)")
    return manifest
