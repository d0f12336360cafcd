"""``dhmd-pipeline serve``: load the checkpoint and its extractors once, then serve HTTP until stopped.

The checkpoint is found as ``predict`` finds it (--checkpoint, else predict.checkpoint, else the
newest data/runs/*/best.pt or data/runs/*/*/best.pt), so after ``make demo`` (data/runs/demo/best.pt)
``dhmd-pipeline serve`` serves the demo model.  Uploads live in a private temporary folder (mode
0700, under $TMPDIR) that is removed when the server stops.  uvicorn runs the app (FastAPI): an
ASGI server that streams request bodies, so an oversized upload is refused before it is read whole.
"""
from __future__ import annotations

import ipaddress
import logging
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    """UserError (exit 2) naming host:port when it cannot be bound, before minutes of model loading."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host",
                            exit_code=2) from None


class _Stopped(Exception):
    """SIGINT or SIGTERM: uvicorn has shut down (it re-raises the signal it caught); stop cleanly."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def run_serve(cfg: "PipelineConfig", checkpoint: Path | None = None, host: str | None = None,
              port: int | None = None, token: str | None = None) -> int:
    """The CLI entry: load ``serve.max_concurrent`` predictors, serve until interrupted; 0."""
    import uvicorn

    from pipeline.inference.predict import Predictor, resolve_checkpoint
    from pipeline.serve.app import ServeState, build_app, model_info

    settings = cfg.serve.model_copy(update={k: v for k, v in {"host": host, "port": port, "token": token}.items()
                                            if v is not None})
    if not _is_loopback(settings.host) and not settings.token:
        log.warning("serving on %s without a token: anyone who reaches this machine can use the model "
                    "(--token, or serve.token)", settings.host)
    _check_port_free(settings.host, settings.port)
    path = resolve_checkpoint(cfg, checkpoint)
    log.info("checkpoint %s; loading %d predictor(s)", path, settings.max_concurrent)
    predictors = [Predictor(path, device=cfg.extract.device, top_atoms=cfg.predict.top_atoms)
                  for _ in range(settings.max_concurrent)]
    upload_root = Path(tempfile.mkdtemp(prefix="dhmd-serve-"))   # mode 0700: this user only
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        state = ServeState(predictors=predictors, settings=settings, upload_root=upload_root,
                           model_info=model_info(predictors[0]))
        log.info("serving %s on http://%s:%d/ (uploads in %s)", path, settings.host, settings.port, upload_root)
        uvicorn.run(build_app(state), host=settings.host, port=settings.port, log_level="warning",
                    access_log=False, timeout_graceful_shutdown=10)
    except _Stopped:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(upload_root, ignore_errors=True)
    log.info("stopped; removed %s", upload_root)
    return 0
