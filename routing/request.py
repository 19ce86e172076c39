"""An incoming functional-module request as the router sees it: interface, module, path suffix and routing headers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from hub.errors import InvalidParameters, NotFound, as_sent

MODULES = frozenset({"cdrs", "chargingprofiles", "commands", "locations", "sessions", "tariffs", "tokens"})
INTERFACES = frozenset({"sender", "receiver"})
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_PARTY = re.compile(r"[A-Za-z0-9]{3}")
SLASHES = re.compile("/{2,}")

PartyKey = tuple[str, str]  # (COUNTRY_CODE, PARTY_ID) upper-cased


@dataclass(slots=True)
class Incoming:
    method: str
    path: str  # as received, percent-encoding kept
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    interface: str
    module: str
    suffix: str  # the path after /{interface}/{module}: "" or "/NL/ABC/LOC1"
    to: PartyKey | None
    from_: PartyKey | None
    segments: list[str]  # the suffix's segments percent-decoded: ids as bodies spell them ("A B" is at .../A%20B)


# the two headers of each direction, by their lower-case names
_ROUTING_HEADERS = {direction: (f"ocpi-{direction}-country-code", f"ocpi-{direction}-party-id")
                    for direction in ("to", "from")}  # fmt: skip


def routing_party(headers: dict[str, str], direction: str) -> PartyKey | None:
    """The OCPI-{direction}-country-code / -party-id pair (CiString: compared upper-cased), or None if absent."""
    country_header, party_header = _ROUTING_HEADERS[direction]
    country = headers.get(country_header, "").strip()
    party = headers.get(party_header, "").strip()
    if not country and not party:
        return None
    if not country or not party:
        sent, missing = ("country-code", "party-id") if country else ("party-id", "country-code")
        raise InvalidParameters(
            f"OCPI-{direction}-{missing} is missing: OCPI-{direction}-{sent} "
            f"({as_sent((country or party).encode('latin-1'))!r}) comes with it"
        )
    if not _COUNTRY.fullmatch(country) or not _PARTY.fullmatch(party):
        raise InvalidParameters(
            f"OCPI-{direction}-country-code and OCPI-{direction}-party-id must be two letters and three letters or"
            f" digits, got {as_sent(country.encode('latin-1'))!r} and {as_sent(party.encode('latin-1'))!r}"
        )
    return (country.upper(), party.upper())


def parse(method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> Incoming:
    """Split /ocpi/2.2.1/{sender|receiver}/{module}/... into its parts; unknown interfaces or modules are 404."""
    parts = path.split("/", 5)  # ["", "ocpi", "2.2.1", interface, module, rest]
    if "//" in path and SLASHES.sub("/", path).split("/", 5)[:5] != parts[:5]:
        # what a party meant by it is a guess: the module's URL joined badly, or another URL altogether
        raise NotFound(
            f"{method} {path} holds an empty segment before the module: the hub's functional URLs are"
            " /ocpi/2.2.1/{sender|receiver}/{module}, one slash between segments"
        )
    interface = parts[3] if len(parts) > 3 else ""
    module = parts[4] if len(parts) > 4 else ""
    if interface not in INTERFACES:
        raise NotFound(f"{method} {path} is no URL of the hub: its version details (/ocpi/2.2.1) list its endpoints")
    if module not in MODULES:
        if (interface, module) == ("sender", "hubclientinfo"):  # the hub's own list (hub.client_info): its URL alone
            raise NotFound(f"the hub's hubclientinfo Sender is /ocpi/2.2.1/sender/hubclientinfo alone: {method} {path}")
        raise NotFound(f"the hub has no {interface} interface for module {module or '?'}: {method} {path}")
    suffix = ("/" + parts[5]).rstrip("/") if len(parts) > 5 else ""
    return Incoming(
        method=method,
        path=path,
        query=query,
        headers=headers,
        body=body,
        interface=interface,
        module=module,
        suffix=suffix,
        to=routing_party(headers, "to"),
        from_=routing_party(headers, "from"),
        segments=[unquote(s) for s in suffix.split("/") if s],
    )


def endpoint_url(endpoint: str, suffix: str) -> str:
    """Where a request goes at a party's endpoint: the URL as the party registered it when there is no suffix
    (mod_cdrs.asciidoc: `{cdr_endpoint_url}`, e.g. `.../cdrs/`, a GET All `{..._endpoint_url}?date_from=...`),
    else endpoint and suffix joined with exactly one slash, whether or not the endpoint ends with one."""
    if not suffix:
        return endpoint
    return f"{endpoint.rstrip('/')}/{suffix.lstrip('/')}"


def party_text(key: PartyKey | None) -> str:
    return f"{key[0]}-{key[1]}" if key else "?"
