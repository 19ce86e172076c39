"""The demo's cast and what it does: an opening that shows every kind of exchange, then a trickle of traffic."""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from hub.demo import payloads as p
from hub.demo.party import DemoParty, Reply

HUB_STATUSES = ("AVAILABLE", "CHARGING", "RESERVED", "AVAILABLE", "BLOCKED", "AVAILABLE", "INOPERATIVE")
PRICE_PER_KWH = 0.39


def cast() -> list[DemoParty]:
    """Two CPOs with two locations each, two eMSPs with two RFID cards each."""
    return [
        DemoParty("CPO", "NL", "ECO", "EcoCharge Netherlands", sites=(
            p.Site("ECO-AMS-001", "Amsterdam Zuidas P1", "Gustav Mahlerlaan 10", "Amsterdam", "1082 PP", "NLD",
                   "52.337630", "4.872210", ("AMS001-1", "AMS001-2"), "Europe/Amsterdam"),
            p.Site("ECO-UTR-014", "Utrecht Jaarbeurs", "Jaarbeursplein 6", "Utrecht", "3521 AL", "NLD",
                   "52.088420", "5.112050", ("UTR014-1", "UTR014-2", "UTR014-3"), "Europe/Amsterdam"),
        )),
        DemoParty("CPO", "BE", "VLT", "Voltera Belgium", sites=(
            p.Site("VLT-GNT-003", "Gent Zuid", "F.Rooseveltlaan 3A", "Gent", "9000", "BEL",
                   "51.047599", "3.729944", ("3256", "3257"), "Europe/Brussels"),
            p.Site("VLT-ANR-021", "Antwerpen Centraal", "Koningin Astridplein 27", "Antwerpen", "2018", "BEL",
                   "51.217200", "4.421100", ("ANR021-1", "ANR021-2"), "Europe/Brussels"),
        )),
        DemoParty("EMSP", "DE", "MFX", "Mobiflex Roaming", token_uids=("04A1B2C3D4E5F6", "04F6E5D4C3B2A1")),
        DemoParty("EMSP", "NL", "EVD", "EV Drive", token_uids=("0455AA21BC7F80", "0455AA21BC7F81")),
    ]  # fmt: skip


@dataclass
class Demo:
    hub_base: str
    http: httpx.AsyncClient
    parties: list[DemoParty]
    say: Callable[[str], None]
    hub_key: tuple[str, str] = ("NL", "HUB")
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def cpos(self) -> list[DemoParty]:
        return [party for party in self.parties if party.role == "CPO"]

    @property
    def emsps(self) -> list[DemoParty]:
        return [party for party in self.parties if party.role == "EMSP"]

    @staticmethod
    def connected(parties: list[DemoParty]) -> list[DemoParty]:
        """Those still on the hub: the operator may take a party off the hub while the demo runs."""
        return [party for party in parties if party.hub_token is not None]

    async def send(
        self,
        party: DemoParty,
        method: str,
        path: str,
        what: str,
        *,
        to: DemoParty | str | None = None,
        body: Any = None,
        correlation_id: str | None = None,
    ) -> Reply:
        """One request of `party` through the hub, and a line saying what happened."""
        key = self.hub_key if to == "hub" else to.key if isinstance(to, DemoParty) else None
        reply = await party.call(self.http, self.hub_base, method, path, to=key, body=body,
                                 correlation_id=correlation_id)  # fmt: skip
        target = "hub" if to == "hub" else to.label if isinstance(to, DemoParty) else None
        target = target or ("a hub URL" if path.startswith("http") else "open routing")
        outcome = f"{reply.status_code}"
        if reply.status_code != 1000:
            outcome += f" (HTTP {reply.http_status})"
        self.say(f"  {party.label:<11} -> {target:<13} {what:<50} {outcome}")
        return reply


def own_objects(party: DemoParty) -> None:
    """What each party owns before it talks to anyone: a CPO its locations, an eMSP its tokens."""
    if party.role == "CPO":
        party.own["locations"] = {site.location_id: p.location(*party.key, site, party.name) for site in party.sites}
        party.own.setdefault("sessions", {})
        party.own.setdefault("cdrs", {})
    else:
        party.own["tokens"] = {
            uid: p.token(*party.key, uid, f"{party.country_code}-{party.party_id}-C{uid[-8:]}", party.name)
            for uid in party.token_uids
        }


async def opening(demo: Demo) -> None:
    """Every kind of exchange once: pushes, a GET All via the hub, an authorize, remote starts, sessions, CDRs."""
    for cpo in demo.cpos:
        for loc in cpo.own["locations"].values():
            path = f"receiver/locations/{cpo.country_code}/{cpo.party_id}/{loc['id']}"
            await demo.send(cpo, "PUT", path, f"PUT location {loc['id']} (broadcast)", to="hub", body=loc)
    for emsp in demo.emsps:
        for cpo in demo.cpos:
            for tok in emsp.own["tokens"].values():
                path = f"receiver/tokens/{emsp.country_code}/{emsp.party_id}/{tok['uid']}"
                await demo.send(emsp, "PUT", path, f"PUT token {tok['uid']}", to=cpo, body=tok)
    await asyncio.sleep(0.5)  # the hub updates its location cache just after it answered the pushes
    for emsp in demo.emsps:
        await get_all_locations(demo, emsp)
    first_cpo, second_cpo = demo.cpos
    first_emsp, second_emsp = demo.emsps
    await status_change(demo, first_cpo, first_cpo.sites[0].location_id, first_cpo.sites[0].evse_uids[1], "RESERVED")
    await authorize(demo, second_cpo, second_cpo.sites[0].location_id, first_emsp.token_uids[0])
    await demo.send(first_emsp, "GET", f"sender/locations/{second_cpo.sites[1].location_id}",
                    f"GET location {second_cpo.sites[1].location_id}", to=second_cpo)  # fmt: skip
    await charge(demo, first_emsp, first_cpo, first_emsp.token_uids[0], minutes=47)
    await charge(demo, second_emsp, second_cpo, second_emsp.token_uids[1], minutes=23)
    await unknown_token(demo, first_cpo, second_emsp)


async def trickle(demo: Demo, interval_s: float) -> None:
    """Keep the hub busy until cancelled: mostly status changes, now and then a whole charge."""
    actions = (
        (5, lambda cpo, emsp: random_status_change(demo, cpo)),
        (
            2,
            lambda cpo, emsp: authorize(
                demo, cpo, random.choice(cpo.sites).location_id, random.choice(emsp.token_uids)
            ),
        ),
        (1, lambda cpo, emsp: charge(demo, emsp, cpo, random.choice(emsp.token_uids), random.randint(15, 95))),
        (1, lambda cpo, emsp: get_all_locations(demo, emsp)),
        (1, lambda cpo, emsp: token_update(demo, emsp, cpo)),
        (1, lambda cpo, emsp: unknown_token(demo, cpo, emsp)),
    )
    weights = [weight for weight, _ in actions]
    while True:
        await asyncio.sleep(random.uniform(0.5, 1.5) * interval_s)
        [(_, action)] = random.choices(actions, weights)
        cpos, emsps = demo.connected(demo.cpos), demo.connected(demo.emsps)
        if not cpos or not emsps:
            continue  # the operator took every CPO or every eMSP off the hub
        try:
            await action(random.choice(cpos), random.choice(emsps))
        except httpx.HTTPError as exc:
            demo.say(f"  (request failed: {exc!r})")


async def get_all_locations(demo: Demo, emsp: DemoParty) -> None:
    reply = await demo.send(emsp, "GET", "sender/locations?limit=50", "GET all locations via the hub", to="hub")
    if reply.status_code == 1000:
        demo.say(f"  {'':<11}    the hub answered from its cache: {len(reply.data)} locations")


async def status_change(demo: Demo, cpo: DemoParty, location_id: str, evse_uid: str, status: str) -> None:
    loc = cpo.own["locations"][location_id]
    evse = next(e for e in loc["evses"] if e["uid"] == evse_uid)
    change = p.evse_status(status)
    evse.update(change)
    loc["last_updated"] = change["last_updated"]
    path = f"receiver/locations/{cpo.country_code}/{cpo.party_id}/{location_id}/{evse_uid}"
    await demo.send(cpo, "PATCH", path, f"PATCH EVSE {evse_uid} {status} (broadcast)", to="hub", body=change)


async def random_status_change(demo: Demo, cpo: DemoParty) -> None:
    site = random.choice(cpo.sites)
    await status_change(demo, cpo, site.location_id, random.choice(site.evse_uids), random.choice(HUB_STATUSES))


async def authorize(demo: Demo, cpo: DemoParty, location_id: str, token_uid: str) -> None:
    """mod_tokens.asciidoc, real-time authorization: no OCPI-to, the hub finds the token's eMSP."""
    site = next(s for s in cpo.sites if s.location_id == location_id)
    await demo.send(cpo, "POST", f"sender/tokens/{token_uid}/authorize?type=RFID", f"authorize token {token_uid}",
                    body=p.location_references(location_id, site.evse_uids[0]))  # fmt: skip


async def unknown_token(demo: Demo, cpo: DemoParty, emsp: DemoParty) -> None:
    """A card the eMSP does not know: it answers 2004, and the hub relays that."""
    uid = f"04{random.randrange(16**12):012X}"
    site = cpo.sites[0]
    await demo.send(cpo, "POST", f"sender/tokens/{uid}/authorize?type=RFID", f"authorize unknown token {uid}",
                    to=emsp, body=p.location_references(site.location_id, site.evse_uids[0]))  # fmt: skip


async def token_update(demo: Demo, emsp: DemoParty, cpo: DemoParty) -> None:
    uid = random.choice(emsp.token_uids)
    change = {"valid": True, "last_updated": p.now()}
    emsp.own["tokens"][uid].update(change)
    await demo.send(emsp, "PATCH", f"receiver/tokens/{emsp.country_code}/{emsp.party_id}/{uid}",
                    f"PATCH token {uid}", to=cpo, body=change)  # fmt: skip


async def charge(demo: Demo, emsp: DemoParty, cpo: DemoParty, token_uid: str, minutes: int) -> None:
    """A remote start and everything after it: CommandResult, session PUT and PATCHes, status changes, a CDR."""
    number = next(demo.numbers)
    site = random.choice(cpo.sites)
    evse_uid = site.evse_uids[0]
    tok = emsp.own["tokens"][token_uid]
    reference = f"{emsp.party_id}-{uuid.uuid4().hex[:10].upper()}"
    response_id = uuid.uuid4().hex[:12]
    response_url = f"{emsp.base}/ocpi/2.2.1/commands/sender/START_SESSION/{response_id}"
    body = p.start_session(response_url, tok, site.location_id, evse_uid, reference)
    reply = await demo.send(emsp, "POST", "receiver/commands/START_SESSION", f"START_SESSION at {site.location_id}",
                            to=cpo, body=body)  # fmt: skip
    if reply.status_code != 1000 or (reply.data or {}).get("result") != "ACCEPTED":
        return
    async with asyncio.timeout(10):  # not wait_for, which in Python 3.11 can drop the Ctrl-C's cancel
        command = await cpo.commands.get()
    await asyncio.sleep(0.3)  # the charge point takes a moment
    await demo.send(cpo, "POST", command.body["response_url"], "CommandResult ACCEPTED to the response_url",
                    body=p.command_result("ACCEPTED"), correlation_id=command.correlation_id)  # fmt: skip
    if response_id not in emsp.results:
        demo.say(f"  (the CommandResult did not reach {emsp.label})")
    started = datetime.now(UTC) - timedelta(minutes=minutes)
    session_id = f"{cpo.party_id}-S{started:%y%m%d}-{number:04d}{uuid.uuid4().hex[:4].upper()}"
    sess = p.session(*cpo.key, session_id, started, tok, site.location_id, evse_uid, reference)
    cpo.own["sessions"][session_id] = sess
    path = f"receiver/sessions/{cpo.country_code}/{cpo.party_id}/{session_id}"
    await status_change(demo, cpo, site.location_id, evse_uid, "CHARGING")
    await demo.send(cpo, "PUT", path, f"PUT session {session_id}", to=emsp, body=sess)
    kwh = round(random.uniform(0.18, 0.36) * minutes, 3)
    progress = p.session_progress(started, round(kwh / 2, 3), PRICE_PER_KWH)
    sess.update(progress)
    await demo.send(cpo, "PATCH", path, f"PATCH session {session_id} kWh", to=emsp, body=progress)
    end = p.session_end(datetime.now(UTC))
    sess.update(p.session_progress(started, kwh, PRICE_PER_KWH) | end)
    await demo.send(cpo, "PATCH", path, f"PATCH session {session_id} COMPLETED", to=emsp, body=end)
    await status_change(demo, cpo, site.location_id, evse_uid, "AVAILABLE")
    cdr_id = f"{cpo.party_id}-CDR-{session_id.split('-S', 1)[1]}"
    record = p.cdr(*cpo.key, cdr_id, sess, site, kwh, PRICE_PER_KWH, minutes)
    cpo.own["cdrs"][cdr_id] = record
    posted = await demo.send(cpo, "POST", "receiver/cdrs", f"POST CDR {cdr_id}", body=record)
    if location := posted.headers.get("location"):
        await demo.send(cpo, "GET", location, f"GET CDR {cdr_id} at its Location", to=emsp)
