"""Reading a request's body: within a deadline (the relay and Litestar's routes alike) and a size limit (the relay)."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar.types import Receive, Scope

from hub.envelope import whole_number
from hub.errors import BodyTooLarge, BodyTooSlow, EncodedBody, NotFound, OcpiError

# scope key: the error the server's protocol answered a request with when it could not read the request's body
REFUSED = "ocpi_hub.refused"


class BodyDeadlines:
    """A request's body must arrive within timeout_s, or the caller gets 408 (OCPI 2000): a client that announces a
    body and stops sending would otherwise hold its request (and its connection) forever. No timer per request:
    reads in progress sit in a dict that a check once a second looks through, cancelling the reads past their
    deadline. For the relay and for Litestar's routes (credentials, admin) alike."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._reading: dict[asyncio.Task[Any], float] = {}  # request task -> its body's deadline (loop time)
        self._expired: set[asyncio.Task[Any]] = set()
        self._check: asyncio.TimerHandle | None = None

    def guarded(self, receive: Receive) -> Receive:
        """receive, with a deadline on the request's body; once the body is in, receive as it is (a streaming
        answer listens on it for the client's disconnect as long as it streams)."""
        deadline: float | None = None
        whole = False

        async def receive_in_time() -> Any:
            nonlocal deadline, whole
            if whole:
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout_s
            message = await self._received(receive, deadline, loop)
            whole = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return receive_in_time

    async def _received(self, receive: Receive, deadline: float, loop: asyncio.AbstractEventLoop) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self._reading[task] = deadline
        if self._check is None:
            self._check = loop.call_later(1.0, self._cancel_late_reads)
        try:
            return await receive()  # the one suspension point here: a cancellation of the check lands on it
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            task.uncancel()
            raise BodyTooSlow(f"the request body did not arrive within {self.timeout_s:g} s") from None
        finally:
            del self._reading[task]
            self._expired.discard(task)

    def _cancel_late_reads(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in self._reading.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._check = loop.call_later(1.0, self._cancel_late_reads) if self._reading else None


def refuse_announced(headers: dict[str, str], limit: int) -> None:
    """For a client waiting for 100 Continue (which the server sends once the body is asked for): BodyTooLarge now
    when the Content-Length it announced is over the limit. RFC 9110, 10.1.1: a server that will refuse the request
    answers with a final status code instead, so the body is not sent for nothing."""
    announced = whole_number(headers.get("content-length", ""))
    if announced is not None and announced > limit:
        raise BodyTooLarge(f"request body too large: it announced {announced} bytes, the hub accepts at most {limit}")


def refuse_encoded(headers: dict[str, str]) -> None:
    """EncodedBody for a request body sent with a content coding: the hub checks, caches, logs and forwards a body as
    the JSON text it is, and no OCPI module compresses what it sends (only parties' answers come gzipped, and the
    hub undoes that). Read as it came, a gzipped body was refused as "not UTF-8 (byte 1 is 0x8b)"."""
    coding = headers.get("content-encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise EncodedBody(f"the request body is sent with Content-Encoding {coding[:40]!r}: the hub takes request "
                          "bodies uncompressed")  # fmt: skip


async def read_body(receive: Receive, limit: int, scope: Scope) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            if isinstance(refused := scope.get(REFUSED), OcpiError):  # what hub/http_protocol.py answered and why
                raise refused
            raise NotFound("the client went away before sending its whole request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body too large: the hub accepts at most {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
