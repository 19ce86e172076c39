"""Where a request goes: one pure function of the request, the caller and the directory (no I/O).

transport_and_format.asciidoc, Message Routing: direct (OCPI-to names a party), broadcast push (OCPI-to names the
hub, POST/PUT/PATCH), open routing (no OCPI-to: the hub decides from what it knows), GET All via the hub.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from hub.errors import (
    ClientError,
    HubError,
    InvalidParameters,
    ReceiverNotConnected,
    UnknownReceiver,
    check_json,
    decoded,
)
from routing.request import Incoming, PartyKey, party_text
from storage.directory import Directory, PartyRole, Platform

# Modules the hub answers GET All for itself, from its cache (transport_and_format.asciidoc, GET All via Hubs).
HUB_SERVED = frozenset({"locations"})
# Client Owned Objects pushed to a Receiver at /{country_code}/{party_id}/{object_id}[...]
CLIENT_OWNED = frozenset({"locations", "sessions", "tariffs", "tokens"})
# Modules whose objects a CPO owns and pushes: what a party id that is both CPO and eMSP broadcasts as a CPO, and whose
# Receiver a platform with both serves its eMSP-type roles with (the others' Receivers, tokens' say, serve its CPOs).
CPO_PUSHED = frozenset({"locations", "tariffs", "sessions", "cdrs"})
# "Broadcast Push SHALL only be used with information that is meant to be sent to all other parties": not
# sessions and CDRs (the spec's examples), nor commands and charging profiles, which address one session.
NO_BROADCAST = frozenset({"sessions", "cdrs", "commands", "chargingprofiles"})
PUSH_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Delivery:
    platform: Platform
    to: PartyRole
    url: str  # the receiver's endpoint for this module and interface, without the path suffix


@dataclass(frozen=True, slots=True)
class Route:
    kind: str  # direct | open | broadcast | hub
    sender: PartyRole
    deliveries: tuple[Delivery, ...] = ()


def sender_of(incoming: Incoming, caller: Platform) -> PartyRole:
    """The caller's party this request is from: OCPI-from must name one of the caller's own parties (of one it holds as
    both CPO and eMSP, the role sending_role says, judged by its own status)."""
    parties = caller.party_roles
    if incoming.from_ is None and len(parties) != 1:
        raise InvalidParameters(
            f"OCPI-from-country-code and OCPI-from-party-id are required: this platform has the parties "
            f"{', '.join(sorted(party_text(k) for k in parties))}"
        )
    party = next(iter(parties)) if incoming.from_ is None else incoming.from_  # tolerant: one party, no OCPI-from
    sender = sending_role(caller, party, incoming.module, incoming.interface)
    if sender is None:
        raise InvalidParameters(
            f"OCPI-from {party_text(party)} is not a party of the calling platform "
            f"(its parties: {', '.join(sorted(party_text(k) for k in parties))})"
        )
    if sender.status in NOT_LISTED:  # invited, but not among the roles of the platform's credentials (any more)
        raise InvalidParameters(
            f"OCPI-from {party_text(sender.key)} is not among the roles of this platform's credentials (status "
            f"{sender.status}): a credentials PUT listing it lets it send"
        )
    return sender


class _ObjectId(msgspec.Struct):
    id: str | None = None
    uid: str | None = None
    country_code: str | None = None
    party_id: str | None = None


def check_client_owned(incoming: Incoming, sender: PartyRole) -> None:
    """transport_and_format.asciidoc, Client Owned Object Push: the URL names the sender as owner, and a PUT's
    body carries the id of its URL ("server implementations are advised to return ... 2001"). The owner a
    location, session, tariff or token names in its body is the URL's too (mod_locations.asciidoc, PUT: "SHALL be
    the same value as the country_code in the Location object being pushed"; alike in the other modules): GET All
    via the hub tells the owner by the body's country_code and party_id. A CDR, POSTed with no owner in its URL, is
    the sender's by its body (mod_cdrs.asciidoc: "country_code of the CPO that 'owns' this CDR")."""
    segments = incoming.segments
    if incoming.interface != "receiver":
        return
    if incoming.module == "cdrs" and incoming.method == "POST":
        cdr = decoded(incoming.body, _ObjectId, "the request body is not a valid OCPI object")
        _check_owner(cdr, sender.key, "the sending party's", required=False)
        return
    if incoming.module not in CLIENT_OWNED or len(segments) < 3:
        return
    if (segments[0].upper(), segments[1].upper()) != sender.key:
        raise InvalidParameters(
            f"the object's owner in the URL ({segments[0]}-{segments[1]}) is not the sending party"
            f" ({party_text(sender.key)})"
        )
    whole_object = len(segments) == 3  # not one of a location's EVSEs or connectors, which name no owner
    if incoming.method == "PUT" or (incoming.method == "PATCH" and whole_object):
        body = decoded(incoming.body, _ObjectId, "the request body is not a valid OCPI object")
        # an EVSE is identified by uid, a token by uid, everything else by id
        in_body = body.uid if (incoming.module == "tokens" or len(segments) == 4) else body.id
        # types.asciidoc: "CiString: Case Insensitive String" (the ids of all client-owned objects are CiStrings)
        if incoming.method == "PUT" and in_body is not None and in_body.upper() != segments[-1].upper():
            raise InvalidParameters(f"the id in the URL ({segments[-1]}) differs from the id in the body ({in_body})")
        if whole_object:  # a PATCH carries only what changed; a location PUT is cached, and served as it came
            required = incoming.method == "PUT" and incoming.module == "locations"
            _check_owner(body, (segments[0], segments[1]), "the URL's", required)


def _check_owner(body: _ObjectId, owner: PartyKey, whose: str, required: bool) -> None:
    """The owner a whole object names in its body is owner. required: it names one, as a location PUT must (country_code
    and party_id are required of every client-owned object, and a GET All via the hub hands on a cached location as it
    came, which then says nothing of whose it is); the others are relayed for their receivers to judge, as before."""
    for name, expected, named in (("country_code", owner[0], body.country_code), ("party_id", owner[1], body.party_id)):
        if named is None and required:
            raise InvalidParameters(f"the body names no {name}: the object's owner, {whose} {expected}, is required")
        if named is not None and named.upper() != expected.upper():
            raise InvalidParameters(f"the {name} in the body ({named}) differs from {whose} ({expected})")


def decide(
    incoming: Incoming, caller: Platform, directory: Directory, hub: PartyKey, open_hint: PartyKey | None = None
) -> Route:
    sender = sender_of(incoming, caller)
    check_client_owned(incoming, sender)
    if incoming.to == hub:
        if incoming.method == "GET":
            if incoming.interface == "sender":
                return served_by_hub(incoming, sender)
            raise InvalidParameters("a GET addressed to the hub must use a Sender interface (GET All via Hubs)")
        return broadcast(incoming, caller, sender, directory)
    if incoming.to is not None:
        try:
            return Route("direct", sender, (delivery_to(incoming, directory, incoming.to),))
        except HubError as exc:
            if any(role.key == incoming.to for role in caller.roles):  # a party of its own: likely a mistake, say so
                raise type(exc)(f"the OCPI-to headers name the calling platform's own party: {exc.message}") from None
            raise
    if open_hint is not None:
        return Route("open", sender, (delivery_to(incoming, directory, open_hint),))
    if incoming.method == "GET" and incoming.interface == "sender":
        if incoming.module in HUB_SERVED:  # its own objects, a GET All included, answered from its cache
            return served_by_hub(incoming, sender)
        if not incoming.segments:
            # "Open Routing Requests are possible for GET (Not GET ALL)" (transport_and_format.asciidoc): no receiver
            # the hub can tell, so 4001, as any open request it cannot place
            raise UnknownReceiver(
                f"no OCPI-to headers on a GET All of {incoming.module}: the hub answers GET All itself for"
                f" {', '.join(sorted(HUB_SERVED))} only; address the party that holds them with OCPI-to-country-code"
                " and OCPI-to-party-id"
            )
    if incoming.method in PUSH_METHODS and incoming.interface == "receiver" and incoming.module not in NO_BROADCAST:
        # Open Routing Request: "the Hub can decide ... that it needs to be broadcasted"
        return broadcast(incoming, caller, sender, directory)
    raise UnknownReceiver(
        f"no OCPI-to headers and the hub cannot tell the receiver of {incoming.method} {incoming.path} from what it"
        " has seen: send OCPI-to-country-code and OCPI-to-party-id"
    )


def served_by_hub(incoming: Incoming, sender: PartyRole) -> Route:
    """GET All via Hubs: the hub answers for the modules it keeps. For the others it does not combine the parties'
    objects ("The Hub can then combine", transport_and_format.asciidoc): an OCPI error, not a transport 404, as
    the hub advertises every module's Sender interface."""
    if incoming.module not in HUB_SERVED:
        raise ClientError(
            f"the hub answers GET All itself for {', '.join(sorted(HUB_SERVED))} only, not {incoming.module}: address"
            " the party that holds them with OCPI-to-country-code and OCPI-to-party-id"
        )
    return Route("hub", sender)


# What why_not_sendable says of a party the hub sends nothing to, after its name: one wording for a direct request,
# an open one and a hub URL followed. LEFT: no such platform or role (mod_hub_client_info.asciidoc, SUSPENDED).
LEFT = "has left the hub (status SUSPENDED)"
SUSPENDED = "is suspended by the hub operator: nothing is routed to it until it is resumed"
OFFLINE = "is OFFLINE: it stopped answering the hub, which keeps probing it"
DROPPED = "is no longer among the roles of its platform's credentials (status SUSPENDED)"
# A role of a platform's invitation its credentials do not list: PLANNED until they first do, SUSPENDED once they no
# longer do (storage queries drop_unlisted_roles); either sends nothing, and is sent nothing.
NOT_LISTED = ("PLANNED", "SUSPENDED")


def why_not_sendable(platform: Platform | None, role: PartyRole | None) -> str | None:
    """Why the hub sends nothing to role of platform, as the directory has them now, or None when it may: LEFT (no
    such platform, or no such role on it), SUSPENDED (the platform, by the hub operator: its roles are OFFLINE to the
    others), OFFLINE, DROPPED (a role its platform's credentials no longer list), or that it is not connected, with
    the role's status, when that is not CONNECTED or its platform not REGISTERED. mod_hub_client_info.asciidoc:
    OFFLINE, "No requests can be sent"; SUSPENDED, "Like with OFFLINE, no requests should be sent"."""
    if platform is None or role is None:
        return LEFT
    if platform.state == "SUSPENDED":
        return SUSPENDED
    if role.status == "OFFLINE":
        return OFFLINE
    if role.status == "SUSPENDED":
        return DROPPED
    if platform.state != "REGISTERED" or role.status != "CONNECTED":
        return f"is not connected (status {role.status})"
    return None


def cpo_implements(module: str, interface: str) -> bool:
    """Whether a CPO implements the module's interface ("sender" or "receiver"), not an eMSP-type role. mod_*.asciidoc,
    Interfaces and endpoints: "Typically implemented by market roles like: CPO" for the Senders of locations, sessions,
    CDRs and tariffs and the Receivers of tokens, commands and charging profiles; eMSP-type roles for the others."""
    return (module in CPO_PUSHED) == (interface == "sender")


def receiving_role(platform: Platform, to: PartyKey, module: str, interface: str) -> PartyRole | None:
    """The role of party to on platform that a request on the module's interface is for, or None when the platform does
    not hold it: the one role it holds, or of a party it holds as both CPO and eMSP, the role on the side implementing
    the interface (cpo_implements), a CONNECTED one first (an eMSP beside an NSP). Its status is the one the request is
    judged by (why_not_sendable), sent directly, broadcast or to a hub URL."""
    held = platform.party_roles.get(to, ())
    return held[0] if len(held) == 1 else _implementing(held, module, interface) if held else None


def sending_role(platform: Platform, party: PartyKey, module: str, interface: str) -> PartyRole | None:
    """The role of party on platform that sends a request to the module's interface: of a party it holds as both CPO
    and eMSP, the role on the other side (a location push is its CPO's, a token push and a command its eMSP's)."""
    return receiving_role(platform, party, module, "sender" if interface == "receiver" else "receiver")


def _implementing(held: tuple[PartyRole, ...], module: str, interface: str) -> PartyRole:
    cpo = cpo_implements(module, interface)
    side = [role for role in held if (role.role == "CPO") == cpo] or held
    return next((role for role in side if role.status == "CONNECTED"), side[0])


def delivery_to(incoming: Incoming, directory: Directory, to: PartyKey) -> Delivery:
    platform = directory.parties.get(to)
    if platform is None:
        if to in directory.departed:  # mod_hub_client_info.asciidoc, SUSPENDED: "Like with OFFLINE, no requests..."
            raise ReceiverNotConnected(f"receiver {party_text(to)} {LEFT}")
        raise UnknownReceiver(f"unknown receiver {party_text(to)}: no such party is connected to this hub")
    role = receiving_role(platform, to, incoming.module, incoming.interface)
    if why := why_not_sendable(platform, role):  # OFFLINE: fail fast, no queue
        raise ReceiverNotConnected(f"receiver {party_text(to)} {why}")
    assert role is not None  # or why_not_sendable said LEFT
    url = platform.endpoint(incoming.module, incoming.interface.upper())
    if url is None or not implements(platform, role, incoming.module, incoming.interface):
        raise HubError(_not_implemented(platform, role, incoming.module, incoming.interface, url is None))
    return Delivery(platform, role, url)


# as a refusal names a role: "receiver NL-ABC is an eMSP, which ..."
_A_ROLE = {"CPO": "a CPO", "EMSP": "an eMSP", "NAP": "a NAP", "NSP": "an NSP", "OTHER": "an Other", "SCSP": "an SCSP"}


def _not_implemented(platform: Platform, role: PartyRole, module: str, interface: str, no_endpoint: bool) -> str:
    """Why role of platform takes no request on the module's interface: the platform lists no endpoint of it, or one
    serving its parties on the other side (implements)."""
    name = party_text(role.key)
    if no_endpoint:
        told = f"receiver {name} does not implement the {module} {interface.upper()} interface"
    else:
        cpo = cpo_implements(module, interface)
        served = sorted({party_text(r.key) for r in platform.roles if r.role != "HUB" and (r.role == "CPO") == cpo})
        told = (f"receiver {name} is {_A_ROLE.get(role.role, f'a {role.role}')}, which does not implement the {module} "
                f"{interface.upper()} interface; on its platform that interface serves its "
                f"{'CPO' if cpo else 'eMSP-type'} parties {', '.join(served)}")  # fmt: skip
    other = "receiver" if interface == "sender" else "sender"
    if platform.endpoint(module, other.upper()) is not None:
        # the hub's URLs name the interface of the party addressed: a CPO's commands are at /receiver/commands
        it = "it" if no_endpoint else name
        told += f"; {it} implements the {other.upper()} one, which the hub's /ocpi/2.2.1/{other}/{module} reaches"
    return told


def broadcast(incoming: Incoming, caller: Platform, sender: PartyRole, directory: Directory) -> Route:
    """Broadcast Push: every connected party of the opposite role that implements the module's interface, one copy
    per party (implements: on a platform with both sides, the role the module's Receiver is for)."""
    if incoming.module in NO_BROADCAST:
        raise InvalidParameters(f"broadcast push is not allowed for {incoming.module}: address one receiver")
    if incoming.method not in PUSH_METHODS or incoming.interface != "receiver":
        raise InvalidParameters("broadcast push is only for POST, PUT, PATCH and DELETE on a Receiver interface")
    if incoming.body or incoming.method != "DELETE":  # the hub answers for every copy: none goes out broken
        check_json(incoming.body)
    to_cpos = broadcasts_to_cpos(incoming, caller, sender)
    deliveries = []
    for platform in directory.platforms.values():
        if platform.id == caller.id or platform.state != "REGISTERED":
            continue
        url = platform.endpoint(incoming.module, "RECEIVER")
        if url is None:
            continue
        for held in platform.party_roles.values():  # one copy per party, to its role a direct request would reach
            role = _implementing(held, incoming.module, "receiver")
            opposite = role.role == "CPO" if to_cpos else role.role not in ("CPO", "HUB")
            receives = implements(platform, role, incoming.module, "receiver")
            if opposite and receives and why_not_sendable(platform, role) is None:
                deliveries.append(Delivery(platform, role, url))
    return Route("broadcast", sender, tuple(deliveries))


def implements(platform: Platform, role: PartyRole, module: str, interface: str) -> bool:
    """Whether the role is one the platform's endpoint of the module's interface serves. A platform's endpoints name no
    role: one with a CPO and an eMSP-type role (Platform.both_sides) serves with each the side the module names
    (cpo_implements; mod_locations, mod_tariffs, Receiver Interface: "Typically implemented by market roles like: eMSP
    and NSP"; mod_tokens: "... CPO"), so its CPO takes no locations through its eMSP's Receiver, by broadcast or
    addressed, nor its eMSP tokens through its CPO's. A platform of one side serves every role it has with every
    endpoint it lists (the functional modules only reach here: credentials and hubclientinfo are the hub's own)."""
    return not platform.both_sides or role.role == "HUB" or (role.role == "CPO") == cpo_implements(module, interface)


def broadcasts_to_cpos(incoming: Incoming, caller: Platform, sender: PartyRole) -> bool:
    """Whether a broadcast goes to the CPOs or to the others. transport_and_format.asciidoc, Broadcast Push: to the
    "opposite role", "CPO pushing information to all eMSPs and NSPs, eMSP pushing information to all CPOs. (The
    role "Other" is seen as an eMSP type of role ... Messages from "Other" are only sent to CPOs and not to eMSPs
    though.)": a CPO's go to every eMSP-type role, every other role's to the CPOs. A party id that is both CPO and
    another role on its platform (OCPI-from cannot tell them apart) pushes what the module says it owns."""
    roles = {role.role for role in caller.roles if role.key == sender.key}
    if "CPO" in roles and len(roles) > 1:
        return incoming.module not in CPO_PUSHED
    return "CPO" not in roles
