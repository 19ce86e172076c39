"""uvicorn's HTTP/1.1 protocol (httptools), answering bytes that do not parse as HTTP with an OCPI envelope, writing
each response's head and body in one system call, and closing a connection whose request head does not come or
grows past HEAD_MAX_BYTES.

uvicorn answers those bytes itself, before any of the hub's code runs, with a text/plain 400 that a party's OCPI
client cannot read. status_codes.asciidoc: errors of the transport layer get an HTTP error code "with the same
envelope". A request head for the admin API gets the admin API's JSON instead, as its other errors do.
"""

from __future__ import annotations

import asyncio
import re
import sys
import weakref
from typing import Any

import msgspec
import structlog
from httptools import HttpParserCallbackError, HttpParserError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from hub.envelope import ocpi_timestamp
from hub.errors import ClientError
from hub.ocpi.wire import Envelope
from hub.request_body import REFUSED

log = structlog.get_logger()

_encoder = msgspec.json.Encoder()
_JOINED_BODY_MAX = 64 * 1024  # a larger body is written after its head rather than copied behind it
# A request's line and headers (nginx takes 8 KiB a line, Node.js 16 KiB in all): httptools copies a header's value
# whole for every read that adds to it, so one client sending an endless header held the worker's event loop.
HEAD_MAX_BYTES = 64 * 1024
# The longest request target (path and query) httptools.parse_url takes, which uvicorn calls once the head is in: it
# keeps offsets in 16 bits (MagicStack/httptools#142).
URL_MAX_BYTES = 65_535
_SLASHES = re.compile(rb"/{2,}")


class OcpiHttpToolsProtocol(HttpToolsProtocol):
    # Bytes of the request head in progress, counted from the read after the one it began in (that read may hold the
    # end of the previous request too); None between requests and once the head is complete.
    _head_bytes: int | None = None
    _head_began = False  # in the read being parsed

    _stalled_since: float | None = None  # when the transport paused our writes (the client not reading), until resumed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        HeadDeadlines.watch(self)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._stalled_since = self.loop.time()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stalled_since = None

    def data_received(self, data: bytes) -> None:
        self._head_began = False
        super().data_received(data)
        if self._head_bytes is not None and not self._head_began:  # all of this read belongs to an unfinished head
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_MAX_BYTES and not self.transport.is_closing():
                self._refuse_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._head_began = 0, True

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this from its `except httptools.HttpParserError`: the parser's own words say what was wrong,
        # or, when a callback refused the request ("User callback error"), the words of the parser's error it raised
        # (uvicorn's URL parsing, which refuses a URL over URL_MAX_BYTES: said as a 414).
        if self._head_bytes is not None and len(self.url) > URL_MAX_BYTES:
            self._refuse_too_large()
            return
        parser_error = sys.exc_info()[1]
        if isinstance(parser_error, HttpParserCallbackError) and isinstance(parser_error.__context__, HttpParserError):
            parser_error = parser_error.__context__
        detail = str(parser_error) if parser_error is not None and str(parser_error) else msg.rstrip(".")
        self._refuse(b"400 Bad Request", f"not a valid HTTP/1.1 request: {detail}")

    def _refuse_too_large(self) -> None:
        """A request head too large to take: 414 when its URL alone is longer than URL_MAX_BYTES (RFC 9110, 15.5.15),
        else 431 (RFC 6585, 5)."""
        if len(self.url) > URL_MAX_BYTES:
            message = f"the request's URL (path and query) is longer than the {URL_MAX_BYTES} bytes the hub takes"
            self._refuse(b"414 URI Too Long", message)
        else:
            message = f"the request line and headers are larger than the {HEAD_MAX_BYTES // 1024} KiB the hub takes"
            self._refuse(b"431 Request Header Fields Too Large", message)

    def _refuse(self, status: bytes, message: str) -> None:
        """Answer with an OCPI envelope, or the admin API's JSON for a head that names its URL, and close: what came on
        this connection cannot be read as a request. A request whose body was being read learns why it ends (its
        routing-log row holds this answer)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            refused = ClientError(message)
            refused.http_status = int(status.split(b" ", 1)[0])
            cycle.scope[REFUSED] = refused  # type: ignore[literal-required]
        if self._head_bytes is not None and _SLASHES.sub(b"/", self.url).startswith(b"/admin/"):  # as hub.app routes
            body = _encoder.encode({"error": message})
        else:
            body = _encoder.encode(Envelope(status_code=ClientError.status_code, timestamp=ocpi_timestamp(),
                                            status_message=message))  # fmt: skip
        head = [b"HTTP/1.1 %s\r\n" % status]
        head += [b"%s: %s\r\n" % (name, value) for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n"]  # fmt: skip
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def waits_for_head(self) -> bool:
        """No request in progress and not idle under uvicorn's keep-alive timer: silent since it opened, or in the
        middle of a request's head (a byte of it cancelled the timer)."""
        cycle = self.cycle
        return ((cycle is None or cycle.response_complete) and self.timeout_keep_alive_task is None
                and not self.transport.is_closing())  # fmt: skip

    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # the new request's cycle; its task has not started yet
        self._head_bytes = None  # after: a URL uvicorn refuses here is still the head's (send_400_response, _refuse)
        cycle = self.cycle
        if cycle is not None and not isinstance(cycle.transport, HeadWithBody):
            cycle.transport = HeadWithBody(cycle.transport, cycle)  # type: ignore[assignment]


class HeadDeadlines:
    """A request's head (request line and headers) must be in within timeout_keep_alive (OCPI_HUB_KEEP_ALIVE_S) of
    the connection opening, or of the previous answer: uvicorn waits for ever on a connection that sends nothing,
    or a byte now and then, and each holds a socket and a file descriptor (granian takes the same limit as its
    header_read_timeout). No timer per request or connection: once a second the connections are looked through,
    and one that has been waiting for a head as long gets a 408 and is closed.

    The same limit holds for an answer the client stopped reading: once the transport has paused the writes (its
    buffer full) and the client has read nothing of it for as long, the connection is dropped. uvicorn would keep
    the answer in memory for as long as the client stays; a slow client that keeps reading is not cut off."""

    def __init__(self) -> None:
        self._waiting: dict[OcpiHttpToolsProtocol, tuple[object, float]] = {}  # -> (its cycle then, since when)
        self._stalled: dict[OcpiHttpToolsProtocol, tuple[int, float]] = {}  # -> (bytes left to write, since when)
        self._check: asyncio.TimerHandle | None = None

    @staticmethod
    def watch(protocol: OcpiHttpToolsProtocol) -> None:
        """Look through the connections of the protocol's event loop once a second while it has any."""
        heads = _heads.get(protocol.loop) or _heads.setdefault(protocol.loop, HeadDeadlines())
        if heads._check is None:
            heads._check = protocol.loop.call_later(1.0, heads._look, protocol.loop, protocol.connections)

    def _look(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        waiting: dict[OcpiHttpToolsProtocol, tuple[object, float]] = {}
        stalled: dict[OcpiHttpToolsProtocol, tuple[int, float]] = {}
        for protocol in list(connections):  # uvicorn's set of the server's open connections
            if not isinstance(protocol, OcpiHttpToolsProtocol):
                continue
            # (closing included: uvicorn closes an idle keep-alive connection gracefully, after its buffer is out)
            if protocol._stalled_since is not None:
                buffered = protocol.transport.get_write_buffer_size()
                left, since = self._stalled.get(protocol, (buffered, protocol._stalled_since))
                since = since if buffered >= left else now  # it read some since the last look: a new wait
                if now - since >= protocol.timeout_keep_alive:
                    log.warning("answer_not_read", stalled_s=round(now - since, 1), buffered_bytes=buffered,
                                peer=_peer(protocol.transport))  # fmt: skip
                    protocol.transport.abort()  # nothing more can be sent: it is not reading
                    continue
                stalled[protocol] = (buffered, since)
            if not protocol.waits_for_head():
                continue
            cycle, since = self._waiting.get(protocol, (protocol.cycle, now))
            if cycle is not protocol.cycle:  # it answered a request since: a new wait
                since = now
            if now - since >= protocol.timeout_keep_alive:
                limit = protocol.timeout_keep_alive
                protocol._refuse(b"408 Request Timeout", f"no complete request head arrived within {limit:g} s")
            else:
                waiting[protocol] = (protocol.cycle, since)
        self._waiting, self._stalled = waiting, stalled
        self._check = loop.call_later(1.0, self._look, loop, connections) if connections else None


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "?"


_heads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HeadDeadlines] = weakref.WeakKeyDictionary()


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
