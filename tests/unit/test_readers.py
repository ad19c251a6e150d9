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
    for k, (c, n) in enumerate((("cat", 3), ("dog", 2))):
        (tmp_path / "ds" / c).mkdir(parents=True)
        for i in range(n):
            face_image(10 * k + i).save(tmp_path / "ds" / c / f"{i}.png")
    manifest, _ = read_dataset(tmp_path / "ds")
    assert manifest.kind == "imagefolder" and manifest.class_names == ["cat", "dog"]
    assert sorted(s.label for s in manifest.samples) == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("fmt", ["tar.gz", "tgz", "tar", "zip"])
def test_archives(synthetic_utk, tmp_path, fmt):
    archive = tmp_path / f"UTKFace.{fmt}"
    (tmp_path / "Thumbs.db").write_bytes(b"windows thumbnail cache")      # README: ignored, as hidden files
    (tmp_path / ".hidden.jpg").write_bytes(b"an editor's backup")
    if fmt == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for p in synthetic_utk.iterdir():
                zf.write(p, f"UTKFace/{p.name}")
            zf.write(tmp_path / "Thumbs.db", "UTKFace/Thumbs.db")
            zf.write(tmp_path / ".hidden.jpg", "UTKFace/.hidden.jpg")
    else:
        with tarfile.open(archive, "w:gz" if fmt in ("tar.gz", "tgz") else "w") as tf:
            tf.add(synthetic_utk, arcname="UTKFace")
            tf.add(tmp_path / "Thumbs.db", arcname="UTKFace/Thumbs.db")
            tf.add(tmp_path / ".hidden.jpg", arcname="UTKFace/.hidden.jpg")
    manifest, report = read_dataset(archive, cache_dir=tmp_path / "cache")
    assert len(manifest.samples) == 60 and not report
    # Keys are relative to the archive's top folder, so splits made on the folder still apply.
    assert {s.key for s in manifest.samples} == {p.name for p in synthetic_utk.iterdir()}


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="cannot unpack"):
        read_dataset(bad, cache_dir=tmp_path / "cache")


# ---- data as learners hold it: CSV gender words, .npz arrays, Parquet, Arrow / Hugging Face folders ----

import io
import json

import numpy as np

from faceage.data.readers import file_digest
from faceage.data.rows import load_sample
from faceage.errors import ConfigError
from faceage.preprocess import load_image


def _pixels(n: int, shape=(24, 24)) -> np.ndarray:
    return np.stack([np.asarray(face_image(i, shape[0]).convert("RGB" if len(shape) == 3 else "L")) for i in range(n)])


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    face_image(seed).save(buf, "JPEG")
    return buf.getvalue()


def test_csv_gender_words_in_any_case(tmp_path):
    for i in range(6):
        face_image(i).save(tmp_path / f"f{i}.png")
    (tmp_path / "m.csv").write_text("path,age,gender\nf0.png,30,M\nf1.png,31,f\nf2.png,32,Male\nf3.png,33,FEMALE\n"
                                    "f4.png,34,1\nf5.png,35,woman?\n")
    manifest, report = read_dataset(tmp_path / "m.csv")
    assert [s.gender for s in manifest.samples] == [0, 1, 0, 1, 1]
    [(path, detail)] = report.by_reason["bad label"]
    assert path.endswith("f5.png") and "'woman?'" in detail and "M/F or male/female" in detail


def test_csv_race_by_number_or_name_in_any_case(tmp_path):
    for i in range(7):
        face_image(i).save(tmp_path / f"f{i}.png")
    (tmp_path / "m.csv").write_text("path,age,race\nf0.png,30,White\nf1.png,31,black\nf2.png,32,ASIAN\n"
                                    "f3.png,33,Indian\nf4.png,34,others\nf5.png,35,2\nf6.png,36,Martian\n")
    manifest, report = read_dataset(tmp_path / "m.csv")
    assert [s.race for s in manifest.samples] == [0, 1, 2, 3, 4, 2]
    [(path, _)] = report.by_reason["bad label"]
    assert path.endswith("f6.png")


def test_npz_images_with_label_arrays_flow_through_the_cache(tmp_path):
    imgs = _pixels(8, (24, 24, 3))
    imgs[7] = imgs[0]                                          # a duplicate row, labelled otherwise
    np.savez(tmp_path / "d.npz", images=imgs, age=np.arange(8) + 20.0, gender=np.array(list("MFmfMFxM")),
             race=np.arange(8) % 5)
    manifest, report = read_dataset(tmp_path / "d.npz")
    verify_images(manifest, report)
    assert manifest.kind == "npz" and len(manifest.samples) == 6
    assert {r: len(v) for r, v in report.by_reason.items()} == {"bad label": 1, "duplicate file with different labels": 1}
    s = manifest.samples[1]
    assert (s.key, s.age, s.gender, s.race) == ("images[1]", 21.0, 1, 1) and s.path.endswith("d.npz:images[1]")
    # The same pixels as the same image read from a (lossless) file: one pipeline for both.
    face_image(1, 24).convert("RGB").save(tmp_path / "f.png")
    spec = PreprocessSpec(size=16)
    assert np.array_equal(load_sample(s, spec), load_image(tmp_path / "f.png", spec))
    cache = ImageCache(spec, tmp_path / "c")
    assert len(cache.build(manifest.samples, report)) == 6
    assert np.array_equal(cache.gather([s.digest])[0], load_image(tmp_path / "f.png", spec))
    # Digests hash the array's bytes: reading again hits the cache.
    again, _ = read_dataset(tmp_path / "d.npz")
    assert [a.digest for a in again.samples] == [b.digest for b in manifest.samples]
    assert not ImageCache(spec, tmp_path / "c").missing(again.samples)


def test_npz_gray_floats_and_class_names(tmp_path):
    np.savez(tmp_path / "d.npz", images=_pixels(4).astype(np.float32) / 255, label=np.array([0, 2, 1, 2]),
             class_names=np.array(["cat", "dog", "owl"]))
    manifest, report = read_dataset(tmp_path / "d.npz")
    assert manifest.class_names == ["cat", "dog", "owl"] and [s.label for s in manifest.samples] == [0, 2, 1, 2]
    assert len(ImageCache(PreprocessSpec(size=8, channels=1), tmp_path / "c").build(manifest.samples, report)) == 4


def test_npz_x_and_y(tmp_path):
    x = _pixels(6)
    np.savez(tmp_path / "ages.npz", x_train=x[:4], y_train=np.array([20.5, 31, 40, 52]), x_test=x[4:], y_test=np.array([3.5, 7]))
    m, _ = read_dataset(tmp_path / "ages.npz")                 # fractional: ages without asking
    assert [s.key for s in m.samples][-2:] == ["x_test[0]", "x_test[1]"] and m.samples[-1].age == 7.0
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(5)[[0, 1, 2, 0, 1, 2]])
    m, _ = read_dataset(tmp_path / "onehot.npz")               # one-hot rows: classes without asking
    assert [s.label for s in m.samples] == [0, 1, 2, 0, 1, 2] and m.class_names == ["0", "1", "2", "3", "4"]
    np.savez(tmp_path / "whole.npz", x=x, y=np.array([1, 25, 3, 40, 1, 2]))
    with pytest.raises(DataError, match=r"whole numbers 1-40: ages or class indices\? .*data.y_is=age or data.y_is=label"):
        read_dataset(tmp_path / "whole.npz")
    m, _ = read_dataset(tmp_path / "whole.npz", y_is="age")
    assert [s.age for s in m.samples] == [1, 25, 3, 40, 1, 2] and not m.class_names
    m, _ = read_dataset(tmp_path / "whole.npz", y_is="label")
    assert [s.label for s in m.samples] == [1, 25, 3, 40, 1, 2] and len(m.class_names) == 41
    m, _ = read_dataset(tmp_path / "onehot.npz", y_is="onehot")
    assert len(m.samples) == 6


@pytest.mark.parametrize("arrays, y_is, message", [
    ({"images": np.zeros((3, 24), np.uint8), "age": np.ones(3)}, None, r"shape \(3, 24\); expected images \(N, H, W\)"),
    ({"images": np.zeros((3, 8, 8, 2), np.uint8), "age": np.ones(3)}, None, "C = 1, 3 or 4"),
    ({"images": np.zeros((3, 8, 8), np.complex64), "age": np.ones(3)}, None, "dtype complex64"),
    ({"images": np.zeros((3, 8, 8), np.uint8), "age": np.ones(4)}, None, "'images' has 3 images but its age labels number 4"),
    ({"images": np.zeros((3, 8, 8), np.uint8)}, None, "no label array"),
    ({"images": np.zeros((3, 8, 8), np.uint8), "age": np.ones((3, 2))}, None, r"'age' has shape \(3, 2\)"),
    ({"x": np.zeros((3, 8, 8), np.uint8)}, None, "'x' has no 'y'"),
    ({"x": np.zeros((3, 8, 8), np.uint8), "y": np.ones(2) / 2}, None, "'x' has 3 images but its age labels number 2"),
    ({"x": np.zeros((2, 8, 8), np.uint8), "y": np.array([[0.5, 0.5], [1, 0]])}, None, r"row 0 is \[0.5, 0.5\]: not one-hot"),
    ({"x": np.zeros((2, 8, 8), np.uint8), "y": np.array([0, 1])}, "onehot", r"one-hot rows are \(N, K\)"),
    ({"x": np.zeros((2, 8, 8), np.uint8), "y": np.eye(2)}, "age", r"ages are one number a face.*data.y_is=onehot"),
    ({"x": np.zeros((2, 8, 8), np.uint8), "y": np.eye(2)}, "label", "use data.y_is=onehot"),
    ({"x": np.zeros((2, 8, 8), np.uint8), "y": np.array([0.5, 1])}, "label", "not class indices"),
    ({"pixels": np.zeros((2, 8, 8), np.uint8)}, None, "no image array: expected 'images' .* found pixels"),
])
def test_npz_refusals_are_one_clear_error(tmp_path, arrays, y_is, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message):
        read_dataset(tmp_path / "d.npz", y_is=y_is)


def test_npz_bad_file_and_bad_setting(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a NumPy .npz archive"):
        read_dataset(tmp_path / "d.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(DataError, match="holds one array"):
        read_dataset(tmp_path / "one.npz")
    np.savez(tmp_path / "ok.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.array([1, 2]))
    with pytest.raises(ConfigError, match="data.y_is must be one of age, label, onehot"):
        read_dataset(tmp_path / "ok.npz", y_is="ages")


def _hf_features(**names) -> dict:
    feats = {"image": {"_type": "Image"}, "age": {"dtype": "int64", "_type": "Value"}}
    feats.update({k: {"names": v, "_type": "ClassLabel"} for k, v in names.items()})
    return feats


def _table(pa, n: int, features: dict | None = None, **cols):
    images = [{"bytes": _jpeg(i), "path": f"img{i}.jpg"} for i in range(n)]
    table = pa.table({"image": images, **cols})
    if features is not None:
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    return table


def test_parquet_hub_layout(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    # Hub parquet: image structs, a gender ClassLabel whose names run female, male (not UTKFace's order).
    table = _table(pa, 6, _hf_features(gender=["female", "male"]), age=[20, 30, 40, 150, 50, 60], gender=[0, 1, 0, 1, -1, 1])
    pq.write_table(table, tmp_path / "train.parquet")
    manifest, report = read_dataset(tmp_path / "train.parquet")
    assert manifest.kind == "parquet" and [s.key for s in manifest.samples] == ["img0.jpg", "img1.jpg", "img2.jpg", "img4.jpg", "img5.jpg"]
    assert [s.gender for s in manifest.samples] == [1, 0, 1, -1, 0]           # by name: female=1, male=0
    assert {r: len(v) for r, v in report.by_reason.items()} == {"age outside 0-120": 1}
    s = manifest.samples[0]
    assert s.digest == file_digest(_write(tmp_path / "i0.jpg", _jpeg(0)))      # shares the cache with the file
    usable = ImageCache(PreprocessSpec(size=16), tmp_path / "c").build(manifest.samples, report)
    assert len(usable) == 5
    # A folder holding the parquet files (a hub snapshot) reads the same.
    (tmp_path / "snap" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "snap" / "data" / "train-00000-of-00001.parquet")
    assert len(read_dataset(tmp_path / "snap")[0].samples) == 5


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_parquet_skips_bad_rows_and_refuses_bad_tables(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    rows = [b"", None, b"not an image", _jpeg(1), _jpeg(2), _jpeg(3)]
    pq.write_table(pa.table({"image": rows, "age": [1, 2, 3, 4, 5, 6], "gender": ["M", "F", "M", "F", "x", "f"]}),
                   tmp_path / "b.parquet")
    manifest, report = read_dataset(tmp_path / "b.parquet")
    verify_images(manifest, report)
    assert [s.key for s in manifest.samples] == ["b.parquet[3]", "b.parquet[5]"]
    assert {r: len(v) for r, v in report.by_reason.items()} == {"empty file": 1, "missing image": 1, "not an image": 1,
                                                              "bad label": 1}
    pq.write_table(pa.table({"picture": [b"x"], "age": [3]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match="no image column: expected 'image'.*found picture, age"):
        read_dataset(tmp_path / "c.parquet")
    pq.write_table(pa.table({"image": [b"x"], "name": ["a"]}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match="no label column"):
        read_dataset(tmp_path / "d.parquet")
    pq.write_table(pa.table({"image": [1], "age": [3]}), tmp_path / "e.parquet")
    with pytest.raises(DataError, match="column 'image' is int64"):
        read_dataset(tmp_path / "e.parquet")
    (tmp_path / "f.parquet").write_bytes(b"PAR1 nonsense")
    with pytest.raises(DataError, match="cannot read .*f.parquet as Parquet"):
        read_dataset(tmp_path / "f.parquet")


def _save_to_disk(pa, folder, table, features):
    """What ``datasets.Dataset.save_to_disk`` writes: Arrow stream shards + state.json + dataset_info.json."""
    folder.mkdir(parents=True)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                   "_split": "train"}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))


def test_hugging_face_save_to_disk_folder(tmp_path):
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"image": [{"bytes": _jpeg(i), "path": None} for i in range(5)], "label": [0, 1, 1, 0, 1]})
    _save_to_disk(pa, tmp_path / "ds", table, {"image": {"_type": "Image"}, "label": {"names": ["young", "old"],
                                                                                       "_type": "ClassLabel"}})
    manifest, report = read_dataset(tmp_path / "ds")
    assert manifest.kind == "arrow" and manifest.class_names == ["young", "old"]
    assert [s.label for s in manifest.samples] == [0, 1, 1, 0, 1]
    assert [s.key for s in manifest.samples][:2] == ["data-00000-of-00001.arrow[0]", "data-00000-of-00001.arrow[1]"]
    # DatasetDict.save_to_disk: every split folder is read.
    _save_to_disk(pa, tmp_path / "dd" / "train", table.slice(0, 3), {})
    _save_to_disk(pa, tmp_path / "dd" / "test", table.slice(3), {})
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    manifest, _ = read_dataset(tmp_path / "dd")
    assert [s.key for s in manifest.samples] == [f"train/data-00000-of-00001.arrow[{i}]" for i in range(3)] + \
        [f"test/data-00000-of-00001.arrow[{i}]" for i in range(2)]
    # A single .arrow file in the Arrow file (not stream) format.
    with pa.OSFile(str(tmp_path / "one.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    assert len(read_dataset(tmp_path / "one.arrow")[0].samples) == 5


def test_nothing_usable_lists_the_reasons_and_writes_the_report(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(3):
        (folder / f"photo{i}.jpg").write_bytes(_jpeg(i))
    with pytest.raises(DataError, match=r"no usable image .*\(3 file\(s\) skipped\)\nskipped 3 file\(s\):\n  malformed name: 3"):
        read_dataset(folder)
    r = subprocess.run([sys.executable, "-m", "faceage", "data", "inspect", str(folder), "--report", str(tmp_path / "s.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "malformed name: 3" in r.stderr and "photo0.jpg" in r.stderr and "full list of skipped files" in r.stderr
    assert len(json.loads((tmp_path / "s.json").read_text())["malformed name"]) == 3
    np.savez(tmp_path / "g.npz", images=_pixels(2), gender=np.array(["?", "unknown"]))
    r = subprocess.run([sys.executable, "-m", "faceage", "data", "inspect", str(tmp_path / "g.npz")], capture_output=True, text=True)
    assert r.returncode == 2 and "bad label: 2" in r.stderr and "'unknown'" in r.stderr and "Traceback" not in r.stderr
