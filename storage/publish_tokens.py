"""The relayed tokens as a location's publish_allowed_to names them, and the one matcher of an entry against them.

mod_locations.asciidoc, Location.publish_allowed_to: "Only owners of Tokens that match all the set fields of one
PublishToken in the list are allowed to be shown this location." The question is always whether one eMSP (the
viewer) owns such a token, so everything is kept per owner, in three hashes (fields and values joined by \\x1f, a
count after \\x1d, lists joined by \\x1e: types.asciidoc allows none of them in a CiString or a string, and a value
holding one is never matched):

- `{prefix}publish-to:tokens`: one record per token relayed to a CPO (a PUT or PATCH on a tokens Receiver, direct
  or broadcast), `CC-PID|UID|TYPE` -> `visual_number|issuer|GROUP_ID`. An entry naming a uid is one HGET of the
  viewer's record (four without a type, one per TokenType).
- `{prefix}publish-to:visual-numbers`: `CC-PID|visual_number` -> the distinct `TYPE|issuer|GROUP_ID` of the owner's
  tokens with that visual number, each with how many tokens have it; for entries naming a visual_number, no uid.
- `{prefix}publish-to:groups`: `CC-PID|GROUP_ID` -> the distinct `TYPE|issuer` of the owner's tokens in the group,
  with their counts; for entries naming only a group_id: bounded by what differs within a group, however large.

uid, type and group_id are upper-cased (CiStrings, an enum), visual_number and issuer kept as they are, an empty
string is unset. An entry that names none of uid, visual_number and group_id ("At least one of the following fields
SHALL be set"), or has a field that is no string, matches nobody; one without type stands for the four TokenType
values, so a token of a type outside the spec is matched only by an entry naming that type. A PATCH sends only what
changed ("other fields/objects that are not specified are considered unchanged", mod_tokens.asciidoc): the write
script merges it into the record and moves the token's counts from its old values to its new ones, atomically, so a
token is matched by its current fields (moved to another group, it no longer sees its old group's locations).

Redis bytes per token (MEMORY USAGE of the hashes, `python -m bench.publish_tokens`: 20,000 tokens of ten eMSPs,
Redis 7.0), against a first design, which wrote each token under every combination of its fields an entry can
set (up to 14 keys, `owners:publish-tokens`) and kept a JSON record of it (`token-fields`):

                                               now    first design (combinations + record)
    uid + issuer                             101 B      215 + 140 =   355 B
    + visual_number                          218 B      628 + 156 =   784 B
    + visual_number + group_id, 2 a group    301 B    1,392 + 156 = 1,548 B
    + visual_number + group_id, 50 a group   251 B    1,339 + 156 = 1,495 B

`owners:tokens` (uid -> owners, for open routing: about 77 B a token) comes on top in both, and is not read here.
Open routing reads the records too (storage.owner_index.token_types): several eMSPs' tokens of one uid are told apart
by their types.

Tokens relayed by a hub before this index (which kept only their uid, in `owners:tokens`) are matched once their
eMSP pushes them again, or the hub's token pull reads them from the eMSP's list (routing.owner_pull).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from storage.directory import UNCHANGED_LUA

_ENTRY_FIELDS = ("uid", "type", "visual_number", "issuer", "group_id")
_UNIT, _RECORD = "\x1f", "\x1e"
_SEPARATORS = re.compile("[\x1d-\x1f]")


TOKEN_TYPES = ("AD_HOC_USER", "APP_USER", "OTHER", "RFID")  # mod_tokens.asciidoc, TokenType


def record_field(owner: str, uid: str, type_: str) -> str:
    """A token's field in the records hash (the first of index_keys): owner (CC-PID), uid and type, upper-cased."""
    return _UNIT.join((owner, uid, type_))


def index_keys(prefix: str) -> list[str]:
    """The hashes the write script keeps and the matcher reads: records, visual numbers, groups."""
    return [f"{prefix}publish-to:tokens", f"{prefix}publish-to:visual-numbers", f"{prefix}publish-to:groups"]


def owner_fields(owner: str) -> str:
    """The start of every field the three hashes keep of an owner's (CC-PID) tokens."""
    return owner + _UNIT


class Sent(msgspec.Struct):
    """What the hub reads of a relayed Token body; UNSET: not in the body (a PATCH leaves that field as it was)."""

    type: Any = msgspec.UNSET
    visual_number: Any = msgspec.UNSET
    issuer: Any = msgspec.UNSET
    group_id: Any = msgspec.UNSET


_read_sent = msgspec.json.Decoder(Sent).decode


def read_sent(body: bytes) -> Sent:
    """The indexed fields of a relayed Token body; none of them when it is no JSON object."""
    try:
        return _read_sent(body)
    except (msgspec.DecodeError, RecursionError):
        return Sent()


def token_type(sent: Sent, query_type: str | None) -> str:
    """The body's type, else the URL's ?type=, else RFID (mod_tokens.asciidoc: "Default if omitted: RFID")."""
    return (_text(sent.type) or _text(query_type) or "RFID").upper()


# An id (a location's, a token's uid, a session's: storage.owner_index) or a token's field longer is not indexed: OCPI's
# are 36 characters at most (64 for a token's visual_number and issuer); a party sending longer ones would grow Redis
# without bound, a request up to its 64 KiB head or its body's cap (a security review's point). Open routing then finds
# no owner for it; a field kept as empty matches no publish_allowed_to entry.
MAX_INDEXED_CHARS = 255


def token_args(owner: str, uid: str, type_: str, pushes: list[tuple[Sent, bool]]) -> list[str]:
    """The write script's arguments for a token's pushes since the last write (PUT: whole, else PATCH), in order, as
    one: its record's field, which of visual_number, issuer and group_id were sent ("1"/"0" each; a PUT sends all
    three, what it leaves out unset), and their values; none for a token no entry can name."""
    if _SEPARATORS.search(owner + uid + type_) or len(uid) > MAX_INDEXED_CHARS:
        return []
    sent, values = ["0", "0", "0"], ["", "", ""]
    for push, whole in pushes:
        for i, value in enumerate((push.visual_number, push.issuer, push.group_id)):
            if whole or value is not msgspec.UNSET:
                sent[i], values[i] = "1", _value(value)
    return [record_field(owner, uid, type_), "".join(sent), values[0], values[1], values[2].upper()]


def publish_entries(publish_allowed_to: Any) -> str:
    """A location's publish_allowed_to as the matcher reads it: `UID|TYPE|visual_number|issuer|GROUP_ID` per entry
    that can match, '' for a field not set. An entry naming no uid, visual_number or group_id, or with a field that is
    no string, is left out (it matches nobody rather than more tokens)."""
    if not isinstance(publish_allowed_to, list):
        return ""
    entries = []
    for entry in publish_allowed_to:
        if not isinstance(entry, dict):
            continue
        values = [entry.get(name) for name in _ENTRY_FIELDS]
        if any(value is not None and not isinstance(value, str) for value in values):
            continue
        uid, type_, visual_number, issuer, group_id = (value or "" for value in values)
        if not (uid or visual_number or group_id) or any(_SEPARATORS.search(value or "") for value in values):
            continue
        entries.append(_UNIT.join((uid.upper(), type_.upper(), visual_number, issuer, group_id.upper())))
    return _RECORD.join(entries)


_HELPERS_LUA = r"""
local function split(text, n)
  local out, from = {}, 1
  for i = 1, n - 1 do
    local at = string.find(text, '\31', from, true)
    if not at then return nil end
    out[i], from = string.sub(text, from, at - 1), at + 1
  end
  out[n] = string.sub(text, from)
  return out
end
local function counted(hash, field)
  return string.gmatch(redis.call('HGET', hash, field) or '', '([^\30\29]*)\29(%d+)')
end
"""

# The matcher, shared by the GET All snapshot script and the single read's script: allowed(entries, viewer, records,
# visual numbers, groups) tells whether the viewer (CC-PID) owns a token that matches every field one entry sets.
MATCH_LUA = (
    _HELPERS_LUA
    + r"""
-- mod_tokens.asciidoc, TokenType
local TOKEN_TYPES, IS_TOKEN_TYPE = {'AD_HOC_USER', 'APP_USER', 'OTHER', 'RFID'}, {}
for _, t in ipairs(TOKEN_TYPES) do IS_TOKEN_TYPE[t] = true end
local function fits(wanted, has) return wanted == '' or wanted == has end
local function fits_type(wanted, has)
  if wanted == '' then return IS_TOKEN_TYPE[has] == true end
  return wanted == has
end
local function allowed(entries, viewer, records, visual_numbers, groups)
  for text in string.gmatch(entries, '[^\30]+') do
    local e = split(text, 5) or {'', '', '', '', ''}
    if e[1] ~= '' then
      for _, t in ipairs(e[2] ~= '' and {e[2]} or TOKEN_TYPES) do
        local known = redis.call('HGET', records, viewer .. '\31' .. e[1] .. '\31' .. t)
        local r = known and split(known, 3)
        if r and fits(e[3], r[1]) and fits(e[4], r[2]) and fits(e[5], r[3]) then return true end
      end
    elseif e[3] ~= '' then
      for combination in counted(visual_numbers, viewer .. '\31' .. e[3]) do
        local c = split(combination, 3)
        if c and fits_type(e[2], c[1]) and fits(e[4], c[2]) and fits(e[5], c[3]) then return true end
      end
    elseif e[5] ~= '' then
      for combination in counted(groups, viewer .. '\31' .. e[5]) do
        local c = split(combination, 2)
        if c and fits_type(e[2], c[1]) and fits(e[4], c[2]) then return true end
      end
    end
  end
  return false
end
"""
)

# KEYS: records, visual numbers, groups. ARGV: the entries, the viewer. 1 if the viewer may see the location.
ALLOWED_LUA = MATCH_LUA + "return allowed(ARGV[1], ARGV[2], KEYS[1], KEYS[2], KEYS[3]) and 1 or 0\n"

# KEYS: the directory's generation, records, visual numbers, groups. ARGV: the generation the tokens' owners were found
# on the hub in ('' for an unguarded write; storage.directory.UNCHANGED_LUA: -1 if it changed), then five per token
# (token_args). A token's counts move with it from its old values to its new ones; at 0 a combination goes. Returns
# how many records changed. A token written again as it is changes nothing: a retried write counts nothing twice.
WRITE_LUA = (
    UNCHANGED_LUA
    + _HELPERS_LUA
    + r"""
local function count(hash, field, combination, by)
  local kept, found = {}, false
  for c, n in counted(hash, field) do
    n = tonumber(n)
    if c == combination then n, found = n + by, true end
    if n > 0 then kept[#kept + 1] = c .. '\29' .. n end
  end
  if not found and by > 0 then kept[#kept + 1] = combination .. '\29' .. by end
  if #kept == 0 then redis.call('HDEL', hash, field) else redis.call('HSET', hash, field, table.concat(kept, '\30')) end
end
local function move(hash, old_field, old, new_field, new)
  if old_field == new_field and old == new then return end
  if old_field then count(hash, old_field, old, -1) end
  if new_field then count(hash, new_field, new, 1) end
end
local function by_visual_number(owner, kind, f)
  if f[1] ~= '' then return owner .. '\31' .. f[1], kind .. '\31' .. f[2] .. '\31' .. f[3] end
end
local function by_group(owner, kind, f)
  if f[3] ~= '' then return owner .. '\31' .. f[3], kind .. '\31' .. f[2] end
end
local changed = 0
for i = 2, #ARGV, 5 do
  local token, sent = ARGV[i], ARGV[i + 1]
  local known = redis.call('HGET', KEYS[2], token)
  local was = known and split(known, 3) or {'', '', ''}
  local now = {}
  for j = 1, 3 do
    if string.sub(sent, j, j) == '1' then now[j] = ARGV[i + 1 + j] else now[j] = was[j] end
  end
  local record = table.concat(now, '\31')
  if record ~= known then
    redis.call('HSET', KEYS[2], token, record)
    local owner, _, kind = unpack(split(token, 3))
    local old_field, old = by_visual_number(owner, kind, was)
    local new_field, new = by_visual_number(owner, kind, now)
    move(KEYS[3], old_field, old, new_field, new)
    old_field, old = by_group(owner, kind, was)
    new_field, new = by_group(owner, kind, now)
    move(KEYS[4], old_field, old, new_field, new)
    changed = changed + 1
  end
end
return changed
"""
)


def _value(value: Any) -> str:
    """A token's field as the index keeps it: '' when unset, empty, no string, longer than MAX_INDEXED_CHARS, or holding
    a separator (it matches no entry)."""
    return value if isinstance(value, str) and len(value) <= MAX_INDEXED_CHARS and not _SEPARATORS.search(value) else ""


def _text(value: Any) -> str | None:
    """A field's value; None when unset, empty or no string."""
    return value if isinstance(value, str) and value else None
