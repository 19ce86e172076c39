"""The methods and URL shapes OCPI 2.2.1 defines for each interface of a functional module; the others are refused.

mod_*.asciidoc, Interfaces and endpoints: each interface lists the methods it takes ("n/a" for the others) and the
endpoint structure of each, after the party's endpoint URL. A request of another method or shape would reach no
OCPI handler of the receiver: the hub answers it itself (HTTP 405 or 404, OCPI 2000) and forwards nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from hub.errors import InvalidParameters, InvalidPathSegment, MethodNotAllowed, NotFound, decoded
from routing.request import Incoming

_PARTS = re.compile(r"[/\\]")
_DOT_SEGMENTS = frozenset((".", ".."))
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode's Cc: C0, DEL and C1
COMMANDS = frozenset({"CANCEL_RESERVATION", "RESERVE_NOW", "START_SESSION", "STOP_SESSION", "UNLOCK_CONNECTOR"})


@dataclass(frozen=True, slots=True)
class Shape:
    text: str  # the endpoint structure as the spec writes it, after the endpoint URL
    fewest: int  # path segments after the endpoint URL
    most: int
    last: str | None = None  # a fixed last segment: /{token_uid}/authorize
    first_of: frozenset[str] | None = None  # the values the first segment takes: a CommandType (case-insensitive)

    def fits(self, segments: list[str]) -> bool:
        if not self.fewest <= len(segments) <= self.most:
            return False
        if self.last is not None and segments[-1] != self.last:
            return False
        return self.first_of is None or segments[0].upper() in self.first_of


LIST = Shape("[?date_from=...&date_to=...&offset=...&limit=...]", 0, 0)
OBJECT = Shape("/{country_code}/{party_id}/{object_id}", 3, 3)
# "No structure defined. This is open to the eMSP to define": a response_url, or the URL a CDR POST answered with
HANDED_OUT = Shape("/... (the URL the party handed out)", 0, 64)
PREFERENCES = Shape("/{session_id}/charging_preferences", 2, 2, "charging_preferences")

SHAPES: dict[tuple[str, str], dict[str, Shape]] = {
    ("locations", "receiver"): dict.fromkeys(
        ("GET", "PUT", "PATCH"), Shape("/{country_code}/{party_id}/{location_id}[/{evse_uid}[/{connector_id}]]", 3, 5)
    ),
    ("locations", "sender"): {"GET": Shape("[/{location_id}[/{evse_uid}[/{connector_id}]]]", 0, 3)},
    ("sessions", "receiver"): dict.fromkeys(("GET", "PUT", "PATCH"), OBJECT),
    ("sessions", "sender"): {"GET": LIST, "PUT": PREFERENCES},
    ("cdrs", "receiver"): {"GET": Shape("/... (the Location its POST answered with)", 1, 64), "POST": Shape("", 0, 0)},
    ("cdrs", "sender"): {"GET": LIST},
    ("tariffs", "receiver"): dict.fromkeys(("GET", "PUT", "DELETE"), OBJECT),
    ("tariffs", "sender"): {"GET": LIST},
    ("tokens", "receiver"): dict.fromkeys(("GET", "PUT", "PATCH"), OBJECT),
    ("tokens", "sender"): {"GET": LIST, "POST": Shape("/{token_uid}/authorize[?type=...]", 2, 2, "authorize")},
    ("commands", "receiver"): {"POST": Shape(f"/{{command}} ({', '.join(sorted(COMMANDS))})", 1, 1, None, COMMANDS)},
    ("commands", "sender"): {"POST": HANDED_OUT},
    ("chargingprofiles", "receiver"): dict.fromkeys(("GET", "PUT", "DELETE"), Shape("/{session_id}", 1, 1)),
    ("chargingprofiles", "sender"): {"POST": HANDED_OUT, "PUT": Shape("/{session_id}", 1, 1)},
}


def check_shape(incoming: Incoming) -> None:
    """MethodNotAllowed for a method the interface marks n/a, NotFound for a path it does not define,
    InvalidPathSegment for a segment holding a control character."""
    methods = SHAPES[(incoming.module, incoming.interface)]
    shape = methods.get(incoming.method)
    if shape is None:
        raise MethodNotAllowed(
            f"{incoming.method} is not defined for the {_interface(incoming)} of OCPI 2.2.1: it takes "
            f"{', '.join(methods)}",
            tuple(methods),
        )
    if "//" in incoming.suffix or any("." in s and _DOT_SEGMENTS & _parts(s) for s in incoming.segments):
        # RFC 3986, 5.2.4: a party's server or proxy resolves dot segments, often after decoding %2E and %2F, to
        # another of its URLs (.../locations/sender/../../credentials), which the hub would call with its token
        raise NotFound(f"{incoming.method} {incoming.path} holds an empty segment or a dot segment ('.', '..', or "
                       "either with ';' parameters)")  # fmt: skip
    if control := next((found[0] for s in incoming.segments if (found := _CONTROL.search(s))), None):
        # forwarded, a newline was the receiver's framework's own 404, no OCPI answer; a NUL or a tab, an id's
        raise InvalidPathSegment(
            f"{incoming.method} {incoming.path}: a path segment holds a control character (U+{ord(control):04X});"
            " OCPI ids are printable (types.asciidoc: non-printable characters are not allowed)"
        )
    if not shape.fits(incoming.segments):
        raise NotFound(
            f"{incoming.method} {incoming.path} is no URL of the {_interface(incoming)}: it takes {incoming.method}"
            f" {{{incoming.module}_endpoint_url}}{shape.text}"
        )


class _Patch(msgspec.Struct):
    last_updated: str | None = None


# mod_locations, mod_sessions and mod_tokens.asciidoc: "Any request to the PATCH method SHALL contain the last_updated
# field." (a PATCH without it would change an object whose last_updated stays as it was: a party pulling with
# date_from never sees the change, nor does the hub's own location cache)
_PATCHED_WITH_LAST_UPDATED = frozenset({"locations", "sessions", "tokens"})


def check_patch(incoming: Incoming) -> None:
    """InvalidParameters (2001) for a PATCH of a module whose PATCH SHALL carry last_updated, without it."""
    if incoming.method != "PATCH" or incoming.module not in _PATCHED_WITH_LAST_UPDATED:
        return
    last_updated = decoded(incoming.body, _Patch, "invalid PATCH body").last_updated
    if last_updated is None:
        raise InvalidParameters(
            f"a PATCH of {incoming.module} SHALL contain the last_updated field (mod_{incoming.module}.asciidoc)"
        )
    # its value is the receiver's to judge, as a PUT's (relayed whatever it holds; the cache skips what it cannot date)


def _parts(segment: str) -> set[str]:
    """A decoded segment's parts as a server may take them: split at each slash or backslash, and each without its
    parameters (RFC 3986, 3.3: ";" starts them; Tomcat drops them before it resolves dot segments, so that "..;" or
    "..;a" climbs as ".." does)."""
    return {part.partition(";")[0] for part in _PARTS.split(segment)}


def _interface(incoming: Incoming) -> str:
    return f"{incoming.module} {incoming.interface.capitalize()} interface"
