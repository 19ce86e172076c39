"""A request the hub sent that comes back to it is refused at once, not forwarded round again (security review,
finding 6): the hub marks every request it sends with a header of its own (hub.request_context.HUB_INSTANCE_HEADER)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as redis

from storage.directory import announce_change
from storage.secrets import TokenBox
from tests.conftest import SECRET_KEY, Hub, Services
from tests.parties import Party, tcp_forwarder
from tests.test_admin_and_cli import _platform_id
from tests.test_routing import _roles, party_key


@dataclass
class _PartyLeadingBackToTheHub(Party):
    """A party whose locations Receiver endpoint is the hub's own, through a TCP forwarder in front of it (the hub
    refuses its public URL and the port it listens on): what the hub forwards to it there arrives at the hub again."""

    hub_base: str = ""

    def endpoints(self) -> list[dict[str, str]]:
        found = super().endpoints()
        for endpoint in found:
            if (endpoint["identifier"], endpoint["role"]) == ("locations", "RECEIVER"):
                endpoint["url"] = f"{self.hub_base}/ocpi/2.2.1/receiver/locations"
        return found


async def _announce(services: Services) -> None:
    client = redis.Redis.from_url(services.redis_url)
    try:
        await announce_change(client, services.redis_prefix)
    finally:
        await client.aclose()


def test_a_request_that_comes_back_to_the_hub_it_left_is_refused_at_once_and_logged(
    hub: Hub, connect_party, services: Services, db
) -> None:
    cpo = connect_party(_roles("CPO"))
    with tcp_forwarder(int(hub.base.rsplit(":", 1)[1])) as forwarder_port:
        forwarded_to_hub = f"http://127.0.0.1:{forwarder_port}"
        looping = _PartyLeadingBackToTheHub(roles=[_roles("EMSP")], name="looping", hub_base=forwarded_to_hub).start()
        try:
            answer = looping.register_at(hub.versions_url, hub.invite(looping.name, *looping.roles)["token_a"])
            assert answer.json()["status_code"] == 1000, answer.text
            # The review's loop: a token B the hub reads as the CPO's token C when it sends it (Base64 of C, sent
            # raw), as a platform registered before the hub refused such tokens may still hold.
            platform_id = _platform_id(hub, party_key(looping))
            sealed = TokenBox(SECRET_KEY).seal(cpo.hub_token or "")
            db.run(db.execute("UPDATE platform SET token_b = $1 WHERE id = $2", sealed, platform_id))
            asyncio.run(_announce(services))
            time.sleep(1.5)  # every hub process takes a change within a second
            _the_loop_is_cut_at_its_first_return(hub, cpo, looping, platform_id, db)
        finally:
            looping.stop()


def _the_loop_is_cut_at_its_first_return(hub: Hub, cpo: Party, looping: Party, platform_id: int, db) -> None:  # type: ignore[no-untyped-def]
    correlation_id = f"loop-{uuid.uuid4()}"
    cc, pid = party_key(cpo)
    location = {"id": "L1", "country_code": cc, "party_id": pid, "publish": True,
                "last_updated": "2026-12-05T00:00:00Z"}  # fmt: skip
    answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/L1", to=party_key(looping), body=location,
                      headers={"X-Correlation-ID": correlation_id})  # fmt: skip
    assert (answer.status_code, answer.json()["status_code"]) == (200, 4000), answer.text
    assert "the request came back to the hub it left" in answer.json()["status_message"]
    # a party that copied the header onto its request (a CommandResult) learns which header to leave out
    assert "X-OCPI-Hub-Instance header" in answer.json()["status_message"]
    time.sleep(0.5)  # rows of laps still under way, had there been any
    rows = db.run(db.fetch("SELECT receiver_platform_id, http_status, ocpi_status_code, error FROM routing_log "
                           "WHERE correlation_id = $1 ORDER BY received_at", correlation_id))  # fmt: skip
    # The CPO's request, forwarded once, and its return, refused: two rows, not one per lap.
    assert len(rows) == 2, rows
    forwarded, returned = rows
    assert (forwarded["receiver_platform_id"], forwarded["ocpi_status_code"]) == (platform_id, 4000)
    assert (returned["receiver_platform_id"], returned["http_status"], returned["ocpi_status_code"]) == (
        None,
        200,
        4000,
    )
    assert "the request came back to the hub it left" in returned["error"]
