"""`headstart serve`: the HTTP API answers as `headstart predict` does, batches concurrent requests, and turns
bad input into one-line 4xx answers while it keeps serving."""

from __future__ import annotations

import base64
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import make_class_folder
from PIL import Image

from headstart.bundle import load
from headstart.config import DataConfig, EngineConfig, FitConfig
from headstart.fit import fit



@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    data = make_class_folder(root / "data", 10, classes=("circle", "square", "triangle"))
    cfg = FitConfig(out=str(root / "run"), strategy="linear", model="tiny_test", data=DataConfig(path=str(data)),
                    engine=EngineConfig(backend="torch", cache_dir=str(root / "cache")))
    fit(cfg, progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def client(run: Path):  # noqa: ANN201
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    with TestClient(create_app(run, backend="torch", max_bytes=200_000, max_images=4)) as c:
        yield c


def _expected(run: Path, photos: list[Path]) -> np.ndarray:
    return load(run, backend="torch").predict_proba(photos)


def test_health_and_model(client, run: Path) -> None:  # noqa: ANN001
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["classes"] == ["circle", "square", "triangle"] and info["kind"] == "linear"
    assert info["metrics"]["accuracy"] is not None


def test_predict_multipart_and_base64_answer_as_predict_does(client, run: Path,  # noqa: ANN001
                                                             sample_photos: dict[str, Path]) -> None:
    photos = list(sample_photos.values())
    want = _expected(run, photos)
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    r = client.post("/predict", files=files, params={"top_k": 3})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["name"] for p in preds] == [p.name for p in photos]
    classes = ["circle", "square", "triangle"]
    for p, row in zip(preds, want):
        assert len(p["top"]) == 3 and p["top"][0]["label"] == classes[int(row.argmax())]
        got = {t["label"]: t["prob"] for t in p["top"]}
        np.testing.assert_allclose([got[c] for c in classes], row, atol=1e-5)
    body = {"images": [base64.b64encode(p.read_bytes()).decode() for p in photos]}
    again = client.post("/predict", json=body, params={"top_k": 3}).json()["predictions"]
    assert [p["top"] for p in again] == [p["top"] for p in preds]


def _bomb_png() -> bytes:
    """A valid PNG header declaring 100000 x 100000 pixels: refused from the header, nothing decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("files", "json_body", "status", "says"), [
    ([("file", ("notes.jpg", b"hello, not an image", "image/jpeg"))], None, 400, "not a recognised image"),
    ([("file", ("big.jpg", b"\xff" * 200_001, "image/jpeg"))], None, 413, "more than 200,000 bytes"),
    ([("file", ("bomb.png", _bomb_png(), "image/png"))], None, 413, "pixels"),
    ([("file", (f"{i}.png", b"x", "image/png")) for i in range(5)], None, 413, "at most 4"),
    ([("file", (f"{i}.png", b"x", "image/png")) for i in range(9)], None, 413, "at most 4"),
    (None, {"images": "not a list"}, 400, "JSON body"),
    (None, {"images": ["***"]}, 400, "JSON body"),
    (None, {"images": []}, 400, "no image"),
])
def test_bad_input_is_a_one_line_4xx_and_the_server_keeps_serving(client, sample_photos: dict[str, Path],  # noqa: ANN001
                                                                   files, json_body, status: int, says: str) -> None:  # noqa: ANN001
    r = client.post("/predict", files=files) if files else client.post("/predict", json=json_body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert says in error and "\n" not in error
    photo = next(iter(sample_photos.values()))
    ok = client.post("/predict", files=[("file", (photo.name, photo.read_bytes(), "image/jpeg"))])
    assert ok.status_code == 200


def test_other_content_is_refused(client) -> None:  # noqa: ANN001
    r = client.post("/predict", content=b"abc", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart" in r.json()["error"]


def test_concurrent_requests_on_loopback_are_batched_and_right(run: Path, tmp_path: Path) -> None:
    import uvicorn

    from headstart.serve import create_app

    images = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(p)
        images.append(p)
    want = _expected(run, images).argmax(1)
    app = create_app(run, backend="torch", max_wait_ms=20)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/predict"
        classes = load(run, backend="torch").classes

        def one(i: int) -> str:
            p = images[i % len(images)]
            r = httpx.post(url, files=[("file", (p.name, p.read_bytes(), "image/png"))], timeout=60)
            r.raise_for_status()
            return r.json()["predictions"][0]["top"][0]["label"]

        with ThreadPoolExecutor(16) as pool:
            labels = list(pool.map(one, range(160)))
        assert labels == [classes[want[i % len(images)]] for i in range(160)]
        assert app.state.batcher.batches < 160  # concurrent requests shared engine calls
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_huge_declared_request_is_refused_before_it_is_read(client) -> None:  # noqa: ANN001
    r = client.post("/predict", content=b"{}", headers={"content-type": "application/json",
                                                          "content-length": str(10**12)})
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_a_cancelled_request_does_not_stop_the_batcher(run: Path) -> None:
    from headstart.serve import Batcher

    predictor = load(run, backend="torch").predictor
    batcher = Batcher(predictor, max_wait_ms=200)
    image = np.zeros((3, predictor.spec.input_size, predictor.spec.input_size), np.float32)
    gone = batcher.submit(image)
    assert gone.cancel()  # the client went away before its batch ran
    kept = batcher.submit(image)
    assert kept.result(timeout=30).shape == (3,)
    assert batcher.submit(image).result(timeout=30).shape == (3,)  # and the worker lives on
    batcher.close()
