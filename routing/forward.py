"""Sends a request to a party over the one shared aiohttp session (the data plane's hot path).

aiohttp's exceptions are translated here into the hub's: a timeout is 4002, any connection problem 4003. An answer
larger than OCPI_HUB_MAX_BODY_BYTES is 4000 (`read_capped`, which the control plane's httpx client uses too).
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass

import aiohttp
import msgspec
from yarl import URL

from hub.deadlines import Deadlines
from hub.errors import AnswerTooLarge, ForwardTimeout, ReceiverNotConnected

# Headers of the receiver's answer the hub passes on (Link and Location are rewritten by the relay).
RELAYED_RESPONSE_HEADERS = ("content-type", "x-total-count", "x-limit", "link", "location")
CONNECT_TIMEOUT_S = 5.0


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names, only RELAYED_RESPONSE_HEADERS
    body: bytes


class _Status(msgspec.Struct):
    status_code: int | None = None


_status_decoder = msgspec.json.Decoder(_Status)


def ocpi_status_of(body: bytes) -> int | None:
    """The OCPI status_code of an answer, or None for a body that is no OCPI envelope (an HTML error page, say)."""
    try:
        return _status_decoder.decode(body).status_code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class Forwarder:
    """The data plane's one aiohttp session (keep-alive connections, a bounded pool per receiving host, no cookies)
    and the deadline of every forward in flight on it.

    A connection idle for keep_alive_s is not used again: aiohttp resends a PUT or GET that met a connection the
    party closed at that moment, but not a POST or PATCH, which would fail with 4003 though the party is up."""

    def __init__(self, deadlines: Deadlines, timeout_s: float, keep_alive_s: float, connections_per_party: int = 64):
        self.timeout_s = timeout_s
        self._deadlines = deadlines
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=connections_per_party, keepalive_timeout=keep_alive_s, ttl_dns_cache=60
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            # No total timeout, which costs a timer per request: `send` keeps timeout_s through the deadlines.
            timeout=aiohttp.ClientTimeout(total=None, connect=min(timeout_s, CONNECT_TIMEOUT_S)),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            # One session serves every caller: a cookie one party sets must never ride along on another's request.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def send(self, method: str, url: str | URL, headers: dict[str, str], body: bytes, max_bytes: int) -> Answer:
        """The receiver's answer within timeout_s (else 4002), at most max_bytes of it, decompressed (else 4000)."""

        def too_late() -> Exception:
            return ForwardTimeout(f"{method} {url} did not answer within {self.timeout_s:g} s")

        exchange = self._exchange(method, url, headers, body, max_bytes)
        return await self._deadlines.within(exchange, self.timeout_s, too_late)

    async def _exchange(
        self, method: str, url: str | URL, headers: dict[str, str], body: bytes, max_bytes: int
    ) -> Answer:
        try:
            async with self.session.request(
                method, url, headers=headers, data=body or None, allow_redirects=True, max_redirects=3
            ) as response:
                payload = await _read(response, max_bytes, f"{method} {url}")
                got = response.headers
                relayed = {name: _as_sent(value) for name in RELAYED_RESPONSE_HEADERS if (value := got.get(name))}
                return Answer(response.status, relayed, payload)
        except TimeoutError:  # aiohttp's connect timeout, the only one it keeps
            connect_s = min(self.timeout_s, CONNECT_TIMEOUT_S)
            raise ForwardTimeout(f"{method} {url}: no connection within {connect_s:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ReceiverNotConnected(f"{method} {url} failed: {exc or type(exc).__name__}") from None

    async def close(self) -> None:
        await self.session.close()


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
    return AnswerTooLarge(
        f"{what} answered with more than {max_bytes} bytes, more than the hub takes (OCPI_HUB_MAX_BODY_BYTES)"
    )
