"""The party ids of a departed platform leave the routing indexes together: one pass over each hash for all of them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from storage.departed import Departures
from storage.directory import PartyRole
from storage.embedded import EmbeddedValkey
from storage.location_cache import LocationCache
from storage.publish_tokens import Sent, index_keys
from storage.routing_state import RoutingState
from tests.hub_storage import hub_storage, registered_platform

PREFIX = "hub:"
LEAVING = [("NL", f"D{n}X") for n in range(1, 6)]  # one platform's party ids
AGAIN, STAYING = LEAVING[-1], ("NL", "STY")  # one of them registered again by a new platform before the cleanup


def test_a_platform_with_several_party_ids_is_cleaned_up_in_one_hscan_pass_per_hash(
    empty_database: str, tmp_path: Path
) -> None:
    valkey = EmbeddedValkey(tmp_path / "valkey")  # a server of its own: its command counts are this test's
    url = valkey.start()
    try:
        hscans, expected, entries = asyncio.run(asyncio.wait_for(_clean_up(url, empty_database), 60))
    finally:
        valkey.stop()
    assert hscans == expected  # one HSCAN per hash, not one per hash and party
    gone = [party for party in LEAVING if party != AGAIN]
    for cc, pid in gone:
        assert f"L-{pid}" not in entries["owners:locations"]
        assert f"T-{pid}" not in entries["owners:tokens"]
        assert f"{cc}/{pid}/S-{pid}" not in entries["session-receivers"]
        assert f"{cc}/{pid}/S-{pid}" not in entries["chargingprofile-senders"]
        assert not any(field.startswith(f"{cc}-{pid}\x1f") for field in entries["publish-to:tokens"])
    for cc, pid in (AGAIN, STAYING):  # a party id held again keeps its new entries, the others are not touched
        assert entries["owners:locations"][f"L-{pid}"] == f"{cc}-{pid}"
        assert entries["owners:tokens"][f"T-{pid}"] == f"{cc}-{pid}"
        assert entries["session-receivers"][f"{cc}/{pid}/S-{pid}"] == "NL-STY"
        assert entries["chargingprofile-senders"][f"{cc}/{pid}/S-{pid}"] == "NL-STY"
        assert entries["publish-to:tokens"][f"{cc}-{pid}\x1fT-{pid}\x1fRFID"] == f"VN-{pid}\x1f\x1fG"
    assert sorted(entries["owners:locations"]["SHARED"].split(",")) == ["NL-D5X", "NL-STY"]  # an id they all had


async def _clean_up(url: str, database_url: str) -> tuple[int, int, dict[str, dict[str, str]]]:
    """Note the parties' entries as the hub does, let the platform leave, wait for its cleanup: (HSCANs it sent, hashes
    there are, what the hashes hold afterwards)."""
    async with hub_storage(database_url, url, decode_responses=True) as storage:
        routing, locations = RoutingState(storage.redis, PREFIX, 3600.0), LocationCache(storage.redis, PREFIX)
        async with routing.running(interval_s=0.01):
            for party in [*LEAVING, STAYING]:
                routing.note_owner("locations", f"L-{party[1]}", party, ())
                routing.note_owner("locations", "SHARED", party, ())
                routing.note_owner("tokens", f"T-{party[1]}", party, ())
                routing.note_owner("sessions", f"S-{party[1]}", party, ())
                routing.note_owner("session-receivers", f"{party[0]}/{party[1]}/S-{party[1]}", STAYING, ())
                routing.note_owner("chargingprofile-senders", f"{party[0]}/{party[1]}/S-{party[1]}", STAYING, ())
                routing.note_token(party, f"T-{party[1]}", "RFID", Sent(visual_number=f"VN-{party[1]}", group_id="G"),
                                   whole=True, seen=())  # fmt: skip
        await registered_platform(storage.conn, "again", AGAIN)
        departures = Departures(storage.pool, storage.redis, PREFIX, routing, locations, forward_timeout_s=0)
        await storage.redis.config_resetstat()
        running = asyncio.create_task(departures.run())
        await departures.left([PartyRole("CPO", cc, pid, "CONNECTED", None) for cc, pid in LEAVING])
        while await storage.redis.zcard(f"{PREFIX}departed-parties"):
            await asyncio.sleep(0.1)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        hscans = (await storage.redis.info("commandstats"))["cmdstat_hscan"]["calls"]
        names = {
            "owners:locations": f"{PREFIX}owners:locations",
            "owners:tokens": f"{PREFIX}owners:tokens",
            **{
                module: next(key for m, key in routing.owner_keys() if m == module)
                for module in ("session-receivers", "chargingprofile-senders")
            },
            "publish-to:tokens": index_keys(PREFIX)[0],
        }
        entries = {name: await storage.redis.hgetall(key) for name, key in names.items()}
        return hscans, len(routing.owner_keys()) + len(index_keys(PREFIX)), entries
