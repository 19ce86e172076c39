"""Token pull: the hub notes every connected eMSP's tokens in the owner index, read from its tokens Sender.

Open routing finds the eMSP of a real-time authorization (POST /{token_uid}/authorize without OCPI-to) in the owner
index, and a location's publish_allowed_to matches the token fields kept with it (storage.publish_tokens); both are
noted as the eMSP pushes its tokens through the hub, and both live in Redis. When Redis loses its data (a restart
without persistence, FLUSHALL, a failover to an empty replica), nothing would bring them back until each eMSP pushes
each token again. So, as pull sync does for the location cache, the hub keeps a mark per eMSP in Redis once it read
the eMSP's token list to its end; an eMSP without one (new, or every eMSP after such a loss) has its list read again:
mod_tokens.asciidoc, Sender "GET: Fetch the list of Tokens" paged with offset/limit and Link (the eMSP the Sender),
each token noted as a PUT of it relayed by the hub would be (owner, type, visual_number, issuer, group_id), one page
at a time, written before the next is asked for. One hub process pulls at a time (a lock in Redis); each page is a
message of the hub's own, with its routing-log row; an eMSP whose Sender fails is tried again after
RETRY_AFTER_FAILURE_S, and the others are pulled meanwhile; so is one whose Links go on without end (an empty page
with a Link, or more than twice the X-Total-Count of its first page), after what it read is noted. A mark names the
eMSP's platform, so a platform that registers a departed eMSP's party id again has its own list read.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import msgspec
import redis.asyncio as redis
import structlog

from hub.envelope import ocpi_timestamp
from hub.metrics import TOKEN_INDEX_LOST, TOKEN_PULLS, TOKENS_PULLED
from hub.party_client import PartyClient
from routing.sender_pages import Record, listing_parties, sender_page
from storage.directory import Directory, PartyRole, Platform
from storage.publish_tokens import Sent, token_type
from storage.routing_state import RoutingState

log = structlog.get_logger()

LOCK_TTL_S = 900  # renewed with every page: a list of millions of tokens takes longer
RETRY_AFTER_FAILURE_S = 300  # an eMSP whose Sender failed is not asked again before this
PROGRESS_EVERY_S = 10.0  # a token_pull_progress line at most this often per eMSP
TOKEN_OWNERS = ("EMSP", "OTHER")  # the roles whose tokens a CPO authorizes (OTHER routes as an eMSP)


class _Listed(Sent):
    """A token of the list as the hub reads it: its owner and uid besides the fields the index keeps."""

    country_code: Any = None
    party_id: Any = None
    uid: Any = None


_read_listed = msgspec.json.Decoder(_Listed).decode


@dataclass
class PullResult:
    party: tuple[str, str]
    tokens: int = 0  # noted
    ignored: int = 0  # listed but not noted: another party's, or without a uid
    pages: int = 0
    error: str | None = None


def emsp_parties(directory: Directory) -> list[tuple[Platform, PartyRole]]:
    """Every connected eMSP party whose platform has a tokens Sender."""
    return listing_parties(directory, "tokens", TOKEN_OWNERS)


class TokenPull:
    """page_limit: the tokens asked for per page (the eMSP may send fewer)."""

    def __init__(
        self, http: PartyClient, index: RoutingState, client: redis.Redis, prefix: str, hub: tuple[str, str],
        record: Record | None, directory: Callable[[], Directory], page_limit: int,
    ) -> None:  # fmt: skip
        self._http, self._index, self._redis, self._record = http, index, client, record
        self._prefix, self._hub, self._directory, self._limit = prefix, hub, directory, page_limit

    def pulled_key(self, party: tuple[str, str]) -> str:
        return f"{self._prefix}tokens:pulled:{party[0]}/{party[1]}"

    def _failed_key(self, party: tuple[str, str]) -> str:
        return f"{self._prefix}tokens:pull-failed:{party[0]}/{party[1]}"

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

    async def run(self, parties: list[tuple[Platform, PartyRole]]) -> list[PullResult] | None:
        """Pull the given parties' tokens; None if another process holds the lock."""
        lock, token = f"{self._prefix}tokens:pull-lock", secrets.token_hex(8)
        if not await self._redis.set(lock, token, nx=True, ex=LOCK_TTL_S):
            return None
        try:
            return [await self.pull(platform, role, lambda: self._renew(lock, token)) for platform, role in parties]
        finally:
            if await self._redis.get(lock) == token.encode():
                await self._redis.delete(lock)

    async def _renew(self, lock: str, token: str) -> None:
        if await self._redis.get(lock) == token.encode():
            await self._redis.expire(lock, LOCK_TTL_S)

    async def pull(
        self, platform: Platform, role: PartyRole, renew: Callable[[], Awaitable[None]] | None = None
    ) -> PullResult:
        """Read the party's whole token list, noting each of its tokens; marked pulled once read to its end."""
        party, result = role.key, PullResult(role.key)
        started, said_at = datetime.now(UTC), time.monotonic()
        base = platform.endpoint("tokens", "SENDER") or ""
        url: str | None = f"{base}?{urlencode({'offset': 0, 'limit': self._limit})}"
        correlation, seen = str(uuid.uuid4()), ((party, platform.id),)
        received, total_first = 0, None
        while url:
            page = await sender_page(self._http, self._record, self._hub, platform, role, url, "tokens", correlation)
            if page.objects is None:
                return await self._failed(result, f"the eMSP's tokens Sender could not be read ({page.why})")
            if not self._held(platform, role):
                result.error = "the eMSP left the hub during the pull; nothing more was noted"
                log.info("token_pull_stopped", party=_text(party), tokens=result.tokens, pages=result.pages)
                TOKEN_PULLS.labels("stopped").inc()
                return result
            for raw in page.objects:
                self._note(raw, party, seen, result)
            await self._index.write_noted()  # before the next page: a page's notes at most are held
            TOKENS_PULLED.inc(len(page.objects))
            result.pages += 1
            received += len(page.objects)
            total_first = page.total if total_first is None else total_first
            url = page.next_url
            if url and (not page.objects or (total_first is not None and received > 2 * max(total_first, 1))):
                # an endless chain of Links (empty pages, or past twice the count the first page gave)
                return await self._failed(result, f"its Link chain went on without ending ({received} tokens read)")
            if renew is not None:
                await renew()
            if url and time.monotonic() - said_at >= PROGRESS_EVERY_S:
                said_at = time.monotonic()
                log.info("token_pull_progress", party=_text(party), tokens=result.tokens, pages=result.pages,
                         total=total_first)  # fmt: skip
        await self._redis.set(self.pulled_key(party), f"{platform.id} {ocpi_timestamp(started)}")
        TOKEN_PULLS.labels("ok").inc()
        log.info("token_pull_done", party=_text(party), tokens=result.tokens, ignored=result.ignored,
                 pages=result.pages)  # fmt: skip
        return result

    def _note(self, raw: msgspec.Raw, party: tuple[str, str], seen: Any, result: PullResult) -> None:
        """One listed token noted as a relayed PUT of it would be; one of another party, or without a uid, ignored
        (transport_and_format.asciidoc, Client Owned Object Pull: objects of another owner "may be ignored")."""
        try:
            token = _read_listed(raw)
        except (msgspec.DecodeError, RecursionError):
            token = _Listed()
        owner = (_upper(token.country_code), _upper(token.party_id))
        if owner != party or not isinstance(token.uid, str) or not token.uid:
            result.ignored += 1
            return
        self._index.note_owner("tokens", token.uid, party, seen)
        self._index.note_token(party, token.uid, token_type(token, None), token, True, seen)
        result.tokens += 1

    def _held(self, platform: Platform, role: PartyRole) -> bool:
        return self._directory().holds(role.key, platform.id)

    async def _failed(self, result: PullResult, why: str) -> PullResult:
        result.error = f"{why}; see the routing log"
        log.warning("token_pull_failed", party=_text(result.party), pages=result.pages, tokens=result.tokens,
                    reason=why, retry_in_s=RETRY_AFTER_FAILURE_S)  # fmt: skip
        await self._redis.set(self._failed_key(result.party), "1", ex=RETRY_AFTER_FAILURE_S)
        TOKEN_PULLS.labels("failed").inc()
        return result


async def run_scheduled(pull: TokenPull, directory: Callable[[], Directory], check_s: float) -> None:
    """For the life of the process: every check_s, pull the tokens of the eMSPs without a mark (new, or Redis lost
    its data)."""
    seen_pulled: set[tuple[str, str]] = set()  # eMSPs this process saw pulled: one found without its mark lost it
    while True:
        await asyncio.sleep(check_s)
        try:
            parties = emsp_parties(directory())
            seen_pulled &= {role.key for _, role in parties}  # one leaving and coming back starts unpulled
            due = await pull.never_pulled(parties)
            if lost := [role.key for _, role in due if role.key in seen_pulled]:
                TOKEN_INDEX_LOST.inc(len(lost))
                log.warning("token_index_lost", parties=[_text(p) for p in lost],
                            effect="open authorizations of their tokens fail until their lists are read")  # fmt: skip
            seen_pulled -= set(lost)
            if not due:
                continue
            log.info("token_pull_needed", parties=[_text(r.key) for _, r in due],
                     reason="never pulled, or Redis lost the owner index")  # fmt: skip
            if (results := await pull.run(due)) is None:
                log.info("token_pull_skipped", reason="another hub process is pulling")
            seen_pulled |= {result.party for result in results or [] if result.error is None}
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis or a party briefly away: the next round tries again
            log.warning("token_pull_round_failed", error=str(exc))


def _platform_of(mark: bytes | str | None) -> str | None:
    """The platform a pulled mark names (its first word): the one whose list was read."""
    if mark is None:
        return None
    return (mark.decode() if isinstance(mark, bytes) else mark).split(" ")[0]


def _upper(value: Any) -> str:
    return value.upper() if isinstance(value, str) else ""


def _text(party: tuple[str, str]) -> str:
    return f"{party[0]}-{party[1]}"
