"""Whom the hub sends to (routing.decide.why_not_sendable): the one check behind a direct request, a broadcast copy
about to go out and a hub URL followed; pure functions, no network."""

from __future__ import annotations

import pytest

from hub.errors import HubError, ReceiverLeft, ReceiverNotConnected, UnknownReceiver
from hub.ocpi.broadcast import _still_connected
from routing.decide import LEFT, OFFLINE, SUSPENDED, Delivery, delivery_to, why_not_sendable
from routing.request import Incoming
from storage.directory import Directory, PartyRole, Platform

URL = "https://party.example/ocpi/2.2.1/tariffs"


def _platform(state: str, *statuses: str, party_id: str = "ABC") -> Platform:
    """Its EMSP, and its CPO where a second status is given, both with party_id."""
    roles = tuple(PartyRole(("EMSP", "CPO")[n], "NL", party_id, status, None) for n, status in enumerate(statuses))
    return Platform(1, "party", state, None, None, "B", "plain", roles, {("tariffs", "RECEIVER"): URL})


@pytest.mark.parametrize(
    ("state", "status", "why"),
    [("REGISTERED", "CONNECTED", None),
     ("SUSPENDED", "OFFLINE", "is suspended by the hub operator: nothing is routed to it until it is resumed"),
     ("REGISTERED", "OFFLINE", "is OFFLINE: it stopped answering the hub, which keeps probing it"),
     ("REGISTERED", "PLANNED", "is not connected (status PLANNED)"),
     ("INVITED", "PLANNED", "is not connected (status PLANNED)")],
)  # fmt: skip
def test_only_a_connected_party_of_a_registered_platform_is_sent_to(state: str, status: str, why: str | None) -> None:
    platform = _platform(state, status)
    assert why_not_sendable(platform, platform.roles[0]) == why
    left = "has left the hub (status SUSPENDED)"
    assert why_not_sendable(None, None) == why_not_sendable(platform, None) == left


@pytest.mark.parametrize(
    ("state", "status", "told"),
    [("SUSPENDED", "OFFLINE", "is suspended by the hub operator: nothing is routed to it until it is resumed"),
     ("REGISTERED", "OFFLINE", "is OFFLINE: it stopped answering the hub, which keeps probing it"),
     ("REGISTERED", "PLANNED", "is not connected (status PLANNED)")],
)  # fmt: skip
def test_a_direct_request_to_a_party_not_sent_to_answers_4003_saying_why(state: str, status: str, told: str) -> None:
    platform = _platform(state, status)
    directory = Directory(platforms={1: platform}, parties={("NL", "ABC"): platform})
    with pytest.raises(ReceiverNotConnected) as refused:
        delivery_to(_incoming(), directory, ("NL", "ABC"))
    assert refused.value.message == f"receiver NL-ABC {told}"


def test_a_direct_request_to_a_party_that_left_or_never_was_answers_4003_or_4001() -> None:
    directory = Directory(departed=frozenset({("NL", "OLD")}))
    with pytest.raises(ReceiverNotConnected) as left:
        delivery_to(_incoming(), directory, ("NL", "OLD"))
    assert left.value.message == "receiver NL-OLD has left the hub (status SUSPENDED)"
    with pytest.raises(UnknownReceiver):
        delivery_to(_incoming(), directory, ("NL", "NEW"))
    connected = _platform("REGISTERED", "CONNECTED")
    directory = Directory(platforms={1: connected}, parties={("NL", "ABC"): connected})
    assert delivery_to(_incoming(), directory, ("NL", "ABC")).url == URL
    with pytest.raises(HubError, match="does not implement the locations RECEIVER interface"):
        delivery_to(_incoming("locations"), directory, ("NL", "ABC"))


def test_a_broadcast_copy_goes_out_only_while_the_role_of_its_receiver_the_module_names_is_connected() -> None:
    decided = _platform("REGISTERED", "CONNECTED")
    check = _still_connected(Delivery(decided, decided.roles[0], URL), "tariffs")
    check(decided)
    check(_platform("REGISTERED", "CONNECTED", "PLANNED"))  # its id as a CPO too, PLANNED: a tariff is its eMSP's
    # the last: its eMSP PLANNED, its id as a CPO CONNECTED, which takes no tariffs (it went out before)
    gone = [(None, LEFT), (_platform("SUSPENDED", "OFFLINE"), SUSPENDED), (_platform("REGISTERED", "OFFLINE"), OFFLINE),
            (_platform("REGISTERED", "CONNECTED", party_id="XYZ"), LEFT),
            (_platform("REGISTERED", "PLANNED", "CONNECTED"), "is not connected (status PLANNED)")]  # fmt: skip
    for now, why in gone:
        with pytest.raises(ReceiverLeft) as refused:
            check(now)
        # in the words of a direct request's refusal (test_a_direct_request_to_a_party_not_sent_to_answers_4003...)
        assert refused.value.message == (f"receiver NL-ABC {why}; its copy of the broadcast, decided while it was "
                                         "connected, was not sent")  # fmt: skip


def _incoming(module: str = "tariffs") -> Incoming:
    return Incoming("PUT", f"/ocpi/2.2.1/receiver/{module}/NL/ABC/T1", "", {}, b"{}", "receiver", module,
                    "/NL/ABC/T1", ("NL", "ABC"), ("NL", "XYZ"), ["NL", "ABC", "T1"])  # fmt: skip
