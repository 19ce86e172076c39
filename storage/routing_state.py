"""Routing state shared by every hub process, kept in Redis: pending result callbacks, paging links, object owners.

Nothing here lives in process memory, so a command result or a "next page" request works whichever hub process
behind the load balancer receives it. Callbacks and pages expire; owners are a hint for open routing.

An object id is unique only within its owner's platform (mod_locations.asciidoc: Location.id "uniquely identifies
the location within the CPO's platform"), so the owner index keeps every party seen with an id: one hash per
module, id -> "CC-PID" or, once a second owner shows up, "CC-PID,CC-PID" (open routing then refuses to guess).
Relayed tokens are also indexed by the fields a location's publish_allowed_to can name (storage.publish_tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import msgspec
import redis.asyncio as redis
import structlog

from storage.publish_tokens import Known, Sent, after, identity, read_known, token_keys, write_known

log = structlog.get_logger()

CALLBACK_TTL_S = 48 * 3600  # mod_commands: results may arrive long after the CommandResponse's timeout
PAGE_TTL_S = 24 * 3600  # a client crawling a long list pauses between pages


class Relayed(msgspec.Struct, frozen=True):
    """Where a hub URL leads: the original URL, who may call it, and the parties on both ends."""

    url: str
    module: str
    interface: str
    caller_platform_id: int  # the platform allowed to use the hub URL
    target_platform_id: int  # the platform the hub calls with it
    caller_party: tuple[str, str]  # OCPI-from of the relayed call
    target_party: tuple[str, str]  # OCPI-to of the relayed call
    correlation_id: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Relayed)

# KEYS: a module's owners hash. ARGV: object id, owner (CC-PID), object id, owner, ... An owner is added to the
# id's list unless it is there already: a party pushing its own object again does not make the id ambiguous.
_ADD_OWNERS = """
for i = 1, #ARGV, 2 do
  local known = redis.call('HGET', KEYS[1], ARGV[i])
  if not known then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  elseif not string.find(',' .. known .. ',', ',' .. ARGV[i + 1] .. ',', 1, true) then
    redis.call('HSET', KEYS[1], ARGV[i], known .. ',' .. ARGV[i + 1])
  end
end
return 1
"""


_Token = tuple[str, str, str]  # a relayed token: its owner (CC-PID), uid and type, upper-cased
OWNERS_PER_SCRIPT = 5000  # one script call holds Redis a few ms at most


def new_key() -> str:
    return secrets.token_urlsafe(18)


class RoutingState:
    def __init__(self, redis_client: redis.Redis, prefix: str) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self._owners: dict[tuple[str, str], set[str]] = {}  # (module, object id) -> owners noted since the last write
        self._tokens: dict[_Token, list[tuple[Sent, bool]]] = {}  # pushes noted since the last write
        self._token_fields = f"{prefix}token-fields"
        self._add_owners = redis_client.register_script(_ADD_OWNERS)

    async def remember(self, kind: str, relayed: Relayed, ttl_s: int) -> str:
        key = new_key()
        await self._redis.set(f"{self._prefix}{kind}:{key}", _encoder.encode(relayed), ex=ttl_s)
        return key

    async def recall(self, kind: str, key: str) -> Relayed | None:
        raw = await self._redis.get(f"{self._prefix}{kind}:{key}")
        return _decoder.decode(raw) if raw else None

    def note_owner(self, module: str, object_id: str, owner: tuple[str, str]) -> None:
        """Remember who owns an object seen in passing; written to Redis in batches, off the request path."""
        self._owners.setdefault((module, object_id), set()).add(f"{owner[0]}-{owner[1]}")

    def note_token(self, owner: tuple[str, str], uid: str, type_: str, sent: Sent, whole: bool) -> None:
        """Remember a token pushed to a CPO (a PUT if whole, else a PATCH), for publish_allowed_to; written with the
        owners, off the request path."""
        self._tokens.setdefault((f"{owner[0]}-{owner[1]}", uid.upper(), type_), []).append((sent, whole))

    async def owners(self, module: str, object_id: str) -> list[tuple[str, str]]:
        """Every party seen owning the object, sorted: more than one means the id alone does not tell. One HGET."""
        found = await self._redis.hget(f"{self._prefix}owners:{module}", object_id)
        texts = set(self._owners.get((module, object_id), ()))
        if found:
            texts.update((found.decode() if isinstance(found, bytes) else found).split(","))
        return sorted(_party(text) for text in texts)

    async def owner(self, module: str, object_id: str) -> tuple[str, str] | None:
        """The one owner of the object, or None if none or several were seen."""
        found = await self.owners(module, object_id)
        return found[0] if len(found) == 1 else None

    @contextlib.asynccontextmanager
    async def running(self, interval_s: float = 0.05) -> AsyncIterator[RoutingState]:
        # Stopped by an event, not by cancelling it: redis-py's asyncio client drops a cancel that lands inside a
        # pipeline (redis/redis-py#2028), after which the task slept on forever and the hub never exited.
        stop = asyncio.Event()
        task = asyncio.create_task(self._flush_owners(interval_s, stop), name="routing_state_owners")
        try:
            yield self
        finally:
            stop.set()
            await task
            await self._write_owners()  # the notes of the last requests

    async def _flush_owners(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):  # not wait_for, which in Python 3.11 can drop a cancel
                async with asyncio.timeout(interval_s):
                    await stop.wait()
            try:
                await self._write_owners()
            except Exception as exc:  # Redis briefly away: keep the notes and try again
                log.warning("owner_index_write_failed", error=str(exc))

    async def _write_owners(self) -> None:
        if not self._owners and not self._tokens:
            return
        batch, self._owners = self._owners, {}
        tokens, self._tokens = self._tokens, {}
        by_module: dict[str, list[str]] = {}
        for (module, object_id), owners in batch.items():
            by_module.setdefault(module, []).extend(x for owner in owners for x in (object_id, owner))
        try:
            changed = await self._changed_tokens(tokens)
            for (owner, uid, type_), known in changed.items():
                keys = token_keys(uid, type_, known)
                by_module.setdefault("publish-tokens", []).extend(x for key in keys for x in (key, owner))
            async with self._redis.pipeline(transaction=False) as pipe:
                for module, args in by_module.items():
                    index, step = f"{self._prefix}owners:{module}", 2 * OWNERS_PER_SCRIPT
                    for start in range(0, len(args), step):
                        await self._add_owners(keys=[index], args=args[start : start + step], client=pipe)
                if changed:  # last: fields written before their keys would hide the keys from the next try
                    pipe.hset(self._token_fields, items=[x for token, known in changed.items()
                                                         for x in (identity(*token), write_known(known))])  # fmt: skip
                await pipe.execute()
        except BaseException:  # cancelled or failed: the notes stay for the next write
            for key, owners in batch.items():
                self._owners.setdefault(key, set()).update(owners)
            for token, pushes in tokens.items():
                self._tokens[token] = pushes + self._tokens.get(token, [])
            raise

    async def _changed_tokens(self, tokens: dict[_Token, list[tuple[Sent, bool]]]) -> dict[_Token, Known]:
        """The fields of each pushed token after its pushes, where they changed: a PATCH's unsent fields are the ones
        last known. One HMGET; a token pushed again as it was costs no more writes."""
        if not tokens:
            return {}
        stored = await self._redis.hmget(self._token_fields, [identity(*token) for token in tokens])
        changed: dict[_Token, Known] = {}
        for token, raw in zip(tokens, stored, strict=True):
            before = read_known(raw)
            known = before
            for sent, whole in tokens[token]:
                known = after(known, sent, whole)
            if known is not None and known != before:
                changed[token] = known
        return changed


def _party(text: str) -> tuple[str, str]:
    country, _, party = text.partition("-")
    return (country, party)
