"""The relayed tokens indexed by what a location's publish_allowed_to can name: one lookup tells an entry's eMSPs.

mod_locations.asciidoc, Location.publish_allowed_to: "Only owners of Tokens that match all the set fields of one
PublishToken in the list are allowed to be shown this location." A PublishTokenType sets some of uid, type,
visual_number, issuer and group_id, so the hub writes every token it relays (a PUT or PATCH on a CPO's tokens
Receiver, direct or broadcast) under each combination of its fields an entry can set, and an entry is one HGET.

Keys, in the hash `{prefix}owners:publish-tokens`: the JSON array `[uid, type, visual_number, issuer, group_id]`,
an unset field null, uid, type and group_id upper-cased (CiStrings and an enum; visual_number and issuer are
strings, compared as they are), an empty string unset: `["FLEET-1","RFID",null,null,null]`. Values: the owners,
as in every owner index, "CC-PID" or, when tokens of several eMSPs give the key, "CC-PID,CC-PID". A token is
written under every key that keeps its type and, of its other fields, any that include one of uid, visual_number
and group_id ("At least one of the following fields SHALL be set: uid, visual_number, or group_id"): 14 keys at
most. An entry that sets none of those three matches nobody; one without type stands for the four TokenType values
(four keys), so a token of a type outside the spec is matched only by an entry naming that type.

A PATCH sends only what changed ("other fields/objects that are not specified are considered unchanged",
mod_tokens.asciidoc), so `{prefix}token-fields` keeps each token's last known fields, `["CC-PID","UID","TYPE"]` ->
`[visual_number, issuer, group_id]`, and a PATCH is indexed with the rest of its token. The index only grows, as
the other owner indexes do: a token moved to another group still matches its old one.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product
from typing import Any, NamedTuple

import msgspec

# mod_tokens.asciidoc, TokenType
TOKEN_TYPES = ("AD_HOC_USER", "APP_USER", "OTHER", "RFID")


class Known(NamedTuple):
    """A token's fields besides uid and type (None: not set)."""

    visual_number: str | None = None
    issuer: str | None = None
    group_id: str | None = None


class Sent(msgspec.Struct):
    """What the hub reads of a relayed Token body; UNSET: not in the body (a PATCH leaves that field as it was)."""

    type: Any = msgspec.UNSET
    visual_number: Any = msgspec.UNSET
    issuer: Any = msgspec.UNSET
    group_id: Any = msgspec.UNSET


_read_sent = msgspec.json.Decoder(Sent).decode
_encode = msgspec.json.encode
_decode = msgspec.json.decode


def read_sent(body: bytes) -> Sent:
    """The indexed fields of a relayed Token body; none of them when it is no JSON object."""
    try:
        return _read_sent(body)
    except (msgspec.DecodeError, RecursionError):
        return Sent()


def token_type(sent: Sent, query_type: str | None) -> str:
    """The body's type, else the URL's ?type=, else RFID (mod_tokens.asciidoc: "Default if omitted: RFID")."""
    return (_text(sent.type) or _text(query_type) or "RFID").upper()


def after(known: Known | None, sent: Sent, whole: bool) -> Known:
    """A token's fields after a PUT (whole: what was not sent is unset) or a PATCH (what was not sent stays)."""
    before = Known() if whole or known is None else known
    return Known(
        before.visual_number if sent.visual_number is msgspec.UNSET else _text(sent.visual_number),
        before.issuer if sent.issuer is msgspec.UNSET else _text(sent.issuer),
        before.group_id if sent.group_id is msgspec.UNSET else _text(sent.group_id),
    )


def identity(owner: str, uid: str, type_: str) -> str:
    """A token's field in `{prefix}token-fields`: its owner (CC-PID), uid and type, upper-cased."""
    return _encode([owner, uid, type_]).decode()


def read_known(raw: bytes | str | None) -> Known | None:
    if not raw:
        return None
    try:
        return Known(*_decode(raw))
    except (msgspec.DecodeError, TypeError):
        return None  # not written by this module: as if unknown


def write_known(known: Known) -> str:
    return _encode(list(known)).decode()


def token_keys(uid: str, type_: str, known: Known) -> Iterator[str]:
    """The key of every PublishToken entry this token matches: each of its fields in or out, its type always in."""
    group_id = known.group_id.upper() if known.group_id else None
    choices = ((None, x) if x else (None,) for x in (uid.upper(), known.visual_number, known.issuer, group_id))
    for u, v, i, g in product(*choices):
        if u or v or g:
            yield _key(u, type_, v, i, g)


def entry_keys(publish_allowed_to: Any) -> list[str]:
    """The keys of the entries of a location's publish_allowed_to; an entry naming no uid, visual_number or group_id
    has none, and one with a field that is no string has none (matches nobody rather than more tokens)."""
    if not isinstance(publish_allowed_to, list):
        return []
    keys = []
    for entry in publish_allowed_to:
        if not isinstance(entry, dict):
            continue
        values = [entry.get(name) for name in ("uid", "type", "visual_number", "issuer", "group_id")]
        if any(value is not None and not isinstance(value, str) for value in values):
            continue
        uid, type_, visual_number, issuer, group_id = (_text(value) for value in values)
        if not (uid or visual_number or group_id):
            continue
        for each in (type_.upper(),) if type_ else TOKEN_TYPES:
            keys.append(_key(uid and uid.upper(), each, visual_number, issuer, group_id and group_id.upper()))
    return keys


def _key(*fields: str | None) -> str:
    return _encode(fields).decode()


def _text(value: Any) -> str | None:
    """A field's value; None when unset, empty or no string."""
    return value if isinstance(value, str) and value else None
