"""The control plane's HTTP client: httpx, connecting only to addresses the hub calls parties at, each answer read
whole within a time limit and up to a size (hub.party_api calls parties with it)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import httpx

from hub.request_context import HUB_INSTANCE_HEADER
from routing.forward import read_capped
from routing.party_addresses import GuardedBackend, for_hub

if TYPE_CHECKING:
    from hub.settings import Settings
    from storage.log_row import LogEntry


@dataclass(frozen=True, slots=True)
class Fetched:
    """A party's answer as the control plane read it: the body with any gzip undone."""

    status_code: int
    headers: httpx.Headers
    content: bytes


class PartyClient(httpx.AsyncClient):
    """The control plane's client: httpx with the hub's timeouts and keep-alive, reading at most
    OCPI_HUB_MAX_BODY_BYTES of an answer (a party's mistake, or a few kB of gzip that inflate to gigabytes, must not
    take the hub's memory), each answer whole within OCPI_HUB_FORWARD_TIMEOUT_S."""

    def __init__(self, settings: Settings) -> None:
        self.party_addresses = for_hub(settings.party_networks_allowed, settings.listen)
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(keepalive_expiry=settings.party_keep_alive_s))
        # httpx has no public way to give its pool a network backend; every new connection (a redirect's too) goes
        # through this one, which connects only to addresses the hub calls parties at (tests/test_party_addresses.py).
        # Given a transport, httpx uses no HTTP_PROXY of the environment, which would connect where no check looks.
        if not hasattr(transport._pool, "_network_backend"):  # an httpx/httpcore that renamed it: no unguarded start
            raise RuntimeError("httpcore's pool has no _network_backend: the party address policy cannot be installed")
        transport._pool._network_backend = GuardedBackend(self.party_addresses)
        super().__init__(timeout=httpx.Timeout(settings.forward_timeout_s, connect=5.0), transport=transport,
                         headers={HUB_INSTANCE_HEADER: settings.hub_instance})  # fmt: skip
        self.max_answer_bytes = settings.max_body_bytes
        self.answer_timeout_s = settings.forward_timeout_s
        self.hub_url = settings.public_url  # a URL under it is never a party's (routing.rewrite.why_not_callable)
        self.hub_instance = settings.hub_instance  # an answer marked with it is the hub's own, under any host name

    async def fetch(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None = None,
        *,
        redirects: bool = True,
        row: LogEntry | None = None,
    ) -> Fetched:
        """The answer, a GET's redirects followed (unless redirects is False: a URL a party gave, whose redirect
        would lead where routing.rewrite.why_not_callable did not look); AnswerTooLarge (4000) once it is larger
        than the cap, httpx.ReadTimeout once it took longer than the timeout. httpx's own timeouts count per
        read: a party sending a byte now and then would hold the call, and the still-alive round or location
        sync waiting for it, for ever. An anyio deadline, not asyncio.timeout: httpcore shields parts of its
        work from cancellation with anyio, and with asyncio.timeout 250 concurrent calls with a 0.3 s deadline
        ran for up to 2.7 s (CI saw a still-alive round stall); an anyio scope delivers its cancellation again
        until the scope ends. With row (the call's routing-log row), the time from sending the request until its
        answer was read whole, or the call failed, is its receiver_ms (httpx's wait for a connection of its pool
        included: httpx does not tell it apart)."""
        started = time.perf_counter()
        # Only a GET's: httpx, like browsers, turns a POST or PUT redirected with 301/302 into a body-less GET, so
        # a credentials exchange would "succeed" with the wrong call; such an answer is an error of its own instead.
        try:
            with anyio.fail_after(self.answer_timeout_s):
                async with self.stream(
                    method, url, headers=headers, content=content, follow_redirects=redirects and method == "GET"
                ) as answer:
                    # aiter_bytes undoes gzip: the cap counts what the hub would hold
                    body = await read_capped(answer.aiter_bytes(), self.max_answer_bytes, f"{method} {url}")
        except TimeoutError:
            late = f"{method} {url} did not answer in full within {self.answer_timeout_s:g} s"
            raise httpx.ReadTimeout(late) from None
        finally:
            if row is not None:
                row.receiver_ms = round((time.perf_counter() - started) * 1000, 3)
        return Fetched(answer.status_code, answer.headers, body)
