"""URL rewrites that keep parties talking through the hub: response_url, paging Link and CDR Location.

The hub changes nothing else in a relayed body (transport_and_format.asciidoc: Timestamps and Objects send via
Hubs); a response_url is replaced in the raw bytes where its JSON form can be found, so the rest stays as sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode

import msgspec

from hub.errors import InvalidParameters, decoded
from routing.request import Incoming

_LINK = re.compile(r"<([^>]*)>")
_encode = msgspec.json.encode


class _WithResponseUrl(msgspec.Struct):
    response_url: str | None = None


def response_url_of(incoming: Incoming) -> str | None:
    """The response_url the requester expects its asynchronous result at (mod_commands, mod_charging_profiles)."""
    if incoming.interface != "receiver":
        return None
    if incoming.module == "commands" and incoming.method == "POST":
        return _from_body(incoming.body, required=True)
    if incoming.module == "chargingprofiles":
        if incoming.method == "PUT":
            return _from_body(incoming.body, required=True)
        if incoming.method in ("GET", "DELETE"):
            found = dict(parse_qsl(incoming.query)).get("response_url")
            if not found:
                raise InvalidParameters("the response_url query parameter is required")
            return found
    return None


def _from_body(body: bytes, *, required: bool) -> str | None:
    found = decoded(body, _WithResponseUrl, "invalid request body").response_url
    if required and not found:
        raise InvalidParameters("response_url is required in the request body")
    return found


def with_response_url(incoming: Incoming, original: str, replacement: str) -> tuple[bytes, str]:
    """(body, query) with the response_url replaced by the hub's own."""
    if incoming.module == "chargingprofiles" and incoming.method in ("GET", "DELETE"):
        pairs = [(k, replacement if k == "response_url" else v) for k, v in parse_qsl(incoming.query, True)]
        return incoming.body, urlencode(pairs)
    encoded = _encode(original)
    if incoming.body.count(encoded) == 1:
        return incoming.body.replace(encoded, _encode(replacement)), incoming.query
    # Escaped differently from msgspec's form (e.g. "\/"): re-encode the object, keys in their order.
    document = msgspec.json.decode(incoming.body)
    document["response_url"] = replacement
    return _encode(document), incoming.query


def link_urls(value: str) -> list[str]:
    return _LINK.findall(value)


def rewrite_link_header(value: str, replace: Callable[[str], str]) -> str:
    """Each <url> of a Link header passed through replace(url) -> url; rel and other parameters unchanged."""
    return _LINK.sub(lambda match: f"<{replace(match.group(1))}>", value)
