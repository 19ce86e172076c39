"""Sends a request to a party over the one shared aiohttp session (the data plane's hot path).

aiohttp's exceptions are translated into the hub's: a timeout is 4002, a connection problem before the answer 4003
(routing.forward_failures words them for a party), an answer that does not parse as HTTP or breaks off 4000 (the
receiver got the request). An answer larger than OCPI_HUB_MAX_BODY_BYTES is 4000 (`read_capped`, which the control
plane's httpx client uses too), and so is one with a status that is no HTTP status. A request goes out on one of the
hub's connections to the receiver's server that its caller may take (routing.fair_share); one that found none in half
its deadline is 4000, not forwarded.
"""

from __future__ import annotations

import asyncio
import re
import time
import traceback
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import aiohttp
import msgspec
import yarl

from hub.errors import (
    AnswerNotRelayable,
    AnswerTooLarge,
    AnswerUnreadable,
    ShareInUse,
)
from hub.metrics import observe_connection_wait, observe_forward
from routing.fair_share import HUB_ITSELF, CallerShares, Key
from routing.forward_failures import not_connected_in_time, not_reached, timed_out
from routing.party_addresses import PartyAddresses

if TYPE_CHECKING:
    from storage.log_row import LogEntry

# Headers of the receiver's answer the hub passes on (Link and Location are rewritten by the relay).
RELAYED_RESPONSE_HEADERS = ("content-type", "x-total-count", "x-limit", "link", "location")


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names, only RELAYED_RESPONSE_HEADERS
    body: bytes
    # RELAYED_RESPONSE_HEADERS the party sent with characters HTTP does not allow in a value: not relayed
    unwritable: tuple[str, ...] = ()


# The most a forward waits for a new connection to the receiver (aiohttp's pool is never full when a forward reaches
# it: routing.fair_share counts its connections first): a party not taking connections is answered 4003 this soon.
_CONNECT_S = 5.0
# The longest header field of an answer the hub reads (aiohttp's default: 8,190 bytes): a Link whose next page's URL is
# as long as the hub keeps (hub.ocpi.relayed_urls.MAX_NEXT_URL_CHARS) and another of 8 KiB besides; aiohttp reads 128
# fields at most, so an answer's head stays within about the body's OCPI_HUB_MAX_BODY_BYTES.
MAX_HEADER_FIELD_BYTES = 80 * 1024
# A party's OCPI status_code as the routing log's integer column holds it: a larger number is no status code.
OcpiStatusCode = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
# What an HTTP/1.1 server must not write in a header value (uvicorn refuses it, dropping the connection).
_UNWRITABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


class _Status(msgspec.Struct):
    status_code: OcpiStatusCode | None = None


_status_decoder = msgspec.json.Decoder(_Status)


def ocpi_status_of(body: bytes) -> int | None:
    """The OCPI status_code of an answer, or None for a body that is no OCPI envelope (an HTML error page, say)."""
    try:
        return _status_decoder.decode(body).status_code
    except (msgspec.DecodeError, RecursionError):  # RecursionError: hub.errors.NESTED_TOO_DEEPLY
        return None


def open_session(
    timeout_s: float, keep_alive_s: float, addresses: PartyAddresses, connections_per_party: int = 64
) -> aiohttp.ClientSession:
    """The process-wide client session: keep-alive connections, a bounded pool per receiving host, no cookies, and
    new connections only to the addresses the hub calls parties at.

    A connection idle for keep_alive_s is not used again, so that no request goes out on a connection the party is
    closing: one that did would fail with 4003 though the party is up, since nothing is sent twice (below)."""
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=connections_per_party, keepalive_timeout=keep_alive_s, ttl_dns_cache=60,
        # each resolved address (a literal one too, which aiohttp does not resolve) as it is about to be connected to
        socket_factory=addresses.socket_factory,
    )  # fmt: skip
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=client_timeout(timeout_s),
        auto_decompress=True,
        # transport_and_format.asciidoc: Content-Type application/json on a request with a body (the relay sets it);
        # without one "the Content-Type header MAY be omitted": not aiohttp's application/octet-stream on a POST
        skip_auto_headers=("User-Agent", "Content-Type"),
        # One session serves every caller: a cookie one party sets must never ride along on another's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        max_field_size=MAX_HEADER_FIELD_BYTES,
    )
    # aiohttp sends a GET, PUT or DELETE once more when the connection drops before the answer, though the party may
    # have taken the first: it would get the request twice with one routing-log row. transport_and_format.asciidoc,
    # Offline behaviour: a failed request is not retried; the caller gets 4003 and the row says what happened.
    session._retry_connection = False  # no public switch (aiohttp 3.14); tests/test_receiver_answers.py checks it
    return session


async def forward(
    session: aiohttp.ClientSession,
    method: str,
    url: str | yarl.URL,
    headers: dict[str, str],
    body: bytes,
    timeout_s: float,
    max_bytes: int,
    shares: CallerShares | None = None,
    caller: int = HUB_ITSELF,
    receiver: str | None = None,
    row: LogEntry | None = None,
    still_wanted: Callable[[], None] | None = None,
) -> Answer:
    """The receiver's answer, at most max_bytes of it (decompressed): a larger one is AnswerTooLarge (4000), one
    with a status outside 200-599 AnswerNotRelayable (4000). With shares (every forward but a test's), the request goes
    out on a connection to the receiver's host that its caller may take (routing.fair_share), waiting for one if there
    is none (_wait_for_share). With receiver, the time of the exchange with the receiver (not of that wait) is
    observed as ocpi_hub_forward_duration_seconds{receiver}; with row, the routing-log row of the request, that time
    is its receiver_ms, and the wait its connection_wait_ms (0 for none; the wait in vain of one not forwarded).
    still_wanted, called once the request has its connection and before it is sent, raises for it not to be sent."""
    sent = f"{method} {url}"  # for the routing log (OcpiError.detail), not for the caller: a receiver's own URL
    if shares is None:
        if still_wanted is not None:
            still_wanted()
        return await _exchange(session, method, url, headers, body, session.timeout, sent, max_bytes)
    target = url if isinstance(url, yarl.URL) else yarl.URL(url)
    key = (caller, (target.raw_host, target.port))  # aiohttp's own limit counts per host and port (ConnectionKey)
    timeout = session.timeout
    if not shares.take(key):
        timeout = await _wait_for_share(shares, key, timeout_s, sent, row)
    elif row is not None:
        row.connection_wait_ms = 0.0
    if still_wanted is not None:
        try:
            still_wanted()
        except BaseException:
            shares.give_back(key)
            raise
    started = time.perf_counter()
    try:
        return await _exchange(session, method, url, headers, body, timeout, sent, max_bytes)
    finally:
        shares.give_back(key)
        took = time.perf_counter() - started
        if receiver is not None:
            observe_forward(receiver, took)
        if row is not None:
            row.receiver_ms = round(took * 1000, 3)


async def _wait_for_share(
    shares: CallerShares, key: Key, timeout_s: float, sent: str, row: LogEntry | None
) -> aiohttp.ClientTimeout:
    """Wait, at most half of timeout_s, for a connection the caller may take; the deadline left for the forward itself
    (half of timeout_s at least), or ShareInUse: the request was not forwarded. All within timeout_s, as any forward.
    Had a request waited the whole deadline, it would take the connection of one timing out ahead of it with next to
    nothing of its own deadline left, and go to the receiver only to be answered 4002 (which says the receiver got
    it)."""
    started = time.monotonic()
    at_most = timeout_s / 2
    waited_for = "caller_share" if shares.in_flight(key)[0] >= shares.share else "connections"
    try:
        await shares.wait(key, at_most)
    except TimeoutError:
        waited = time.monotonic() - started
        observe_connection_wait(waited_for, False, waited)
        if row is not None:
            row.connection_wait_ms = round(waited * 1000, 3)
        raise _not_forwarded(shares, key, at_most, sent) from None
    waited = time.monotonic() - started
    observe_connection_wait(waited_for, True, waited)
    if row is not None:
        row.connection_wait_ms = round(waited * 1000, 3)
    return client_timeout(timeout_s - waited)


def client_timeout(total_s: float) -> aiohttp.ClientTimeout:
    """A forward's deadline, and within it the connect timeout: _CONNECT_S, or nine tenths of a deadline too short for
    that (the test hub's 2 s). Were the two equal, the deadline's timer, started first, would end a connect still under
    way with a TimeoutError (4002, "forwarded") rather than aiohttp's ConnectionTimeoutError (4003, nothing sent)."""
    return aiohttp.ClientTimeout(total=total_s, connect=min(_CONNECT_S, 0.9 * total_s))


def _not_forwarded(shares: CallerShares, key: Key, at_most: float, sent: str) -> ShareInUse:
    """Why a request waited in vain: its caller's share was in flight, or the connections to the server were."""
    mine, everyone = shares.in_flight(key)
    waited = f"for {at_most:g} s (half the hub's forward timeout)"
    if mine >= shares.share:
        many = f"{shares.share} request{'s' if shares.share > 1 else ''}"
        told = (
            f"not forwarded: {waited} the calling platform had {many} in flight to this receiver's server, the most "
            "the hub sends of one platform's there at once; send it again once fewer are"
        )
    elif everyone >= shares.connections:
        told = (
            f"not forwarded: no connection to this receiver's server was free within {at_most:g} s (half the hub's "
            f"forward timeout): all {shares.connections} the hub keeps there were in use; send it again later"
        )
    else:
        told = (
            f"not forwarded: no connection to this receiver's server was free for the calling platform within "
            f"{at_most:g} s (half the hub's forward timeout): it had {mine} requests in flight there, and the hub "
            f"keeps the last {shares.reserve} of its {shares.connections} connections there for platforms with fewer "
            f"than {shares.floor}; send it again once fewer are"
        )
    return ShareInUse(told, f"{sent} {told}")


async def _exchange(
    session: aiohttp.ClientSession,
    method: str,
    url: str | yarl.URL,
    headers: dict[str, str],
    body: bytes,
    timeout: aiohttp.ClientTimeout,
    sent: str,
    max_bytes: int,
) -> Answer:
    try:
        # Redirects are not followed: a hub relays the receiver's answer, a 3xx included (aiohttp would turn a POST
        # redirected with 301/302 into a GET without its body, sent somewhere the hub was not asked to send it).
        async with session.request(method, url, headers=headers, data=body or None, allow_redirects=False,
                                   timeout=timeout) as response:  # fmt: skip
            if not 200 <= response.status <= 599:  # aiohttp takes any three digits, and passes a 101 on
                told = f"the receiver answered with HTTP status {response.status}, which is no status the hub can relay"
                raise AnswerNotRelayable(told, f"{sent}: {told}")
            try:
                payload = await _read(response, max_bytes, sent)
            except TimeoutError:  # an OSError too: a receiver too slow with its body is 4002, as one without an answer
                raise
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
                # Its status line came: the receiver got the request (not 4003, below), and its answer broke off.
                _release_frames(exc)
                told = "the receiver got the request, but the hub could not read its answer: it broke off early"
                raise AnswerUnreadable(told, f"{sent}: {told} ({type(exc).__name__}: {_cut(str(exc))})") from None
            got = response.headers
            relayed = {name: _as_sent(value) for name in RELAYED_RESPONSE_HEADERS if (value := got.get(name))}
            if len(links := got.getall("link", ())) > 1:
                # RFC 8288, 3: Link is a list (#link-value), which a party may send as several fields (RFC 9110, 5.3:
                # joined with ", "); the first alone drops the others' rel="next", and the caller takes its page
                # for the last
                relayed["link"] = _as_sent(", ".join(links))
            unwritable = tuple(name for name, value in relayed.items() if _UNWRITABLE.search(value))
            for name in unwritable:
                del relayed[name]
            return Answer(response.status, relayed, payload, unwritable)
    except aiohttp.ConnectionTimeoutError:  # a TimeoutError too: no connection in time, nothing sent
        raise not_connected_in_time(timeout, sent) from None
    except TimeoutError:
        raise timed_out(method, timeout, timeout is not session.timeout, sent) from None
    except aiohttp.ClientResponseError as exc:  # what came back does not parse as HTTP (redirects are not followed)
        # Not 4003, "unable to reach the receiving party": told that, a sender would send a CDR or a command again.
        told = "the receiver got the request, but the hub could not read its answer as HTTP"
        raise AnswerUnreadable(told, f"{sent}: {told} ({_cut(exc.message)})") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: a URL aiohttp will not call (a backstop)
        _release_frames(exc)
        raise not_reached(exc, method, sent) from None
    except asyncio.CancelledError:
        raise


def _cut(text: str, at_most: int = 200) -> str:
    return text if len(text) <= at_most else f"{text[:at_most]}..."


def _release_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames in the tracebacks of exc and of the exceptions behind it. aiohttp
    keeps a failed connection's exception in a local of a frame that the exception's own traceback holds: a
    reference cycle of 75 objects per refused connection, which only the garbage collector frees (a collection
    of several ms every ~130 failures, while a receiver is down). The hub keeps none of them: it answers with its
    own error. (A timed-out forward leaves no such cycle.)"""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)  # a frame still executing (ours) is left as it is
        pending += (current.__cause__, current.__context__)


def _as_sent(value: str) -> str:
    """A header value as the hub's server writes it (Latin-1) that gives back the receiver's bytes: aiohttp decodes
    them as UTF-8 (what is not UTF-8 as surrogates), which the server could not write or would write changed."""
    return value if value.isascii() else value.encode("utf-8", "surrogateescape").decode("latin-1")


async def _read(response: aiohttp.ClientResponse, max_bytes: int, what: str) -> bytes:
    length, encoded = response.content_length, response.headers.get("content-encoding", "identity") != "identity"
    if length is not None and not encoded:  # the usual answer: its size is known before reading it
        if length > max_bytes:
            raise answer_too_large(what, max_bytes)
        return await response.read()
    # Chunked, or compressed (aiohttp inflates it: a few kB of gzip can become gigabytes): counted as it comes.
    return await read_capped(response.content.iter_any(), max_bytes, what)


async def read_capped(chunks: AsyncIterable[bytes], max_bytes: int, what: str) -> bytes:
    """An answer's body from its chunks (as decoded), or AnswerTooLarge once they add up to more than max_bytes."""
    kept, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise answer_too_large(what, max_bytes)
        kept.append(chunk)
    return b"".join(kept)


def answer_too_large(what: str, max_bytes: int) -> AnswerTooLarge:
    told = f"the answer was larger than {max_bytes} bytes, more than the hub takes (OCPI_HUB_MAX_BODY_BYTES)"
    return AnswerTooLarge(told, f"{what}: {told}")
