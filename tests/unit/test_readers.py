"""Readers: every bad-input reason is skipped and reported; nothing usable is one clear error."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from conftest import face_image, write_utk
from faceage.data.cache import ImageCache
from faceage.data.readers import read_dataset, verify_images
from faceage.errors import DataError
from faceage.preprocess import PreprocessSpec


def _bad_folder(tmp_path):
    folder = tmp_path / "utk"
    folder.mkdir()
    good = [write_utk(folder, 20 + i, i % 2, i % 5, seed=i) for i in range(6)]
    shutil.copy(good[0], folder / "20_0_0_20170111000000099.jpg.chip.jpg")             # duplicate bytes
    shutil.copy(good[0], folder / "21_0_0_20170111000000001.jpg.chip.jpg")             # ... labelled otherwise
    (folder / "39_1_20170116174525125.jpg.chip.jpg").write_bytes(good[1].read_bytes())   # missing field
    (folder / "24_0_1_20170116220224657 .jpg.chip.jpg").write_bytes(b"x")                # stray space
    (folder / "150_0_0_20170111000000002.jpg.chip.jpg").write_bytes(good[2].read_bytes() + b"\0")  # age > 120
    (folder / "30_0_0_20170111000000003.jpg.chip.jpg").write_bytes(b"")                  # zero bytes
    (folder / "31_0_0_20170111000000004.jpg.chip.jpg").write_text("not an image at all")  # non-image
    data = good[3].read_bytes()
    (folder / "32_0_0_20170111000000005.jpg.chip.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (folder / "notes.txt").write_text("hello")
    return folder


def test_utkface_folder_skips_every_bad_reason(tmp_path):
    manifest, report = read_dataset(_bad_folder(tmp_path))
    verify_images(manifest, report)
    reasons = {r: len(v) for r, v in report.by_reason.items()}
    assert reasons == {"duplicate file": 1, "duplicate file with different labels": 1, "malformed name": 2,
                       "age outside 0-120": 1, "empty file": 1, "not an image": 2, "corrupt or truncated image": 1}
    assert len(manifest.samples) == 6
    s = min(manifest.samples, key=lambda s: s.age)
    assert (s.age, s.gender, s.race) == (20.0, 0, 0)
    summary = report.summary()
    assert "duplicate file: 1" in summary and "malformed name: 2" in summary
    assert "duplicate file with different labels: 1" in summary and "age 21" in summary


def test_cache_build_reports_undecodable_images(tmp_path):
    manifest, report = read_dataset(_bad_folder(tmp_path))
    usable = ImageCache(PreprocessSpec(size=16), tmp_path / "c").build(manifest.samples, report)
    assert len(usable) == 6
    assert len(report.by_reason["corrupt or truncated image"]) == 1
    assert len(report.by_reason["not an image"]) == 2   # the text file + the non-image .jpg


def test_no_usable_image_is_one_clear_error(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "junk_name.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no usable image"):
        read_dataset(folder)
    with pytest.raises(DataError, match="dataset not found"):
        read_dataset(tmp_path / "missing")


def test_cli_inspect_bad_input_exits_2_with_one_line(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    r = subprocess.run([sys.executable, "-m", "faceage", "data", "inspect", str(folder)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no usable image" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_inspect_prints_counts_and_balance(tmp_path):
    r = subprocess.run([sys.executable, "-m", "faceage", "data", "inspect", str(_bad_folder(tmp_path)),
                        "--report", str(tmp_path / "skipped.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "6 usable images" in r.stdout
    assert "gender: male 3 (50%), female 3 (50%)" in r.stdout
    assert "corrupt or truncated image: 1" in r.stdout
    assert (tmp_path / "skipped.json").is_file()


def test_csv_manifest(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(4):
        face_image(i).save(imgs / f"f{i}.png")
    (tmp_path / "m.csv").write_text("path,age,gender,race\nimgs/f0.png,30,1,2\nimgs/f1.png,41.5,,\n"
                                    "imgs/f2.png,abc,0,0\nimgs/f3.png,200,0,0\nimgs/missing.png,20,0,0\n"
                                    "imgs/f0.png,30,1,2\n")
    manifest, report = read_dataset(tmp_path / "m.csv")
    assert [(s.key, s.age, s.gender, s.race) for s in manifest.samples] == [("imgs/f0.png", 30.0, 1, 2), ("imgs/f1.png", 41.5, -1, -1)]
    assert {r: len(v) for r, v in report.by_reason.items()} == {"bad label": 1, "age outside 0-120": 1,
                                                              "missing file": 1, "duplicate file": 1}


def test_csv_without_required_columns(tmp_path):
    (tmp_path / "m.csv").write_text("file,years\na.png,3\n")
    with pytest.raises(DataError, match="path,age"):
        read_dataset(tmp_path / "m.csv")


def test_class_per_subfolder(tmp_path):
    for c, n in (("cat", 3), ("dog", 2)):
        (tmp_path / "ds" / c).mkdir(parents=True)
        for i in range(n):
            face_image(hash((c, i)) % 1000).save(tmp_path / "ds" / c / f"{i}.png")
    manifest, _ = read_dataset(tmp_path / "ds")
    assert manifest.kind == "imagefolder" and manifest.class_names == ["cat", "dog"]
    assert sorted(s.label for s in manifest.samples) == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_archives(synthetic_utk, tmp_path, fmt):
    archive = tmp_path / f"UTKFace.{fmt}"
    if fmt == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for p in synthetic_utk.iterdir():
                zf.write(p, f"UTKFace/{p.name}")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(synthetic_utk, arcname="UTKFace")
    manifest, report = read_dataset(archive, cache_dir=tmp_path / "cache")
    assert len(manifest.samples) == 60 and not report
    # Keys are relative to the archive's top folder, so splits made on the folder still apply.
    assert {s.key for s in manifest.samples} == {p.name for p in synthetic_utk.iterdir()}


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="cannot unpack"):
        read_dataset(bad, cache_dir=tmp_path / "cache")
