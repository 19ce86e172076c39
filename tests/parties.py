"""Test parties: small real OCPI 2.2.1 platforms (CPO, eMSP, ...) served over HTTP on 127.0.0.1.

Each party runs an aiohttp server in a thread of its own, records every request it receives, checks the
credentials token of each one, and can play both sides of the credentials handshake with the hub.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from aiohttp import web

ALL_MODULES = ("cdrs", "chargingprofiles", "commands", "hubclientinfo", "locations", "sessions", "tariffs", "tokens")


RAW = 0  # Party.canned: an answer sent as raw bytes


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A port free now that this test run has not handed out before. The session's hub keeps the URLs of parties that
    have stopped, and goes on probing them and pushing them ClientInfo: a party started later on such a port would get
    calls meant for another (the kernel hands out a port it gave before many times in a run)."""
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def token_header(token: str) -> dict[str, str]:
    return {"Authorization": "Token " + base64.b64encode(token.encode()).decode()}


def envelope(data: Any, status_code: int = 1000, message: str | None = None) -> dict[str, Any]:
    return {"data": data, "status_code": status_code, "status_message": message, "timestamp": "2026-11-25T10:00:00Z"}


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client_port: int | None = None  # the TCP port it came from: which connection carried it
    at: float = field(default_factory=time.monotonic)  # when it arrived
    raw_path: str = ""  # as it came on the request line: percent-encoding kept, and the query


@dataclass
class Party:
    """An OCPI platform holding one or more roles, e.g. roles=[("CPO", "NL", "ABC")]."""

    roles: list[tuple[str, str, str]]
    name: str = "Test Party"
    versions: list[str] = field(default_factory=lambda: ["2.1.1", "2.2.1"])
    modules: dict[str, list[str]] = field(default_factory=dict)  # identifier -> interface roles; default by role
    versions_status: int = 200  # an HTTP error status here makes the versions endpoint fail
    omit_credentials_endpoint: bool = False
    credentials_role: str = "SENDER"  # the role its version details give its credentials endpoint
    token_b: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # the hub calls us with it
    token_a: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # for the hub's `connect`
    received: list[Received] = field(default_factory=list)
    hub_token: str | None = None  # the token this party uses to call the hub
    hub_credentials: dict[str, Any] | None = None
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # module -> objects its Sender lists
    page_size: int = 10
    delay_s: float = 0.0  # answer functional requests this late
    credentials_delay_s: float = 0.0  # take the hub's credentials POST or PUT this late
    keeps_token_b: bool = False  # answer a credentials PUT with the token B it had, not a new one
    held: threading.Event | None = None  # answer functional requests only once it is set (a minute at most)
    held_paths: tuple[str, ...] = ()  # with held: only the functional requests whose path starts with one of these
    # (method, path) -> (HTTP status, raw body, extra headers): a canned answer instead of the default, for a
    # functional path, the versions and 2.2.1 details, or the credentials endpoint; with status RAW, the body is the
    # whole answer as it goes on the wire (status line and headers included), and the connection is closed after it
    canned: dict[tuple[str, str], tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    # (method, path prefix) -> an answer as canned's, for every functional path under the prefix that canned has not
    canned_under: dict[tuple[str, str], tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    host: str = "127.0.0.1"  # the name in its URLs ("localhost": a host name, as real parties have); serves 127.0.0.1
    # An OCPI 2.1.1-era implementation: sends its tokens raw, not Base64-encoded, and takes only raw ones.
    raw_tokens: bool = False
    # Its versions endpoint answers anyone, with any token or none, as many platforms' do; its details check the token.
    public_versions: bool = False
    # Paths answered a byte at a time and never finished (until the party stops): each byte comes well within any
    # timeout per read, so only a deadline on the whole answer ends such a call.
    drip: set[str] = field(default_factory=set)
    # Module endpoints registered with a trailing slash (".../cdrs/receiver/"), as many real parties do.
    trailing_slash: bool = False
    # A path prefix ("/v2") the party moved its API under: its versions, details and credentials name URLs below it.
    # It still answers at the old paths too, as a party does while its partners move over; received keeps each path
    # as it came, so a test sees which URL the hub called.
    moved_to: str = ""

    def __post_init__(self) -> None:
        self.port = free_port()
        self.base = f"http://{self.host}:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self._stopping = False

    # ---- serving ----
    @property
    def versions_url(self) -> str:
        return f"{self.base}{self.moved_to}/ocpi/versions"

    def start(self) -> Party:
        threading.Thread(target=self._serve, daemon=True).start()
        if not self._started.wait(10):
            raise RuntimeError("test party did not start")
        return self

    def stop(self) -> None:
        self._stopping = True  # ends the answers it is dripping
        if self._runner is None or self._loop.is_closed() or not self._loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)

    def resume(self) -> Party:
        """Serve again on the same port after stop(): a party back from an outage."""
        self._loop, self._started = asyncio.new_event_loop(), threading.Event()
        self._stopping = False
        return self.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=20_000_000)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # a request line as long as the hub's server takes (a long query a test sends through it), not aiohttp's 8 KiB
        self._runner = web.AppRunner(app, access_log=None, max_line_size=65_536)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()

    def endpoints(self) -> list[dict[str, str]]:
        modules = self.modules or _default_modules(self.roles)
        found = (
            []
            if self.omit_credentials_endpoint
            else [
                {
                    "identifier": "credentials",
                    "role": self.credentials_role,
                    "url": f"{self.base}{self.moved_to}/ocpi/2.2.1/credentials",
                }
            ]
        )
        for identifier, interfaces in modules.items():
            for interface in interfaces:
                found.append(
                    {
                        "identifier": identifier,
                        "role": interface,
                        "url": f"{self.base}{self.moved_to}/ocpi/2.2.1/{identifier}/{interface.lower()}"
                        + ("/" if self.trailing_slash else ""),
                    }
                )
        return found

    def credentials(self, token: str) -> dict[str, Any]:
        return {
            "token": token,
            "url": self.versions_url,
            "roles": [
                {"role": role, "country_code": cc, "party_id": pid, "business_details": {"name": f"{self.name} {role}"}}
                for role, cc, pid in self.roles
            ],
        }

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.received.append(Received(request.method, request.path, request.query_string, dict(request.headers), body,
                                      peer[1] if peer else None, raw_path=request.raw_path))  # fmt: skip
        if self.public_versions and request.method == "GET" and self._unmoved(request.path) == "/ocpi/versions":
            return web.json_response(envelope([{"version": v, "url": f"{self.base}{self.moved_to}/ocpi/{v}"}
                                               for v in self.versions]))  # fmt: skip
        accepted = {self.token_b, self.token_a}
        presented = request.headers.get("Authorization", "").removeprefix("Token ")
        try:
            presented = presented if self.raw_tokens else base64.b64decode(presented, validate=True).decode()
        except ValueError:
            return web.json_response(envelope(None, 2000, "token not base64 encoded"), status=401)
        if presented not in accepted:
            return web.json_response(envelope(None, 2000, "unknown token"), status=401)
        if request.path in self.drip:
            return await self._drip(request)
        path = self._unmoved(request.path)
        if path in ("/ocpi/versions", "/ocpi/2.2.1") and (request.method, request.path) in self.canned:
            return self._canned(request)
        if path == "/ocpi/versions":
            if self.versions_status != 200:
                return web.Response(status=self.versions_status, text="versions broken")
            return web.json_response(
                envelope([{"version": v, "url": f"{self.base}{self.moved_to}/ocpi/{v}"} for v in self.versions])
            )
        if path == "/ocpi/2.2.1":
            return web.json_response(envelope({"version": "2.2.1", "endpoints": self.endpoints()}))
        if path == "/ocpi/2.2.1/credentials":
            return await self._credentials(request, body)
        return await self._module(request, body)

    def _unmoved(self, path: str) -> str:
        """The path as the party's handlers know it: without the prefix it moved its API under."""
        return path.removeprefix(self.moved_to) if self.moved_to and path.startswith(f"{self.moved_to}/") else path

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"data": [')
        while not self._stopping:
            await asyncio.sleep(0.2)
            try:
                await response.write(b" ")
            except ConnectionResetError:  # the caller gave up
                break
        return response

    def _canned(self, request: web.Request) -> web.Response:
        status, raw, headers = self.canned.get((request.method, request.path)) or next(
            answer for (method, prefix), answer in self.canned_under.items()
            if method == request.method and request.path.startswith(prefix)
        )  # fmt: skip
        if status == RAW and request.transport is not None:  # bytes aiohttp would refuse to write: sent as they are
            request.transport.write(raw)
            request.transport.close()  # aiohttp then finds it closed and writes nothing of its own
        return web.Response(status=status, body=raw, headers=headers)

    async def _module(self, request: web.Request, body: bytes) -> web.Response:
        """A functional endpoint /ocpi/2.2.1/{module}/{sender|receiver}/...: canned answer, list, or plain success."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.held is not None and (not self.held_paths or request.path.startswith(self.held_paths)):
            await asyncio.get_running_loop().run_in_executor(None, self.held.wait, 60)
        if (request.method, request.path) in self.canned or any(
            method == request.method and request.path.startswith(prefix) for method, prefix in self.canned_under
        ):
            return self._canned(request)
        parts = self._unmoved(request.path).split("/")  # ["", "ocpi", "2.2.1", module, interface, ...]
        if len(parts) < 5 or parts[3] not in ALL_MODULES:
            return web.json_response(envelope(None, 2000, f"no such endpoint {request.path}"), status=404)
        module, rest = parts[3], [part for part in parts[5:] if part]  # ".../cdrs/receiver/" is the endpoint
        if request.method == "GET" and not rest:
            return self._page(request, module)
        if module == "commands" and request.method == "POST" and parts[4] == "receiver":
            return web.json_response(envelope({"result": "ACCEPTED", "timeout": 30}))
        if module == "cdrs" and request.method == "POST" and parts[4] == "receiver":
            try:
                cdr = json.loads(body or b"{}")
            except (ValueError, RecursionError):  # not JSON, or nested deeper than Python's json follows
                cdr = None
            if not isinstance(cdr, dict):
                return web.json_response(envelope(None, 2001, "a CDR is a JSON object"), status=400)
            cdr_id = cdr.get("id", "unknown")
            location = f"{self.base}/ocpi/2.2.1/cdrs/receiver/{quote(str(cdr_id), safe='')}"
            return web.json_response(envelope(None), status=201, headers={"Location": location})
        if request.method == "GET":
            return web.json_response(envelope({"id": rest[-1], "served_by": self.name}))
        return web.json_response(envelope(None))

    def _page(self, request: web.Request, module: str) -> web.Response:
        """A Sender's paginated list (transport_and_format.asciidoc, Pagination), its Link pointing at itself."""
        everything = self.objects.get(module, [])
        try:
            since = _moment(request.query.get("date_from", "1970-01-01T00:00:00Z"))
            offset = int(request.query.get("offset", 0))
            limit = min(int(request.query.get("limit", self.page_size)), self.page_size)
        except ValueError as exc:
            return web.json_response(envelope(None, 2001, f"bad paging parameter: {exc}"), status=400)
        everything = [o for o in everything if _moment(o.get("last_updated", "1970-01-01T00:00:00Z")) >= since]
        headers = {"X-Total-Count": str(len(everything)), "X-Limit": str(self.page_size)}
        if offset + limit < len(everything):
            query = dict(request.query) | {"offset": str(offset + limit), "limit": str(limit)}
            headers["Link"] = (
                f'<{self.base}{request.path}?{"&".join(f"{k}={v}" for k, v in query.items())}>; rel="next"'
            )
        return web.json_response(envelope(everything[offset : offset + limit]), headers=headers)

    async def _credentials(self, request: web.Request, body: bytes) -> web.Response:
        """The party as credentials Receiver: the hub registers itself here (`ocpi-hub connect`), or renews the
        tokens (PUT)."""
        if (request.method, request.path) in self.canned:
            return self._canned(request)
        if request.method == "DELETE":
            self.hub_credentials = None
            return web.json_response(envelope(None))
        if request.method not in ("POST", "PUT"):
            return web.json_response(envelope(self.credentials(self.token_b)))
        if self.credentials_delay_s:
            await asyncio.sleep(self.credentials_delay_s)
        theirs = json.loads(body)
        # Like a real party, check the hub's versions with the token it gave us before answering.
        async with httpx.AsyncClient() as client:
            answer = await client.get(theirs["url"], headers=self.token_header(theirs["token"]))
        if answer.status_code != 200:
            return web.json_response(envelope(None, 3001, f"hub versions answered {answer.status_code}"))
        self.hub_credentials = theirs
        self.hub_token = theirs["token"]
        if not self.keeps_token_b:
            self.token_b = secrets.token_urlsafe(24)  # token C of this exchange: the hub calls us with it from now on
        return web.json_response(envelope(self.credentials(self.token_b)))

    # ---- calling the hub ----
    def token_header(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Token {token}"} if self.raw_tokens else token_header(token)

    def call(
        self,
        hub_base: str,
        method: str,
        path: str,
        *,
        to: tuple[str, str] | None = None,
        from_: tuple[str, str] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """A functional request through the hub: path relative to /ocpi/2.2.1/, routing headers from the arguments."""
        sent = self.token_header(self.hub_token or "") | (headers or {})
        sender = from_ or (self.roles[0][1], self.roles[0][2])
        sent |= {"OCPI-from-country-code": sender[0], "OCPI-from-party-id": sender[1]}
        if to:
            sent |= {"OCPI-to-country-code": to[0], "OCPI-to-party-id": to[1]}
        url = path if path.startswith("http") else f"{hub_base}/ocpi/2.2.1/{path.lstrip('/')}"
        return httpx.request(method, url, headers=sent, json=body, content=content, timeout=30)

    def functional(self) -> list[Received]:
        """Requests of the functional modules, but not versions, credentials, the hub's ClientInfo pushes, or the
        hub's own pull sync of locations and owner pulls of tokens and sessions."""
        configuration = ("/ocpi/versions", "/ocpi/2.2.1", "/ocpi/2.2.1/credentials")
        own = self.syncs() + self.owner_pulls("tokens") + self.owner_pulls("sessions")
        return [
            r
            for r in self.received
            if self._unmoved(r.path) not in configuration and "/hubclientinfo/" not in r.path and r not in own
        ]

    def syncs(self) -> list[Received]:
        """The hub's pull sync: GETs of our locations Sender from the hub itself."""
        return self._lists_read_by_the_hub("locations")

    def owner_pulls(self, module: str) -> list[Received]:
        """The hub's owner pull (routing.owner_pull): GETs of our tokens or sessions Sender from the hub itself."""
        return self._lists_read_by_the_hub(module)

    def _lists_read_by_the_hub(self, module: str) -> list[Received]:
        return [
            r
            for r in self.received
            if r.method == "GET"
            and self._unmoved(r.path).rstrip("/") == f"/ocpi/2.2.1/{module}/sender"  # a trailing slash as registered
            and r.headers.get("OCPI-from-party-id") in self._hub_party_ids()
        ]

    def _hub_party_ids(self) -> set[str]:
        """The party ids the hub we registered at calls us under: "HUB" by default, another deployment's own (a second
        hub in the same test run has OCPI_HUB_PARTY_ID of its own)."""
        roles = (self.hub_credentials or {}).get("roles") or []
        return {"HUB"} | {role["party_id"] for role in roles if role.get("role") == "HUB"}

    def client_infos(self) -> list[Received]:
        return [r for r in self.received if "/hubclientinfo/" in r.path]

    def register_at(self, hub_versions_url: str, token_a: str) -> httpx.Response:
        """The whole credentials Sender side: GET versions and details with token A, POST our credentials."""
        with httpx.Client(timeout=30) as client:
            sent = self.token_header(token_a)
            versions = client.get(hub_versions_url, headers=sent).json()["data"]
            details_url = next(v["url"] for v in versions if v["version"] == "2.2.1")
            details = client.get(details_url, headers=sent).json()["data"]
            credentials_url = next(e["url"] for e in details["endpoints"] if e["identifier"] == "credentials")
            answer = client.post(credentials_url, headers=sent, json=self.credentials(self.token_b))
        if answer.status_code == 200 and answer.json()["status_code"] == 1000:
            self.hub_credentials = answer.json()["data"]
            self.hub_token = self.hub_credentials["token"]
        return answer


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _default_modules(roles: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    kinds = {role for role, _, _ in roles}
    modules: dict[str, list[str]] = {}
    if "CPO" in kinds:
        for m in ("cdrs", "locations", "sessions", "tariffs"):
            modules.setdefault(m, []).append("SENDER")
        for m in ("commands", "tokens", "chargingprofiles", "hubclientinfo"):
            modules.setdefault(m, []).append("RECEIVER")
    if kinds & {"EMSP", "OTHER", "NSP", "NAP", "SCSP"}:
        for m in ("cdrs", "locations", "sessions", "tariffs", "hubclientinfo"):
            if "RECEIVER" not in modules.get(m, []):
                modules.setdefault(m, []).append("RECEIVER")
        for m in ("commands", "tokens"):
            modules.setdefault(m, []).append("SENDER")
    return modules


@contextlib.contextmanager
def tcp_forwarder(hub_port: int) -> Iterator[int]:
    """A TCP forwarder to the hub on a port of its own, as a load balancer in front of the hub is (the hub refuses to
    call the port it listens on itself): the forwarder's port."""

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    class Forward(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.create_connection(("127.0.0.1", hub_port), timeout=30) as upstream:
                back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
                back.start()
                pump(self.request, upstream)
                back.join(30)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Forward)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
