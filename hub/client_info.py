"""HubClientInfo (mod_hub_client_info.asciidoc): the hub's list of parties, and the push of every change.

hubclientinfo is a configuration module: between a party and the hub, never routed, so neither the list nor
the pushes carry OCPI-to/-from headers (transport_and_format.asciidoc, Message Routing Headers).

Every change that queues a push (client_info_push, written in the statement that makes the change) also changes the
directory, which every hub process then loads again: the process that made it at once, the others on its announcement.
So each process sleeps until its directory is reloaded, at most LONGEST_SLEEP_S, and an idle hub asks the database for
pending pushes once a minute, not once a second.

A suspended platform is pushed none of the changes, nor is one whose roles the still-alive probe found OFFLINE. Once
resumed and connected again, or back CONNECTED, it is pushed what it missed: the current ClientInfo of each other
party's role whose status changed since it was suspended (migration 0027) or went OFFLINE (0028), not every role on the
hub, which would be hundreds of PUTs for a few changes. The spec asks a party back online to GET what it needs to get
back in sync ("it is their responsibility to do a GET"); this spares it the GET of the whole list, and one that does
not do it a wrong view of who is connected. So is a platform that did not take a push (PushResult), at a later round
(the next change, or LONGEST_SLEEP_S on an idle hub): one that timed out or could not be connected to, the change it
did not answer and those not sent after it, once the probe finds it CONNECTED again; one that refused a push (answered
with anything but HTTP 2xx and an OCPI 1xxx status), that role, after the round's other pushes (migration 0030), which
a refusal does not stop: only REFUSED_IN_A_ROW of them do. A platform with no hubclientinfo Receiver is pushed nothing,
then or ever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import urlencode

import asyncpg
import msgspec
import structlog
from litestar import Request, Response, get
from litestar.datastructures import State

from hub.auth import Caller
from hub.client_info_push import ClientInfo, PushResult, put
from hub.envelope import check_dates, list_parameters, not_a_date, ocpi_response, ocpi_timestamp, paging_window, x_limit
from storage.directory import Directory, Platform
from storage.sql import QUERIES

log = structlog.get_logger()

MAX_LIMIT = 1000
MISSED_BATCH = 50  # of the ClientInfo a party back from a suspension or OFFLINE missed, pushed in one round
REFUSED_IN_A_ROW = 3  # a party that refuses every push is sent this many a round, not a round's worth
LONGEST_SLEEP_S = 60.0  # the safety net: a wake-up missed (Redis away) delays a push by at most this much
TURN_TAKEN_S = 1.0  # another process is pushing: look again soon, in case it stops before it took this change
# The database briefly away, or Redis away from this process: look again soon, but after another process waiting for
# the turn (every TURN_TAKEN_S) has had it. A process whose Redis does not answer holds the turn for as long as its
# directory's reload waits (REDIS_TIMEOUT_S), and taking it again at once would delay every push each time.
AFTER_ERROR_S = 2 * TURN_TAKEN_S


def _when(value: datetime) -> str:
    # types.asciidoc DateTime: "All timestamps are formatted as string(25)": milliseconds at most, not microseconds
    return ocpi_timestamp(value.astimezone(UTC))


def _moment(name: str, raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        moment.astimezone(UTC)  # 9999-12-31T23:59:59-01:00 is past the year 9999 in UTC: OverflowError
    except (ValueError, OverflowError):
        raise not_a_date(name, raw) from None
    return moment


@get("/ocpi/2.2.1/sender/hubclientinfo")
async def list_client_infos(request: Request[Caller, str, State]) -> Response[bytes]:
    """Every party but the caller's own, paginated (transport_and_format.asciidoc, Pagination)."""
    params = list_parameters(request.scope["query_string"].decode("latin-1"))
    date_from, date_to = _moment("date_from", params.get("date_from")), _moment("date_to", params.get("date_to"))
    check_dates(params, date_from, date_to)
    offset, limit = paging_window(params, MAX_LIMIT)
    caller = request.user.platform.id
    async with request.app.state.pool.acquire() as conn:
        rows = await conn.fetch(QUERIES["client_infos"], caller, date_from, date_to, offset, limit)
    total = rows[0]["total"]
    items = [ClientInfo(r["party_id"], r["country_code"], r["role"], r["status"], _when(r["last_updated"]))
             for r in rows if r["role"] is not None]  # fmt: skip
    headers = {"X-Total-Count": str(total), "X-Limit": str(x_limit(limit, MAX_LIMIT))}
    if limit and offset + len(items) < total:  # limit=0 asks for no objects: no next page of none either
        query = {k: v for k, v in params.items() if k not in ("offset", "limit")}
        query |= {"offset": str(offset + len(items)), "limit": str(limit)}
        url = f"{request.app.state.settings.public_url}/ocpi/2.2.1/sender/hubclientinfo?{urlencode(query)}"
        headers["Link"] = f'<{url}>; rel="next"'
    return ocpi_response(items, headers=headers)


async def run_pushes(state: State) -> None:
    """For the life of the process: deliver pending ClientInfo changes (any hub process may take them), sleeping in
    between until the directory changes."""
    while True:
        reloaded = state.directory.next_reload()  # before looking: a change queued meanwhile wakes the sleep
        try:
            pushed = await push_pending(state)
            # some pushed: at once again, more may be pending than one claim takes
            wait_s = TURN_TAKEN_S if pushed is None else 0.0 if pushed else LONGEST_SLEEP_S
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database briefly away: the changes wait in client_info_push
            log.warning("client_info_push_failed", error=str(exc))
            wait_s = AFTER_ERROR_S
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):  # not wait_for, which in Python 3.11 can drop a cancel
                async with asyncio.timeout(wait_s):
                    await reloaded.wait()


async def push_pending(state: State) -> int | None:
    """PUT each pending change to every other connected party with a hubclientinfo RECEIVER, and to a party back from
    a suspension what it missed; one attempt each; how many pushes were made. Each party gets the changes in their
    order, one after the other, and the parties are pushed to side by side, so a slow or unreachable party delays only
    its own pushes, not every other party's. One hub process at a time: None when another holds the turn.

    The turn is a lock of the connection's session, not of a transaction: no transaction stays open while the parties
    are called, which may take OCPI_HUB_FORWARD_TIMEOUT_S and more (a database's idle_in_transaction_session_timeout
    would end it, and the round's pushes would all be sent again). A process that dies mid-round loses its
    connection, and with it the turn; its changes are still pending, so the next turn pushes them."""
    async with state.pool.acquire() as conn:
        if not await conn.fetchval(QUERIES["take_client_info_push_turn"]):
            return None
        try:
            changes = await conn.fetch(QUERIES["pending_client_info_pushes"])
            pushes = [_push(c) for c in changes]
            recipients = await _recipients(state, conn)
            # read after the changes: what a party missed is as new as the last of them, and is pushed after them
            missed = await _missed(conn, state.directory.current.platforms, [p.id for p in recipients])
            refused = await _refused(conn, [p.id for p in recipients])
            if not pushes and not missed and not refused:
                return 0
            first = [pushes + (m.pushes if (m := missed.get(p.id)) else []) for p in recipients]
            # what a party refused comes after the rest, unless the rest pushes that role anyway
            retries = [_not_pushed_anyway(refused.get(p.id, []), f) for p, f in zip(recipients, first, strict=True)]
            sent = await asyncio.gather(
                *(_push_in_order(state, p, f + r) for p, f, r in zip(recipients, first, retries, strict=True))
            )
            for p, s in zip(recipients, sent, strict=True):  # before the changes are marked delivered
                await _record(conn, p.id, s, pushes, refused.get(p.id, []))
            await conn.execute(QUERIES["client_info_pushed"], [c["id"] for c in changes])
            # a party stopped among its retries of what it refused was sent the whole batch of what it missed
            caught_up = [missed[p.id] for p, r, s in zip(recipients, retries, sent, strict=True)
                         if p.id in missed and (s.stopped_at is None or s.stopped_at in r)]  # fmt: skip
            for m in caught_up:  # a party that did not take it is pushed the same batch again in a later round
                await conn.execute(QUERIES["client_infos_missed_pushed"], m.platform_id, m.since, m.last, m.read_at)
        finally:  # the turn ends with the round, not whenever the pool next resets this connection
            await conn.execute(QUERIES["end_client_info_push_turn"])
    # not a batch the party did not take, nor the retries of what it refused: those wait for the next change or
    # LONGEST_SLEEP_S, not a round at once, so a party that refuses every push is not sent them one round after another
    return len(changes) + sum(len(m.pushes) for m in caught_up)


async def _recipients(state: State, conn: asyncpg.Connection) -> list[Platform]:
    """The platforms this round pushes to: connected, with a hubclientinfo Receiver. As PostgreSQL has them after the
    changes were read, not as this process's directory may still have them: a platform registered a moment ago
    (through another hub process, whose announcement this one has yet to hear) would miss the changes this round marks
    delivered, and no catch-up (client_infos_missed) is for a platform that was never away. A directory that differs
    from the database is loaded again, and that one, as new as the read, names them."""
    now = {row["id"] for row in await conn.fetch(QUERIES["client_info_recipients"])}
    recipients = _connected_receivers(state.directory.current)
    if {p.id for p in recipients} != now:
        await state.directory.reload()
        recipients = _connected_receivers(state.directory.current)
    return recipients


def _connected_receivers(directory: Directory) -> list[Platform]:
    return [
        p for p in directory.platforms.values()
        if p.state == "REGISTERED" and p.endpoint("hubclientinfo", "RECEIVER")
        and any(r.status == "CONNECTED" for r in p.roles)
    ]  # fmt: skip


class Push(NamedTuple):
    """A ClientInfo to push: about which platform and role (party_role id), as sent, and the change it tells (None: a
    role's status now, of a batch a party missed or a push it refused) and when that was."""

    about: int
    role_id: int
    info: ClientInfo
    body: bytes
    change_id: int | None
    changed_at: datetime


def _push(row: asyncpg.Record, change: bool = True) -> Push:
    info = ClientInfo(row["party_id"], row["country_code"], row["role"], row["status"], _when(row["last_updated"]))
    return Push(row["platform_id"], row["role_id"], info, msgspec.json.encode(info), row["id"] if change else None,
                row["last_updated"])  # fmt: skip


class Missed(NamedTuple):
    """A batch of the ClientInfo a platform missed while suspended (migration 0027) or OFFLINE (0028), and what to
    record once it is pushed: since when it missed them, the last role pushed (None: nothing is left), and when the
    batch was read."""

    platform_id: int
    pushes: list[Push]
    since: datetime
    last: int | None
    read_at: datetime


async def _missed(
    conn: asyncpg.Connection, platforms: Mapping[int, Platform], recipients: list[int]
) -> dict[int, Missed]:
    """Of these parties, those back from a suspension or from OFFLINE: the next batch of what they missed. Only a party
    connected again is pushed it (its roles come back CONNECTED once the still-alive probe finds its server answering),
    so that a server still down does not take the round's time; a batch at a time, so that hundreds of roles to catch
    up on do not hold every other party's next pushes for as long. A platform with no hubclientinfo Receiver has
    nowhere to be pushed them: its mark is dropped, not read again every round. From the first round that pushes a party
    its catch-up on, it is pushed every change as it comes: a role whose newest change is pushed so is left out of its
    batch (migration 0029), not pushed it twice."""
    found, dropped = {}, []
    for behind in await conn.fetch(QUERIES["platforms_missing_client_infos"], recipients):
        platform = platforms.get(behind["id"])
        if platform is not None and not platform.endpoint("hubclientinfo", "RECEIVER"):
            dropped.append(behind)
        if behind["id"] not in recipients:
            continue
        rows = await conn.fetch(QUERIES["client_infos_missed"], behind["id"], behind["since"], behind["after"],
                                MISSED_BATCH, behind["catch_up_from"])  # fmt: skip
        last = rows[-1]["id"] if len(rows) == MISSED_BATCH else None
        found[behind["id"]] = Missed(behind["id"], [_push(r, change=False) for r in rows], behind["since"], last,
                                     behind["read_at"])  # fmt: skip
    if dropped:
        await conn.execute(QUERIES["client_infos_missed_dropped"], [b["id"] for b in dropped],
                           [b["since"] for b in dropped])  # fmt: skip
    return found


async def _record(
    conn: asyncpg.Connection, platform_id: int, sent: Sent, pushes: list[Push], refused_before: list[Push]
) -> None:
    """What a party did not take of this round's pushes, to push again at a later one: the changes from one it did not
    answer or was not sent on, caught up on as a party back from OFFLINE is; the roles it refused, retried."""
    if (stop := sent.stopped_at) is not None and stop.change_id is not None:
        since = min(c.changed_at for c in pushes if c.change_id is not None and c.change_id >= stop.change_id)
        await conn.execute(QUERIES["client_infos_not_taken"], platform_id, since)
    taken = [role for role, took in sent.answered.items() if took]
    refused = [role for role, took in sent.answered.items() if not took]
    if refused or not {r.role_id for r in refused_before}.isdisjoint(taken):
        await conn.execute(QUERIES["client_infos_refused_record"], platform_id, taken, refused)


def _not_pushed_anyway(refused: list[Push], pushes: list[Push]) -> list[Push]:
    """The roles a party refused that the round's other pushes to it do not push anyway."""
    pushing = {push.role_id for push in pushes}
    return [push for push in refused if push.role_id not in pushing]


async def _refused(conn: asyncpg.Connection, recipients: list[int]) -> dict[int, list[Push]]:
    """Of these parties, the roles each refused the ClientInfo of (migration 0030), as they are now, oldest first; a
    role gone since, or whose party id a newer role holds, is dropped from its list (nothing would push it again)."""
    found: dict[int, list[Push]] = {}
    for row in await conn.fetch(QUERIES["client_infos_refused"], recipients):
        found.setdefault(row["recipient"], []).append(_push(row, change=False))
    return found


class Sent(NamedTuple):
    """What came of a round's pushes to one party: whether it took or refused each role (party_role id) it answered a
    push of (as the last push of it went), and the first push it did not answer or was not sent (None: neither)."""

    answered: dict[int, bool]
    stopped_at: Push | None


async def _push_in_order(state: State, platform: Platform, pushes: list[Push]) -> Sent:
    """The changes to one party, each once its previous one is answered: the last one it gets is the status now. Not
    the changes of its own platform: a party is not told its own status. Once a push is unanswered (the party
    unreachable or too slow; the still-alive check probes it), the rest are not sent: each would hold this turn, and
    every party's next pushes, for as long again. A push refused does not stop the rest: a party that chokes on one
    party's ClientInfo is still told every other party's; after REFUSED_IN_A_ROW refused one after the other, though,
    the rest are not sent, so that a party that refuses them all is sent a few a round, not a round's worth. What it
    did not take is pushed again, as it is then, at a later round."""
    mine = [push for push in pushes if push.about != platform.id]
    answered: dict[int, bool] = {}
    in_a_row = 0
    for n, push in enumerate(mine):
        result = await put(state, platform, push.info, push.body)
        if result is not PushResult.UNANSWERED:
            answered[push.role_id] = result is PushResult.TAKEN
            in_a_row = 0 if result is PushResult.TAKEN else in_a_row + 1
            if in_a_row < REFUSED_IN_A_ROW:
                continue
        skipped = mine[n + 1 :]
        if skipped:
            about = [f"{p.info.country_code}-{p.info.party_id} {p.info.role} {p.info.status}" for p in skipped]
            why = "the push before was unanswered" if in_a_row < REFUSED_IN_A_ROW else f"{in_a_row} refused in a row"
            log.warning("client_info_pushes_skipped", platform_id=platform.id, platform=platform.name,
                        pushes=len(skipped), about=about, why=why)  # fmt: skip
        return Sent(answered, push if result is PushResult.UNANSWERED else next(iter(skipped), None))
    return Sent(answered, None)
