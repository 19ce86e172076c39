"""A location document as the cache reads and changes it: what it is indexed by, and the Receiver rules of
mod_locations.asciidoc for a PUT or PATCH of a location, an EVSE or a connector.

PUT replaces, PATCH changes only the fields sent, and a PUT or PATCH of an EVSE or connector "SHALL also set the new
last_updated value on the parent" EVSE and Location. The document itself is kept as the CPO sent it.

An update older than the object it changes (its last_updated before the cached one's) is not applied: it reached the
cache after a newer one, as updates relayed by different hub processes can, above all those held while Redis was away.
Applied, it would put back an EVSE status the CPO has since changed. A location's last_updated is that of its latest
change, its EVSEs' and connectors' included (the rule above), so the comparison is with the object the URL names. A
cached last_updated more than FUTURE_SKEW_S ahead of the hub's clock orders nothing: it would keep the CPO's every
update out until then.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from storage.publish_tokens import publish_entries

FUTURE_SKEW_S = 60  # how far a cached last_updated may be ahead of this clock and still order updates
# The largest location document the cache keeps: one with many EVSEs is tens of kB (mod_locations.asciidoc's
# examples), so this is far above any real one. A larger one is relayed all the same, but not cached (the cache keeps
# the version before, if any): one CPO pushing a few MB per location filled Redis and made the hub build GET All pages
# of 80 MB (security review, finding 3).
MAX_DOCUMENT_BYTES = 1_000_000


class TooLarge(ValueError):
    """A location document larger than MAX_DOCUMENT_BYTES: not cached."""


def too_large(document: bytes | msgspec.Raw) -> TooLarge | None:
    """TooLarge, saying so, for a document larger than the cache keeps; None for any other."""
    if len(document) <= MAX_DOCUMENT_BYTES:
        return None
    return TooLarge(f"the location is {len(document):,} bytes, more than the {MAX_DOCUMENT_BYTES:,} the hub's cache "
                    "keeps; relayed, but the cache keeps its version before, if any")  # fmt: skip


def epoch(timestamp: str) -> float:
    """types.asciidoc DateTime (UTC, 'Z' or no zone) as seconds since the epoch; ValueError for anything else (a
    number, a DateTime out of range), as what a party sent is judged here."""
    if not isinstance(timestamp, str):
        raise ValueError(f"not a DateTime: {type(timestamp).__name__}")
    text = timestamp.upper().replace("Z", "+00:00")  # RFC 3339, 5.6: "t" and "z" may be lower case
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.fromisoformat(text + "+00:00")
        return moment.timestamp()
    except OverflowError:
        raise ValueError(f"not a DateTime in range: {timestamp[:40]!r}") from None


def trusted_until() -> float:
    """The latest cached last_updated that keeps an older update out: one further in the future than a clock may be
    off (a CPO's local time sent as UTC, a bug) would keep every genuine update out until then; past it, the update
    applies, as it did before updates were compared."""
    return time.time() + FUTURE_SKEW_S


def same_id(value: Any, object_id: str) -> bool:
    """Whether an EVSE's uid or a connector's id in a document is this one: CiString(36)s, like Location.id."""
    return isinstance(value, str) and value.upper() == object_id.upper()


class Head(msgspec.Struct):
    """What the cache reads of a whole location; the document itself is stored as the CPO sent it."""

    id: Any = None
    country_code: Any = None
    party_id: Any = None
    last_updated: Any = None
    publish: Any = None
    publish_allowed_to: Any = None


read_head = msgspec.json.Decoder(Head).decode


def whole_location(document: bytes | msgspec.Raw) -> tuple[Head, Index]:
    """What a whole location is cached by, and its index entries; ValueError, saying why, when it cannot be cached
    as it came (TooLarge for one larger than the cache keeps)."""
    if refused := too_large(document):
        raise refused
    try:
        head = read_head(document)
        # msgspec does not check the UTF-8 of the fields it skips: one bad byte would spoil every GET All page it
        # is served on
        str(document, "utf-8")
    except (msgspec.DecodeError, RecursionError):
        raise ValueError("the body is not a JSON object") from None
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8") from None
    return head, index(head.last_updated, head.publish, head.publish_allowed_to)


class Index(NamedTuple):
    score: float  # last_updated, in seconds since the epoch
    hidden: bool  # publish is false
    entries: str  # of publish_allowed_to when hidden, as storage.publish_tokens's matcher reads them


def index(last_updated: Any, publish: Any, publish_allowed_to: Any) -> Index:
    """A location's entries in the cache's indexes; ValueError when it has no valid last_updated."""
    if not isinstance(last_updated, str):
        raise ValueError("a location without last_updated")
    try:
        score = epoch(last_updated)
    except ValueError:
        raise ValueError(f"last_updated {last_updated[:40]!r} is not a DateTime") from None
    hidden = publish is False
    return Index(score, hidden, publish_entries(publish_allowed_to) if hidden else "")


def index_of(location: dict[str, Any]) -> Index:
    return index(location.get("last_updated"), location.get("publish"), location.get("publish_allowed_to"))


class Superseded(ValueError):
    """An update older than the cached object it changes."""


def updated(current: dict[str, Any] | None, method: str, path: list[str], update: dict[str, Any]) -> dict | None:
    """The location after a PUT or PATCH at path ([], [evse_uid] or [evse_uid, connector_id]); Superseded when the
    cached object at path is newer than the update."""
    if not path:
        if method == "PUT":
            return update  # whole locations are compared as they are stored (storage.location_writer)
        if current is None:
            return None
        _not_older(update, current, "location")
        return current | update  # PATCH: the fields sent, nothing else
    if current is None:
        return None  # an EVSE or connector of a location the hub has not seen: pull sync will bring it
    location = dict(current)
    changed = update.get("last_updated")
    listed = [dict(e) for e in location.get("evses") or []]
    evses: list[dict] | None = listed
    if len(path) == 1:
        evses = _changed(listed, "uid", path[0], method, update, "EVSE")
    else:
        evse = next((e for e in listed if same_id(e.get("uid"), path[0])), None)
        if evse is None:
            return None
        connectors = _changed([dict(c) for c in evse.get("connectors") or []], "id", path[1], method, update,
                              "connector")  # fmt: skip
        if connectors is None:
            return None
        evse["connectors"] = connectors
        evse["last_updated"] = _later(evse.get("last_updated"), changed)
    if evses is None:
        return None
    location["evses"] = evses
    location["last_updated"] = _later(location.get("last_updated"), changed)
    return location


def _changed(objects: list[dict], key: str, object_id: str, method: str, update: dict[str, Any],
             what: str) -> list[dict] | None:  # fmt: skip
    """The EVSEs or connectors after a PUT or PATCH of the one whose `key` is object_id (a PATCH of one not there:
    None); Superseded when that one is newer than the update."""
    current = next((each for each in objects if same_id(each.get(key), object_id)), None)
    if current is not None:
        _not_older(update, current, what)
    if method == "PUT":  # "New EVSE object, or EVSE object to replace" (mod_locations): replaced where it stood
        return [update if each is current else each for each in objects] + ([update] if current is None else [])
    if current is None:
        return None
    current.update(update)
    return objects


def _not_older(update: dict[str, Any], cached: dict[str, Any], what: str) -> None:
    """Superseded when the cached object's last_updated is later than the update's (either missing or not a DateTime:
    nothing to compare, the update applies), and not in the future (trusted_until())."""
    try:
        cached_at = epoch(cached["last_updated"])
        newer = trusted_until() >= cached_at > epoch(update["last_updated"])
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError):
        return
    if newer:
        raise Superseded(f"older than the cached {what} (last_updated {update['last_updated']} before "
                         f"{cached['last_updated']})")  # fmt: skip


def _later(a: str | None, b: str | None) -> str | None:
    if not a or not b:
        return a or b
    return a if epoch(a) >= epoch(b) else b
