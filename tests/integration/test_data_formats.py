"""Data as learners hold it, on real faces: 60 UTKFace images saved as NumPy arrays (.npz), a
Parquet file and a Hugging Face ``save_to_disk`` folder, then inspected and trained on through
the CLI, as a user would."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, faceage, real_data_dir
from faceage.data.readers import UTK_NAME

pytestmark = pytest.mark.integration

N = 60
TRAIN = ["--config", REPO / "configs" / "keras-baseline-28.yaml", "train.epochs=1", "train.progress_bar=false",
         "data.batch_size=16"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """The same 60 real faces in every format, with their labels from the file names."""
    pa = pytest.importorskip("pyarrow", reason="pyarrow (dev and ray extras) reads Parquet and Arrow")
    import pyarrow.parquet as pq

    names = sorted(p.name for p in real_data_dir().iterdir() if UTK_NAME.match(p.name))
    files = [real_data_dir() / n for n in names[:: max(1, len(names) // N)][:N]]
    out = tmp_path_factory.mktemp("formats")
    labels = [tuple(int(v) for v in p.name.split("_")[:3]) for p in files]
    age, gender, race = (np.array(c) for c in zip(*labels))
    rgb = []
    for p in files:
        with Image.open(p) as im:
            rgb.append(np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR)))
    rgb = np.stack(rgb)
    # A tutorial's arrays: images + label arrays (genders spelled M/F), and gray x_train with ages as y_train.
    np.savez(out / "faces.npz", images=rgb, age=age, gender=np.where(gender == 0, "M", "F"), race=race)
    np.savez(out / "xy.npz", x_train=rgb.mean(axis=3).astype(np.uint8), y_train=age)
    # The hub's Parquet layout: image structs {bytes, path} (the original JPEGs) and label columns.
    table = pa.table({"image": [{"bytes": p.read_bytes(), "path": p.name} for p in files], "age": age,
                      "gender": np.where(gender == 0, "male", "female"), "race": race})
    pq.write_table(table, out / "faces.parquet")
    # datasets' save_to_disk: an Arrow stream shard, state.json, dataset_info.json (gender a ClassLabel).
    hf = out / "hf"
    hf.mkdir()
    table = table.set_column(2, "gender", pa.array(gender))
    with pa.OSFile(str(hf / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (hf / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (hf / "dataset_info.json").write_text(json.dumps({"features": {
        "image": {"_type": "Image"}, "age": {"dtype": "int64", "_type": "Value"},
        "gender": {"names": ["male", "female"], "_type": "ClassLabel"}, "race": {"dtype": "int64", "_type": "Value"}}}))
    return out, files, age, gender


@pytest.mark.parametrize("name, kind, extra", [("faces.npz", "npz", []), ("xy.npz", "npz", ["--y-is", "age"]),
                                               ("faces.parquet", "parquet", []), ("hf", "arrow", [])])
def test_inspect_reads_every_format(faces, name, kind, extra):
    out, files, age, gender = faces
    r = faceage("data", "inspect", out / name, "--json", *extra)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["kind"], info["usable"], info["skipped"]) == (kind, len(files), 0)
    assert info["age_range"] == [age.min(), age.max()]
    assert sum(info["age_histogram"].values()) == len(files)
    if name != "xy.npz":
        assert info["gender"] == {"male": int((gender == 0).sum()), "female": int((gender == 1).sum())}


def test_ambiguous_y_is_one_clear_error(faces):
    out, *_ = faces
    r = faceage("data", "inspect", out / "xy.npz")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "ages or class indices?" in r.stderr and "data.y_is=age" in r.stderr


@pytest.mark.parametrize("name, overrides", [("xy.npz", ["data.y_is=age"]), ("faces.parquet", [])])
def test_train_one_epoch(faces, tmp_path, name, overrides):
    out, files, *_ = faces
    run = tmp_path / "run"
    r = faceage("train", "--data", out / name, "--out", run, *TRAIN, *overrides, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"data: {len(files)} usable images" in r.stderr
    rows = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in rows] == [1] and np.isfinite(rows[0]["val_loss"])
    for f in ("config.yaml", "split.csv", "skipped.json", "best.ckpt", "last.ckpt", "run.json"):
        assert (run / f).is_file(), f
    assert json.loads((run / "skipped.json").read_text()) == {}
    with open(run / "split.csv", newline="") as fh:
        keys = {row["key"] for row in csv.DictReader(fh)}
    # npz rows are keyed by array and index; Parquet rows by their image's path: the UTKFace file
    # names, so a split made on the image folder applies to its Parquet copy and back.
    if name.endswith(".npz"):
        assert keys == {f"x_train[{i}]" for i in range(len(files))}
    else:
        assert keys == {p.name for p in files}
    # Evaluating the run on the same data needs no flag: it reads data.y_is from the run.
    r = faceage("evaluate", "--model", run, "--data", out / name, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    n_test = sum(1 for row in csv.DictReader(open(run / "split.csv", newline="")) if row["split"] == "test")
    assert f"on {n_test} images (test split" in r.stdout and "MAE" in r.stdout


def test_evaluate_y_is_says_what_whole_numbers_in_y_are(faces, tmp_path):
    """README: whole numbers in an .npz's `y` are ambiguous; `faceage evaluate` takes the run's own
    `data.y_is` (tested above) "or `--y-is`". A model with no run beside it (here the shipped one)
    cannot know: without the flag it stops and asks; with `--y-is age` the ages are scored."""
    out, files, age, _ = faces
    r = faceage("evaluate", "--data", out / "xy.npz")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "ages or class indices?" in r.stderr and "data.y_is=age" in r.stderr
    r = faceage("evaluate", "--data", out / "xy.npz", "--y-is", "age", "--json", tmp_path / "m.json")
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n"] == len(files) and f"on {len(files)} images" in r.stdout
    assert sum(v["n"] for v in m["per_age_band"].values()) == len(files)    # every y read as an age
    assert 0 < m["mae"] < 15                                                  # real faces, read as ages
    r = faceage("evaluate", "--data", out / "xy.npz", "--y-is", "years")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_train_with_nothing_usable_lists_reasons_and_writes_the_report(faces, tmp_path):
    out, files, *_ = faces
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    table = pq.read_table(out / "faces.parquet")
    bad = table.set_column(2, "gender", pa.array(["unknown"] * len(files)))
    pq.write_table(bad, tmp_path / "bad.parquet")
    run = tmp_path / "run"
    r = faceage("train", "--data", tmp_path / "bad.parquet", "--out", run, *TRAIN, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no usable image" in r.stderr and f"bad label: {len(files)}" in r.stderr and "'unknown'" in r.stderr
    report = json.loads((run / "skipped.json").read_text())
    assert len(report["bad label"]) == len(files)
    assert str(run / "skipped.json") in r.stderr
