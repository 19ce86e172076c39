"""uvicorn's HTTP/1.1 protocol (httptools), answering bytes that do not parse as HTTP with an OCPI envelope, and
writing each response's head and body in one system call.

uvicorn answers those bytes itself, before any of the hub's code runs, with a text/plain 400 that a party's OCPI
client cannot read. status_codes.asciidoc: errors of the transport layer get an HTTP error code "with the same
envelope".
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from hub.envelope import ocpi_timestamp
from hub.errors import ClientError
from hub.ocpi.wire import Envelope

_encoder = msgspec.json.Encoder()
_JOINED_BODY_MAX = 64 * 1024  # a larger body is written after its head rather than copied behind it


class OcpiHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this from its `except httptools.HttpParserError`: the parser's own words say what was wrong.
        parser_error = sys.exc_info()[1]
        detail = str(parser_error) if parser_error is not None and str(parser_error) else msg.rstrip(".")
        body = _encoder.encode(Envelope(status_code=ClientError.status_code, timestamp=ocpi_timestamp(),
                                        status_message=f"not a valid HTTP/1.1 request: {detail}"))  # fmt: skip
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [b"%s: %s\r\n" % (name, value) for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n"]  # fmt: skip
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # the new request's cycle; its task has not started yet
        cycle = self.cycle
        if cycle is not None and not isinstance(cycle.transport, HeadWithBody):
            cycle.transport = HeadWithBody(cycle.transport, cycle)  # type: ignore[assignment]


class HeadWithBody:
    """The connection's transport as one response cycle writes to it. uvicorn writes a response's status line and
    headers, then its body: two system calls and two TCP segments (the receiving side wakes up for each). Here the
    head of a response with a Content-Length waits for the body's first write and goes out with it; a chunked
    (streamed) response's head, an answer to HEAD and "100 Continue" go out at once, as before."""

    __slots__ = ("_cycle", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        # Needed until the head is written, then dropped: the cycle holds this wrapper, and a reference cycle left
        # by every request would be freed only by the garbage collector (measured: a 5 ms pause every 650 requests).
        self._cycle: RequestResponseCycle | None = cycle
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if len(data) <= _JOINED_BODY_MAX:
                self._transport.write(held + data)
                return
            self._transport.write(held)
        elif self._cycle is not None and self._cycle.response_started:  # the head
            cycle, self._cycle = self._cycle, None
            # uvicorn has decided on chunked encoding (None: Content-Length) before it writes the head
            if not cycle.chunked_encoding and cycle.scope["method"] != "HEAD":
                self._held = data  # uvicorn writes the body next, even an empty one
                return
        self._transport.write(data)

    def close(self) -> None:
        if self._held is not None:  # the application failed between head and body: the head goes out, as before
            held, self._held = self._held, None
            self._transport.write(held)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
