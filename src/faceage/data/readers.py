"""Dataset readers: a UTKFace folder or archive, a CSV manifest, or a class-per-subfolder folder
(NumPy ``.npz`` arrays: ``arrays.py``; Parquet, Arrow and Hugging Face folders: ``tables.py``).

Every reader yields a :class:`Manifest` of usable samples and a :class:`SkipReport`. Files are
skipped, never fatal: malformed names, zero-byte files, ages outside 0-120, byte-identical
duplicates (those labelled differently are reported as such) and (when ``verify=True`` or while
building the decode cache) images that do not decode. Operating-system clutter (``__MACOSX/``,
``._*``, ``.DS_Store``, ``Thumbs.db``, hidden files) is ignored. No usable image at all is a
:class:`NoUsableImageError` whose message lists the reasons.
"""
from __future__ import annotations

import csv
import hashlib
import math
import re
import shutil
import tarfile
import uuid
import zipfile
from pathlib import Path

from ..errors import DataError
from ..labels import GENDERS, MAX_AGE, MIN_AGE, RACES
from .manifest import MISSING, Manifest, NoUsableImageError, Sample, SkipReport

# Archives are unpacked into the cache; these bound what one may write (a 1 MB zip can declare
# a terabyte). Datasets of images barely compress, so a high ratio means something else.
MAX_ARCHIVE_FILES = 1_000_000
MAX_ARCHIVE_BYTES = 64 * 10**9        # "64 GB" in README and in the refusal message (which counts 1e9 bytes a GB)
MAX_ARCHIVE_RATIO = 100
JUNK_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
HASH_CHUNK = 1 << 20

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".heic", ".heif"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

# [age]_[gender]_[race]_[date&time].jpg.chip.jpg  (gender and race are single digits)
UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.jpg\.chip\.jpg$")


def file_digest(path: Path) -> str:
    """blake2b-128 of the file's bytes, read 1 MB at a time (a 2 GB file costs 1 MB of memory)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def is_junk(name: str) -> bool:
    """Files and folders no dataset means: macOS resource forks, Finder/Explorer metadata, hidden."""
    return name in JUNK_NAMES or name.startswith(".")


def _files(root: Path) -> list[Path]:
    """Regular files under ``root``, sorted, without junk or anything inside a junk folder."""
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        if any(is_junk(part) for part in rel) or not p.is_file():
            continue
        out.append(p)
    return sorted(out)


def _is_image_name(p: Path) -> bool:
    name = p.name.lower()
    return p.suffix.lower() in IMAGE_SUFFIXES or name.endswith(".chip.jpg")


def _age_ok(age: float, path, report: SkipReport) -> bool:
    if not (MIN_AGE <= age <= MAX_AGE):
        report.add("age outside 0-120", str(path), f"age {age:g}")
        return False
    return True


def _describe(labels: dict) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in labels.items()
                     if v is not None and v != MISSING) or "no labels"


class _Deduper:
    """Drops zero-byte files and byte-identical duplicates (the first path in sort order wins).
    A duplicate labelled differently from the copy kept is reported apart: one of the two
    labels is wrong, and which one was kept should not be a silent accident of file names."""

    def __init__(self, report: SkipReport):
        self.report, self.seen = report, {}

    def digest(self, path: Path, labels: dict | None = None) -> str | None:
        if path.stat().st_size == 0:
            self.report.add("empty file", str(path))
            return None
        return self.keep(file_digest(path), path, labels)

    def keep(self, d: str, path, labels: dict | None = None) -> str | None:
        """``d`` if these bytes are new, else None (reported). ``path``: a file, or a table row's name."""
        if d in self.seen:
            first, first_labels = self.seen[d]
            first = Path(str(first)).name
            if labels is not None and first_labels is not None and labels != first_labels:
                self.report.add("duplicate file with different labels", str(path),
                                f"same bytes as {first}, which is kept: {_describe(first_labels)} there, "
                                f"{_describe(labels)} here")
            else:
                self.report.add("duplicate file", str(path), f"same bytes as {first}")
            return None
        self.seen[d] = (path, labels)
        return d


def read_utkface(root: Path, report: SkipReport) -> Manifest:
    dedupe = _Deduper(report)
    samples = []
    for path in _files(root):
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
        digest = dedupe.digest(path, {"age": float(age), "gender": gender, "race": race})
        if digest:
            samples.append(Sample(str(path.resolve()), str(path.relative_to(root)), digest, float(age), gender, race))
    return Manifest(str(root), "utkface", samples)


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _parse_int(text, lo: int, hi: int) -> int | None:
    """'' -> MISSING, valid int -> int, anything else -> None (invalid)."""
    if _blank(text):
        return MISSING
    try:
        f = float(str(text))
    except ValueError:
        return None
    return int(f) if f.is_integer() and lo <= f <= hi else None       # 1.0 is 1; 0.5 is no class


# 0 male, 1 female (labels.GENDERS, UTKFace's coding); spreadsheets and shared datasets spell them out.
GENDER_WORDS = {"m": 0, "f": 1, **{g: i for i, g in enumerate(GENDERS)}}
RACE_WORDS = {r.lower(): i for i, r in enumerate(RACES)}


def parse_gender(value) -> int | None:
    """0/1, M/F or male/female in any case -> 0 (male) or 1 (female); blank -> MISSING; else None."""
    text = "" if _blank(value) else str(value).strip().lower()
    return GENDER_WORDS[text] if text in GENDER_WORDS else _parse_int(text, 0, 1)


def parse_race(value) -> int | None:
    """0-4 or a name of labels.RACES in any case; blank -> MISSING; else None."""
    text = "" if _blank(value) else str(value).strip().lower()
    return RACE_WORDS[text] if text in RACE_WORDS else _parse_int(text, 0, len(RACES) - 1)


def parse_labels(raw: dict, where, report: SkipReport, age_required: bool = False) -> dict | None:
    """A row's raw age/gender/race/label values -> {"age", "gender", "race", "label"}, or None
    when one is unusable (the reason goes in ``report`` under 'bad label' or the age's range)."""
    age = raw.get("age")
    if _blank(age) and not age_required:
        age = None
    else:
        try:
            age = float(str(age))
        except ValueError:
            report.add("bad label", str(where), f"age {age!r}")
            return None
        if not _age_ok(age, where, report):
            return None
    gender, race, label = parse_gender(raw.get("gender")), parse_race(raw.get("race")), _parse_int(raw.get("label"), 0, 2**31)
    if gender is None:
        report.add("bad label", str(where), f"gender {raw.get('gender')!r}: expected 0/1, M/F or male/female")
    elif race is None:
        report.add("bad label", str(where), f"race {raw.get('race')!r}: expected 0-4 or {', '.join(RACES)}")
    elif label is None:
        report.add("bad label", str(where), f"label {raw.get('label')!r}: expected a class index 0, 1, 2, ...")
    else:
        return {"age": age, "gender": gender, "race": race, "label": label}
    return None


def _csv_encoding(csv_path: Path) -> str:
    """Spreadsheets save CSVs with a byte-order mark (Excel: UTF-8 with BOM, or UTF-16)."""
    with open(csv_path, "rb") as fh:
        head = fh.read(4)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    return "utf-8-sig"          # also plain UTF-8 / ASCII, without a mark


def _csv_dialect(first_line: str):
    """Comma, or the semicolon / tab that spreadsheets in many locales write."""
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def read_csv(csv_path: Path, report: SkipReport) -> Manifest:
    base = csv_path.parent
    dedupe = _Deduper(report)
    samples = []
    try:
        encoding = _csv_encoding(csv_path)
        with csv_path.open(newline="", encoding=encoding) as fh:
            delimiter = _csv_dialect(fh.readline())
    except (UnicodeError, OSError) as exc:
        raise DataError(f"{csv_path}: cannot read it as text: {exc}") from None
    with csv_path.open(newline="", encoding=encoding, errors="replace") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
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
            labels = parse_labels({k: row.get(k) for k in ("age", "gender", "race")}, path, report, age_required=True)
            if labels is None:
                continue
            age, gender, race = labels["age"], labels["gender"], labels["race"]
            digest = dedupe.digest(path, {"age": age, "gender": gender, "race": race})
            if digest:
                samples.append(Sample(str(path.resolve()), rel, digest, age, gender, race))
    return Manifest(str(base), "csv", samples)


def read_image_folder(root: Path, report: SkipReport) -> Manifest:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not is_junk(d.name))
    dedupe = _Deduper(report)
    samples = []
    for idx, cls in enumerate(classes):
        for path in _files(root / cls):
            if not _is_image_name(path):
                report.add("not an image", str(path), "unexpected file type")
                continue
            digest = dedupe.digest(path, {"class": cls})
            if digest:
                samples.append(Sample(str(path.resolve()), str(path.relative_to(root)), digest, label=idx))
    return Manifest(str(root), "imagefolder", samples, class_names=classes)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _check_archive(archive: Path, count: int, total: int, dest_parent: Path) -> None:
    """Refuse, before writing anything, an archive that would unpack into too many files, too
    many bytes, far more bytes than it holds (a zip bomb), or more than the disk has free."""
    how = "unpack it yourself and give the folder instead"
    if count > MAX_ARCHIVE_FILES:
        raise DataError(f"{archive}: more than {MAX_ARCHIVE_FILES:,} files; {how}")
    if total > MAX_ARCHIVE_BYTES:
        raise DataError(f"{archive} would unpack to {_gb(total)}, over the limit of {_gb(MAX_ARCHIVE_BYTES)}; {how}")
    size = max(1, archive.stat().st_size)
    if total > 16 * 2**20 and total / size > MAX_ARCHIVE_RATIO:
        raise DataError(f"{archive} would unpack to {_gb(total)} from {_gb(size)} (ratio {total / size:,.0f}:1, "
                        f"the limit is {MAX_ARCHIVE_RATIO}:1): images barely compress, so this is not an image "
                        f"archive (a zip bomb?); {how}")
    free = shutil.disk_usage(dest_parent).free
    if total > free:
        raise DataError(f"{archive} would unpack to {_gb(total)} in {dest_parent}, which has {_gb(free)} free; "
                        f"free some space or set FACEAGE_CACHE to a larger disk")


def _wanted(name: str) -> bool:
    return not any(is_junk(part) for part in Path(name).parts)


def _unpack(archive: Path, tmp: Path) -> None:
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and _wanted(m.filename)]
            # zipfile stops each file at its declared size (and checks its CRC), so the
            # declared sizes bound what is written.
            _check_archive(archive, len(members), sum(m.file_size for m in members), tmp.parent)
            for m in members:
                zf.extract(m, tmp)        # extract() strips absolute paths and '..'
    else:
        with tarfile.open(archive) as tf:
            members, total = [], 0
            for m in tf:                  # headers stream by: counted without holding a bomb's worth
                if len(members) > MAX_ARCHIVE_FILES:
                    break
                if (m.isfile() or m.islnk()) and _wanted(m.name):
                    members.append(m)
                    total += m.size
            _check_archive(archive, len(members), total, tmp.parent)
            tf.extractall(tmp, members=members, filter="data")   # "data" refuses absolute paths and links out


def _extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Unpack once into the cache (keyed by the archive's bytes) and return the folder."""
    digest = file_digest(archive)[:16]
    dest = cache_dir / "archives" / digest
    if (dest / ".complete").exists():
        return dest
    # A private temporary folder + rename: concurrent runs on the same archive never collide.
    # Folders left by killed runs (their process is gone) are removed first.
    from ..atomic import owner_tag, remove_stale
    remove_stale(dest.parent.glob(f"{dest.name}.*.partial"))
    tmp = dest.with_name(f"{dest.name}.{owner_tag()}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir(parents=True)
    try:
        _unpack(archive, tmp)
    except DataError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot unpack {archive}: {exc}") from None
    (tmp / ".complete").touch()
    try:
        tmp.rename(dest)
    except OSError:              # another run finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _archive_root(folder: Path) -> Path:
    """An archive often wraps everything in one top folder (UTKFace.tar.gz -> UTKFace/), maybe
    beside a README or macOS's __MACOSX/: that folder is the dataset."""
    entries = [p for p in folder.iterdir() if not is_junk(p.name)]
    dirs = [p for p in entries if p.is_dir()]
    loose_images = [p for p in entries if p.is_file() and _is_image_name(p)]
    return dirs[0] if len(dirs) == 1 and not loose_images else folder


def detect_kind(root: Path) -> str:
    """A folder whose image files live only in subfolders is class-per-subfolder; else UTKFace.
    One lone subfolder of UTKFace-named files (a dataset folder beside a README) is UTKFace."""
    top_images = any(p.is_file() and _is_image_name(p) for p in root.iterdir())
    subdirs = [d for d in root.iterdir() if d.is_dir() and not is_junk(d.name)]
    if len(subdirs) == 1 and not top_images:
        names = [p.name for p, _ in zip((p for p in subdirs[0].rglob("*") if _is_image_name(p)), range(50))]
        if names and sum(bool(UTK_NAME.match(n)) for n in names) * 2 > len(names):
            return "utkface"
    return "imagefolder" if subdirs and not top_images else "utkface"


def read_dataset(path: str | Path, cache_dir: str | Path | None = None, kind: str | None = None,
                 y_is: str | None = None) -> tuple[Manifest, SkipReport]:
    """Read any supported dataset source. Raises :class:`NoUsableImageError` (a DataError) when
    nothing is usable. ``y_is``: what a ``.npz``'s ``y`` holds (age, label, onehot; see arrays.py)."""
    from .cache import default_cache_dir
    from .tables import hf_folder_files, read_tables

    src = Path(path).expanduser()
    if not src.exists():
        raise DataError(f"dataset not found: {src}")
    report = SkipReport()
    if src.is_file() and src.name.lower().endswith(ARCHIVE_SUFFIXES):
        src = _archive_root(_extract_archive(src, Path(cache_dir or default_cache_dir())))
    if not src.is_file() and not src.is_dir():
        raise DataError(f"{src}: not a regular file or folder (a device, FIFO or socket)")
    suffix = src.suffix.lower()
    if src.is_file() and suffix == ".npz":
        from .arrays import read_npz
        manifest = read_npz(src, report, y_is)
    elif src.is_file() and suffix in (".parquet", ".arrow"):
        manifest = read_tables(src, [src], report)
    elif src.is_file():
        if suffix != ".csv":
            raise DataError(f"{src}: expected a folder, a .csv manifest, a .npz, .parquet or .arrow file, "
                            "or a .tar.gz/.zip archive")
        manifest = read_csv(src, report)
    elif files := hf_folder_files(src):
        manifest = read_tables(src, files, report)
    else:
        kind = kind or detect_kind(src)
        manifest = read_image_folder(src, report) if kind == "imagefolder" else read_utkface(src, report)
    if not manifest.samples:
        raise NoUsableImageError(path, report)
    return manifest, report


def verify_images(manifest: Manifest, report: SkipReport) -> Manifest:
    """Decode every image and drop those that fail, by the check the training cache relies on
    (:func:`faceage.preprocess.check_image`: the pixel limit, decoding, colour-mode conversion;
    for a table row's array, that it is an image: :func:`rows.check_sample`)."""
    from ..preprocess import ImageDecodeError
    from .rows import check_sample

    good = []
    for s in manifest.samples:
        try:
            check_sample(s)
        except ImageDecodeError as exc:
            report.add(exc.reason, s.path, exc.detail)
            continue
        good.append(s)
    manifest.samples = good
    if not good:
        raise NoUsableImageError(manifest.root, report)
    return manifest
