"""The platform directory: every token, party and endpoint held in memory, reloaded when any hub process changes it.

Authentication and routing read only this snapshot, so a request costs no database round trip. A change
(registration, rotation, unregistration, invitation) bumps a generation counter in Redis and publishes it;
every process reloads on the message, and polls the counter as a fallback, so a revoked token stops working
everywhere within a second. A token or a receiver a process does not know makes it check the counter once before
refusing it, so a token issued or a party registered through another process works everywhere at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import msgspec
import redis.asyncio as redis
import structlog

from storage.secrets import TokenBox
from storage.sql import QUERIES

log = structlog.get_logger()

POLL_INTERVAL_S = 0.5
# How long after announce_change() every hub process is sure to use the new directory.
PROPAGATION_S = 2 * POLL_INTERVAL_S + 0.1
GENERATION_KEY = "directory:generation"
CHANNEL = "directory:changed"


# The first line of a script whose write holds only in the directory it was decided in (KEYS[1]: the generation key,
# ARGV[1]: the generation read before that decision, "0" if none; '' for a write no directory guards): -1, and nothing
# done, if it changed since.
UNCHANGED_LUA = "if ARGV[1] ~= '' and (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return -1 end\n"


class DirectoryChanged(Exception):
    """A write guarded by UNCHANGED_LUA did nothing: the directory changed since the generation it was given. done:
    how much a write in several steps had done before that (e.g. locations removed by the chunks before)."""

    def __init__(self, message: str, done: int = 0) -> None:
        super().__init__(message)
        self.done = done


async def announce_change(redis_client: redis.Redis, prefix: str) -> None:
    """Tell every hub process sharing this Redis that the platform registry changed (after the commit)."""
    generation = await redis_client.incr(f"{prefix}{GENERATION_KEY}")
    await redis_client.publish(f"{prefix}{CHANNEL}", generation)


@dataclass(frozen=True, slots=True)
class PartyRole:
    role: str
    country_code: str
    party_id: str
    status: str
    business_details: Mapping[str, object] | None
    # (COUNTRY_CODE, PARTY_ID) upper-cased, as parties are compared (CiString): set once, read a few times a request
    key: tuple[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.country_code.upper(), self.party_id.upper()))


@dataclass(frozen=True, slots=True)
class Platform:
    id: int
    name: str
    state: str
    versions_url: str | None
    version_url: str | None
    token_b: str | None
    token_encoding: str
    roles: tuple[PartyRole, ...] = ()
    endpoints: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # state SUSPENDED (migration 0026): since when, and the operator's reason, told to the platform (hub.auth.suspended)
    suspended_at: datetime | None = None
    suspended_reason: str | None = None
    # (COUNTRY_CODE, PARTY_ID) upper-cased -> the roles the platform holds of that party, two where one party is both
    # CPO and eMSP (credentials.asciidoc: a role is unique by role, party_id and country_code): set once, read by
    # routing.decide.receiving_role on every request
    party_roles: Mapping[tuple[str, str], tuple[PartyRole, ...]] = field(init=False, repr=False, compare=False)
    # whether it holds a CPO and an eMSP-type role (HUB is neither): its endpoints, which name no role, then serve one
    # side each (routing.decide.implements); set once, read on every request to it
    both_sides: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        held: dict[tuple[str, str], tuple[PartyRole, ...]] = {}
        for role in self.roles:
            held[role.key] = (*held.get(role.key, ()), role)
        object.__setattr__(self, "party_roles", held)
        sides = {role.role == "CPO" for role in self.roles if role.role != "HUB"}
        object.__setattr__(self, "both_sides", len(sides) == 2)

    def endpoint(self, identifier: str, interface_role: str) -> str | None:
        return self.endpoints.get((identifier, interface_role))


@dataclass(frozen=True, slots=True)
class Directory:
    # sha256(token) -> (platform, "A" | "C", when a token A expires: None for never)
    tokens: Mapping[bytes, tuple[Platform, str, datetime | None]] = field(default_factory=dict)
    platforms: Mapping[int, Platform] = field(default_factory=dict)
    # (COUNTRY_CODE, PARTY_ID) upper-cased -> the platform holding it
    parties: Mapping[tuple[str, str], Platform] = field(default_factory=dict)
    # (COUNTRY_CODE, PARTY_ID) upper-cased of the parties that left the hub and hold no role now (SUSPENDED)
    departed: frozenset[tuple[str, str]] = frozenset()
    # sha256(token) -> when its platform left the hub: such a token is refused saying so (hub.auth.why_unknown)
    removed_tokens: Mapping[bytes, datetime] = field(default_factory=dict)
    # sha256(token) -> (the name of its platform, "A" | "C", when a credentials exchange replaced it): such a token is
    # refused saying so (hub.auth.why_unknown)
    spent_tokens: Mapping[bytes, tuple[str, str, datetime]] = field(default_factory=dict)
    # Authorization header -> (platform, "A" | "C", token, expiry), filled by hub.auth.identify as callers are
    # recognised: a header seen before costs one dict lookup, not a base64 decode and a SHA-256. Dropped with the
    # directory on every reload, so a rotated or deleted token is forgotten with it.
    known_headers: dict[str, tuple[Platform, str, str, datetime | None]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def holds(self, party: tuple[str, str], platform_id: int) -> bool:
        """Whether the platform holds the party (upper-cased) and is registered (an invited one has pushed nothing
        yet): a party id that left and was registered again by another platform is not the one seen before."""
        platform = self.parties.get(party)
        return platform is not None and platform.id == platform_id and platform.state == "REGISTERED"


async def load_directory(conn: asyncpg.Connection, box: TokenBox) -> Directory:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        platform_rows = await conn.fetch(QUERIES["directory_platforms"])
        role_rows = await conn.fetch(QUERIES["directory_roles"])
        endpoint_rows = await conn.fetch(QUERIES["directory_endpoints"])
        token_rows = await conn.fetch(QUERIES["directory_tokens"])
        departed_rows = await conn.fetch(QUERIES["directory_departed"])
        removed_rows = await conn.fetch(QUERIES["directory_removed_tokens"])
        spent_rows = await conn.fetch(QUERIES["directory_spent_tokens"])
    roles: dict[int, list[PartyRole]] = {}
    for r in role_rows:
        details = msgspec.json.decode(r["business_details"]) if r["business_details"] else None
        roles.setdefault(r["platform_id"], []).append(
            PartyRole(r["role"], r["country_code"], r["party_id"], r["status"], details)
        )
    endpoints: dict[int, dict[tuple[str, str], str]] = {}
    for e in endpoint_rows:
        endpoints.setdefault(e["platform_id"], {})[(e["identifier"], e["interface_role"])] = e["url"]
    platforms = {
        p["id"]: Platform(
            id=p["id"],
            name=p["name"],
            state=p["state"],
            versions_url=p["versions_url"],
            version_url=p["version_url"],
            token_b=box.open(p["token_b"]) if p["token_b"] else None,
            token_encoding=p["token_encoding"],
            roles=tuple(roles.get(p["id"], ())),
            endpoints=endpoints.get(p["id"], {}),
            suspended_at=p["suspended_at"],
            suspended_reason=p["suspended_reason"],
        )
        for p in platform_rows
    }
    parties = {role.key: platform for platform in platforms.values() for role in platform.roles}
    tokens = {t["token_hash"]: (platforms[t["platform_id"]], t["kind"], t["expires_at"]) for t in token_rows}
    departed = frozenset((r["country_code"], r["party_id"]) for r in departed_rows) - parties.keys()
    removed = {r["token_hash"]: r["unregistered_at"] for r in removed_rows}
    spent = {r["token_hash"]: (r["name"], r["kind"], r["spent_at"]) for r in spent_rows}
    return Directory(tokens=tokens, platforms=platforms, parties=parties, departed=departed, removed_tokens=removed,
                     spent_tokens=spent)  # fmt: skip


class DirectoryCache:
    """Holds the current Directory of this process and keeps it in step with the other processes."""

    def __init__(self, pool: asyncpg.Pool, redis_client: redis.Redis, prefix: str, box: TokenBox) -> None:
        self.current = Directory()
        self._pool = pool
        self._redis = redis_client
        self._box = box
        self._prefix = prefix
        self._generation_key = f"{prefix}{GENERATION_KEY}"
        self._channel = f"{prefix}{CHANNEL}"
        self._seen_generation: int | None = None
        self._lock = asyncio.Lock()
        self._check_lock = asyncio.Lock()
        self._checks_begun = 0
        self._reloaded = asyncio.Event()

    async def reload(self, unless_seen: int | None = None) -> None:
        """Load the directory again; not if a reload that has finished meanwhile already saw generation unless_seen
        (equal, not at least: a Redis that lost its data starts counting again from 0)."""
        async with self._lock:
            if unless_seen is not None and self._seen_generation == unless_seen:
                return
            generation = await self._redis.get(self._generation_key)
            async with self._pool.acquire() as conn:
                self.current = await load_directory(conn, self._box)
            self._seen_generation = int(generation or 0)
            self._reloaded.set()  # wakes whoever waits for this reload, and the next reload gets an event of its own
            self._reloaded = asyncio.Event()

    def next_reload(self) -> asyncio.Event:
        """Set once this process has loaded the directory again, after a change by any process: a background task
        sleeps on it to look again at what such a change may have scheduled (hub/admin/endpoints.py) or queued
        (hub/client_info.py). Take it before reading what the change would alter, so a change that comes in between is
        not missed."""
        return self._reloaded

    def fence(self) -> tuple[Directory, str]:
        """This process's directory and the generation it was loaded in, for a write that must not bring back a party
        that left the hub (storage.departed): it names only parties the directory holds on the platform they were seen
        on (Directory.holds), in a script that begins with UNCHANGED_LUA given that generation. Made before the
        departure was announced, the write is there for the departure's cleanup to take out; after it, it is refused,
        and made again once catch_up() has loaded the directory without the party, or with its id on a new platform."""
        return self.current, str(self._seen_generation or 0)

    async def catch_up(self) -> None:
        """Before a token or a receiver this process does not know is refused: reload if another process changed the
        directory and this one has not reloaded yet (the token may be one issued, the party one registered, a moment
        ago). Single flight: one Redis GET at a time, shared by every caller that arrived before it began, so a flood
        of unknown tokens or receivers costs one GET per round, and a reload happens only when the generation moved."""
        arrived_after = self._checks_begun
        async with self._check_lock:
            if self._checks_begun > arrived_after:
                return  # a check that began after this caller arrived has finished: it would have seen the change
            self._checks_begun += 1
            try:
                generation = int(await self._redis.get(self._generation_key) or 0)
                if generation != self._seen_generation:
                    await self.reload(unless_seen=generation)
            except Exception as exc:  # Redis or PostgreSQL briefly away: answer from the last snapshot
                log.warning("directory_catch_up_failed", error=str(exc))

    async def changed(self) -> None:
        """Call after committing a change: reload here at once, and tell every other process."""
        await announce_change(self._redis, self._prefix)
        await self.reload()

    async def watch(self) -> None:
        """Runs for the life of the process: reload on every announced or polled change."""
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._channel)
        try:
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_INTERVAL_S)
                    generation = int(await self._redis.get(self._generation_key) or 0)
                    if message is not None or generation != self._seen_generation:
                        await self.reload(unless_seen=generation)  # not again if catch_up() just loaded it
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis or PostgreSQL briefly away: keep serving the last snapshot
                    log.warning("directory_refresh_failed", error=str(exc))
                    await asyncio.sleep(POLL_INTERVAL_S)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
