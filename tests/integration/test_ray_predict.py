"""`faceage predict --engine ray`: the same faces and ages as the in-process predictor, in a
Parquet table that a killed job resumes without losing or repeating a photo; a local Ray that
listens on 127.0.0.1 only; and without Ray installed, a message that says how to get it.

Every Ray here is a local one started by a `faceage` subprocess (127.0.0.1 only), bounded by
the subprocess timeout. Its processes are found by the short TMPDIR each test gives it (Ray's
temporary folder lives there) and killed by process id if any outlive the test.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import real_data_dir

RUN_TIMEOUT_S = 300          # one scoring subprocess, Ray start included, on a busy 2-core machine


def faceage(*args, env=None, cwd=None, timeout=RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faceage", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


# ---- Ray's processes, found and stopped by the test's own TMPDIR ------------------------------
def ray_processes(tmp: str, known: set[int] = frozenset()) -> list:
    """Processes of the Ray that lived under ``tmp``: started with it as TMPDIR, named in their
    command line, holding files under it (Ray's agents get neither the variable nor a telling
    name), or in ``known`` (pids seen before)."""
    psutil = pytest.importorskip("psutil")
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid == os.getpid():
                continue
            if (p.pid in known or any(tmp in a for a in p.info["cmdline"] or [])
                    or p.environ().get("TMPDIR") == tmp or any(f.path.startswith(tmp) for f in p.open_files())):
                found.append(p)
        except psutil.Error:
            continue
    return found


def stop_ray(tmp: str, grace_s: float = 0.0, known: set[int] = frozenset()) -> list[int]:
    """Kill (by pid) what Ray left running from this TMPDIR; returns the pids that were left."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + grace_s
    left = ray_processes(tmp, known)
    while left and time.monotonic() < deadline:      # a clean shutdown may take a moment
        time.sleep(0.25)
        left = ray_processes(tmp, known)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
    return [p.pid for p in left]


def listen_addresses(tmp: str) -> set[str]:
    """The addresses that the running Ray's processes listen on."""
    pids = {p.pid for p in ray_processes(tmp)}
    import psutil
    return {c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


@pytest.fixture
def ray_env():
    """An environment for `faceage` subprocesses whose local Ray lives under a fresh short TMPDIR
    (Unix socket paths under it must stay short); everything still running from it is killed after."""
    pytest.importorskip("ray", reason="the 'ray' extra: pip install 'faceage[ray]'")
    tmp = tempfile.mkdtemp(prefix="fa-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}   # never an outside cluster
    env["TMPDIR"] = tmp
    yield env
    stop_ray(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


# ---- photos -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def album(tmp_path_factory) -> Path:
    """Six photos with 1-3 real UTKFace faces pasted on backgrounds, one without a face, one broken."""
    chips = [Image.open(p).convert("RGB") for p in sorted(real_data_dir().glob("*.chip.jpg"))[::1500][:12]]
    root = tmp_path_factory.mktemp("ray_album")
    k = 0
    for i in range(6):
        n = 1 + i % 3
        photo = Image.new("RGB", (230 * n + 90, 340), (70 + 20 * i, 110, 160 - 15 * i))
        for j in range(n):
            photo.paste(chips[k % len(chips)], (45 + 230 * j, 65))
            k += 1
        photo.save(root / f"photo{i}.jpg", quality=95)
    Image.new("RGB", (320, 240), (200, 200, 200)).save(root / "wall.png")
    (root / "broken.jpg").write_bytes((root / "photo0.jpg").read_bytes()[:1500])
    return root


@pytest.fixture(scope="module")
def in_process(album) -> dict:
    """`faceage predict --json` (one process, no Ray): path -> that photo's result."""
    r = faceage("predict", album, "--json", "--no-progress")
    assert r.returncode == 1, r.stderr            # the broken file
    return {row["path"]: row for row in json.loads(r.stdout)}


def read_rows(out: Path) -> dict[str, list[dict]]:
    import pyarrow.parquet as pq
    by_path: dict[str, list[dict]] = {}
    for row in pq.read_table(out).to_pylist():
        by_path.setdefault(row["path"], []).append(row)
    return by_path


def assert_same_as_in_process(rows: list[dict], expected: dict) -> None:
    if expected["error"]:
        assert len(rows) == 1 and rows[0]["error"] == expected["error"] and rows[0]["face"] is None
        assert rows[0]["error_type"] == expected["error_type"]
        return
    if not expected["faces"]:
        assert len(rows) == 1 and rows[0]["note"] == "no face found" and rows[0]["face"] is None
        return
    assert [r["face"] for r in rows] == [f["number"] for f in expected["faces"]]
    for r, f in zip(rows, expected["faces"]):
        for key in ("box", "score", "age", "age_low", "age_high", "gender_prob"):
            assert r[key] == pytest.approx(f[key], abs=1e-3), (r["path"], r["face"], key)
        assert r["landmarks"] == [pytest.approx(p, abs=1e-3) for p in f["landmarks"]]
        assert r["female_prob"] == pytest.approx(f["gender_probs"]["female"], abs=1e-3)
        assert (r["age_bin"], r["gender"], r["low_quality"]) == (f["age_bin"], f["gender"], f["low_quality"])
        assert r["note"] is None and r["error"] is None


# ---- the tests ----------------------------------------------------------------------------------
@pytest.mark.integration
def test_ray_engine_gives_the_faces_and_ages_of_the_in_process_predictor(album, in_process, ray_env, tmp_path):
    out = tmp_path / "faces"
    # The folder named relative to the working folder: the table names photos as given, and the
    # workers (whose working folder differs) still find them.
    r = faceage("predict", album.name, "--engine", "ray", "--out", out, "--actors", 2, "--block-size", 2, "--batch", 4,
                "--part-size", 3, "--no-progress", env=ray_env, cwd=album.parent)
    assert r.returncode == 1, r.stderr             # one unreadable photo: reported, the job finished
    assert "Traceback" not in r.stderr and "8 photos scored" in r.stderr and "1 unreadable" in r.stderr
    rows = {str(album.parent / path): v for path, v in read_rows(out).items()}   # whole folder read: temporaries,
    assert set(rows) == set(in_process)                                            # _faceage_job.json ignored
    for path, expected in in_process.items():
        assert_same_as_in_process(rows[path], expected)
    assert len(list(out.glob("part-*.parquet"))) >= 2 and not list(out.glob(".*.tmp"))
    assert stop_ray(ray_env["TMPDIR"], grace_s=30) == []      # the job stopped the Ray it started (slow on a loaded machine)


@pytest.mark.integration
def test_a_killed_job_resumes_where_it_stopped(album, in_process, ray_env, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # A larger photo without a face (detection searches it at finer scales) keeps the job busy
    # for a while after its first part; the source is a Parquet table with a path column.
    big = tmp_path / "big_wall.jpg"
    Image.linear_gradient("L").resize((1600, 1200)).convert("RGB").save(big, quality=90)
    photos = sorted(in_process) + [str(big)]
    source = tmp_path / "photos.parquet"
    pq.write_table(pa.table({"id": list(range(len(photos))), "path": photos}), source)
    out = tmp_path / "faces"
    # One photo per task, one face per model batch (the actors wait for a full batch), a part per photo.
    args = ["predict", source, "--engine", "ray", "--out", out, "--actors", 1, "--block-size", 1, "--batch", 1,
            "--part-size", 1, "--no-progress"]

    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "faceage", *map(str, args)], stdout=log, stderr=log, env=ray_env)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not list(out.glob("part-*.parquet")):
            assert driver.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no part committed in time"
            time.sleep(0.02)
        listening = listen_addresses(ray_env["TMPDIR"])
        import psutil
        started = {p.pid for p in psutil.Process(driver.pid).children(recursive=True)}
        os.kill(driver.pid, signal.SIGKILL)            # the driver, by its process id, mid-run
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait(timeout=30)
        log.close()
    stop_ray(ray_env["TMPDIR"], known=started)        # what the killed driver's Ray left behind
    assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in listening), listening
    done = {row["path"] for row in pq.read_table(out, columns=["path"]).to_pylist()}
    assert 0 < len(done) < len(photos), "the job was not killed halfway"

    r = faceage(*args, env=ray_env)
    broken = str(album / "broken.jpg")
    assert r.returncode == (0 if broken in done else 1), r.stderr     # 1: this run met the unreadable photo
    assert f"{len(done)} of {len(photos)} skipped" in r.stderr
    rows = read_rows(out)
    assert sorted(rows) == sorted(photos)             # every photo ...
    for path, expected in in_process.items():         # ... exactly once: its faces, each once
        assert_same_as_in_process(rows[path], expected)
    assert [r["note"] for r in rows[str(big)]] == ["no face found"]

    # Done already: nothing to start; other options on the same table are refused.
    from faceage.distributed.ray_predict import predict_dataset
    from faceage.errors import ConfigError
    summary = predict_dataset(source, out)
    assert (summary["skipped"], summary["scored"]) == (len(photos), 0)
    with pytest.raises(ConfigError, match="other options"):
        predict_dataset(source, out, det_thresh=0.9)


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    from faceage.cli import main
    monkeypatch.setitem(sys.modules, "ray", None)        # as if not installed: `import ray` fails
    rc = main(["predict", str(tmp_path), "--engine", "ray", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'faceage[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    rc = main(["predict", str(tmp_path), "--engine", "ray"])
    assert rc == 2 and "--out" in capsys.readouterr().err


@pytest.mark.integration
def test_the_two_stages_in_this_process_give_the_predictor_s_faces(album, in_process):
    """detect_block (the Ray tasks' work) then AgeModel (the actors'), called directly, with the
    faces of one photo split over two model batches, as Ray Data may split them."""
    pa = pytest.importorskip("pyarrow")
    from faceage.distributed.ray_predict import AgeModel, detect_block, result_schema
    options = {"model": None, "threads": 1, "batch_size": 32, "detector": None, "det_size": None, "det_thresh": 0.8,
               "min_face_size": 0, "max_num_faces": 0}
    # Half of the photos named by file:// URIs: read through pyarrow.fs, as s3:// or gs:// would be.
    paths = [f"file://{p}" if i % 2 else p for i, p in enumerate(sorted(in_process))]
    detected = detect_block(pa.table({"path": paths + [f"file://{album}/missing.jpg"]}), options)
    model = AgeModel(batch_size=4)
    half = detected.num_rows // 2
    scored = pa.concat_tables([model(detected.slice(0, half)), model(detected.slice(half))])
    assert scored.schema == result_schema(with_count=True)
    rows: dict[str, list[dict]] = {}
    for row in scored.to_pylist():
        rows.setdefault(row["path"].removeprefix("file://"), []).append(row)
    assert [r["error"] for r in rows.pop(f"{album}/missing.jpg")] == ["file not found"]
    for path, expected in in_process.items():
        assert_same_as_in_process(rows[path], expected)
        assert {r["n_rows"] for r in rows[path]} == {len(rows[path])}


def test_parts_hold_whole_photos_and_list_what_is_done(tmp_path):
    """Rows of one photo arriving in different batches are committed together, in one part;
    a half-written part left by a killed writer is removed, never read."""
    pa = pytest.importorskip("pyarrow")
    from faceage.distributed.ray_predict import ResultStore, result_schema

    def batch(rows):
        full = [{"path": p, "face": f, "n_rows": n} for p, f, n in rows]
        return pa.Table.from_pylist(full, schema=result_schema(with_count=True))

    store = ResultStore(str(tmp_path / "out"), part_size=2, part_seconds=3600)
    store.add(batch([("a", 1, 2), ("b", None, 1)]))          # b complete; a waits for its 2nd face
    store.add(batch([("c", 1, 3), ("c", 2, 3)]))
    assert store.parts_written == 0 and len(store.done()) == 0
    store.add(batch([("a", 2, 2), ("d", 1, 1)]))               # a and d complete: 3 photos, one part
    assert store.parts_written == 1
    assert sorted(store.done().to_pylist()) == ["a", "b", "d"]
    (tmp_path / "out" / ".part-x-p999999999-00001.parquet.tmp").write_bytes(b"half")   # a dead writer's
    store.add(batch([("c", 3, 3)]))
    store.commit()
    assert sorted(store.done().to_pylist()) == ["a", "b", "c", "d"]
    assert not list((tmp_path / "out").glob(".*.tmp"))
    import pyarrow.parquet as pq
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 7 and "n_rows" not in table.column_names
    assert store.counts == {"scored": 4, "faces": 6, "no_face": 1, "errors": 0}


def test_sources_folder_list_and_tables(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from faceage.distributed.sources import list_photos
    from faceage.errors import DataError
    (tmp_path / "pics" / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.PNG", "notes.txt"):
        (tmp_path / "pics" / name).write_bytes(b"x")
    pics = tmp_path / "pics"
    assert list_photos(pics) == [str(pics / "a.jpg"), str(pics / "sub" / "b.PNG")]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# photos\npics/a.jpg\n\n{pics / 'sub' / 'b.PNG'}\nfile://{pics}/a.jpg\npics/a.jpg\n")
    assert list_photos(listing) == [str(pics / "a.jpg"), str(pics / "sub" / "b.PNG"), f"file://{pics}/a.jpg"]
    (tmp_path / "t.csv").write_text("id,uri\n1,pics/a.jpg\n2,s3://bucket/k.jpg\n")
    assert list_photos(tmp_path / "t.csv") == [str(pics / "a.jpg"), "s3://bucket/k.jpg"]
    pq.write_table(pa.table({"x": [1], "photo": ["pics/a.jpg"]}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match="path-column"):
        list_photos(tmp_path / "t.parquet")
    assert list_photos(tmp_path / "t.parquet", path_column="photo") == [str(pics / "a.jpg")]
    assert list_photos(f"file://{pics}") == [f"file://{pics}/a.jpg", f"file://{pics}/sub/b.PNG"]
    with pytest.raises(DataError, match="not found"):
        list_photos(tmp_path / "missing")
