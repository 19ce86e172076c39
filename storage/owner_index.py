"""The owner index in Redis: every party seen owning an object id, noted in batches off the request path.

An object id is unique only within its owner's platform (mod_locations.asciidoc: Location.id "uniquely identifies
the location within the CPO's platform"), so the owner index keeps every party seen with an id: one hash per
module, id -> "CC-PID" or, once a second owner shows up, "CC-PID,CC-PID" (open routing then refuses to guess).
Relayed tokens are also kept as a location's publish_allowed_to names them (storage.publish_tokens).

Sessions and reservations end, and a hub sees millions of them: their owners are kept per period (a generation,
`owners:{module}:{period number}`). A note goes to the current period's hash; a lookup reads the current and the
previous one and merges them, so an id seen again stays found, an id with an owner in each is still ambiguous, and
one unseen for two periods is forgotten. Locations and tokens keep one hash for ever: their number is bounded by
the objects that exist, and a location or token pushed once may be used unchanged for years (a START_SESSION on a
location never updated since, an authorize of a card issued long ago), so they must not fall out of the index.

Object ids are CiStrings (types.asciidoc), so the index keeps them upper-cased, however they were sent: a token pushed
as `abc123` is found for an authorize of `ABC123`. A hub before this kept them as sent; a lookup reads that spelling
too, so such an entry is still found when asked for in the case it was noted in, and in any case once noted again:
sessions and reservations age out with their periods, locations and tokens are noted upper-cased on their next push.

Notes are written some ms after the request, or, Redis away, once it is back: a party that left the hub meanwhile must
not get entries back after its cleanup (storage.departed) has run, and one whose id a new platform registered since
must not get the old platform's. So a note carries the platforms the parties it names were seen on, and, given the
process's directory, a write keeps only the notes of parties it holds on those platforms; its scripts are refused once
the directory's generation moved on (DirectoryCache.fence): the notes are then kept, the directory caught up, and they
go in the next write, less those of a party that left.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Self

import redis.asyncio as redis
import structlog
from redis.asyncio.client import Pipeline

from storage.directory import GENERATION_KEY, UNCHANGED_LUA, Directory, DirectoryCache
from storage.owner_upgrades import take_over
from storage.publish_tokens import (
    MAX_INDEXED_CHARS,
    TOKEN_TYPES,
    WRITE_LUA,
    Sent,
    index_keys,
    record_field,
    token_args,
)
from storage.redis_scripts import executed, queue_script

log = structlog.get_logger()

# Their owners are found for one to two periods (OCPI_HUB_OWNER_INDEX_PERIOD_S) after they were last seen.
EXPIRING_OWNERS = ("sessions", "session-receivers", "reservations", "chargingprofile-senders")
# Kept by a party and the id, not by the id alone ("CC/PID/id"): a session by its CPO
# (routing.open_routing._session_of), a reservation by its eMSP (_reservation_of).
KEYED_BY_PARTY = ("session-receivers", "chargingprofile-senders", "reservations")
# A hash past its two periods is unlinked by the hub (freed off Redis's main thread); its EXPIRE, this much later,
# is for when no hub runs. A hash of millions of fields deleted by expiry would stall Redis for a moment.
_EXPIRE_MARGIN_S = 3600.0

# KEYS: the directory's generation, a module's owners hash. ARGV: the generation the owners were found on the hub in
# ('' for an unguarded write; UNCHANGED_LUA: -1 if it changed), ms to keep the hash (0: for ever), object id, owner
# (CC-PID), object id, owner, ... An owner is added to the id's list unless it is there already: a party pushing its
# own object again does not make the id ambiguous.
_ADD_OWNERS = (
    UNCHANGED_LUA
    + """
for i = 3, #ARGV, 2 do
  local known = redis.call('HGET', KEYS[2], ARGV[i])
  if not known then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  elseif not string.find(',' .. known .. ',', ',' .. ARGV[i + 1] .. ',', 1, true) then
    redis.call('HSET', KEYS[2], ARGV[i], known .. ',' .. ARGV[i + 1])
  end
end
if ARGV[2] ~= '0' then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""
)

# KEYS: a module's owners hash of the current period and of the previous one. ARGV: an object id's fields (upper-cased,
# and as an earlier hub noted it). All in one round trip (a script, not a pipeline: redis-py drops a cancel that lands
# inside a pipeline, redis/redis-py#2028).
_OWNERS_OF = """
local found = {}
for _, key in ipairs(KEYS) do
  for _, field in ipairs(ARGV) do
    found[#found + 1] = redis.call('HGET', key, field)
  end
end
return found
"""


# The parties a note names, each with the id of the platform it was seen on (Directory.holds).
Seen = tuple[tuple[tuple[str, str], int], ...]
_Token = tuple[str, str, str, Seen]  # a relayed token: its owner (CC-PID), uid and type, upper-cased; where it was seen
_Noted = dict[tuple[str, str], set[tuple[str, Seen]]]  # (module, object id) -> owners (CC-PID) and where each was seen
OWNERS_PER_SCRIPT = 5000  # one script call holds Redis a few ms at most
TOKENS_PER_SCRIPT = 100  # each a few reads and writes: a few ms a call (bench/publish_tokens.py)


def period_of(moment: float, period_s: float) -> int:
    """The number of the period (of period_s, counted from the epoch) a moment (s since the epoch) falls in."""
    return int(moment // period_s)


class OwnerIndex:
    """directory: this process's, which notes must name parties of (none: every note is written, unguarded)."""

    def __init__(self, redis_client: redis.Redis, prefix: str, owners_period_s: float,
                 directory: DirectoryCache | None = None) -> None:  # fmt: skip
        self._redis = redis_client
        self._prefix = prefix
        self._period_s = owners_period_s
        self._directory, self._generation_key = directory, f"{prefix}{GENERATION_KEY}"
        self._owners: _Noted = {}  # noted since the last write
        self._tokens: dict[_Token, list[tuple[Sent, bool]]] = {}  # pushes noted since the last write
        self._publish_keys = index_keys(prefix)
        self._add_owners = redis_client.register_script(_ADD_OWNERS)
        self._owners_of = redis_client.register_script(_OWNERS_OF)
        self._write_tokens = redis_client.register_script(WRITE_LUA)

    def note_owner(self, module: str, object_id: str, owner: tuple[str, str], seen: Seen) -> None:
        """Remember who owns an object seen in passing, and the platforms of the parties the note names (the owner,
        a session's CPO); written to Redis in batches, off the request path."""
        if len(object_id) > MAX_INDEXED_CHARS:
            return
        self._owners.setdefault((module, _indexed(object_id)), set()).add((f"{owner[0]}-{owner[1]}", seen))

    def note_token(self, owner: tuple[str, str], uid: str, type_: str, sent: Sent, whole: bool, seen: Seen) -> None:
        """Remember a token pushed to a CPO (a PUT if whole, else a PATCH), for publish_allowed_to; written with the
        owners, off the request path (storage.publish_tokens.token_args: what the index keeps of it)."""
        self._tokens.setdefault((f"{owner[0]}-{owner[1]}", uid.upper(), type_, seen), []).append((sent, whole))

    async def write_noted(self) -> None:
        """Write what was noted so far now, rather than with the next batch: a task noting a page of objects at a time
        (routing.owner_pull) waits for its page to be written before it reads the next, so its notes stay few."""
        await self._write_owners()

    async def owners(self, module: str, object_id: str) -> list[tuple[str, str]]:
        """Every party seen owning the object, sorted: more than one means the id alone does not tell. One round
        trip: an HMGET, or for sessions and reservations a script reading this period's hash and the previous one."""
        indexed = _indexed(object_id)
        texts = {owner for owner, _ in self._owners.get((module, indexed), ())}
        fields = [indexed] if indexed == object_id else [indexed, object_id]  # and as an earlier hub noted it
        if module in EXPIRING_OWNERS:
            period = self._period()
            keys = [self._owners_key(module, period), self._owners_key(module, period - 1)]
            found = await self._owners_of(keys=keys, args=fields)
        else:
            found = await self._redis.hmget(self._owners_key(module), fields)
        for owners in found:
            if owners:
                texts.update(_text(owners).split(","))
        return sorted(_party(text) for text in texts)

    async def token_types(self, owners: list[tuple[str, str]], uid: str, asked: str) -> list[list[str]]:
        """Of each owner of a token uid, the types of its tokens with that uid the hub relayed (the TokenType values and
        asked, sorted), from the records storage.publish_tokens keeps: none for a token relayed only by a hub before
        them. One HMGET."""
        uid, types = uid.upper(), sorted({*TOKEN_TYPES, asked})
        texts = [f"{country}-{party}" for country, party in owners]
        found = await self._redis.hmget(self._publish_keys[0], [record_field(t, uid, k) for t in texts for k in types])
        noted = {(owner, type_) for owner, noted_uid, type_, _ in self._tokens if noted_uid == uid}  # not yet written
        return [[k for j, k in enumerate(types) if found[i * len(types) + j] is not None or (text, k) in noted]
                for i, text in enumerate(texts)]  # fmt: skip

    async def owner(self, module: str, object_id: str) -> tuple[str, str] | None:
        """The one owner of the object, or None if none or several were seen."""
        found = await self.owners(module, object_id)
        return found[0] if len(found) == 1 else None

    def owner_keys(self) -> list[tuple[str, str]]:
        """(module, hash) of every owner hash a lookup reads now: for sessions and reservations, this period's and
        the previous one's."""
        period = self._period()
        return [(module, self._owners_key(module)) for module in ("locations", "tokens")] + [
            (module, self._owners_key(module, p)) for module in EXPIRING_OWNERS for p in (period, period - 1)
        ]

    def _period(self) -> int:
        return period_of(time.time(), self._period_s)

    def _kept_ms(self, period: int) -> int:
        """How long to keep a period's owners hash: it is read until the next period ends."""
        ends = (period + 2) * self._period_s + min(self._period_s, _EXPIRE_MARGIN_S)
        return max(1, math.ceil((ends - time.time()) * 1000))

    def _owners_key(self, module: str, period: int | None = None) -> str:
        return f"{self._prefix}owners:{module}" if period is None else f"{self._prefix}owners:{module}:{period}"

    @contextlib.asynccontextmanager
    async def running(self, interval_s: float = 0.05) -> AsyncIterator[Self]:
        # Stopped by an event, not by cancelling it: redis-py's asyncio client drops a cancel that lands inside a
        # pipeline (redis/redis-py#2028), after which the task slept on forever and the hub never exited.
        stop = asyncio.Event()
        task = asyncio.create_task(self._flush_owners(interval_s, stop), name="owner_index_writer")
        try:
            yield self
        finally:
            stop.set()
            await asyncio.wait((task,))  # also when a forced quit (a second Ctrl-C) cancelled it with every task
            if not task.cancelled():
                task.result()  # a failure of its own
            await self._write_owners()  # the notes of the last requests

    async def _flush_owners(self, interval_s: float, stop: asyncio.Event) -> None:
        seen_period, failing_since = None, None
        while not stop.is_set():
            try:
                if (period := self._period()) != seen_period:  # at start, before the first write, and once a period
                    await self._begin_period(period)
                    seen_period = period
                await self._write_owners()
                if failing_since is not None:
                    log.warning("owner_index_writes_resumed", after_s=round(time.monotonic() - failing_since, 1))
                    failing_since = None
            except Exception as exc:  # Redis briefly away: keep the notes and try again; said once, not every try
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("owner_index_write_failed", error=str(exc), retrying_every_s=interval_s)
            with contextlib.suppress(TimeoutError):  # not wait_for, which in Python 3.11 can drop a cancel
                async with asyncio.timeout(interval_s):
                    await stop.wait()

    async def _write_owners(self) -> None:
        if not self._owners and not self._tokens:
            return
        batch, self._owners = self._owners, {}
        tokens, self._tokens = self._tokens, {}
        directory, generation = self._directory.fence() if self._directory else (None, "")
        if directory is not None:
            batch, tokens = _on_hub(directory, batch, tokens)
        by_module: dict[str, list[str]] = {}
        for (module, object_id), noted in batch.items():
            by_module.setdefault(module, []).extend(x for owner in {o for o, _ in noted} for x in (object_id, owner))
        period = self._period()
        publish_args = [
            x for (owner, uid, type_, _), pushes in tokens.items() for x in token_args(owner, uid, type_, pushes)
        ]

        def queue(pipe: Pipeline) -> None:
            for module, args in by_module.items():
                if module in EXPIRING_OWNERS:
                    key, kept_ms = self._owners_key(module, period), self._kept_ms(period)
                else:
                    key, kept_ms = self._owners_key(module), 0
                step = 2 * OWNERS_PER_SCRIPT
                for start in range(0, len(args), step):
                    queue_script(pipe, self._add_owners, [self._generation_key, key],
                                 [generation, kept_ms, *args[start : start + step]])  # fmt: skip
            step = 5 * TOKENS_PER_SCRIPT
            for start in range(0, len(publish_args), step):
                queue_script(pipe, self._write_tokens, [self._generation_key, *self._publish_keys],
                             [generation, *publish_args[start : start + step]])  # fmt: skip

        try:
            replies = await executed(self._redis, queue, (self._add_owners, self._write_tokens))
        except BaseException:  # cancelled or failed: the notes stay for the next write
            self._keep(batch, tokens)
            raise
        if self._directory and -1 in replies:  # the directory changed since: again (each script comes to the same)
            self._keep(batch, tokens)
            await self._directory.catch_up()

    def _keep(self, batch: _Noted, tokens: dict[_Token, list[tuple[Sent, bool]]]) -> None:
        """Notes not written, for the next write, before those noted since."""
        for noted, owners in batch.items():
            self._owners.setdefault(noted, set()).update(owners)
        for token, pushes in tokens.items():
            self._tokens[token] = pushes + self._tokens.get(token, [])

    async def _begin_period(self, period: int) -> None:
        """Unlink the hashes of the period no longer read, and take over what a hub before periods kept
        (storage.owner_upgrades)."""
        await self._redis.unlink(*(self._owners_key(module, period - 2) for module in EXPIRING_OWNERS))
        for module in EXPIRING_OWNERS:
            await take_over(self._redis, module, self._owners_key(module), self._owners_key(module, period),
                            self._kept_ms(period), self._add_owners, self._generation_key, self._directory)  # fmt: skip


def _on_hub(directory: Directory, batch: _Noted, tokens: dict[_Token, list[tuple[Sent, bool]]]
            ) -> tuple[_Noted, dict[_Token, list[tuple[Sent, bool]]]]:  # fmt: skip
    """The notes naming only parties the directory holds on the platforms they were seen on."""
    owners: _Noted = {}
    for key, noted in batch.items():
        if held := {(owner, seen) for owner, seen in noted if _held(directory, seen)}:
            owners[key] = held
    held_tokens = {token: pushes for token, pushes in tokens.items() if _held(directory, token[3])}
    # every owner noted of an object, and every push of a token, is a note: an object keeps the owners still held
    dropped = sum(len(noted) - len(owners.get(key, ())) for key, noted in batch.items())
    dropped += sum(len(pushes) for token, pushes in tokens.items() if token not in held_tokens)
    if dropped:
        log.info("owner_notes_dropped", notes=dropped, reason="a party they name is no longer on the hub")
    return owners, held_tokens


def _held(directory: Directory, seen: Seen) -> bool:
    return all(directory.holds(party, platform_id) for party, platform_id in seen)


def _indexed(object_id: str) -> str:
    # types.asciidoc: "CiString: Case Insensitive String. Only printable ASCII allowed." (Location.id, Session.id,
    # Token.uid and ReserveNow.reservation_id are CiString(36))
    return object_id.upper()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _party(text: str) -> tuple[str, str]:
    country, _, party = text.partition("-")
    return (country, party)
