"""Helpers for the web service tests: PNG bytes and a live uvicorn server in a thread."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

from PIL import Image


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app in a background thread of this process, on 127.0.0.1."""

    def __init__(self, app):
        import uvicorn
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def serve_process(*args: str, env: dict | None = None, start_timeout: float = 120):
    """A real `faceage serve` process on a free port of 127.0.0.1 (extra CLI ``args``), started
    and waited for until /healthz answers 200. Yields ``(proc, url, port)``; terminated on exit.
    A server that exits or does not answer in time fails the test with its stderr."""
    import httpx
    import pytest
    port = free_port()
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "faceage", "serve", "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.stderr.read()}")
        time.sleep(0.2)
    try:
        yield proc, url, port
    finally:
        proc.terminate()
        proc.wait(timeout=20)
