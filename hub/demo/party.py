"""A demo OCPI platform (one CPO or eMSP role): its HTTP server, its registration at the hub, its calls through it."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web

from hub.demo.payloads import Site, now

# The interfaces each role implements (version_information_endpoint.asciidoc, Endpoint); credentials always.
MODULES = {
    "CPO": {"locations": "SENDER", "sessions": "SENDER", "cdrs": "SENDER", "tariffs": "SENDER",
            "commands": "RECEIVER", "tokens": "RECEIVER", "hubclientinfo": "RECEIVER"},
    "EMSP": {"locations": "RECEIVER", "sessions": "RECEIVER", "cdrs": "RECEIVER", "tariffs": "RECEIVER",
             "commands": "SENDER", "tokens": "SENDER", "hubclientinfo": "RECEIVER"},
}  # fmt: skip
OLD_TOKEN_GRACE_S = 10.0


def token_header(token: str) -> dict[str, str]:
    return {"Authorization": "Token " + base64.b64encode(token.encode()).decode()}


def envelope(data: Any, status_code: int = 1000, message: str | None = None) -> dict[str, Any]:
    return {"data": data, "status_code": status_code, "status_message": message, "timestamp": now()}


@dataclass
class Reply:
    """What the hub answered to one of the party's requests."""

    http_status: int
    status_code: int | None
    data: Any
    headers: httpx.Headers


@dataclass
class Command:
    """A command a demo CPO accepted and still has to carry out (then POST its CommandResult)."""

    name: str
    body: dict[str, Any]
    correlation_id: str | None


@dataclass
class DemoParty:
    role: str  # CPO | EMSP
    country_code: str
    party_id: str
    name: str
    sites: tuple[Site, ...] = ()  # a CPO's locations
    token_uids: tuple[str, ...] = ()  # an eMSP's RFID cards
    token_b: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    hub_token: str | None = None
    own: dict[str, dict[str, Any]] = field(default_factory=dict)  # module -> id -> object this party owns
    received: dict[str, dict[str, Any]] = field(default_factory=dict)  # module -> key -> object pushed to it
    commands: asyncio.Queue[Command] = field(default_factory=asyncio.Queue)  # a CPO's accepted commands
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # an eMSP's CommandResults by response id
    requests_served: int = 0
    old_token_b: str | None = None  # for a moment after a renewal, while the hub switches to the new token B
    old_token_until: float = 0.0
    remember: Callable[[DemoParty], None] | None = None  # keeps the hub token for the next run of the demo

    def accepts(self, token: str) -> bool:
        """Our token B, or the one before it for a few seconds after the hub renewed the tokens: requests the hub
        relays while it finishes the renewal still carry that one."""
        if token == self.token_b:
            return True
        return self.old_token_b is not None and token == self.old_token_b and time.monotonic() < self.old_token_until

    def renew_tokens(self, hub_token: str) -> None:
        """The hub PUT its credentials (credentials.asciidoc, Updating): its new token from now on, a new token B."""
        self.hub_token = hub_token
        self.old_token_b, self.token_b = self.token_b, secrets.token_urlsafe(24)
        self.old_token_until = time.monotonic() + OLD_TOKEN_GRACE_S
        if self.remember is not None:
            self.remember(self)

    def forget_hub(self) -> None:
        """The hub DELETEd our credentials (credentials.asciidoc, Unregistering): no more calls to it, and no token
        of ours works for it any more."""
        self.hub_token = None
        self.old_token_b, self.token_b = None, secrets.token_urlsafe(24)
        if self.remember is not None:
            self.remember(self)

    def __post_init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._runner: web.AppRunner | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.country_code, self.party_id)

    @property
    def label(self) -> str:
        return f"{self.role} {self.country_code}-{self.party_id}"

    @property
    def versions_url(self) -> str:
        return f"{self.base}/ocpi/versions"

    # ---- serving ----
    async def start(self) -> None:
        from hub.demo.endpoints import handle

        async def handler(request: web.Request) -> web.StreamResponse:
            return await handle(self, request)

        app = web.Application(client_max_size=10_000_000)
        app.router.add_route("*", "/{tail:.*}", handler)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._socket.close()

    def endpoints(self) -> list[dict[str, str]]:
        details = f"{self.base}/ocpi/2.2.1"
        found = [{"identifier": "credentials", "role": "SENDER", "url": f"{details}/credentials"}]
        for module, interface in MODULES[self.role].items():
            found.append({"identifier": module, "role": interface, "url": f"{details}/{module}/{interface.lower()}"})
        return found

    def credentials(self) -> dict[str, Any]:
        return {
            "token": self.token_b,
            "url": self.versions_url,
            "roles": [{"role": self.role, "country_code": self.country_code, "party_id": self.party_id,
                       "business_details": {"name": self.name}}],
        }  # fmt: skip

    # ---- registering ----
    async def register(self, http: httpx.AsyncClient, hub_versions_url: str, token_a: str) -> Reply:
        """credentials.asciidoc: GET versions and details with token A, POST our credentials, keep token C."""
        return await self._exchange(http, hub_versions_url, token_a, "POST")

    async def update_registration(self, http: httpx.AsyncClient, hub_versions_url: str) -> Reply:
        """A new run of the demo: our URL and token B changed, so PUT them (the hub rotates token C)."""
        assert self.hub_token is not None
        return await self._exchange(http, hub_versions_url, self.hub_token, "PUT")

    async def _exchange(self, http: httpx.AsyncClient, versions_url: str, token: str, method: str) -> Reply:
        versions = (await http.get(versions_url, headers=token_header(token))).json()["data"]
        details_url = next(v["url"] for v in versions if v["version"] == "2.2.1")
        details = (await http.get(details_url, headers=token_header(token))).json()["data"]
        url = next(e["url"] for e in details["endpoints"] if e["identifier"] == "credentials")
        answer = await http.request(method, url, headers=token_header(token), json=self.credentials())
        reply = _reply(answer)
        if reply.status_code == 1000:
            self.hub_token = reply.data["token"]
        return reply

    # ---- calling the hub ----
    async def call(
        self,
        http: httpx.AsyncClient,
        hub_base: str,
        method: str,
        path: str,
        *,
        to: tuple[str, str] | None = None,
        body: Any = None,
        correlation_id: str | None = None,
    ) -> Reply:
        """A functional request through the hub; path is relative to /ocpi/2.2.1/ or a whole hub URL."""
        headers = token_header(self.hub_token or "") | {
            "X-Request-ID": str(uuid.uuid4()),
            "X-Correlation-ID": correlation_id or str(uuid.uuid4()),
            "OCPI-from-country-code": self.country_code,
            "OCPI-from-party-id": self.party_id,
        }
        if to is not None:
            headers |= {"OCPI-to-country-code": to[0], "OCPI-to-party-id": to[1]}
        url = path if path.startswith("http") else f"{hub_base}/ocpi/2.2.1/{path}"
        return _reply(await http.request(method, url, headers=headers, json=body))


def _reply(answer: httpx.Response) -> Reply:
    try:
        parsed = answer.json()
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return Reply(answer.status_code, None, parsed, answer.headers)
    return Reply(answer.status_code, parsed.get("status_code"), parsed.get("data"), answer.headers)
