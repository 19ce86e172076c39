"""The ids a routing-log row is found by: the object it is about (object_id), those a list answer names (listed_ids).

object_id: the location, session, CDR, token or tariff its path or body names, or what a command acts on; listed_ids:
the objects of a Sender's list answer. So "did the CPO ever send us this CDR?" is one index lookup (storage.log_search).
"""

from __future__ import annotations

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


class _Identified(msgspec.Struct):
    id: str


class _CommandObjects(msgspec.Struct):
    location_id: str | None = None
    session_id: str | None = None
    reservation_id: str | None = None


class _OneObject(msgspec.Struct):
    data: _Identified


_identified, _command_objects = msgspec.json.Decoder(_Identified), msgspec.json.Decoder(_CommandObjects)
_one_object = msgspec.json.Decoder(_OneObject)
RELAYED_CDRS = "/ocpi/2.2.1/relayed-cdrs/"  # the hub URL of a CDR an eMSP created (hub.ocpi.relayed_urls)
# What a command acts on (mod_commands.asciidoc, its request objects): a STOP_SESSION's session, a reservation, the
# location a session is started or a connector unlocked at.
_COMMAND_OBJECT = {"START_SESSION": "location_id", "UNLOCK_CONNECTOR": "location_id", "STOP_SESSION": "session_id",
                   "RESERVE_NOW": "reservation_id", "CANCEL_RESERVATION": "reservation_id"}  # fmt: skip


def object_id_of_entry(entry: LogEntry) -> str | None:
    """The id a row is found by: the one the hub knows of it (a command's result: its command's), else object_id_of
    its path; from the body where the path names none: a CDR pushed to a receiver (POST, mod_cdrs.asciidoc), so that
    "did the CPO ever send us this CDR?" is one index lookup, a command, by what it acts on, and a CDR fetched at the
    Location the hub gave its POST, by the id in the answer."""
    if entry.object_id is not None:
        return entry.object_id
    if "://" in entry.path:  # a message of the hub's own, logged with the party's URL, shaped as the party likes
        return None
    if entry.path.startswith(RELAYED_CDRS) and entry.response_body and 200 <= entry.http_status < 300:
        try:  # the GET of a CDR whose POST's Location the hub rewrote: found by the CDR's id, as its POST is
            return _one_object.decode(entry.response_body).data.id[:255]
        except (msgspec.DecodeError, RecursionError):
            return None
    if entry.method == "POST" and entry.interface == "receiver" and entry.request_body:
        try:
            if entry.module == "cdrs":
                return _identified.decode(entry.request_body).id[:255]
            command = entry.path.rstrip("/").rpartition("/")[2].upper()
            if entry.module == "commands" and (field := _COMMAND_OBJECT.get(command)):
                found = getattr(_command_objects.decode(entry.request_body), field)
                return found[:255] if found else None
        except (msgspec.DecodeError, RecursionError):  # the row is written all the same, without an object id
            return None
    return object_id_of(entry.module, entry.interface or _interface_in(entry.path, entry.module), entry.path)


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
