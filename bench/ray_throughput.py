"""Photos per second: `faceage predict --engine ray` (a local Ray, 2 model actors) against the
in-process `faceage predict`, on the same photos, in one run; plus the per-photo and per-face
costs that size a cluster job.

Photos: N (default 500) ~1 MP JPEGs, each with 1-3 real UTKFace faces (110-260 px) pasted on a
smooth random background; generated once (seeded) into a temporary folder, or reused from
--photos. Each engine runs as its own `faceage` subprocess, start-up included, in the order
local, ray (x --rounds); the Ray run's own summary also gives its time without Ray's start.
While Ray runs, the resident memory (RSS) of its model actors and detection workers is sampled.
Then, in this process, one thread each (as in a Ray task or a 1-CPU actor):
  detect ms/photo : read + decode + detect + align (Predictor._find_faces), per photo
  model  ms/face  : the age/gender model on batches of 32 aligned crops, per face

    .venv/bin/python bench/ray_throughput.py [--photos DIR] [--n 500] [--rounds 1] [--out bench/results/ray]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from faceage.training.fit import default_data_path


def make_photos(folder: Path, n: int, seed: int = 0) -> dict:
    chips = sorted(Path(default_data_path()).glob("*.chip.jpg"))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    faces = 0
    for i in range(n):
        w, h = (1152, 864) if i % 2 == 0 else (864, 1152)          # ~1 MP, landscape and portrait
        low = rng.integers(30, 225, (6, 8, 3) if w > h else (8, 6, 3), dtype=np.uint8)
        canvas = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
        canvas = np.clip(canvas + rng.normal(0, 6, canvas.shape), 0, 255).astype(np.uint8)   # sensor-like grain
        photo = Image.fromarray(canvas)
        k = 1 + i % 3
        cell = w // k
        for j in range(k):
            side = int(rng.integers(110, min(260, cell - 20)))
            chip = Image.open(chips[int(rng.integers(len(chips)))]).convert("RGB").resize((side, side), Image.BICUBIC)
            x = j * cell + int(rng.integers(10, cell - side - 9))
            y = int(rng.integers(10, h - side - 9))
            photo.paste(chip, (x, y))
        faces += k
        photo.save(folder / f"photo{i:04d}.jpg", quality=90)
    return {"photos": n, "faces_pasted": faces}


def training_runs() -> list[str]:
    """Training runs on this machine (`faceage train`, or the CLI's main() with `train`), with
    their nice value and their scheduler group's (a group at nice -15 takes most of the CPU)."""
    ps = subprocess.run(["ps", "-eo", "pid,ni,etime,args"], capture_output=True, text=True).stdout
    runs = []
    for line in ps.splitlines()[1:]:
        pid, ni, etime, args = line.split(None, 3)
        if "faceage" in args and " train" in args and "pytest" not in args and "ps -eo" not in args:
            try:
                group = Path(f"/proc/{pid}/autogroup").read_text().strip()
            except OSError:
                group = "?"
            runs.append(f"pid {pid} (nice {ni}, {group}, running {etime}): {args[:110]}")
    return runs


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children and their reaped descendants."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


ROLES = [("AgeModel", "model actor"), ("detect_block", "detect worker"), ("predict_dataset", "driver"),
         ("ray::", "other ray workers"), ("default_worker.py", "other ray workers"),
         ("dashboard/agent", "dashboard agent"), ("runtime_env", "runtime-env agent"), ("dashboard.py", "dashboard"),
         ("log_monitor", "log monitor"), ("monitor.py", "autoscaler monitor")]


def role_of(cmdline: list[str]) -> str:
    exe = os.path.basename(cmdline[0]) if cmdline else ""
    if exe in ("raylet", "gcs_server"):                # their arguments name the worker script too
        return exe
    title = " ".join(cmdline[:3])                      # the program and its script, not the arguments
    return next((r for key, r in ROLES if key in title), "other")


class RssSampler(threading.Thread):
    """Ray's processes (their environment has this run's TMPDIR), every 0.5 s: each one's peak
    RSS and last CPU time. A worker keeps the role of the first task it was seen running (its
    title becomes ray::IDLE between tasks)."""

    def __init__(self, tmp: str):
        super().__init__(daemon=True)
        self.tmp, self.stop = tmp, threading.Event()
        self.role, self.rss, self.cpu = {}, {}, {}

    def run(self):
        import psutil
        while not self.stop.is_set():
            for p in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if p.environ().get("TMPDIR") != self.tmp:
                        continue
                    role = role_of(p.info["cmdline"] or [])
                    if self.role.get(p.pid) in (None, "other ray workers", "other"):
                        self.role[p.pid] = role
                    self.rss[p.pid] = max(self.rss.get(p.pid, 0.0), p.memory_info().rss / 2 ** 20)
                    c = p.cpu_times()
                    self.cpu[p.pid] = c.user + c.system
                except psutil.Error:
                    continue
            self.stop.wait(0.5)

    def by_role(self) -> dict:
        """role -> (processes, peak RSS MB of one, CPU seconds of all)."""
        out: dict = {}
        for pid, role in self.role.items():
            n, rss, cpu = out.get(role, (0, 0.0, 0.0))
            out[role] = (n + 1, max(rss, self.rss.get(pid, 0.0)), cpu + self.cpu.get(pid, 0.0))
        return {r: {"processes": n, "peak_rss_mb": round(rss), "cpu_s": round(cpu, 1)} for r, (n, rss, cpu) in out.items()}


def run_local(photos: Path) -> dict:
    t, cpu = time.perf_counter(), children_cpu_s()
    r = subprocess.run([sys.executable, "-m", "faceage", "predict", str(photos), "--jsonl", "--no-progress"],
                       capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t, children_cpu_s() - cpu
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0, r.stderr[-2000:]
    return {"seconds": seconds, "cpu_seconds": cpu, "photos": len(rows), "faces": sum(len(x["faces"]) for x in rows)}


RAY_SNIPPET = """
import json, sys, faceage
s = faceage.predict_dataset(sys.argv[1], sys.argv[2], concurrency=int(sys.argv[3]), block_size=int(sys.argv[4]),
                            batch_size=int(sys.argv[5]), cpus_per_actor=float(sys.argv[6]))
print(json.dumps(s))
"""


def run_ray(photos: Path, actors: int, block: int, batch: int, cpus_per_actor: float) -> dict:
    tmp = tempfile.mkdtemp(prefix="fa-", dir="/tmp")
    out = Path(tmp) / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["TMPDIR"] = tmp
    sampler = RssSampler(tmp)
    sampler.start()
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RAY_SNIPPET + "# predict_dataset", str(photos), str(out), str(actors),
                        str(block), str(batch), str(cpus_per_actor)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    sampler.stop.set()
    sampler.join()
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.splitlines()[-1])
    import pyarrow.parquet as pq
    parts = list(out.glob("part-*.parquet"))
    roles = sampler.by_role()
    s.update(wall_seconds=seconds, cpu_seconds=round(sum(r["cpu_s"] for r in roles.values()), 1), processes=roles,
             parquet_bytes=sum(p.stat().st_size for p in parts), rows=pq.read_table(out).num_rows)
    shutil.rmtree(tmp, ignore_errors=True)
    return s


def stage_costs(photos: Path, n: int = 60) -> dict:
    from faceage.inference.inputs import to_rgb_image
    from faceage.inference.predictor import Predictor
    det = Predictor(threads=1)
    files = sorted(photos.glob("*.jpg"))[:n]
    det._find_faces(to_rgb_image(files[0]))               # warm-up
    # CPU time (this process) as well as wall time: on a shared machine the CPU time is what
    # the same work costs on an idle core.
    crops, decode_t, detect_t, decode_c, detect_c = [], [], [], [], []
    for f in files:
        t, c = time.perf_counter(), time.process_time()
        rgb = to_rgb_image(f)
        t1, c1 = time.perf_counter(), time.process_time()
        faces = det._find_faces(rgb)
        decode_t.append(t1 - t)
        detect_t.append(time.perf_counter() - t1)
        decode_c.append(c1 - c)
        detect_c.append(time.process_time() - c1)
        crops += [c for _, c in faces]
    batch = np.stack(crops[:32])
    det.runner.predict(batch)
    model_t, model_c = [], []
    for _ in range(5):
        t, c = time.perf_counter(), time.process_time()
        det.runner.predict(batch)
        model_t.append((time.perf_counter() - t) / len(batch))
        model_c.append((time.process_time() - c) / len(batch))
    ms = lambda xs: 1000 * statistics.mean(xs)     # noqa: E731
    return {"photos_timed": len(files), "faces_per_photo": len(crops) / len(files),
            "decode_ms_per_photo_cpu": ms(decode_c), "detect_align_ms_per_photo_cpu": ms(detect_c),
            "model_ms_per_face_cpu": 1000 * statistics.median(model_c),
            "decode_ms_per_photo_wall": ms(decode_t), "detect_align_ms_per_photo_wall": ms(detect_t),
            "model_ms_per_face_wall": 1000 * statistics.median(model_t), "crop_bytes": int(crops[0].nbytes)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", help="reuse this folder of photos (default: generate --n into a temp folder)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--out", default="bench/results/ray", help="folder for ray_throughput.txt/.json")
    a = ap.parse_args()

    lines = [time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime()),
             f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"]
    trainers = training_runs()
    lines.append("sharing the machine with: " + ("; ".join(trainers) if trainers else "nothing else (no training run)"))
    tmp = None
    if a.photos:
        photos = Path(a.photos)
        made = {"photos": len(list(photos.glob("*.jpg")))}
    else:
        tmp = tempfile.mkdtemp(prefix="ray-bench-")
        photos = Path(tmp) / "photos"
        t = time.perf_counter()
        made = make_photos(photos, a.n)
        lines.append(f"generated {made['photos']} photos ({made['faces_pasted']} faces pasted) in "
                     f"{time.perf_counter() - t:.0f} s into {photos}")
    results = []
    try:
        for k in range(a.rounds):
            local = run_local(photos)
            ray = run_ray(photos, a.actors, a.block_size, a.batch, a.cpus_per_actor)
            results.append({"local": local, "ray": ray})
            n = local["photos"]
            ray_proc = ray["seconds"] - ray["startup_seconds"]
            lines += [
                f"round {k + 1}: in-process `faceage predict`: {n} photos, {local['faces']} faces in {local['seconds']:.1f} s "
                f"= {n / local['seconds']:.2f} photos/s (start-up included); CPU {local['cpu_seconds']:.1f} s = "
                f"{1000 * local['cpu_seconds'] / n:.0f} ms CPU per photo",
                f"round {k + 1}: --engine ray ({a.actors} actors x {a.cpus_per_actor:g} CPU, block {a.block_size}, batch "
                f"{a.batch}): {ray['scored']} photos, {ray['faces']} faces in {ray['wall_seconds']:.1f} s = "
                f"{ray['scored'] / ray['wall_seconds']:.2f} photos/s (start-up included; Ray ready after "
                f"{ray['startup_seconds']:.1f} s, then {ray['scored'] / ray_proc:.2f} photos/s); CPU (all of Ray's "
                f"processes, sampled every 0.5 s) {ray['cpu_seconds']:.1f} s = "
                f"{1000 * ray['cpu_seconds'] / ray['scored']:.0f} ms CPU per photo",
                f"round {k + 1}: ratio ray / in-process = {local['seconds'] / ray['wall_seconds']:.2f} end to end, "
                f"{(ray['scored'] / ray_proc) / (n / local['seconds']):.2f} with Ray's start-up excluded, "
                f"{local['cpu_seconds'] / ray['cpu_seconds']:.2f} in CPU per photo",
                f"round {k + 1}: same faces found: {ray['faces'] == local['faces']} ({ray['faces']} vs {local['faces']}); "
                f"Parquet {ray['parquet_bytes'] / 1e3:.0f} kB for {ray['rows']} rows",
                f"round {k + 1}: Ray's processes (count, peak RSS of one, CPU of all): " + "; ".join(
                    f"{role} {v['processes']}x {v['peak_rss_mb']} MB {v['cpu_s']} s"
                    for role, v in sorted(ray["processes"].items(), key=lambda kv: -kv[1]["cpu_s"])),
            ]
        costs = stage_costs(photos)
        lines.append("per-stage costs, 1 thread each: " + ", ".join(
            f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in costs.items()))
        trainers = training_runs()
        lines.append("at the end, sharing the machine with: " + ("; ".join(trainers) if trainers else "nothing else"))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_throughput.txt").write_text(text + "\n")
    (out / "ray_throughput.json").write_text(json.dumps({"rounds": results, "stage_costs": costs, "args": vars(a)},
                                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
