"""A bounded load test of a real `faceage serve` process on 127.0.0.1: 512 requests from 16
concurrent clients, zero errors, every answer right, and the server's memory stays put."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving import serve_process

pytestmark = pytest.mark.integration

CLIENTS, REQUESTS = 16, 512


@pytest.fixture
def server_process():
    with serve_process("--workers", "2") as (proc, url, _port):
        yield proc, url


def test_512_requests_from_16_clients_without_an_error(server_process, astronaut_png):
    import psutil
    proc, url = server_process
    photo = astronaut_png.read_bytes()
    server = psutil.Process(proc.pid)

    def one(client: httpx.Client) -> tuple[int, int]:
        r = client.post(url + "/v1/analyze", files=[("files", ("astronaut.png", photo, "image/png"))], timeout=120)
        return r.status_code, len(r.json()["images"][0]["faces"]) if r.status_code == 200 else -1

    with httpx.Client() as warm:                       # first requests settle allocator pools
        for _ in range(8):
            assert one(warm) == (200, 1)
    rss_before = server.memory_info().rss
    clients = [httpx.Client() for _ in range(CLIENTS)]
    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda i: one(clients[i % CLIENTS]), range(REQUESTS)))
    elapsed = time.perf_counter() - start
    for c in clients:
        c.close()
    rss_after = server.memory_info().rss
    print(f"\n{REQUESTS} requests, {CLIENTS} clients: {REQUESTS / elapsed:.1f} req/s; "
          f"server RSS {rss_before / 2**20:.0f} MB before, {rss_after / 2**20:.0f} MB after")
    assert results.count((200, 1)) == REQUESTS, {r: results.count(r) for r in set(results)}
    # No leak per request: 512 requests may not grow the server by more than 64 MB.
    assert rss_after - rss_before < 64 * 2**20
