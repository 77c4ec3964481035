"""Two plain ASGI middlewares (plain ASGI so a client's disconnect still reaches the route).

`RequestLog` (outermost): a request id (X-Request-ID, kept when the client sends a sane one),
the per-route request counter and latency histogram, and one JSON log line per request with the
id, status and timings, plus what the route added in `request.state.log`.

`Admission`: refuses what cannot be served before any work is spent on it, so that refusals
stay fast under overload: while draining (after SIGTERM) every request but health and metrics
gets 503; so does a request past MAX_IN_FLIGHT requests at once, and a POST while the
translator's waiting queue is full (its body unread, no Redis asked, nothing tokenized; cache
hits are refused too while saturated). The others are counted in flight so shutdown can wait for
them. Bodies over MAX_BODY_BYTES get 413, by Content-Length before reading, or as soon as a
streamed body passes the limit.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import Gate
from service.metrics import Metrics
from service.schemas import ApiError

access_log = logging.getLogger("service.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
ALWAYS_OPEN = ("/health/", "/metrics")


class RequestLog:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent if REQUEST_ID.match(sent) else uuid.uuid4().hex
        extra: dict = {}
        scope.setdefault("state", {})["log"] = extra
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            status = extra.pop("status", status)  # a route whose client hung up sets 499
            seconds = time.perf_counter() - started
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label).observe(seconds)
            fields = {"id": request_id, "method": scope["method"], "path": scope["path"], "route": label}
            fields |= {"status": status, "ms": round(seconds * 1e3, 2), **extra}
            access_log.info("request", extra={"fields": fields})


class Admission:
    def __init__(self, app: ASGIApp, gate: Gate, metrics: Metrics, max_body_bytes: int, max_in_flight: int = 0):
        self.app, self.gate, self.metrics = app, gate, metrics
        self.max_body_bytes, self.max_in_flight = max_body_bytes, max_in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ALWAYS_OPEN):
            await self.app(scope, receive, send)
            return
        if refusal := self.refusal(scope):
            headers = {**refusal.headers, "Connection": "close"}  # a kept-alive client cannot pin a slot
            await JSONResponse(refusal.body, refusal.status, headers=headers)(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            error = self.too_large(int(length))
            await JSONResponse(error.body, error.status, headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise self.too_large(received)
            return message

        self.gate.in_flight += 1
        try:
            await self.app(scope, receive_capped, send)
        finally:
            self.gate.in_flight -= 1

    def refusal(self, scope: Scope) -> ApiError | None:
        """The 503 for a request refused before it is read, or None."""
        if self.gate.draining:
            reason, error = (
                "draining",
                ApiError(503, "the server is shutting down; retry on another replica", retry_after=1),
            )
        elif 0 < self.max_in_flight <= self.gate.in_flight:
            reason = "in_flight"
            error = ApiError(
                503,
                f"{self.gate.in_flight} requests are in progress; the limit is max_in_flight={self.max_in_flight}; "
                "retry shortly",
                limit="max_in_flight",
                retry_after=1,
            )
        elif scope["method"] == "POST" and self.gate.saturated():
            reason, error = "queue_full", ApiError(503, "the translation queue is full; retry shortly", retry_after=1)
        else:
            return None
        self.metrics.rejected.labels(reason).inc()
        return error

    def too_large(self, size: int) -> ApiError:
        return ApiError(
            413,
            f"the body has {size} bytes or more; the limit is max_body_bytes={self.max_body_bytes}",
            limit="max_body_bytes",
        )
