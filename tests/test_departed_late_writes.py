"""What a hub process noted of a party's last requests and wrote late does not bring the party's routing entries back
once the party left the hub and was cleaned up after (its Redis frozen meanwhile), nor give them to a new platform that
registered the party id since."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import secrets
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis as redis_sync
import structlog

from storage.directory import DirectoryCache
from storage.publish_tokens import Sent
from storage.routing_state import RoutingState
from storage.secrets import TokenBox
from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub
from tests.hub_storage import hub_storage, registered_platform
from tests.parties import token_header
from tests.test_departed_party import CLEANED_WITHIN_S, _assert_len, _cleaned, _leave, _naming, _put
from tests.test_location_cache import _eventually
from tests.test_routing import _roles, party_key


class _FreezingProxy:
    """A TCP proxy to Redis that can freeze as a Redis (or the network to it) does: what its clients send meanwhile,
    on the connections they have and on new ones, is held, and reaches Redis once it thaws, as from a server that
    went on after a pause, or never, once it is closed. Answers pass as they come. freeze_after: it freezes by itself
    right after a request holding these bytes went through."""

    def __init__(self, redis_url: str, freeze_after: bytes | None = None) -> None:
        target = urlsplit(redis_url)
        self._target = (target.hostname or "127.0.0.1", target.port or 6379)
        self._freeze_after = freeze_after
        self._thawed = threading.Event()
        self._thawed.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = [self._listener]
        self.url = target._replace(netloc=f"127.0.0.1:{self._listener.getsockname()[1]}").geturl()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    def close(self) -> None:
        for each in self._sockets:  # before the held requests are let go: they go nowhere
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)  # wakes the threads waiting on it
            each.close()
        self._thawed.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self._target)
            except OSError:
                return
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, to: socket.socket, requests: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if requests:
                    self._thawed.wait()
                to.sendall(data)
                if requests and self._freeze_after is not None and self._freeze_after in data:
                    self.freeze()
        with contextlib.suppress(OSError):
            to.shutdown(socket.SHUT_WR)


def test_what_a_hub_process_wrote_late_while_its_redis_was_frozen_does_not_bring_a_departed_party_back(
    hub: Hub, services: Services, connect_party, tmp_path: Path
) -> None:
    cpo_role, emsp_role = _roles("CPO"), _roles("EMSP")
    leaving = connect_party(cpo_role, emsp_role)  # one platform, a CPO and an eMSP
    gone_cpo, gone_emsp = cpo_role[1:], emsp_role[1:]
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    prefix, suffix = services.redis_prefix, gone_cpo[1]
    location_id, session_id, uid, staying_id = (f"{kind}-{suffix}" for kind in ("L", "S", "T", "STAYING"))
    proxy = _FreezingProxy(services.redis_url)
    client = redis_sync.Redis.from_url(services.redis_url, decode_responses=True)
    # a second hub process, as behind a load balancer, whose way to Redis the test freezes
    other = start_hub(hub_env(services, tmp_path / "hub") | {"OCPI_HUB_REDIS_URL": proxy.url},
                      OUTPUT / "hub-frozen-redis.log")  # fmt: skip
    try:
        proxy.freeze()
        # the departing platform's last pushes: relayed (a push needs no Redis on its way), their owners, token and
        # location noted for later, while its writes of them hang and are held on their way to Redis
        _put(leaving, other, "locations", gone_cpo, location_id, party_key(emsp))
        _put(leaving, other, "sessions", gone_cpo, session_id, party_key(emsp))
        _put(leaving, other, "tokens", gone_emsp, uid, party_key(cpo))
        _leave(leaving, hub)
        _eventually(lambda: [_cleaned(hub, gone_cpo), _cleaned(hub, gone_emsp)], CLEANED_WITHIN_S)
        # and Redis stays frozen until the other process gave up its writes (REDIS_TIMEOUT_S), keeping the notes
        _eventually(lambda: _assert_logged(other, "owner_index_write_failed"), 30)
        _eventually(lambda: _assert_logged(other, "location_cache_updates_held"), 30)  # and retried after

        proxy.thaw()  # the held writes reach Redis now, after the cleanup, and the notes are written again
        _eventually(lambda: _assert_refused(other, leaving.hub_token or ""), 30)  # the other process knows it left
        _put(cpo, other, "locations", party_key(cpo), staying_id, party_key(emsp))  # a later write goes through
        staying = f"{prefix}locations:doc:{party_key(cpo)[0]}/{party_key(cpo)[1]}/{staying_id}"
        _eventually(lambda: _assert_len(_naming(client, prefix, party_key(cpo)), 1), 30)
        _eventually(lambda: _assert_len([staying] if client.exists(staying) else [], 1), 30)

        assert _naming(client, prefix, gone_cpo) + _naming(client, prefix, gone_emsp) == []
        assert client.zscore(f"{prefix}locations:all", f"{gone_cpo[0]}/{gone_cpo[1]}/{location_id}") is None
        assert not client.exists(f"{prefix}locations:doc:{gone_cpo[0]}/{gone_cpo[1]}/{location_id}")
    finally:
        other.stop()
        proxy.close()
        client.close()


def _assert_refused(hub: Hub, token: str) -> None:
    answer = httpx.get(hub.versions_url, headers=token_header(token))
    assert answer.status_code == 401, answer.text


def _assert(condition: bool) -> None:
    assert condition


def _assert_logged(hub: Hub, event: str) -> None:
    assert f'"event":"{event}"' in hub.log()


def test_what_a_departed_platform_pushed_is_not_noted_as_the_new_platforms_that_registered_its_party_ids_since(
    services: Services, start_party, tmp_path: Path
) -> None:
    prefix = f"{services.redis_prefix}again-{secrets.token_hex(3)}:"
    # a hub of its own, whose forwards wait long enough for the receivers to hold the pushes as long as the test needs
    hub = start_hub(hub_env(services, tmp_path / "hub", OCPI_HUB_REDIS_PREFIX=prefix, OCPI_HUB_FORWARD_TIMEOUT_S="60"),
                    OUTPUT / "hub-registered-again.log")  # fmt: skip
    client = redis_sync.Redis.from_url(services.redis_url, decode_responses=True)
    answering = threading.Event()
    try:
        roles = (_roles("CPO"), _roles("EMSP"))
        leaving = register_at_hub(hub, start_party, *roles)  # one platform, a CPO and an eMSP
        gone_cpo, gone_emsp = roles[0][1:], roles[1][1:]
        emsp = register_at_hub(hub, start_party, _roles("EMSP"), held=answering)
        cpo = register_at_hub(hub, start_party, _roles("CPO"), held=answering)
        suffix = gone_cpo[1]
        location_id, session_id, uid, later_id, later_uid = (f"{kind}-{suffix}" for kind in ("L", "S", "T", "L2", "T2"))
        with concurrent.futures.ThreadPoolExecutor() as threads:
            # the departing platform's last pushes, relayed and held by their receivers: the hub notes them once
            # they are answered, after the platform left and a new one registered its party ids
            pushes = [threads.submit(_put, leaving, hub, "locations", gone_cpo, location_id, party_key(emsp)),
                      threads.submit(_put, leaving, hub, "sessions", gone_cpo, session_id, party_key(emsp)),
                      threads.submit(_put, leaving, hub, "tokens", gone_emsp, uid, party_key(cpo))]  # fmt: skip
            _eventually(lambda: _assert_len(emsp.functional() + cpo.functional(), 3), 30)
            _leave(leaving, hub)
            again = register_at_hub(hub, start_party, *roles)
            answering.set()
            for push in pushes:
                push.result()
        # the new platform's own pushes: noted after those, so once they are in, those were written or dropped
        _put(again, hub, "locations", gone_cpo, later_id, party_key(emsp))
        _put(again, hub, "tokens", gone_emsp, later_uid, party_key(cpo))
        doc = f"{prefix}locations:doc:{gone_cpo[0]}/{gone_cpo[1]}/"
        _eventually(lambda: _assert(client.exists(f"{doc}{later_id}") == 1), 30)
        _eventually(lambda: _assert(client.hget(f"{prefix}owners:tokens", later_uid) is not None), 30)

        assert _naming(client, prefix, gone_cpo) == [("owners:locations", later_id)]
        token_owner = f"{gone_emsp[0]}-{gone_emsp[1]}\x1f"
        assert [field for _, field in _naming(client, prefix, gone_emsp)] == [
            later_uid, f"{token_owner}FLEET", f"{token_owner}{later_uid}\x1fRFID", f"{token_owner}VN-{later_uid}"
        ]  # fmt: skip
        assert not client.exists(f"{doc}{location_id}")
        started = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION",
                            body={"response_url": f"{emsp.base}/cmd/1", "location_id": location_id,
                                  "token": {"uid": "T"}})  # fmt: skip
        assert started.json()["status_code"] == 4001, started.text  # not routed to the new platform
        assert [r.method for r in again.functional()] == []
    finally:
        answering.set()
        hub.stop()
        client.close()


def test_the_owner_notes_dropped_for_naming_a_departed_party_are_counted_one_by_one(
    services: Services, empty_database: str
) -> None:
    prefix = f"{services.redis_prefix}dropped-{secrets.token_hex(3)}:"
    staying, gone = ("NL", "STY"), ("NL", "GON")

    async def note_and_write() -> None:
        async with hub_storage(empty_database, services.redis_url) as storage:
            platform = await registered_platform(storage.conn, "staying", staying)
            directory = DirectoryCache(storage.pool, storage.redis, prefix, TokenBox(TokenBox.generate_key()))
            await directory.reload()  # the gone party's platform (id platform + 1) has left the hub
            async with RoutingState(storage.redis, prefix, 3600.0, directory).running(interval_s=0.01) as routing:
                routing.note_owner("locations", "SHARED", staying, ((staying, platform),))
                routing.note_owner("locations", "SHARED", gone, ((gone, platform + 1),))  # an object kept, one note not
                routing.note_owner("sessions", "S1", gone, ((gone, platform + 1),))
                for whole in (True, False):  # a token's PUT and PATCH: two notes of one token
                    routing.note_token(gone, "T1", "RFID", Sent(visual_number="VN"), whole, ((gone, platform + 1),))

    with structlog.testing.capture_logs() as logs:
        asyncio.run(asyncio.wait_for(note_and_write(), 30))
    assert sum(entry["notes"] for entry in logs if entry["event"] == "owner_notes_dropped") == 4
