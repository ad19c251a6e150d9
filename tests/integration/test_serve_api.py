"""`faceage serve`'s HTTP API with the real default model and detector: every status code the
service promises, the model description, the docs, and that uploads never touch the disk."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serving import png_bytes
from faceage.inference.predictor import DEFAULT_MODEL
from faceage.serve.app import create_app
from faceage.serve.settings import ServeSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(shared_predictor):
    with TestClient(create_app(ServeSettings(), shared_predictor)) as c:
        yield c


def make_client(predictor, **limits) -> TestClient:
    return TestClient(create_app(ServeSettings(**limits), predictor))


def post(client, *files):
    return client.post("/v1/analyze", files=[("files", f) for f in files])


def test_a_photo_gets_its_face_age_interval_and_gender(client, astronaut_png):
    r = post(client, ("astronaut.png", astronaut_png.read_bytes(), "image/png"))
    assert r.status_code == 200, r.text
    body = r.json()
    (image,) = body["images"]
    assert (image["filename"], image["width"], image["height"]) == ("astronaut.png", 512, 512)
    (face,) = image["faces"]
    assert face["age_low"] <= face["age"] <= face["age_high"]
    assert face["gender"] in ("male", "female") and 0.5 <= face["gender_prob"] <= 1
    assert 150 < face["box"][0] < face["box"][2] < 300            # the astronaut's face, not the flag
    assert set(body["timing_ms"]) == {"decode", "faces", "queued", "total"}


def test_several_files_in_one_request_keep_their_order(client, astronaut_png):
    blank = png_bytes(Image.new("RGB", (300, 200), (90, 90, 90)))
    r = post(client, ("a.png", astronaut_png.read_bytes(), "image/png"), ("blank.png", blank, "image/png"))
    assert r.status_code == 200
    a, b = r.json()["images"]
    assert a["filename"] == "a.png" and len(a["faces"]) == 1
    assert b["filename"] == "blank.png" and b["faces"] == [] and b["note"] == "no face found"


@pytest.mark.parametrize("data, status, reason", [
    (b"just some text\n", 415, "not an image"),
    (b"", 422, "empty file"),
    ("truncated", 422, "corrupt or truncated image"),
])
def test_bad_files_get_a_json_error(client, astronaut_png, data, status, reason):
    if data == "truncated":
        data = astronaut_png.read_bytes()[:4000]
    r = post(client, ("bad.png", data, "image/png"))
    assert r.status_code == status
    assert r.json()["files"][0]["reason"] == reason and "bad.png" in r.json()["error"]


def test_one_bad_file_fails_the_request_and_names_it(client, astronaut_png):
    r = post(client, ("good.png", astronaut_png.read_bytes(), "image/png"), ("notes.txt", b"hello", "text/plain"))
    assert r.status_code == 415
    assert [f["filename"] for f in r.json()["files"]] == ["notes.txt"]


def test_not_multipart_or_no_files_field(client):
    assert client.post("/v1/analyze", content=b"\x89PNG", headers={"content-type": "image/png"}).status_code == 415
    r = client.post("/v1/analyze", data={"other": "x"}, files=[("not_files", ("a.png", b"x", "image/png"))])
    assert r.status_code == 422 and "files" in r.json()["error"]


def test_file_over_the_size_limit_is_413(shared_predictor, astronaut_png):
    data = astronaut_png.read_bytes()                  # ~0.5 MB
    with make_client(shared_predictor, max_file_mb=0.1) as c:
        r = post(c, ("big.png", data, "image/png"))
    assert r.status_code == 413 and "0.1 MB" in r.json()["error"]


def test_too_many_files_is_413(shared_predictor):
    tiny = png_bytes(Image.new("RGB", (8, 8)))
    with make_client(shared_predictor, max_files=2) as c:
        r = post(c, *[(f"{i}.png", tiny, "image/png") for i in range(3)])
    assert r.status_code == 413 and "too many files" in r.json()["error"]


def test_pixel_bomb_is_413_before_decoding(shared_predictor):
    # 10000 x 8000 = 80 MP declared by a small PNG: refused from the header, over the 50 MP limit;
    # 400 MP is refused by Pillow's own bomb guard. Both are 413 with the reason.
    with make_client(shared_predictor) as c:
        r = post(c, ("bomb.png", png_bytes(Image.new("1", (10000, 8000))), "image/png"))
        assert r.status_code == 413
        assert "10000x8000 = 80,000,000 pixels (80.000 MP); the limit is 50,000,000 (50 MP)" in r.json()["error"]
        r = post(c, ("huge.png", png_bytes(Image.new("1", (20000, 20000))), "image/png"))
        assert r.status_code == 413 and "decompression bomb" in r.json()["error"]
    with make_client(shared_predictor, max_megapixels=0.1) as c:        # the limit is configurable
        assert post(c, ("small.png", png_bytes(Image.new("RGB", (512, 512))), "image/png")).status_code == 413


def test_a_request_that_waits_too_long_for_a_worker_gets_503(shared_predictor, astronaut_png):
    from serving import LiveServer

    busy = threading.Event()

    class SlowDetector:                                 # the real detector, made to take 1.5 s
        def detect(self, image):
            busy.set()
            time.sleep(1.5)
            return shared_predictor.detector.detect(image)

    from faceage.inference.predictor import Predictor
    slow = Predictor.__new__(Predictor)
    slow.__dict__.update(shared_predictor.__dict__, detector=SlowDetector())
    app = create_app(ServeSettings(workers=1, queue_timeout_s=0.3), slow)
    files = [("files", ("a.png", astronaut_png.read_bytes(), "image/png"))]
    with LiveServer(app) as server:
        statuses = []
        def call():
            statuses.append(httpx.post(f"{server.url}/v1/analyze", files=files, timeout=30).status_code)
        first = threading.Thread(target=call)
        first.start()
        assert busy.wait(20)                            # the first request now holds the only worker
        r = httpx.post(f"{server.url}/v1/analyze", files=files, timeout=30)
        first.join()
    assert r.status_code == 503 and r.headers["retry-after"] and "busy" in r.json()["error"]
    assert statuses == [200]


def test_model_health_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    m = client.get("/v1/model").json()
    shipped = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert m["name"] == "default" and m["backend"] == "onnxruntime"
    digest = hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()[:16]    # README: version with the file's sha256
    assert m["version"].startswith("faceage ") and m["version"].endswith(f", sha256 {digest}")
    assert m["input"]["size"] == shipped["preprocess"]["size"] and m["metrics"]["mae"] == shipped["metrics"]["mae"]
    assert m["metrics"]["n"] == 2811 and m["metrics"]["mae"] < 5.5
    assert m["limits"]["max_file_mb"] == 10
    assert m["limits"]["max_request_megapixels"] == 200 and m["limits"]["upload_timeout_s"] == 60
    assert isinstance(m["detection"], dict)            # the server-wide detection options
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/v1/analyze"]["post"]["requestBody"]["content"]


def test_docs_and_redoc_load_nothing_from_other_hosts(client):
    # FastAPI's default /docs pulls Swagger UI from a CDN and is blank offline: ours are served here.
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text, r.text
    docs = client.get("/docs").text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        assert f"/docs/static/{asset}" in docs
        assert client.get(f"/docs/static/{asset}").status_code == 200
    assert client.get("/docs/static/redoc.standalone.js").status_code == 200


def test_openapi_describes_the_answers(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def ref(schema: dict) -> str:
        return schema["$ref"].rsplit("/", 1)[-1]

    analyze = spec["paths"]["/v1/analyze"]["post"]["responses"]
    answer = schemas[ref(analyze["200"]["content"]["application/json"]["schema"])]
    image = schemas[ref(answer["properties"]["images"]["items"])]
    face = schemas[ref(image["properties"]["faces"]["items"])]
    assert ref(image["properties"]["faces"]["items"]) == "Face"
    assert {"number", "box", "age", "age_low", "age_high", "gender", "gender_prob", "gender_probs",
            "low_quality"} <= set(face["properties"])
    assert {"number", "box", "age", "gender"} <= set(face["required"])
    for status in ("413", "415", "422", "503"):             # errors are documented as {"error": ...}
        assert ref(analyze[status]["content"]["application/json"]["schema"]) == "ErrorResponse"
    model = spec["paths"]["/v1/model"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"name", "metrics", "limits", "detection"} <= set(schemas[ref(model)]["properties"])


def test_answers_match_the_documented_schema(client, astronaut_png):
    from faceage.serve.app import AnalyzeResponse, ModelInfo
    body = post(client, ("a.png", astronaut_png.read_bytes(), "image/png")).json()
    AnalyzeResponse.model_validate(body)
    (face,) = body["images"][0]["faces"]
    assert face["number"] == 1
    ModelInfo.model_validate(client.get("/v1/model").json())


@pytest.mark.parametrize("method, path, status", [
    ("get", "/no/such/page", 404),
    ("get", "/static/missing.js", 404),
    ("get", "/v1/analyze", 405),
    ("delete", "/v1/model", 405),
])
def test_every_error_answers_json_with_an_error_key(client, method, path, status):
    r = client.request(method.upper(), path)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and path in body["error"]
    if status == 405:
        assert r.headers["allow"] and r.headers["allow"] in body["error"]


def test_server_wide_detection_options_reach_the_predictor(monkeypatch):
    from faceage.inference import predictor as predictor_module
    from faceage.serve.app import load_predictor
    seen = {}

    class Recorder:                                     # stands in for Predictor: records its arguments
        def __init__(self, model=None, **kwargs):
            seen.update(model=model, **kwargs)

        def analyze(self, image):
            return []

    monkeypatch.setattr(predictor_module, "Predictor", Recorder)
    options = {"det_size": 1280, "det_thresh": 0.6, "min_face_size": 20, "max_num_faces": 3}
    load_predictor(ServeSettings(predictor_options=options, workers=1))
    assert seen == {"model": None, "threads": ServeSettings(workers=1).threads_per_worker, **options}
    assert ServeSettings().predictor_options == {}


def test_serve_on_a_port_in_use_says_so_and_exits_2():
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "faceage", "serve", "--port", str(port)],
                           capture_output=True, text=True, timeout=180)
    assert r.returncode == 2, r.stderr
    # the failure alone, on one line: nothing claims it is serving, no traceback
    assert r.stderr.splitlines() == [f"faceage: error: port {port} is already in use on 127.0.0.1: stop what uses "
                                     "it, or choose another with --port"], r.stderr


def test_page_and_its_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset).status_code == 200
    # fully offline: nothing on the page loads from another host
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/app.css").text):
        assert "http://" not in text and "https://" not in text


def test_uploads_never_touch_the_disk(client, astronaut_png, tmp_path, monkeypatch):
    # Starlette would spool a >1 MB upload to a temporary file; ours must stay in memory.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    big = Image.open(astronaut_png).resize((1400, 1400))
    data = io.BytesIO()
    big.save(data, "PNG")
    assert data.tell() > 2**20
    r = post(client, ("big.png", data.getvalue(), "image/png"))
    assert r.status_code == 200 and len(r.json()["images"][0]["faces"]) == 1
    assert list(tmp_path.iterdir()) == []


def test_serve_refuses_a_model_it_cannot_load(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    (tmp_path / "broken.json").write_text('{"preprocess": {"size": 8, "channels": 3, "mean": [0], "std": [1], '
                                          '"crop": "center_square"}, "model": {"name": "x"}}')
    for model in (str(tmp_path / "missing.onnx"), str(bad)):
        r = subprocess.run([sys.executable, "-m", "faceage", "serve", "--model", model, "--port", "1"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("faceage: error:") and "Traceback" not in r.stderr
