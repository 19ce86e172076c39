"""Owner pull: the hub notes in the owner index the tokens of every eMSP and the recent sessions of every CPO, read
from their Senders, as it would have noted them relaying their pushes.

Open routing finds the eMSP of a real-time authorization (POST /{token_uid}/authorize without OCPI-to), the CPO of a
session's charging preferences and the eMSP of a session's PATCH or GET in the owner index, and a location's
publish_allowed_to matches the token fields kept with it (storage.publish_tokens); all are noted as pushes pass
through the hub, and all live in Redis. When Redis loses its data (a restart without persistence, FLUSHALL, a failover
to an empty replica), nothing would bring them back until each object is pushed again. So, as pull sync does for the
location cache, the hub keeps a mark per party in Redis once it read the party's list to its end; a party without one
(new, or every party after such a loss) has its list read again, paged with offset/limit and Link
(transport_and_format.asciidoc, Pagination), one page at a time, its notes written before the next page is asked for:
- tokens (mod_tokens.asciidoc, Sender "GET: Fetch the list of Tokens"), of each eMSP: each of its own noted as a
  relayed PUT of it would be (owner, type, visual_number, issuer, group_id);
- sessions (mod_sessions.asciidoc, Sender GET), of each CPO, since the start of the owner index's previous period
  (date_from; storage.owner_index keeps a session's owner for one to two OCPI_HUB_OWNER_INDEX_PERIOD_S, and a lookup
  reads this period's notes and the previous one's): the CPO as each of its own session's owner, and the eMSP of its
  cdr_token, if on the hub, as its receiver.
One hub process pulls a module at a time (a storage.redis_lease, checked with every page and as the mark is set; a
party found unpulled is checked again once the lease is held, another process having maybe pulled it meanwhile; a
pull that finds it gone, Redis having lost its data and the notes before with it, stops unmarked, to be read again;
one that dies lets go within a minute); each page
is a message of the hub's own, with its routing-log row; a party whose Sender fails is tried again after
RETRY_AFTER_FAILURE_S, and the others are pulled meanwhile; so is one whose Links go on without end (an empty page with
a Link, a page the same as the one before it, as a party that ignores offset sends, or more than twice the
X-Total-Count of its first page), after what it read is noted. A mark names the party's platform, so a platform that
registers a departed party's id again has its own list read.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import msgspec
import redis.asyncio as redis
import structlog

from hub.envelope import ocpi_timestamp
from hub.metrics import OWNER_INDEX_LOST, OWNER_PULLS, OWNERS_PULLED
from hub.party_client import PartyClient
from routing.sender_pages import Record, listing_parties, sender_page
from storage.directory import Directory, PartyRole, Platform
from storage.owner_index import Seen, period_of
from storage.publish_tokens import Sent, token_type
from storage.redis_lease import Lease
from storage.routing_state import RoutingState

log = structlog.get_logger()

RETRY_AFTER_FAILURE_S = 300  # a party whose Sender failed is not asked again before this
PROGRESS_EVERY_S = 10.0  # an owner_pull_progress line at most this often per party
TOKEN_OWNERS = ("EMSP", "OTHER")  # the roles whose tokens a CPO authorizes (OTHER routes as an eMSP)
LEFT_THE_HUB = "the party left the hub during the pull; nothing more was noted"
LOCK_LOST = ("the pull's lock was gone from Redis (Redis lost its data, and what the pull noted before with it, or the "
             "process was paused past its lease): not marked pulled, its list is read again")  # fmt: skip

# KEYS: a pull's lease, and a mark to set (none: the lease only checked). ARGV: the lease's token, the mark. Nothing
# once the lease is not the pull's: a mark set after Redis lost its data would stand for notes lost with it.
_WHILE_LEASED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"""


class _Token(Sent):
    """A token of the list as the hub reads it: its owner and uid besides the fields the index keeps."""

    country_code: Any = None
    party_id: Any = None
    uid: Any = None


class _Session(msgspec.Struct):
    country_code: Any = None
    party_id: Any = None
    id: Any = None
    cdr_token: Any = None  # its country_code and party_id: the eMSP the session is pushed to


_read_token = msgspec.json.Decoder(_Token).decode
_read_session = msgspec.json.Decoder(_Session).decode

# (the index, the directory, one listed object, the party whose list it is, where that party is) -> noted or not
Note = Callable[[RoutingState, Directory, msgspec.Raw, tuple[str, str], Seen], bool]


def note_token(index: RoutingState, directory: Directory, raw: msgspec.Raw, party: tuple[str, str], seen: Seen) -> bool:
    token = _decoded(_read_token, raw, _Token)
    if _owner(token.country_code, token.party_id) != party or not _text_id(token.uid):
        return False
    index.note_owner("tokens", token.uid, party, seen)
    index.note_token(party, token.uid, token_type(token, None), token, True, seen)
    return True


def note_session(index: RoutingState, directory: Directory, raw: msgspec.Raw, party: tuple[str, str], seen: Seen
                 ) -> bool:  # fmt: skip
    session = _decoded(_read_session, raw, _Session)
    if _owner(session.country_code, session.party_id) != party or not _text_id(session.id):
        return False
    index.note_owner("sessions", session.id, party, seen)
    token = session.cdr_token if isinstance(session.cdr_token, dict) else {}
    emsp = _owner(token.get("country_code"), token.get("party_id"))
    if (platform := directory.parties.get(emsp)) is not None:  # routing.open_routing._session_of
        index.note_owner("session-receivers", f"{party[0]}/{party[1]}/{session.id}", emsp,
                         (*seen, (emsp, platform.id)))  # fmt: skip
    return True


@dataclass(frozen=True)
class Listing:
    """What is pulled: a module's Sender list, of the parties of roles; with period_s, only what changed since the
    start of the previous period of that length (the owner index's periods), else the whole list."""

    module: str
    roles: tuple[str, ...]
    note: Note
    period_s: float | None = None


def tokens() -> Listing:
    return Listing("tokens", TOKEN_OWNERS, note_token)


def sessions(period_s: float) -> Listing:
    return Listing("sessions", ("CPO",), note_session, period_s)


@dataclass
class PullResult:
    party: tuple[str, str]
    noted: int = 0
    ignored: int = 0  # listed but not noted: another party's, or without an id
    pages: int = 0
    error: str | None = None


class OwnerPull:
    """page_limit: the objects asked for per page (the party may send fewer)."""

    def __init__(
        self, listing: Listing, http: PartyClient, index: RoutingState, client: redis.Redis, prefix: str,
        hub: tuple[str, str], record: Record | None, directory: Callable[[], Directory], page_limit: int,
    ) -> None:  # fmt: skip
        self.listing, self._http, self._index, self._redis, self._record = listing, http, index, client, record
        self._prefix, self._hub, self._directory, self._limit = prefix, hub, directory, page_limit
        self._keys = f"{prefix}{listing.module}:"
        self._while_leased = client.register_script(_WHILE_LEASED)

    def parties(self) -> list[tuple[Platform, PartyRole]]:
        return listing_parties(self._directory(), self.listing.module, self.listing.roles)

    def pulled_key(self, party: tuple[str, str]) -> str:
        return f"{self._keys}pulled:{party[0]}/{party[1]}"

    def _failed_key(self, party: tuple[str, str]) -> str:
        return f"{self._keys}pull-failed:{party[0]}/{party[1]}"

    async def never_pulled(self, parties: list[tuple[Platform, PartyRole]]) -> list[tuple[Platform, PartyRole]]:
        """Parties whose list was not read to its end by their platform, as Redis knows: new ones, or all of them
        after Redis lost its data (but not one whose Sender failed in the last RETRY_AFTER_FAILURE_S)."""
        if not parties:
            return []
        pulled = await self._redis.mget([self.pulled_key(role.key) for _, role in parties])
        failed = await self._redis.mget([self._failed_key(role.key) for _, role in parties])
        return [
            (platform, role)
            for (platform, role), mark, bad in zip(parties, pulled, failed, strict=True)
            if bad is None and _platform_of(mark) != str(platform.id)
        ]

    async def run(self, parties: list[tuple[Platform, PartyRole]], *, unpulled_only: bool = False
                  ) -> list[PullResult] | None:  # fmt: skip
        """Pull the given parties' lists (unpulled_only: those still never pulled once the lease is held); None if
        another process holds the lease."""
        lease = Lease(self._redis, f"{self._keys}pull-lock")
        async with lease.held() as held:
            if not held:
                return None
            if unpulled_only:  # another process may have pulled them, and let the lease go, since they were found due
                parties = await self.never_pulled(parties)
            results: list[PullResult] = []
            for platform, role in parties:
                results.append(result := await self.pull(platform, role, lease))
                if result.error == LOCK_LOST:  # the others are the next round's
                    break
            return results

    async def _held(self, lease: Lease | None, mark_key: str | None = None, mark: str = "") -> bool:
        """Whether the pull still holds its lease, and the mark set with it in one step; without a lease, the mark
        set."""
        if lease is None:
            if mark_key is not None:
                await self._redis.set(mark_key, mark)
            return True
        keys = [lease.key] if mark_key is None else [lease.key, mark_key]
        return not lease.lost and bool(await self._while_leased(keys=keys, args=[lease.token, mark]))

    async def pull(self, platform: Platform, role: PartyRole, lease: Lease | None = None) -> PullResult:
        """Read the party's whole list, noting each of its objects; marked pulled once read to its end, if the pull
        still holds its lease."""
        module, party, result = self.listing.module, role.key, PullResult(role.key)
        started, said_at = datetime.now(UTC), time.monotonic()
        query: dict[str, str | int] = {"offset": 0, "limit": self._limit}
        if (period_s := self.listing.period_s) is not None:  # first, as a party's own Link would keep it
            since = datetime.fromtimestamp((period_of(started.timestamp(), period_s) - 1) * period_s, UTC)
            query = {"date_from": ocpi_timestamp(since), **query}
        url: str | None = f"{platform.endpoint(module, 'SENDER') or ''}?{urlencode(query)}"
        correlation, seen = str(uuid.uuid4()), ((party, platform.id),)
        received, total_first, last = 0, None, b""
        while url:
            page = await sender_page(self._http, self._record, self._hub, platform, role, url, module, correlation)
            if page.objects is None:
                return await self._failed(result, f"the party's {module} Sender could not be read ({page.why})")
            directory = self._directory()
            if not directory.holds(party, platform.id):
                return self._stopped(result, LEFT_THE_HUB)
            for raw in page.objects:
                if self.listing.note(self._index, directory, raw, party, seen):
                    result.noted += 1
                else:
                    result.ignored += 1
            await self._index.write_noted()  # before the next page: a page's notes at most are held
            OWNERS_PULLED.labels(module).inc(len(page.objects))
            result.pages += 1
            received += len(page.objects)
            total_first = page.total if total_first is None else total_first
            url, previous, last = page.next_url, last, _fingerprint(page.objects)
            if url and (not page.objects or last == previous
                        or (total_first is not None and received > 2 * max(total_first, 1))):  # fmt: skip
                # an endless chain of Links (empty pages, the same page again, or past twice the first page's count)
                return await self._failed(result, f"its Link chain went on without ending ({received} read)")
            if not await self._held(lease):
                return self._stopped(result, LOCK_LOST)
            if url and time.monotonic() - said_at >= PROGRESS_EVERY_S:
                said_at = time.monotonic()
                log.info("owner_pull_progress", module=module, party=_text(party), noted=result.noted,
                         pages=result.pages, total=total_first)  # fmt: skip
        if not await self._held(lease, self.pulled_key(party), f"{platform.id} {ocpi_timestamp(started)}"):
            return self._stopped(result, LOCK_LOST)
        OWNER_PULLS.labels(module, "ok").inc()
        log.info("owner_pull_done", module=module, party=_text(party), noted=result.noted, ignored=result.ignored,
                 pages=result.pages)  # fmt: skip
        return result

    def _stopped(self, result: PullResult, why: str) -> PullResult:
        result.error = why
        log.info("owner_pull_stopped", module=self.listing.module, party=_text(result.party), noted=result.noted,
                 pages=result.pages, reason=why)  # fmt: skip
        OWNER_PULLS.labels(self.listing.module, "stopped").inc()
        return result

    async def _failed(self, result: PullResult, why: str) -> PullResult:
        result.error = f"{why}; see the routing log"
        log.warning("owner_pull_failed", module=self.listing.module, party=_text(result.party), pages=result.pages,
                    noted=result.noted, reason=why, retry_in_s=RETRY_AFTER_FAILURE_S)  # fmt: skip
        await self._redis.set(self._failed_key(result.party), "1", ex=RETRY_AFTER_FAILURE_S)
        OWNER_PULLS.labels(self.listing.module, "failed").inc()
        return result


async def run_scheduled(pulls: list[OwnerPull], check_s: float) -> None:
    """For the life of the process: every check_s, pull the lists of the parties without a mark (new, or Redis lost
    its data)."""
    seen_pulled: dict[str, set[tuple[str, str]]] = {pull.listing.module: set() for pull in pulls}  # lost: found
    while True:  # without its mark after this process saw it pulled
        await asyncio.sleep(check_s)
        for pull in pulls:
            try:
                await _round(pull, seen_pulled[pull.listing.module])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or a party briefly away: the next round tries again
                log.warning("owner_pull_round_failed", module=pull.listing.module, error=str(exc))


async def _round(pull: OwnerPull, seen_pulled: set[tuple[str, str]]) -> None:
    parties, module = pull.parties(), pull.listing.module
    seen_pulled &= {role.key for _, role in parties}  # one leaving and coming back starts unpulled
    due = await pull.never_pulled(parties)
    if lost := [role.key for _, role in due if role.key in seen_pulled]:
        OWNER_INDEX_LOST.labels(module).inc(len(lost))
        log.warning("owner_index_lost", module=module, parties=[_text(p) for p in lost],
                    effect="open routing by these parties' objects fails until their lists are read")  # fmt: skip
        seen_pulled -= set(lost)
    if not due:
        return
    log.info("owner_pull_needed", module=module, parties=[_text(r.key) for _, r in due],
             reason="never pulled, or Redis lost the owner index")  # fmt: skip
    if (results := await pull.run(due, unpulled_only=True)) is None:
        log.info("owner_pull_skipped", module=module, reason="another hub process is pulling")
    seen_pulled |= {result.party for result in results or [] if result.error is None}


def _decoded(read: Callable[[msgspec.Raw], Any], raw: msgspec.Raw, empty: type) -> Any:
    try:
        return read(raw)
    except (msgspec.DecodeError, RecursionError):  # not an object, or a field of another shape: nothing noted
        return empty()


def _fingerprint(objects: list[msgspec.Raw]) -> bytes:
    """A page's objects, told apart from another page's in 16 bytes: without X-Total-Count, a party that ignores offset
    and sends its first page again and again, each with a Link, would be read for ever."""
    digest = hashlib.blake2b(digest_size=16)
    for raw in objects:
        digest.update(len(raw).to_bytes(8, "big"))
        digest.update(raw)
    return digest.digest()


def _platform_of(mark: bytes | str | None) -> str | None:
    """The platform a pulled mark names (its first word): the one whose list was read."""
    if mark is None:
        return None
    return (mark.decode() if isinstance(mark, bytes) else mark).split(" ")[0]


def _owner(country_code: Any, party_id: Any) -> tuple[str, str]:
    return (_upper(country_code), _upper(party_id))


def _text_id(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _upper(value: Any) -> str:
    return value.upper() if isinstance(value, str) else ""


def _text(party: tuple[str, str]) -> str:
    return f"{party[0]}-{party[1]}"
