"""Outermost ASGI layer: X-Request-ID and X-Correlation-ID on every answer, bound to every log line of the request.

transport_and_format.asciidoc: the X-Request-ID of a request is echoed in its response; the X-Correlation-ID is kept
through the whole chain. A caller that sends neither gets fresh ones.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger()

PROBE_PATHS = frozenset(("/health", "/ready", "/metrics"))  # load balancers and Prometheus: no OCPI token


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = correlation_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:255]
            elif name == b"x-correlation-id":
                correlation_id = value.decode("latin-1")[:255]
        request_id = request_id or str(uuid.uuid4())
        correlation_id = correlation_id or request_id
        scope.setdefault("state", {}).update(request_id=request_id, correlation_id=correlation_id)
        extra = [
            (b"x-request-id", request_id.encode("latin-1")),
            (b"x-correlation-id", correlation_id.encode("latin-1")),
        ]
        outcome: dict[str, Any] = {"status": None}
        started = time.perf_counter()

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in present)]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id, correlation_id=correlation_id):
            try:
                await self.app(scope, receive, send_with_ids)
            finally:
                # Probes and scrapes every few seconds would drown the requests that matter: debug level.
                (log.debug if scope["path"] in PROBE_PATHS else log.info)(
                    "http_request",
                    method=scope.get("method"),
                    path=scope["path"],
                    status=outcome["status"],
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )
