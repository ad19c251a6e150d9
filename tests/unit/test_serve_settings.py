"""`faceage serve` settings checks, its listening socket and the header-only pixel limit, without a model."""
from __future__ import annotations

import asyncio
import io
import socket

import pytest
from PIL import Image

from faceage.errors import ConfigError
from faceage.preprocess import ImageDecodeError, open_image
from faceage.serve.server import announce, bind, check, is_loopback
from faceage.serve.settings import ServeSettings


@pytest.mark.parametrize("bad", [{"workers": 0}, {"max_files": 0}, {"max_file_mb": 0}, {"max_megapixels": -1},
                                 {"queue_timeout_s": 0}, {"port": 70000}, {"upload_timeout_s": 0},
                                 {"max_pending_mb": 0}, {"max_request_megapixels": 0},
                                 {"max_megapixels": 300},          # over the per-request total
                                 {"max_pending_mb": 5}])           # under one file's limit
def test_bad_settings_are_refused_with_the_option_named(bad):
    with pytest.raises(ConfigError):
        check(ServeSettings(**bad))


def test_connections_accepted_by_serve_have_nagle_off():
    """uvicorn serves on the socket ``bind`` returns, through asyncio, which turns Nagle's algorithm
    off only on connections from a socket that names IPPROTO_TCP. With it on, a keep-alive client
    waited ~40 ms (its delayed ACK) for every answer after the first (BENCHMARKS section 8)."""
    async def nodelay_of_an_accepted_connection() -> int:
        accepted = asyncio.get_running_loop().create_future()

        def on_connect(reader, writer):
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listening = bind("127.0.0.1", 0)
        server = await asyncio.start_server(on_connect, sock=listening)     # as uvicorn does with sockets=[...]
        try:
            _, writer = await asyncio.open_connection(*listening.getsockname())
            value = await asyncio.wait_for(accepted, 10)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
        return value

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("localhost", False), ("0.0.0.0", True),
                                          ("192.168.1.20", True)])
def test_listening_beyond_this_machine_is_announced_with_a_warning(host, warned, capsys):
    announce(ServeSettings(host=host, port=8123))
    err = capsys.readouterr().err
    assert f"serving the default model on http://{host}:8123" in err
    assert ("listening beyond this machine" in err) is warned and ("no authentication or TLS" in err) is warned


def test_defaults_are_safe():
    s = ServeSettings()
    check(s)
    assert s.host == "127.0.0.1" and is_loopback(s.host)
    assert s.max_file_bytes == 10 * 2**20 and s.max_pixels == 50_000_000
    assert s.max_request_pixels == 200_000_000 and s.upload_timeout_s == 60
    assert s.max_pending_bytes >= s.max_files * s.max_file_bytes        # one largest request fits
    assert s.workers >= 1 and s.threads_per_worker * s.workers <= max(s.workers, (__import__("os").cpu_count() or 1))


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                        ("0.0.0.0", False), ("192.168.1.5", False), ("example.org", False)])
def test_loopback_detection(host, loop):
    assert is_loopback(host) is loop


def test_pixel_limit_is_checked_from_the_header():
    buf = io.BytesIO()
    Image.new("RGB", (1000, 600)).save(buf, "PNG")
    assert open_image(buf.getvalue(), max_pixels=600_000).size == (1000, 600)
    with pytest.raises(ImageDecodeError) as err:
        open_image(buf.getvalue(), max_pixels=599_999)
    assert err.value.reason == "image too large"
    assert err.value.detail == "1000x600 = 600,000 pixels (0.600 MP); the limit is 599,999 (0.599999 MP)"


def test_model_description_reads_a_run_directorys_metrics_json(tmp_path):
    """README: /v1/model gives test metrics from a run's `metrics.json` (written by `faceage evaluate
    --json`) when the model file carries none, and the version with the file's sha256."""
    import hashlib
    import json
    from types import SimpleNamespace

    from faceage.preprocess import PreprocessSpec
    from faceage.serve.app import describe_model
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.ckpt").write_bytes(b"checkpoint bytes")
    (run / "metrics.json").write_text(json.dumps({"n": 421, "mae": 4.31, "cs5": 0.69, "per_race": {"White": {}}}))
    runner = SimpleNamespace(path=run / "best.ckpt", meta={}, preprocess=PreprocessSpec(size=160, channels=3),
                             spec=SimpleNamespace(name="faceres_mobilenet", tasks={"age_dist": 1.0, "gender": 4.0}))
    predictor = SimpleNamespace(runner=runner, bin_names=["0-10"], options={"detector": "RetinaFaceDetector"}, detector=None)
    m = describe_model(predictor, ServeSettings(model=str(run / "best.ckpt")))
    assert m["metrics"] == {"n": 421, "mae": 4.31, "cs5": 0.69}          # the headline keys, not every table
    assert m["backend"] == "torch" and m["name"] == "best.ckpt"
    assert m["version"].endswith(f", sha256 {hashlib.sha256(b'checkpoint bytes').hexdigest()[:16]}")
