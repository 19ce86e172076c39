"""The ids a routing-log row is found by: the object it is about (object_id), the others it names (listed_ids).

object_id: the location, session, CDR, token or tariff its path or body names, or what a command acts on; listed_ids:
the objects of a Sender's list answer, or those a pushed Session, CDR or command refers to (its session, the eMSP's
authorization_reference, the token's uid), or for a command's result its command's. So "did the CPO ever send us this
CDR?" and "everything about session S" are index lookups (storage.log_search).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import msgspec

from storage.log_row import LogEntry

# Modules whose paths name one object: receiver /{cc}/{pid}/{id}..., sender /{id}... (chargingprofiles: /{session_id})
OBJECT_MODULES = frozenset({"cdrs", "chargingprofiles", "locations", "sessions", "tariffs", "tokens"})


def object_id_of(module: str, interface: str | None, path: str) -> str | None:
    """The location/session/cdr/token/tariff id a path names, found after the module's segment, or None."""
    if module not in OBJECT_MODULES:
        return None
    segments = path.split("?", 1)[0].split("/")
    try:
        rest = [s for s in segments[segments.index(module) + 1 :] if s]
    except ValueError:
        return None
    position = 2 if interface == "receiver" and module != "chargingprofiles" else 0
    return unquote(rest[position])[:255] if len(rest) > position else None


class _Refers(msgspec.Struct):
    """The fields of a Session, CDR or command that name objects; Any, so that one a party got wrong (a number) costs
    only itself."""

    id: Any = None
    session_id: Any = None
    location_id: Any = None
    reservation_id: Any = None
    authorization_reference: Any = None
    token: Any = None  # a START_SESSION's or RESERVE_NOW's Token
    cdr_token: Any = None  # a Session's or CDR's CdrToken


class _OneObject(msgspec.Struct):
    data: _Refers


_refers, _one_object = msgspec.json.Decoder(_Refers), msgspec.json.Decoder(_OneObject)
RELAYED_CDRS = "/ocpi/2.2.1/relayed-cdrs/"  # the hub URL of a CDR an eMSP created (hub.ocpi.relayed_urls)
# What a command acts on (mod_commands.asciidoc, its request objects): a STOP_SESSION's session, a reservation, the
# location a session is started or a connector unlocked at.
_COMMAND_OBJECT = {"START_SESSION": "location_id", "UNLOCK_CONNECTOR": "location_id", "STOP_SESSION": "session_id",
                   "RESERVE_NOW": "reservation_id", "CANCEL_RESERVATION": "reservation_id"}  # fmt: skip
# What else a body names that a dispute about a session, a CDR or a token is about (kept in listed_ids): the session a
# CDR or STOP_SESSION is of, the authorization_reference an eMSP gave, which "will be provided in the relevant Session
# and/or CDR" (mod_commands.asciidoc, StartSession), and the token's uid. Not a Session's location_id: object_id=<a
# location> would list every session at the site among its own pushes.
_REFERRED = {"cdrs": ("session_id", "authorization_reference"), "sessions": ("authorization_reference",),
             "commands": ("session_id", "location_id", "reservation_id", "authorization_reference")}  # fmt: skip
# The requests to a Receiver whose body names objects: a CDR and a command pushed, a Session put or patched.
_BODY_NAMES = {"cdrs": ("POST",), "commands": ("POST",), "sessions": ("PUT", "PATCH")}
REQUEST = "request:"  # a result's listed id naming an X-Request-ID of the request it answers (hub.ocpi.relay)


def object_id_of_entry(entry: LogEntry) -> str | None:
    """The id a row is found by (ids_of_entry)."""
    return ids_of_entry(entry)[0]


def ids_of_entry(entry: LogEntry) -> tuple[str | None, list[str] | None]:
    """(object_id, listed_ids) of a row, its body decoded once. The object id: the one the hub knows of it (a command's
    result: its command's), else object_id_of its path; from the body where the path names none: a CDR pushed to a
    receiver (POST, mod_cdrs.asciidoc), so that "did the CPO ever send us this CDR?" is one index lookup, a command, by
    what it acts on, and a CDR fetched at the Location the hub gave its POST, by the id in the answer. The listed ids:
    those of a list answer (listed_ids_of_entry), or the other objects a pushed Session, CDR or command names
    (_REFERRED), or, for a result, its command's and its command's request ids (REQUEST)."""
    if entry.object_id is not None or entry.related_ids is not None:
        return entry.object_id, entry.related_ids
    if "://" in entry.path:  # a message of the hub's own, logged with the party's URL, shaped as the party likes
        return None, listed_ids_of_entry(entry)
    if entry.path.startswith(RELAYED_CDRS) and entry.response_body and 200 <= entry.http_status < 300:
        try:  # the GET of a CDR whose POST's Location the hub rewrote: found by the CDR's id, as its POST is
            return _object_and_referred(_one_object.decode(entry.response_body).data, "cdrs", "id")
        except (msgspec.DecodeError, RecursionError):
            return None, None
    interface = entry.interface or _interface_in(entry.path, entry.module)
    if interface == "receiver" and entry.request_body and entry.method in _BODY_NAMES.get(entry.module, ()):
        try:
            refers = _refers.decode(entry.request_body)
        except (msgspec.DecodeError, RecursionError):  # the row is written all the same, without the body's ids
            refers = _Refers()
        if entry.module == "cdrs":
            return _object_and_referred(refers, "cdrs", "id")
        if entry.module == "commands":
            command = entry.path.rstrip("/").rpartition("/")[2].upper()
            return _object_and_referred(refers, "commands", _COMMAND_OBJECT.get(command))
        return object_id_of(entry.module, interface, entry.path), _object_and_referred(refers, "sessions", None)[1]
    return object_id_of(entry.module, interface, entry.path), listed_ids_of_entry(entry)


def _object_and_referred(refers: _Refers, module: str, object_field: str | None) -> tuple[str | None, list[str] | None]:
    """The id in object_field and the other ids refers names (None: none), each a string, cut at 255."""
    object_id = _text(getattr(refers, object_field)) if object_field else None
    found = [getattr(refers, name) for name in _REFERRED[module] if name != object_field]
    found += [token.get("uid") for token in (refers.token, refers.cdr_token) if isinstance(token, dict)]
    referred = list(dict.fromkeys(text for value in found if (text := _text(value)) and text != object_id))
    return object_id, referred or None


def _text(value: Any) -> str | None:
    return value[:255] if isinstance(value, str) and value else None


class _Listed(msgspec.Struct):
    id: str | None = None
    uid: str | None = None  # a Token's id


class _ListAnswer(msgspec.Struct):
    data: list[msgspec.Raw]  # each object decoded on its own: one a party got wrong costs only its own id


_list_answer, _listed = msgspec.json.Decoder(_ListAnswer), msgspec.json.Decoder(_Listed)
LISTED_MODULES = frozenset({"cdrs", "sessions", "tokens", "tariffs"})  # the ids a dispute is about (not locations)
MAX_LISTED_IDS = 1000


def listed_ids_of_entry(entry: LogEntry) -> list[str] | None:
    """The ids of the objects a Sender's list answer names (a GET of cdrs, sessions, tokens or tariffs with an array
    as its data), at most MAX_LISTED_IDS; None for any other row."""
    if entry.module not in LISTED_MODULES or entry.method != "GET" or not 200 <= entry.http_status < 300:
        return None
    try:
        listed = _list_answer.decode(entry.response_body).data
    except (msgspec.DecodeError, RecursionError):  # a single object, an error, not JSON: nothing listed
        return None
    ids = []
    for raw in listed[:MAX_LISTED_IDS]:
        try:
            found = _listed.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            continue
        if found_id := (found.uid if entry.module == "tokens" else found.id):
            ids.append(found_id[:255])
    return ids


def _interface_in(path: str, module: str) -> str | None:
    """The interface a hub path names before its module (/ocpi/2.2.1/receiver/sessions/...): for the row of a request
    refused before it was parsed (an unknown token), whose interface is not known."""
    segments = path.split("?", 1)[0].split("/")
    at = segments.index(module) if module in segments else 0
    return segments[at - 1] if at > 0 and segments[at - 1] in ("sender", "receiver") else None
