"""The hub's HTTP protocol (hub/http_protocol.py) under uvicorn, serving small apps of the tests' own over raw sockets:
a response's head joined to its body, and the deadlines for a request head that does not come, one that grows too
large, and an answer the client stops reading."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from hub.http_protocol import HeadWithBody, OcpiHttpToolsProtocol
from tests.parties import free_port
from tests.test_transport_errors import _is_envelope


@contextlib.contextmanager
def _uvicorn_with_hub_protocol(app, **options) -> Iterator[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """uvicorn with the hub's HTTP protocol (as `ocpi-hub serve` runs it), serving `app` in a thread of its own."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=OcpiHttpToolsProtocol, loop="uvloop",
                            lifespan="off", log_config=None, **options)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _first_read(address: tuple[str, int], request: bytes, then: bytes = b"") -> tuple[bytes, bytes]:
    """What the first recv() gives, and the rest of the answer up to the connection's close."""
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(request)
        first = client.recv(65536)
        if then:
            client.sendall(then)
        rest = b""
        while chunk := client.recv(65536):
            rest += chunk
    return first, rest


def test_a_response_head_waits_for_its_body_but_streamed_heads_and_100_continue_go_out_at_once() -> None:
    # The app pauses 0.3 s between a response's head and its body. uvicorn writes a head as soon as it has it:
    # two system calls and two segments a response, which the hub's protocol makes one for a Content-Length answer.
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        request = await receive()
        streamed = scope["path"] == "/streamed"
        body = request.get("body", b"") or b"the body"
        length = [] if streamed else [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": [*length, (b"connection", b"close")]})
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": body})

    with _uvicorn_with_hub_protocol(app) as address, _collector_off():
        first, rest = _first_read(address, b"GET /whole HTTP/1.1\r\nHost: hub\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\nthe body") and rest == b""

        first, rest = _first_read(address, b"GET /streamed HTTP/1.1\r\nHost: hub\r\n\r\n")  # chunked: head at once
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in first and rest == b"8\r\nthe body\r\n0\r\n\r\n"

        first, rest = _first_read(address, b"HEAD /whole HTTP/1.1\r\nHost: hub\r\n\r\n")  # no body will follow
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n") and rest == b""

        # A client that sends its body only after "100 Continue" gets it before the app has an answer
        first, rest = _first_read(
            address, b"PUT /whole HTTP/1.1\r\nHost: hub\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", b"hello"
        )
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"\r\n\r\nhello")

        # Answered requests leave nothing behind that only the garbage collector could free (a reference cycle a
        # request costs a collection of several ms every few hundred requests under load).
        assert not [o for o in gc.get_objects() if isinstance(o, HeadWithBody)]


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_an_answer_the_client_stops_reading_is_dropped_after_the_keep_alive_timeout_not_held_for_ever() -> None:
    # uvicorn kept such an answer in the connection's write buffer (here 64 MB) for as long as the client stayed.
    body = b"x" * (64 << 20)

    async def large(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"%d" % len(body))]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})

    with _uvicorn_with_hub_protocol(large, timeout_keep_alive=2) as address:
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            client.connect(address)
            client.sendall(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n")
            assert client.recv(1024).startswith(b"HTTP/1.1 200 OK")
            time.sleep(5.5)  # not reading: its writes pause, and end 2 s after the last progress (looked at each s)
            client.settimeout(5)
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := client.recv(1 << 20):
                    received += len(chunk)
            assert received < len(body) // 2, received  # what was in flight, then the connection ended
        # A client that reads slowly but keeps reading gets all of it, though that takes longer than the 2 s.
        with socket.create_connection(address, timeout=5) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
            started, received = time.monotonic(), 0
            while chunk := client.recv(1 << 20):
                received += len(chunk)
                time.sleep(0.04)  # at most 25 MB/s: about 3 s for the 64 MB
            assert received > len(body) and time.monotonic() - started > 2.5


async def _hello(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "http":
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})


def _answer_while_trickling(
    client: socket.socket, trickle: bytes, every_s: float, give_up_s: float, piece: int = 1
) -> bytes:
    """Send `trickle` a piece (a byte) every every_s until the server answers and closes; what it answered."""
    client.settimeout(every_s)
    answer, ends = b"", time.monotonic() + give_up_s
    for byte in (trickle[i : i + piece] for i in range(0, len(trickle), piece)):
        assert time.monotonic() < ends, f"no answer within {give_up_s} s"
        with contextlib.suppress(OSError):  # the server closed: what it said is read below
            client.sendall(byte)
        with contextlib.suppress(TimeoutError):
            while chunk := client.recv(65536):
                answer += chunk
            return answer  # closed
    raise AssertionError("trickled everything without an answer")


def test_a_request_head_that_does_not_come_is_answered_408_and_its_connection_closed() -> None:
    # uvicorn waits for ever for a request's head: a connection that sends nothing, or a byte now and then, holds
    # its socket and file descriptor. The hub's protocol answers 408 once one has waited timeout_keep_alive (the
    # hub's OCPI_HUB_KEEP_ALIVE_S; 2 s here).
    with _uvicorn_with_hub_protocol(_hello, timeout_keep_alive=2) as address:
        with socket.create_connection(address, timeout=10) as silent:
            started = time.monotonic()
            answer = b""
            while chunk := silent.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") and 1.5 < time.monotonic() - started < 4.5
        with socket.create_connection(address) as trickling:
            started = time.monotonic()
            answer = _answer_while_trickling(trickling, b"GET / HTTP/1.1\r\nHost: hub\r\nX-Slow: " + b"a" * 100, 0.2, 8)
            assert answer.startswith(b"HTTP/1.1 408") and 1.5 < time.monotonic() - started < 4.5
        envelope = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert _is_envelope(envelope) and envelope["status_code"] == 2000
        assert envelope["status_message"] == "no complete request head arrived within 2 s"
        # A kept-alive connection whose requests come, slowly, is left alone: each one gets its answer.
        with socket.create_connection(address, timeout=10) as steady:
            for _ in range(6):
                steady.sendall(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n")
                assert steady.recv(65536).startswith(b"HTTP/1.1 200 OK")
                time.sleep(1.2)


def test_a_request_head_over_64_kib_is_answered_431_at_once_while_smaller_ones_are_served() -> None:
    # httptools copies a header's value whole for every read that adds to it: one client sending an endless header
    # held the worker's event loop (other requests waited 6 s once it had sent 140 MB) and grew its memory, until the
    # head deadline (OCPI_HUB_KEEP_ALIVE_S, 75 s by default) ended it.
    with _uvicorn_with_hub_protocol(_hello, timeout_keep_alive=30) as address:
        with socket.create_connection(address) as padding:
            started = time.monotonic()
            head = b"GET / HTTP/1.1\r\nHost: hub\r\nX-Padding: " + b"a" * (4 << 20)
            answer = _answer_while_trickling(padding, head, 0.05, 20, piece=64 * 1024)
            assert answer.startswith(b"HTTP/1.1 431 ") and time.monotonic() - started < 2
        envelope = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert _is_envelope(envelope) and envelope["status_code"] == 2000
        assert envelope["status_message"] == "the request line and headers are larger than the 64 KiB the hub takes"
        # A head of 60 KB that comes in many reads, and a small head with a large body in one write, are served.
        with socket.create_connection(address) as client:
            head = b"GET / HTTP/1.1\r\nConnection: close\r\nAuthorization: Token " + b"A" * 60_000 + b"\r\n\r\n"
            assert _answer_while_trickling(client, head, 0.01, 10, piece=4096).startswith(b"HTTP/1.1 200 OK")
        with socket.create_connection(address, timeout=10) as client:
            body = b"x" * (4 << 20)
            client.sendall(b"PUT / HTTP/1.1\r\nHost: hub\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            assert client.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_a_head_too_large_is_answered_414_for_its_url_alone_and_in_the_admin_apis_json_for_its_urls() -> None:
    # A long URL that came in several reads was a 431 about the headers; to the admin API, an OCPI envelope.
    too_long = "the request's URL (path and query) is longer than the 65535 bytes the hub takes"
    too_large = "the request line and headers are larger than the 64 KiB the hub takes"
    cases = [
        (b"/ocpi/versions?q=" + b"a" * 100_000, b"", b"414", too_long),
        (b"/admin/api/routing-log?q=" + b"a" * 100_000, b"", b"414", too_long),
        (b"/admin/api/parties", b"X-Padding: " + b"a" * 100_000 + b"\r\n", b"431", too_large),
    ]
    with _uvicorn_with_hub_protocol(_hello, timeout_keep_alive=30) as address:
        for url, padding, status, message in cases:
            with socket.create_connection(address) as client:
                head = b"GET " + url + b" HTTP/1.1\r\nHost: hub\r\n" + padding + b"\r\n"
                answer = _answer_while_trickling(client, head, 0.05, 20, piece=16 * 1024)
            status_line, _, body = answer.partition(b"\r\n\r\n")
            assert status_line.startswith(b"HTTP/1.1 " + status + b" "), (url[:30], answer[:300])
            said = json.loads(body)
            if url.startswith(b"/admin/"):
                assert said == {"error": message}, said
            else:
                assert _is_envelope(said) and (said["status_code"], said["status_message"]) == (2000, message), said
