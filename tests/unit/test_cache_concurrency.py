"""Two processes building the same decode cache at once (the ranks of a DDP run, the nodes of a
cluster sharing FACEAGE_CACHE): no row is lost or torn, every row equals a fresh decode, and with
the build lock the images are decoded once. Without locks (a file system that has none) the
builders duplicate work but the cache is still right."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_utk

from faceage.data.cache import ImageCache
from faceage.data.manifest import SkipReport
from faceage.data.readers import read_dataset
from faceage.preprocess import PreprocessSpec, load_image

SPEC = dict(size=64, channels=3)
N = 240

BUILDER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import faceage.data.cache as C
    from faceage.data.manifest import SkipReport
    from faceage.data.readers import read_dataset
    from faceage.preprocess import PreprocessSpec
    data, cache_dir, go, ready, lock = sys.argv[1:6]
    if lock == "nolock":
        C.fcntl = None                       # as on a file system without locks
    manifest, _ = read_dataset(data, cache_dir)
    cache = C.ImageCache(PreprocessSpec(size=64, channels=3), cache_dir)
    Path(ready).touch()
    while not Path(go).exists():             # both start decoding at the same moment
        time.sleep(0.005)
    usable = cache.build(manifest.samples, SkipReport())
    print(json.dumps({"usable": len(usable)}))
""")


@pytest.fixture
def faces(tmp_path) -> Path:
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(N):
        write_utk(folder, age=(i * 7) % 90 + 1, gender=i % 2, race=i % 5, seed=1000 + i)
    return folder


def race(faces: Path, cache_dir: Path, tmp_path: Path, lock: str, n: int = 2) -> list[dict]:
    script = tmp_path / "builder.py"
    script.write_text(BUILDER)
    go = tmp_path / f"go-{lock}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    procs, readies = [], []
    try:
        for i in range(n):
            ready = tmp_path / f"ready-{lock}-{i}"
            readies.append(ready)
            procs.append(subprocess.Popen([sys.executable, str(script), str(faces), str(cache_dir), str(go), str(ready), lock],
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in readies):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
            time.sleep(0.01)
        go.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def check_rows(faces: Path, cache_dir: Path) -> dict[str, int]:
    """Every image's row equals a fresh decode; returns how many rows each digest has on disk."""
    spec = PreprocessSpec(**SPEC)
    manifest, _ = read_dataset(faces, cache_dir)
    cache = ImageCache(spec, cache_dir)
    assert not cache.missing(manifest.samples)
    assert len(cache.build(manifest.samples, SkipReport())) == N
    rows = cache.gather([s.digest for s in manifest.samples])
    for s, row in zip(manifest.samples, rows):
        assert np.array_equal(row, load_image(s.path, spec)), s.path
    counts: dict[str, int] = {}
    for meta in cache.dir.glob("*.json"):
        digests = json.loads(meta.read_text())["digests"]
        data = cache.dir / f"{meta.stem}.u8"
        assert data.stat().st_size == len(digests) * 64 * 64 * 3         # no torn chunk
        for d in digests:
            counts[d] = counts.get(d, 0) + 1
    assert not list(cache.dir.glob(".*.tmp"))                            # no temporaries left
    return counts


def test_racing_builders_decode_once_and_every_row_is_right(faces, tmp_path):
    cache_dir = tmp_path / "cache"
    results = race(faces, cache_dir, tmp_path, "lock")
    assert [r["usable"] for r in results] == [N, N]
    counts = check_rows(faces, cache_dir)
    assert len(counts) == N and set(counts.values()) == {1}             # decoded once, by one of them


def test_racing_builders_without_locks_lose_nothing(faces, tmp_path):
    cache_dir = tmp_path / "cache"
    results = race(faces, cache_dir, tmp_path, "nolock")
    assert [r["usable"] for r in results] == [N, N]
    counts = check_rows(faces, cache_dir)
    # both decoded everything (their indexes were read before either wrote): a real race, and
    # the duplicated rows are harmless
    assert len(counts) == N and sum(counts.values()) == 2 * N


def test_a_killed_builder_does_not_block_the_next(faces, tmp_path):
    """The lock dies with its holder (SIGKILL included); its half-written chunk is removed."""
    cache_dir = tmp_path / "cache"
    spec = PreprocessSpec(**SPEC)
    folder = ImageCache(spec, cache_dir).dir
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys, time
        from pathlib import Path
        fh = open({str(folder / '.build.lock')!r}, 'a+b')
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        Path({str(folder)!r}, '.deadbeef.p' + str(__import__('os').getpid()) + '.u8.tmp').write_bytes(b'x' * 10)
        print('locked', flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        manifest, _ = read_dataset(faces, cache_dir)
        assert len(ImageCache(spec, cache_dir).build(manifest.samples, SkipReport())) == N
        assert not list(folder.glob(".*.tmp"))
    finally:
        try:
            os.killpg(holder.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    check_rows(faces, cache_dir)


class _StderrSink:
    """A stand-in for sys.stderr that a second thread may write to while the test reads it
    (pytest's capture is not thread-safe: a write during ``readouterr`` can be lost)."""

    def __init__(self, expected: str):
        self.expected, self.text, self.seen = expected, "", threading.Event()
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            self.text += s
            if self.expected in self.text:
                self.seen.set()
        return len(s)

    def flush(self) -> None:
        pass


def test_a_builder_behind_another_says_it_waits_then_reads_the_others_rows(faces, tmp_path, monkeypatch):
    """README: the first process to get the build lock decodes what is missing; every other one
    waits for it ("waiting for another process that is decoding images") and then reads its rows.
    The holder keeps the lock until the waiter has said it waits: no timing is assumed."""
    cache_dir = tmp_path / "cache"
    spec = PreprocessSpec(**SPEC)
    manifest, _ = read_dataset(faces, cache_dir)
    waiter = ImageCache(spec, cache_dir)                 # indexed while the cache is still empty
    assert len(waiter.missing(manifest.samples)) == N
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        import faceage.data.cache as C
        from faceage.data.manifest import SkipReport
        from faceage.data.readers import read_dataset
        from faceage.preprocess import PreprocessSpec
        manifest, _ = read_dataset({str(faces)!r}, {str(cache_dir)!r})
        cache = C.ImageCache(PreprocessSpec(**{SPEC!r}), {str(cache_dir)!r})
        with C.build_lock(cache.dir) as held:
            assert held is True
            print('locked', flush=True)
            sys.stdin.readline()                         # until the test has seen the other one wait
            cache._decode(cache.missing(manifest.samples), SkipReport(), set(), None)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    built: dict = {}
    sink = _StderrSink("waiting for another process")
    monkeypatch.setattr(sys, "stderr", sink)

    def build():
        try:
            built["usable"] = waiter.build(manifest.samples, SkipReport())
        except BaseException as e:                       # re-raised below, in the test's thread
            built["error"] = e
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        # no progress display (as in evaluate, or a DDP rank > 0): the wait is still announced
        thread = threading.Thread(target=build)
        thread.start()
        said = sink.seen.wait(timeout=120)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        thread.join(timeout=120)
        assert holder.wait(timeout=120) == 0, holder.stderr.read()
    finally:
        try:
            os.killpg(holder.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert said and f"waiting for another process that is decoding images into {waiter.dir}" in sink.text
    assert not thread.is_alive(), "the waiting builder did not finish after the holder released the lock"
    if "error" in built:
        raise built["error"]
    assert len(built["usable"]) == N
    counts = check_rows(faces, cache_dir)
    assert len(counts) == N and set(counts.values()) == {1}    # every row from the holder's decode, none twice


def test_a_copied_cache_folder_serves_the_same_images_at_another_path(faces, tmp_path):
    """README: copying a built cache folder to other nodes works: rows are found by the digest of
    the image bytes (not by path), so the images at another path decode nothing again."""
    import shutil
    spec = PreprocessSpec(**SPEC)
    manifest, _ = read_dataset(faces, tmp_path / "cache")
    assert len(ImageCache(spec, tmp_path / "cache").build(manifest.samples, SkipReport())) == N
    shutil.copytree(tmp_path / "cache", tmp_path / "node2-cache")
    moved = shutil.copytree(faces, tmp_path / "mnt" / "elsewhere" / "faces")
    manifest2, _ = read_dataset(moved, tmp_path / "node2-cache")
    assert {s.path for s in manifest2.samples}.isdisjoint(s.path for s in manifest.samples)
    cache = ImageCache(spec, tmp_path / "node2-cache")
    decoded = []
    assert not cache.missing(manifest2.samples)
    assert len(cache.build(manifest2.samples, SkipReport(), progress=lambda d, t: decoded.append(d))) == N
    assert decoded == []
    rows = cache.gather([s.digest for s in manifest2.samples])
    for s, row in zip(manifest2.samples[::40], rows[::40]):
        assert np.array_equal(row, load_image(s.path, spec)), s.path
