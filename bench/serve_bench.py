"""Serving benchmark: requests/s and p50/p95/p99 latency of `faceage serve` for a 1-face
1-megapixel photo at 1, 4 and 16 concurrent clients, with the server's memory (RSS), for the
ONNX (default) and torch back-ends. Baseline in the same run, measured again just before each
back-end: the same photo through ``Predictor.analyze`` in-process (no HTTP), i.e. what the server
cannot go below.

The photo is scikit-image's public-domain 'astronaut' (one face) resized to 1024 x 1024 and
sent as a JPEG, as a phone or browser would. Every server is a real `faceage serve` process on
127.0.0.1; clients are threads with their own keep-alive connection.

    .venv/bin/python bench/serve_bench.py [--torch-model CKPT] [--scale 1.0]
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
from PIL import Image

CLIENT_LEVELS = (1, 4, 16)


def test_photo() -> bytes:
    from skimage import data
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((1024, 1024), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str | None, workers: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "faceage", "serve", "--port", str(self.port), "--workers", str(workers)]
        self.proc = subprocess.Popen(cmd + (["--model", model] if model else []), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server for {model or 'default'} did not start")
        self.ps = psutil.Process(self.proc.pid)

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def load(url: str, photo: bytes, clients: int, requests: int, server: Server) -> dict:
    conns = [httpx.Client(timeout=300) for _ in range(clients)]
    peak = [server.rss_mb()]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            peak.append(server.rss_mb())

    def one(i: int) -> float:
        t = time.perf_counter()
        r = conns[i % clients].post(url + "/v1/analyze", files=[("files", ("photo.jpg", photo, "image/jpeg"))])
        if r.status_code != 200 or len(r.json()["images"][0]["faces"]) != 1:
            raise SystemExit(f"bad answer: {r.status_code} {r.text[:200]}")
        return time.perf_counter() - t

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = np.array(list(pool.map(one, range(requests)))) * 1000
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    for c in conns:
        c.close()
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {"rps": requests / elapsed, "p50": p50, "p95": p95, "p99": p99, "peak_rss": max(peak)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--torch-model", default="bench/results/issue9/faceresdeep160-split/best-fp16.ckpt",
                    help="checkpoint for the torch back-end: the default's architecture (FaceRes, 160 px); "
                         "the default's own checkpoint is not kept")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the request counts (40 per client level)")
    a = ap.parse_args()
    photo = test_photo()

    from faceage.inference.predictor import Predictor
    from faceage.preprocess import open_image
    pred = Predictor()

    def in_process_ms(reps: int = 30) -> float:
        """Median ms of the same photo through Predictor.analyze in this process: decode + detect +
        align + predict, no HTTP. Measured again before each back-end: this machine's speed drifts
        (41.9 and 54.6 ms for this baseline in two quiet runs 20 minutes apart, 2026-11-24)."""
        pred.analyze(open_image(photo).convert("RGB"))
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            faces = pred.analyze(open_image(photo).convert("RGB"))
            times.append(time.perf_counter() - t)
        assert len(faces) == 1
        return statistics.median(times) * 1000

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; photo 1024x1024 JPEG ({len(photo) / 1024:.0f} kB), 1 face")
    print("baseline: the same photo in-process (decode + detect + align + predict, ONNX, no HTTP), median of 30, "
          "measured just before each back-end's rows")
    print()
    print("| back-end | workers | in-process baseline ms | clients | requests | req/s | p50 ms | p95 ms | p99 ms "
          "| RSS idle MB | RSS peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for backend, model, workers in (("onnxruntime", None, 1), ("onnxruntime", None, 2), ("torch", a.torch_model, 1)):
        baseline = in_process_ms()
        server = Server(model, workers)
        try:
            for _ in range(5):                                   # warm-up
                load(server.url, photo, 1, 1, server)
            idle = server.rss_mb()
            for clients in CLIENT_LEVELS:
                n = max(clients, int(40 * a.scale * (1 + clients // 4)))
                r = load(server.url, photo, clients, n, server)
                print(f"| {backend} | {workers} | {baseline:.1f} | {clients} | {n} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | "
                      f"{r['p99']:.0f} | {idle:.0f} | {r['peak_rss']:.0f} |", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
