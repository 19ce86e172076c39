"""What a demo party answers: versions, details, and the module endpoints of its role, with objects in memory."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from hub.demo.party import Command, envelope
from hub.demo.payloads import authorization_info, command_response

if TYPE_CHECKING:
    from hub.demo.party import DemoParty

PAGE_SIZE = 10
# status code for an unknown object, by module (transport_and_format.asciidoc, status codes 2003 and 2004)
UNKNOWN = {"locations": 2003, "tokens": 2004}


def _ok(data: Any = None, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(envelope(data), status=status, headers=headers)


def _error(status_code: int, message: str, http_status: int = 404) -> web.Response:
    return web.json_response(envelope(None, status_code, message), status=http_status)


def _presented(header: str) -> str:
    value = header.removeprefix("Token ").strip()
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return value


async def handle(party: DemoParty, request: web.Request) -> web.Response:
    party.requests_served += 1
    if not party.accepts(_presented(request.headers.get("Authorization", ""))):
        return _error(2000, "unknown token", 401)
    details = "/ocpi/2.2.1"
    if request.path == "/ocpi/versions":
        return _ok([{"version": "2.2.1", "url": f"{party.base}{details}"}])
    if request.path == details:
        return _ok({"version": "2.2.1", "endpoints": party.endpoints()})
    if request.path == f"{details}/credentials":
        return await _credentials(party, request)
    parts = request.path.removeprefix(f"{details}/").split("/")
    if len(parts) < 2 or parts[1].upper() != _interface(party, parts[0]):
        return _error(2000, f"no such endpoint {request.path}")
    body = await request.read()
    try:
        document = json.loads(body) if body else None
    except ValueError:
        return _error(2001, "body is not JSON", 400)
    module, rest = parts[0], [p for p in parts[2:] if p]
    if parts[1] == "sender":
        return _sender(party, request, module, rest, document)
    return _receiver(party, request, module, rest, document)


async def _credentials(party: DemoParty, request: web.Request) -> web.Response:
    """credentials.asciidoc, the party's side: GET its credentials; PUT from the hub, which renews the tokens both
    ways (keep the hub's new token, answer with a new token B of ours); DELETE, the hub ends the connection."""
    if request.method == "GET":
        return _ok(party.credentials())
    if request.method == "POST":
        return _error(2000, "this demo party registers at the hub; it does not take registrations", 405)
    if party.hub_token is None:
        return _error(2000, "not registered with this hub", 405)
    if request.method == "DELETE":
        party.forget_hub()
        return _ok()
    try:
        document = json.loads(await request.read())
    except ValueError:
        return _error(2001, "body is not JSON", 400)
    if request.method != "PUT" or not isinstance(document, dict) or not isinstance(document.get("token"), str):
        return _error(2001, "PUT the hub's credentials, with its new token", 400)
    party.renew_tokens(document["token"])
    return _ok(party.credentials())


def _interface(party: DemoParty, module: str) -> str | None:
    from hub.demo.party import MODULES

    return MODULES[party.role].get(module)


def _receiver(party: DemoParty, request: web.Request, module: str, rest: list[str], document: Any) -> web.Response:
    """Receiver interfaces: objects pushed to this party, commands to a CPO, CDRs POSTed to an eMSP."""
    if module == "commands":
        return _command(party, request, rest, document)
    if module == "cdrs":
        if request.method == "POST" and isinstance(document, dict) and "id" in document:
            party.received.setdefault("cdrs", {})[document["id"]] = document
            location = f"{party.base}/ocpi/2.2.1/cdrs/receiver/{document['id']}"
            return _ok(None, 201, {"Location": location})
        if request.method == "GET" and rest and rest[0] in party.received.get("cdrs", {}):
            return _ok(party.received["cdrs"][rest[0]])
        return _error(2000, "unknown CDR")
    depth = 2 if module == "hubclientinfo" else 3  # a ClientInfo is /{country_code}/{party_id}
    if len(rest) < depth:
        return _error(2001, "expected /{country_code}/{party_id}/{id}", 400)
    stored = party.received.setdefault(module, {})
    key = "/".join(rest[:depth])
    if request.method == "GET":
        found = _nested(stored.get(key), rest[depth:])
        return _ok(found) if found is not None else _error(UNKNOWN.get(module, 2000), f"unknown {module} object")
    if not isinstance(document, dict):
        return _error(2001, "expected a JSON object", 400)
    if request.method == "PUT" and len(rest) == depth:
        stored[key] = document
    elif request.method in ("PUT", "PATCH"):
        target = stored.get(key)
        nested = _nested(target, rest[depth:]) if target is not None else None
        if nested is None:
            return _error(UNKNOWN.get(module, 2000), f"unknown {module} object {'/'.join(rest)}")
        nested.update(document)
    elif request.method == "DELETE":
        stored.pop(key, None)
    return _ok()


def _nested(obj: dict[str, Any] | None, path: list[str]) -> dict[str, Any] | None:
    """A location's EVSE (/{evse_uid}) or connector (/{evse_uid}/{connector_id})."""
    for step, (children, field) in zip(path, (("evses", "uid"), ("connectors", "id")), strict=False):
        if obj is None:
            return None
        obj = next((c for c in obj.get(children, []) if c.get(field) == step), None)
    return obj


def _command(party: DemoParty, request: web.Request, rest: list[str], document: Any) -> web.Response:
    """mod_commands.asciidoc: answer a CommandResponse now, carry the command out later (the scenario does)."""
    if request.method != "POST" or not rest or not isinstance(document, dict):
        return _error(2001, "POST /{command} with a JSON body", 400)
    name = rest[0].upper()
    if name not in ("START_SESSION", "STOP_SESSION", "RESERVE_NOW", "CANCEL_RESERVATION", "UNLOCK_CONNECTOR"):
        return _error(2001, f"unknown command {rest[0]}", 400)
    if "response_url" not in document:
        return _error(2001, "response_url is required", 400)
    if name == "START_SESSION" and document.get("location_id") not in party.own.get("locations", {}):
        return _ok(command_response("REJECTED") | {"message": [{"language": "en", "text": "Unknown location"}]})
    party.commands.put_nowait(Command(name, document, request.headers.get("X-Correlation-ID")))
    return _ok(command_response("ACCEPTED"))


def _sender(party: DemoParty, request: web.Request, module: str, rest: list[str], document: Any) -> web.Response:
    """Sender interfaces: lists a CPO owns, an eMSP's real-time authorization and its CommandResult endpoint."""
    if module == "commands":  # the eMSP's response_url: /{command}/{id}
        if request.method != "POST" or len(rest) < 2 or not isinstance(document, dict):
            return _error(2001, "POST a CommandResult to /{command}/{id}", 400)
        party.results[rest[1]] = document
        return _ok()
    if module == "tokens" and request.method == "POST" and len(rest) == 2 and rest[1] == "authorize":
        tok = party.own.get("tokens", {}).get(rest[0])
        if tok is None:
            return _error(2004, f"unknown token {rest[0]}")
        location_id = document.get("location_id") if isinstance(document, dict) else None
        return _ok(authorization_info(tok, location_id, f"AUTH-{rest[0][-4:]}"))
    if request.method != "GET":
        return _error(2000, f"{request.method} is not supported here", 405)
    objects = party.own.get(module, {})
    if rest:
        found = _nested(objects.get(rest[0]), rest[1:])
        return _ok(found) if found is not None else _error(UNKNOWN.get(module, 2000), f"unknown {module} object")
    return _page(party, request, list(objects.values()))


def _page(party: DemoParty, request: web.Request, everything: list[dict[str, Any]]) -> web.Response:
    """transport_and_format.asciidoc, Pagination: offset, limit, date_from (inclusive), date_to (exclusive)."""
    query = request.query
    if "date_from" in query:
        since = _moment(query["date_from"])
        everything = [o for o in everything if _moment(o["last_updated"]) >= since]
    if "date_to" in query:
        until = _moment(query["date_to"])
        everything = [o for o in everything if _moment(o["last_updated"]) < until]
    offset = int(query.get("offset", 0))
    limit = min(int(query.get("limit", PAGE_SIZE)), PAGE_SIZE)
    headers = {"X-Total-Count": str(len(everything)), "X-Limit": str(PAGE_SIZE)}
    if offset + limit < len(everything):
        following = dict(query) | {"offset": str(offset + limit), "limit": str(limit)}
        headers["Link"] = f'<{party.base}{request.path}?{urlencode(following)}>; rel="next"'
    return _ok(everything[offset : offset + limit], headers=headers)


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
