"""The HTTP routes of ``dhmd-pipeline serve`` (FastAPI), over predictors loaded once.

    POST /predict[?explain=1]   a clip as multipart form data (field ``file``) -> the JSON object of one
                                entry of ``predict --json`` (Predictor.predict_one, the very same
                                function), its ``clip`` being the uploaded file's name; with explain=1
                                also ``explanation_png``: the explanation picture as a data: URL
    GET  /                      the page (static/index.html, with static/page.css and static/page.js)
    GET  /health                {"status": "ok", ...}: liveness and the load
    GET  /model                 the checkpoint: feature spec, task, label scheme, epoch, its metrics

Errors are JSON ``{"status": "failed", "error": "..."}`` (plus ``clip`` when a clip was received):
400/413/415/422 for bad uploads (see uploads.py) and clips that cannot be predicted, 401 without the
token, 503 when ``serve.max_concurrent`` predictions run and ``serve.queue_size`` more wait (or a
request waited ``serve.queue_timeout_s``).  The server keeps serving after each of these.

Load: at most ``max_concurrent`` predictions run at once, each on its own Predictor (models are not
shared between threads); up to ``queue_size`` further requests are admitted and wait for one; any
request beyond is answered 503 at once, before its body is read.

Token: when set, every request needs it, as ``Authorization: Bearer TOKEN``, ``?token=TOKEN`` or the
cookie the page gets when it is opened with ``/?token=TOKEN``.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pipeline.serve.uploads import UploadError, check_clip, receive_upload

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import ServeConfig
    from pipeline.inference.predict import Predictor

log = logging.getLogger(__name__)

TOKEN_COOKIE = "dhmd_serve_token"
_PYPLOT = threading.Lock()        # matplotlib's pyplot is not thread-safe: one picture at a time
STATIC_FILES = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}


@dataclass
class ServeState:
    """What the routes share: the predictors, the settings, the private upload folder, the load."""

    predictors: list["Predictor"]
    settings: "ServeConfig"
    upload_root: Path
    model_info: dict[str, Any]
    admitted: int = 0             # requests admitted to /predict: running or waiting for a predictor
    served: int = 0               # predictions answered (200)
    started: float = field(default_factory=time.time)
    free: "asyncio.Queue | None" = None

    @property
    def capacity(self) -> int:
        return len(self.predictors) + self.settings.queue_size


def model_info(predictor: "Predictor") -> dict[str, Any]:
    """What GET /model says of the checkpoint: spec, task, labels, epoch and its run's metrics.

    The metrics are those of ``results.json`` beside the checkpoint (train writes it), when present.
    """
    from pipeline.inference.predict import _json_safe

    info: dict[str, Any] = {"checkpoint": str(predictor.checkpoint), "task": predictor.task,
                            "class_names": predictor.class_names or None, "label_scheme": predictor.label_scheme,
                            "epoch": predictor.bundle.epoch, "spec": predictor.spec, "device": str(predictor.device),
                            "metrics": None}
    results = predictor.checkpoint.parent / "results.json"
    if results.is_file():
        try:
            r = json.loads(results.read_text())
            info["metrics"] = {k: r.get(k) for k in ("val_metric", "best_val", "best_epoch", "valid", "test", "n")}
        except (OSError, ValueError) as e:
            log.warning("%s: cannot read (%s); /model shows no metrics", results, e)
    return _json_safe(json.loads(json.dumps(info, default=str)))


def _error(status: int, message: str, clip: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": "failed", "error": message}
    if clip is not None:
        body = {"clip": clip, **body}
    return JSONResponse(body, status_code=status, headers=headers)


def _token_of(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""


def _predict_blocking(predictor: "Predictor", clip_path: Path, name: str, explain: bool) -> dict[str, Any]:
    """One clip through Predictor.predict_one (the function behind ``predict --json``), in a worker thread.

    The answer is that entry as ``predict --json`` writes it, with ``clip`` = the uploaded name (the
    server's own path never leaves it, not even inside an error message).  With ``explain`` the
    picture of ``predict --explain`` (drawn for the uploaded name) is added as ``explanation_png``
    and its time counted in ``time_s``, as predict does; a picture that cannot be drawn fails the
    clip, as in predict.
    """
    from pipeline.errors import one_line
    from pipeline.inference.explain import render_explanation
    from pipeline.inference.predict import to_json

    try:
        result = predictor.predict_one(clip_path)
        features = predictor.last_features[-1] if predictor.last_features else None
    finally:   # a long-running server must not keep every clip's features
        predictor.last_times.clear()
        predictor.last_features.clear()
    result = json.loads(to_json([result]))[0]
    result["clip"] = name
    if result.get("status") == "failed":
        result["error"] = str(result.get("error", "")).replace(str(clip_path), name)
    elif explain and features is not None:
        t0 = time.perf_counter()
        try:
            with _PYPLOT:
                png = render_explanation(result, features)
        except (MemoryError, Exception) as e:  # noqa: BLE001 - as predict: this clip fails, the server goes on
            log.debug("%s: explanation failed", name, exc_info=True)
            return {"clip": name, "status": "failed", "error": f"{name}: explanation failed: {one_line(e)}",
                    "time_s": result.get("time_s")}
        result["time_s"] = round(float(result.get("time_s") or 0.0) + time.perf_counter() - t0, 3)
        result["explanation_png"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return result


def build_app(state: ServeState) -> FastAPI:
    """The FastAPI application over ``state`` (see the module docstring for the routes)."""
    settings = state.settings
    app = FastAPI(title="dhmd-pipeline serve", docs_url=None, redoc_url=None, openapi_url=None)
    static = resources.files("pipeline.serve") / "static"

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if settings.token and not hmac.compare_digest(_token_of(request).encode(), settings.token.encode()):
            return _error(401, "this server needs its token: Authorization: Bearer TOKEN, or open /?token=TOKEN",
                          headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        if settings.token and request.url.path == "/" and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, settings.token, httponly=True, samesite="strict")
        return response

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    async def static_file(name: str) -> Response:
        if name not in STATIC_FILES:          # a fixed list: no name from a request reaches the disk
            return _error(404, f"no such file: {name}")
        return Response((static / name).read_bytes(), media_type=STATIC_FILES[name])

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "uptime_s": round(time.time() - state.started, 1),
                             "admitted": state.admitted, "max_concurrent": len(state.predictors),
                             "queue_size": settings.queue_size, "served": state.served})

    @app.get("/model")
    async def model() -> JSONResponse:
        return JSONResponse(state.model_info)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        if state.free is None:
            state.free = asyncio.Queue()
            for p in state.predictors:
                state.free.put_nowait(p)
        if state.admitted >= state.capacity:
            return _error(503, f"busy: {len(state.predictors)} predictions running and {settings.queue_size} "
                               f"waiting (serve.max_concurrent, serve.queue_size); try again later",
                          headers={"Retry-After": "5"})
        explain = request.query_params.get("explain", "0").lower() in ("1", "true", "yes", "on")
        state.admitted += 1
        folder = Path(tempfile.mkdtemp(prefix="req-", dir=state.upload_root))
        name: str | None = None
        try:
            try:
                upload = await receive_upload(request.headers, request.stream(), folder,
                                              int(settings.max_upload_mb * 2**20))
                name = upload.name
                await run_in_threadpool(check_clip, upload, settings.max_duration_s)
            except UploadError as e:
                log.info("refused an upload (%d): %s", e.status, e.message)
                return _error(e.status, e.message, clip=name)
            try:
                predictor = await asyncio.wait_for(state.free.get(), timeout=settings.queue_timeout_s)
            except asyncio.TimeoutError:
                return _error(503, f"{name}: busy: no prediction slot became free in {settings.queue_timeout_s:g} s "
                                   f"(serve.queue_timeout_s); try again later", clip=name, headers={"Retry-After": "5"})
            try:
                result = await run_in_threadpool(_predict_blocking, predictor, upload.path, name, explain)
            finally:
                state.free.put_nowait(predictor)
            if result.get("status") == "failed":
                log.info("%s: failed: %s", name, result.get("error"))
                return JSONResponse(result, status_code=422)
            state.served += 1
            log.info("%s: %s", name, result.get("label_7") or result.get("label_2"))
            return JSONResponse(result)
        finally:
            state.admitted -= 1
            shutil.rmtree(folder, ignore_errors=True)

    return app
