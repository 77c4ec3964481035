"""The app factory and the server entry point.

    python -m service --port 8000 --bundle bundles/en-es      # or: mt-serve ...

`create_app` builds the FastAPI app; its lifespan opens Redis, loads and warms the model. The
server drains on SIGTERM (or Ctrl-C): new requests get 503, the ones in flight finish within
DRAIN_TIMEOUT_S, then it exits 0; a second signal exits at once. With --workers > 1, uvicorn's
supervisor runs the workers and each finishes its in-flight requests within DRAIN_TIMEOUT_S but
refuses new connections instead of answering 503: run one worker per container behind a load
balancer to get the 503 phase.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service import api
from service.config import Settings, get_settings
from service.deps import Gate, Service
from service.logs import logging_config
from service.metrics import Metrics
from service.middleware import Admission, RequestLog
from service.schemas import ApiError
from service.translator import Translator

DESCRIPTION = """English->Spanish neural machine translation (attention seq2seq, onnxruntime).
POST /translate accepts LibreTranslate requests unchanged and adds beam search, scores,
attention matrices and word alignments. Errors answer `{"error": ..., "limit": ...}`."""


def create_app(settings: Settings | None = None, translator: Translator | None = None) -> FastAPI:
    """The app. A translator passed in is used as is and left open at shutdown (the caller owns it)."""
    settings = settings or get_settings()
    metrics, gate = Metrics(), Gate()
    metrics.in_flight.set_function(lambda: gate.in_flight)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = await Service.start(settings, metrics, gate, translator)
        try:
            yield
        finally:
            await app.state.service.stop(close_translator=translator is None)

    app = FastAPI(title="rnn-mt translation service", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.gate = gate
    app.include_router(api.router)
    app.mount("/static", StaticFiles(directory=api.WEB_DIR), name="static")
    app.add_exception_handler(ApiError, api.api_error_handler)
    app.add_exception_handler(StarletteHTTPException, api.http_error_handler)
    app.add_exception_handler(ClientDisconnect, api.client_gone_handler)
    app.add_middleware(
        Admission,
        gate=gate,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        max_in_flight=settings.max_in_flight,
    )
    app.add_middleware(RequestLog, metrics=metrics)
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains instead of closing the listening socket."""

    def __init__(self, config: uvicorn.Config, gate: Gate, drain_timeout_s: float):
        super().__init__(config)
        self.gate, self.drain_timeout_s = gate, drain_timeout_s

    def handle_exit(self, sig: int, frame: object) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it at the end and exit 143.
        if self.gate.draining:
            self.should_exit = self.force_exit = True
        else:
            self.gate.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        if self.gate.draining and not self.should_exit:
            overdue = time.monotonic() - self.gate.drain_started > self.drain_timeout_s
            self.should_exit = self.gate.in_flight == 0 or overdue
        return await super().on_tick(counter)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m service", description="Serve a translation bundle over HTTP.")
    ap.add_argument("--host", help="default HOST or 127.0.0.1")
    ap.add_argument("--port", type=int, help="default PORT or 8000")
    ap.add_argument("--bundle", type=Path, help="bundle folder; default BUNDLE_DIR or bundles/en-es")
    ap.add_argument("--workers", type=int, help="processes; default WORKERS or 1")
    args = ap.parse_args(argv)
    overrides = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "bundle_dir": args.bundle, "workers": args.workers}.items()
        if v is not None
    }
    settings = get_settings().model_copy(update=overrides)
    log_config = logging_config(settings.log_level)  # access_log off: service.access logs each request
    if settings.workers > 1:
        # Workers are fresh processes that build their settings from the environment.
        os.environ["BUNDLE_DIR"] = str(settings.bundle_dir)
        uvicorn.run(
            "service.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=log_config,
            access_log=False,
            timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
        )
        return
    app = create_app(settings)
    # The drain already waited for the requests in flight; what is left after it is closed promptly.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=log_config,
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    DrainingServer(config, app.state.gate, settings.drain_timeout_s).run()
