"""``headstart serve RUN_DIR``: the trained model behind an HTTP JSON API (FastAPI on uvicorn).

- ``POST /predict``: one or more images, as multipart form files (any field name) or as JSON
  ``{"images": ["<base64>", ...]}``; ``?top_k=5``. Answers ``{"predictions": [{"top": [{"label", "prob"}]}]}``
  in the order sent.
- ``GET /health``: ``{"status": "ok"}``. ``GET /model``: classes, backbone, kind, and the run's test figures.

Images from concurrent requests are decoded in the server's thread pool and batched onto one engine by a
single worker thread (``Batcher``): up to ``batch_size`` images, waiting at most ``max_wait_ms`` after the
first, so a burst of single-image requests runs as a few batches. Bad input gets a 4xx with a one-line
``{"error": ...}`` and the server keeps serving: not an image (400), more bytes than ``max_bytes`` or more
pixels than the decoder's bomb limit (413), more than ``max_images`` in one request (413), no image (400).

    uvicorn.run(create_app("runs/first"), host="127.0.0.1", port=8000)
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations (``Request``) at
# run time, and they are imported inside ``create_app`` (fastapi is an optional extra).
import asyncio
import base64
import binascii
import io
import json
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from headstart.bundle import LoadedModel, load
from headstart.data import EvalTransform
from headstart.data.decode import decode_image
from headstart.errors import DecodeError, NonFiniteError
from headstart.predict import Predictor

__all__ = ["Batcher", "create_app"]

MAX_BYTES = 20 * 1024 * 1024  # per image
MAX_IMAGES = 64  # per request
MAX_PIXELS = 40_000_000  # per image, from its header before decoding (a 6300 x 6300 photo; 120 MB as RGB)
DECODERS = 4  # images decoded at once, whatever the number of requests: bounds the memory decoding takes


class _Upload(io.BytesIO):
    """An uploaded file's bytes, named in error messages by the name the client gave it."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label


class Batcher:
    """One worker thread runs the engine on batches gathered from every request (see the module)."""

    def __init__(self, predictor: Predictor, *, batch_size: int = 32, max_wait_ms: float = 5.0) -> None:
        self.predictor, self.batch_size, self.max_wait = predictor, batch_size, max_wait_ms / 1000
        self._queue: queue.Queue[tuple[np.ndarray, Future[np.ndarray]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="headstart-batcher", daemon=True)
        self._thread.start()
        self.batches = 0  # how many engine calls so far (the load test reports images per batch)

    def submit(self, image: np.ndarray) -> Future[np.ndarray]:
        """The class probabilities of one preprocessed image (C, H, W), once its batch has run."""
        fut: Future[np.ndarray] = Future()
        self._queue.put((image, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _work(self) -> None:
        while (first := self._queue.get()) is not None:
            items = [first]
            deadline = time.monotonic() + self.max_wait
            while len(items) < self.batch_size:
                try:
                    nxt = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                items.append(nxt)
            items = [(im, fut) for im, fut in items if fut.set_running_or_notify_cancel()]  # drop cancelled
            if not items:
                continue
            try:
                probs = self.predictor.batch_proba(np.stack([im for im, _ in items]))
                self.batches += 1
                if not np.isfinite(probs).all():
                    raise NonFiniteError("the model produced NaN/inf probabilities: its weights are damaged")
                for (_, fut), p in zip(items, probs):
                    fut.set_result(p)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the worker lives on
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)


def create_app(run: str | Path, *, backend: str = "auto", batch_size: int = 32, max_wait_ms: float = 5.0,
               max_bytes: int = MAX_BYTES, max_images: int = MAX_IMAGES) -> Any:
    """The FastAPI application serving the run's model (loaded, and its engine built, before it returns)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    model = load(run, backend=backend)
    transform = EvalTransform(model.predictor.spec)
    batcher = Batcher(model.predictor, batch_size=batch_size, max_wait_ms=max_wait_ms)
    model.predictor.batch_proba(np.stack([transform(_blank(model))]))  # build the engine now, not per request
    info = _model_info(Path(run), model)

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # noqa: ANN202
        yield
        batcher.close()

    app = FastAPI(title="headstart", version=info["headstart"], lifespan=lifespan)
    app.state.batcher = batcher
    decoding = asyncio.Semaphore(DECODERS)

    async def prepare(upload: _Upload) -> np.ndarray:
        async with decoding:
            return await asyncio.get_running_loop().run_in_executor(None, _prepare, upload, transform)

    class BadInput(Exception):
        def __init__(self, status: int, message: str) -> None:
            super().__init__(message)
            self.status = status

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    async def model_info() -> dict[str, Any]:
        return info

    @app.post("/predict")
    async def predict(request: Request, top_k: int = 5) -> dict[str, Any]:
        uploads = await _uploads(request, max_bytes, max_images, BadInput)
        try:
            images = await asyncio.gather(*(prepare(u) for u in uploads))
        except DecodeError as e:
            raise BadInput(413 if "too large" in str(e) or "exceeds the limit" in str(e) else 400,
                           str(e).splitlines()[0]) from None
        probs = await asyncio.gather(*(asyncio.wrap_future(batcher.submit(im)) for im in images))
        k = max(1, min(top_k, len(model.classes)))
        return {"predictions": [{"name": str(u), "top": [{"label": model.classes[j], "prob": float(p[j])}
                                                         for j in np.argsort(-p, kind="stable")[:k]]}
                                for u, p in zip(uploads, probs)]}

    return app


async def _uploads(request: Any, max_bytes: int, max_images: int, bad: type[Exception]) -> list[_Upload]:
    """The request's images as named byte buffers, refusing what cannot be one (see the module)."""
    kind = request.headers.get("content-type", "")
    length = request.headers.get("content-length")
    if length is None:
        raise bad(411, "send the request with a Content-Length")
    if not length.isdigit() or int(length) > max_images * (max_bytes + 4096):  # refused before it is read
        raise bad(413, f"the request is larger than {max_images} images of {max_bytes:,} bytes")
    out: list[_Upload] = []
    if kind.startswith("multipart/form-data"):
        from starlette.exceptions import HTTPException

        try:
            async with request.form(max_files=max_images, max_part_size=max_bytes + 1) as form:  # closes uploads
                for key, value in form.multi_items():
                    if hasattr(value, "read"):
                        data = await value.read(max_bytes + 1)
                        out.append(_Upload(data, value.filename or key))
        except HTTPException as e:  # Starlette's own refusal (too many files or fields, a malformed body)
            too_many = "Too many" in str(e.detail)
            raise bad(413 if too_many else 400, f"at most {max_images} images in one request" if too_many
                      else f"the multipart body could not be read ({e.detail})") from None
    elif kind.startswith("application/json"):
        try:
            body = json.loads(await request.body())
            encoded = body["images"]
            if not isinstance(encoded, list):
                raise TypeError
            out = [_Upload(base64.b64decode(s, validate=True), f"images[{i}]") for i, s in enumerate(encoded)]
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise bad(400, 'the JSON body must be {"images": ["<base64>", ...]}') from None
    else:
        raise bad(415, "send images as multipart/form-data files or as JSON {\"images\": [\"<base64>\", ...]}")
    if not out:
        raise bad(400, "no image in the request")
    if len(out) > max_images:
        raise bad(413, f"{len(out)} images in one request; at most {max_images}")
    for u in out:
        if len(u.getbuffer()) > max_bytes:
            raise bad(413, f"{u}: more than {max_bytes:,} bytes")
    return out


def _prepare(upload: _Upload, transform: EvalTransform) -> np.ndarray:
    return transform(decode_image(upload, draft_size=transform.draft_size, max_pixels=MAX_PIXELS))


def _blank(model: LoadedModel) -> Any:
    from PIL import Image

    return Image.new("RGB", (model.predictor.spec.input_size,) * 2)


def _model_info(run: Path, model: LoadedModel) -> dict[str, Any]:
    from headstart import __version__

    info: dict[str, Any] = {"classes": model.classes, "model": model.model, "kind": model.meta["kind"],
                            "run": str(run), "headstart": __version__}
    m = run / "metrics.json"
    if m.is_file():
        test = json.loads(m.read_text(encoding="utf-8")).get("test", {})
        info["metrics"] = {k: test.get(k) for k in ("n", "accuracy", "balanced_accuracy", "log_loss")}
    return info
