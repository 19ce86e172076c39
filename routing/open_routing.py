"""Open routing (no OCPI-to headers): the receiver the hub can tell from what it has seen pass through.

transport_and_format.asciidoc, Open Routing Request: "When a Hub has the intelligence to route messages based on
the content of the request ... the 'OCPI-to-' headers can be omitted". The hub knows the owner of a location,
session, token or reservation once a push or command for it has been routed (of a session or reservation for one to
two OCPI_HUB_OWNER_INDEX_PERIOD_S after it was last seen), and the eMSP of a session or CDR from its cdr_token. Ids
are unique per party only: an id seen with several owners on the hub is refused, never guessed (a token uid once the
type asked for does not tell its eMSPs apart); a party no longer on the hub is no owner. Ids are CiStrings, matched in
any case (storage.owner_index). A token push also notes the token's fields, which the location cache's
publish_allowed_to matches; the tokens an eMSP's Sender lists, and a CPO's recent sessions, are noted alike
(routing.owner_pull), also again after Redis lost its data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Iterable
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import parse_qsl

import msgspec

from hub.errors import ReceiverNotConnected, UnknownReceiver, decoded
from routing.decide import Delivery, sender_of
from routing.request import Incoming, PartyKey, party_text
from storage.directory import Platform
from storage.publish_tokens import Sent, read_sent, token_type
from storage.routing_state import RoutingState

# owner index -> what its ids name, for the message that asks for OCPI-to
_OBJECT = {"locations": "location", "sessions": "session", "session-receivers": "session", "tokens": "token",
           "reservations": "reservation", "chargingprofile-senders": "session"}  # fmt: skip


class _Party(msgspec.Struct):
    country_code: str
    party_id: str


class _CommandFields(msgspec.Struct):
    location_id: str | None = None
    session_id: str | None = None
    reservation_id: str | None = None
    cdr_token: _Party | None = None


_fields = msgspec.json.Decoder(_CommandFields)

# command -> (body field naming the object, module whose owner receives the command)
_COMMAND_TARGET = {
    "START_SESSION": ("location_id", "locations"),
    "RESERVE_NOW": ("location_id", "locations"),
    "UNLOCK_CONNECTOR": ("location_id", "locations"),
    "STOP_SESSION": ("session_id", "sessions"),
    "CANCEL_RESERVATION": ("reservation_id", "reservations"),
}


def _body_fields(body: bytes) -> _CommandFields:
    try:
        return _fields.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return _CommandFields()


def _routing_fields(body: bytes) -> _CommandFields:
    """The fields an open request is routed by: a body that is no JSON is HTTP 400, as where else the hub reads one
    (the request has not gone anywhere yet; after a routing, note_seen takes what it can)."""
    return decoded(body, _CommandFields, "the request body is not a valid OCPI object")


CachedOwners = Callable[[str, PartyKey], Awaitable[tuple[list[PartyKey], list[PartyKey]]]]


async def open_hint(
    incoming: Incoming,
    caller: Platform,
    state: RoutingState,
    on_hub: Container[PartyKey],
    cached_owners: CachedOwners,
) -> PartyKey | None:
    """The party an open request should go to, or None if the hub cannot tell. Only parties on the hub now count
    (on_hub): one that left, or was taken off, still owns its ids in the index but is no owner to route to.
    cached_owners(location_id, viewer): the CPOs of the location cache's locations with that id, (those the viewer may
    see, those it may not) (storage.location_cache)."""
    owners, segments = _Owners(state, on_hub, cached_owners), incoming.segments
    if incoming.interface == "receiver":
        if incoming.module == "commands" and segments:
            return await _command_receiver(incoming, caller, owners)
        if incoming.module == "chargingprofiles" and segments:
            return await owners.session(sender_of(incoming, caller).key, segments[0])
        if incoming.module in ("sessions", "cdrs") and incoming.method in ("POST", "PUT"):
            token = _routing_fields(incoming.body).cdr_token  # the eMSP whose token charged
            return (token.country_code.upper(), token.party_id.upper()) if token else None
        if incoming.module == "sessions" and incoming.method in ("GET", "PATCH") and len(segments) >= 3:
            return await owners.of("session-receivers", _session_of(segments))
        return None
    if segments and incoming.module == "locations":
        return await _location_read(incoming, caller, owners)
    if segments and incoming.module == "sessions":  # Sender interface: PUT /{session_id}/charging_preferences
        return await owners.session(sender_of(incoming, caller).key, segments[0])
    if segments and incoming.module == "tokens":  # Sender interface: POST /{token_uid}/authorize[?type=]
        return await owners.token(segments[0], dict(parse_qsl(incoming.query)).get("type"))
    if segments and incoming.module == "chargingprofiles" and incoming.method == "PUT":
        # mod_charging_profiles.asciidoc, Sender PUT: the CPO "SHALL ONLY call this interface for any session where
        # the Sender has at least once successfully called the charging profile Receiver PUT interface"
        cpo = sender_of(incoming, caller).key
        return await owners.of("chargingprofile-senders", _session_of([*cpo, segments[0]]))
    return None


async def _command_receiver(incoming: Incoming, caller: Platform, owners: _Owners) -> PartyKey | None:
    """The CPO of the location, session or reservation a command names."""
    field, owner_module = _COMMAND_TARGET.get(incoming.segments[0].upper(), (None, ""))
    object_id = getattr(_routing_fields(incoming.body), field) if field else None
    if not object_id:
        return None
    if owner_module == "reservations":  # the eMSP's own reservation of that id (_reservation_of)
        return await owners.reservation(sender_of(incoming, caller).key, object_id)
    if owner_module == "sessions":
        return await owners.session(sender_of(incoming, caller).key, object_id)
    if owner_module != "locations":
        return await owners.of(owner_module, object_id)
    # also a location the hub knows from pull sync alone (a CPO that does not push), as GET All via the hub
    # shows it to this eMSP: several owners, one pushed and one pulled, are refused as any several
    viewer = sender_of(incoming, caller).key
    seen_with = await owners.location(object_id, viewer, pulled_too=True)
    return owners.only(seen_with, owner_module, object_id)


async def _location_read(incoming: Incoming, caller: Platform, owners: _Owners) -> PartyKey | None:
    """Sender interface: GET /{location_id}, to the CPO that pushed it, unless the eMSP may not see it there; None: from
    the cache (hub.ocpi.hub_answers)."""
    if {"country_code", "party_id"} & dict(parse_qsl(incoming.query)).keys():
        return None  # the hub's own filter choosing an owner: its cache's copy
    viewer = sender_of(incoming, caller).key
    seen_with = await owners.location(incoming.segments[0], viewer, pulled_too=False)
    if len([owner for owner in seen_with if owner in owners.on_hub]) > 1:
        return None  # the cache's answer names them and says how to choose one, as with OCPI-to = the hub
    return owners.only(seen_with, "locations", incoming.segments[0], gone_said=False)


@dataclass(frozen=True)
class _Owners:
    """The owners of an id that an open request may go to: those the owner index (state) and the location cache
    (cached_owners) have seen with it, and of those only the parties on the hub now (on_hub)."""

    state: RoutingState
    on_hub: Container[PartyKey]
    cached_owners: CachedOwners

    async def of(self, module: str, object_id: str) -> PartyKey | None:
        return self.only(await self.state.owners(module, object_id), module, object_id)

    async def token(self, uid: str, asked: str | None) -> PartyKey:
        """The eMSP of the token an authorization names. Of several eMSPs seen with its uid, the one that published it
        with the type asked for (mod_tokens.asciidoc: "The combination of uid and type should be unique for every token
        within the eMSP's system"; ?type= "Default if omitted: RFID"), counting one whose types the hub does not know;
        else refused naming each with its types and how to choose, as a location several CPOs have is
        (hub.ocpi.hub_answers)."""
        seen_with = await self.state.owners("tokens", uid)
        owners = [owner for owner in seen_with if owner in self.on_hub]
        if len(owners) < 2:
            return self.only(seen_with, "tokens", uid) or _unpublished_token(uid)
        type_ = token_type(Sent(), asked)
        held = await self.state.token_types(owners, uid, type_)
        fitting = [owner for owner, types in zip(owners, held, strict=True) if type_ in types or not types]
        if len(fitting) == 1:
            return fitting[0]
        named = "; ".join(f"{party_text(owner)}: {', '.join(types) or 'type not known'}"
                          for owner, types in zip(owners, held, strict=True))  # fmt: skip
        raise UnknownReceiver(
            f"no OCPI-to headers, and token {uid} belongs to several parties ({named}), so the hub cannot tell whose"
            f" token of type {type_} it is: send OCPI-to-country-code and OCPI-to-party-id to say which one (?type=,"
            " RFID if not given, tells apart only tokens of different types)"
        )

    async def location(self, location_id: str, viewer: PartyKey, pulled_too: bool) -> list[PartyKey]:
        """The CPOs seen pushing a location with that id and, pulled_too, those whose cached location with it the
        viewer may see; never one whose cached location the viewer may not see (publish false): it is no owner the
        viewer is routed to, nor told of."""
        shown, hidden = await self.cached_owners(location_id, viewer)
        seen_with = [*await self.state.owners("locations", location_id), *(shown if pulled_too else [])]
        return [owner for owner in dict.fromkeys(seen_with) if owner not in hidden]

    async def reservation(self, emsp: PartyKey, reservation_id: str) -> PartyKey | None:
        """The CPO the eMSP reserved reservation_id at. A reservation noted by a hub before reservations were kept by
        their eMSP (by the id alone) is found as it was then, until it ages out of the index (one to two periods)."""
        found = await self.state.owners("reservations", _reservation_of(emsp, reservation_id))
        return self.only(found or await self.state.owners("reservations", reservation_id), "reservations",
                         reservation_id)  # fmt: skip

    async def session(self, emsp: PartyKey, session_id: str) -> PartyKey | None:
        """The CPO of a session an eMSP names by its id alone (STOP_SESSION, a charging profile, charging preferences).
        Session ids are unique per CPO only: of several CPOs on the hub seen with it, the one that pushed its session
        of that id to this eMSP (session-receivers); refused naming them all if that is not one."""
        seen_with = await self.state.owners("sessions", session_id)
        if len(owners := [cpo for cpo in seen_with if cpo in self.on_hub]) > 1:
            receivers = [await self.state.owners("session-receivers", _session_of([*cpo, session_id]))
                         for cpo in owners]  # fmt: skip
            if len(its := [cpo for cpo, told in zip(owners, receivers, strict=True) if emsp in told]) == 1:
                return its[0]
        return self.only(seen_with, "sessions", session_id)

    def only(self, seen_with: Iterable[PartyKey], module: str, object_id: str, gone_said: bool = True
             ) -> PartyKey | None:  # fmt: skip
        """The one party on the hub seen with the id; several: refused, since ids are unique per party only
        (mod_commands: a location_id names a "Location (belonging to the CPO this request is sent to)"); none, but one
        that left the hub until its entries are cleaned up (storage.departed): refused saying so (4003), unless
        gone_said is False (None)."""
        seen_with = list(seen_with)
        owners = [owner for owner in seen_with if owner in self.on_hub]
        if not owners and seen_with and gone_said:
            # not "cannot tell" (4001): the hub knows whose it was, and answers as to that party addressed with
            # OCPI-to (routing.decide.delivery_to): 4003, "receiving party is not connected" (status_codes.asciidoc)
            raise ReceiverNotConnected(
                f"no OCPI-to headers, and {_OBJECT.get(module, 'object')} {object_id} belonged to"
                f" {', '.join(party_text(owner) for owner in seen_with)}, which is no longer connected to the hub"
            )
        if len(owners) > 1:
            raise UnknownReceiver(
                f"no OCPI-to headers, and {_OBJECT.get(module, 'object')} {object_id} belongs to several parties"
                f" ({', '.join(party_text(owner) for owner in owners)}): send OCPI-to-country-code and"
                " OCPI-to-party-id to say which one"
            )
        return owners[0] if owners else None


def _unpublished_token(uid: str) -> NoReturn:
    """An open authorization of a token the hub has seen no eMSP publish: the hub cannot tell whose it is, which is not
    the token being unknown (mod_tokens: "When an eMSP does not want to Push the full list of tokens to CPOs, the CPOs
    will need to call the POST Authorize request to check if a Token is known by the eMSP")."""
    # not the eMSP's 2004: status_codes.asciidoc, 4xxx "For errors that a Hub encounters while routing messages"
    raise UnknownReceiver(
        f"no OCPI-to headers, and no eMSP connected to the hub has published token {uid} through it, so the hub "
        "cannot tell whose it is; an eMSP may authorize tokens it never publishes, so this does not mean the token is "
        "unknown: send OCPI-to-country-code and OCPI-to-party-id to ask the eMSP it belongs to"
    )


def note_seen(incoming: Incoming, caller: Platform, delivery: Delivery | None, state: RoutingState) -> None:
    """After a successful routing, remember owners for later open requests, with the platforms they were seen on: a
    note written after its party left and its id was registered again by another platform is not that one's. delivery:
    None for a broadcast, whose owner the URL names (the caller's) whether or not a receiver got a copy."""
    segments = incoming.segments
    receiver = ((delivery.to.key, delivery.platform.id),) if delivery is not None else ()
    if (
        incoming.interface == "receiver"
        and len(segments) >= 3
        and incoming.module in ("locations", "sessions", "tokens")
    ):
        # Client Owned Object push: /{country_code}/{party_id}/{object_id}, the owner a party of the caller's
        # (routing.decide.check_client_owned)
        owner = (segments[0].upper(), segments[1].upper())
        if not _may_own(caller, owner, incoming.module):
            return  # relayed as it came, but no owner to send a command or an authorization to
        pushed_by = ((owner, caller.id),)
        state.note_owner(incoming.module, segments[2], owner, pushed_by)
        if incoming.module == "tokens" and incoming.method in ("PUT", "PATCH"):  # for publish_allowed_to
            sent = read_sent(incoming.body)
            type_ = token_type(sent, dict(parse_qsl(incoming.query)).get("type"))
            state.note_token(owner, segments[2], type_, sent, incoming.method == "PUT", pushed_by)
        if incoming.module == "sessions" and delivery is not None:
            state.note_owner("session-receivers", _session_of(segments), delivery.to.key, pushed_by + receiver)
    elif (
        delivery is not None
        and incoming.module == "chargingprofiles"
        and incoming.interface == "receiver"
        and incoming.method == "PUT"
        and segments
    ):
        # SetChargingProfile: its Sender is who the CPO's updates of the session's ActiveChargingProfile go to
        sender = sender_of(incoming, caller).key
        session = _session_of([*delivery.to.key, segments[0]])
        state.note_owner("chargingprofile-senders", session, sender, ((sender, caller.id), *receiver))
    elif delivery is not None and incoming.module == "commands" and segments and segments[0].upper() == "RESERVE_NOW":
        reservation = _body_fields(incoming.body).reservation_id
        if reservation:
            emsp = sender_of(incoming, caller).key
            state.note_owner("reservations", _reservation_of(emsp, reservation), delivery.to.key,
                             ((emsp, caller.id), *receiver))  # fmt: skip


def _may_own(caller: Platform, owner: PartyKey, module: str) -> bool:
    """Whether the party owns objects of the module by its roles: a token is "of the eMSP that 'owns' this Token"
    (mod_tokens.asciidoc; an eMSP-type role, "Other" too), a location and a session are a CPO's (mod_locations,
    mod_sessions). A CPO pushing a token in its own name would otherwise make its uid ambiguous for every eMSP's."""
    roles = {role.role for role in caller.roles if role.key == owner}
    return bool(roles - {"CPO", "HUB"}) if module == "tokens" else "CPO" in roles


def _session_of(segments: list[str]) -> str:
    """A session as the indexes of its receivers and its charging profiles' Senders know it: its CPO and its id
    (/{country_code}/{party_id}/{id}), since ids are unique per CPO only and the URL of a session's PATCH names its
    CPO."""
    return f"{segments[0].upper()}/{segments[1].upper()}/{segments[2]}"


def _reservation_of(emsp: PartyKey, reservation_id: str) -> str:
    """A reservation as the owner index knows it: its eMSP and id ("CC/PID/id"). mod_commands.asciidoc,
    CancelReservation: "the reservation_id that was given by the Sender to the ReserveNow", an id unique among that
    eMSP's reservations only: another eMSP's reservation of the same id, at another CPO or the same, is not this one."""
    return f"{emsp[0]}/{emsp[1]}/{reservation_id}"
