"""The hub's address policy for calls to parties (routing.party_addresses), as its two HTTP clients apply it when they
connect: a party's URL must not make the hub call into its own network (a security review's SSRF finding)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpcore
import httpx
import pytest

from hub.errors import ReceiverNotConnected
from hub.party_client import PartyClient
from hub.settings import Settings, SettingsError
from routing.forward import forward, open_session
from routing.forward_failures import NOT_CALLABLE
from routing.party_addresses import ALLOWANCE, HUB_ITSELF, GuardedBackend, PartyAddresses, RefusedConnect, networks
from tests.conftest import LOOPBACK
from tests.parties import free_port

NOT_PUBLIC = [
    "127.0.0.1", "127.8.9.10", "::1", "0.0.0.0", "::", "169.254.169.254", "fe80::1", "10.1.2.3", "172.16.0.1",
    "192.168.1.1", "100.64.0.1", "fd00::1", "fc00::1", "fec0::1", "224.0.0.1", "239.255.255.250", "ff02::1",
    "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "168.63.129.16",  # the last: Azure's WireServer
    # IPv4 inside IPv6: mapped, compatible, NAT64's well-known prefix, 6to4
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::7f00:1", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1",
]  # fmt: skip


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_a_non_public_address_is_refused_by_default(address: str) -> None:
    why = PartyAddresses().why_refused(address, 80)
    assert why is not None and "not a public address" in why and ALLOWANCE in why


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "93.184.216.34"])
def test_a_public_address_is_called(address: str) -> None:
    assert PartyAddresses().why_refused(address, 443) is None


def test_an_allowed_network_lets_its_addresses_through_in_their_ipv4_mapped_form_too() -> None:
    policy = PartyAddresses(networks("127.0.0.0/8, fd00::/8"))
    assert policy.why_refused("127.0.0.1", 80) is None
    assert policy.why_refused("::ffff:127.0.0.1", 80) is None
    assert policy.why_refused("fd12::3", 80) is None
    assert policy.why_refused("10.0.0.1", 80) is not None
    assert policy.why_refused("169.254.169.254", 80) is not None


def test_the_hubs_own_listening_address_is_refused_even_in_an_allowed_network() -> None:
    policy = PartyAddresses(networks("0.0.0.0/0, ::/0"), 8080, frozenset())
    assert policy.why_refused("127.0.0.1", 8080) == "it is the address the hub itself listens on"
    assert policy.why_refused("::1", 8080) is not None
    assert policy.why_refused("127.0.0.1", 8081) is None


def test_an_address_of_the_machines_own_interfaces_at_the_hubs_port_is_the_hub_itself() -> None:
    # A hub listening on 0.0.0.0 knew its own addresses by its host name, which Debian's /etc/hosts resolves to
    # 127.0.1.1: an endpoint at the interface's address and the hub's port read the hub's /metrics (a review found it).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet sent: only the interface a route would use is chosen
        except OSError:
            pytest.skip("no IPv4 route on this machine")
        interface = probe.getsockname()[0]
    policy = PartyAddresses(networks("0.0.0.0/0"), 8080, frozenset())
    assert policy.why_refused(interface, 8080) == HUB_ITSELF
    assert policy.why_refused(interface, 8081) is None
    assert policy.why_refused("192.0.2.1", 8080) is None  # not this machine's


@pytest.mark.parametrize("value", ["10.0.0.0/33", "localhost", "10.0.0.0/8;", "fd00::/8,x"])
def test_an_allowance_that_names_no_network_is_a_settings_error_naming_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match=ALLOWANCE):
        Settings.from_env({ALLOWANCE: value})


@asynccontextmanager
async def _http_server(answer: bytes = b"", host: str = "127.0.0.1") -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server on host that counts its connections (and answers each with `answer`)."""
    connections: list[int] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(accepted, host, 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"


@pytest.mark.parametrize("host", ["localhost", "[::ffff:127.0.0.1]"])  # a name; an address aiohttp does not resolve
def test_a_forward_to_a_host_that_leads_to_loopback_is_refused_before_connecting(host: str) -> None:
    async def run() -> None:
        async with _http_server(OK) as (port, connections):
            refusing = open_session(2.0, 4.0, PartyAddresses())
            allowing = open_session(2.0, 4.0, PartyAddresses(networks(LOOPBACK)))
            try:
                with pytest.raises(ReceiverNotConnected) as refused:
                    await forward(refusing, "GET", f"http://{host}:{port}/x", {}, b"", 2.0, 1000)
                assert refused.value.message == NOT_CALLABLE and "did not call" in refused.value.detail  # as unresolved
                assert connections == []  # nothing reached the server
                answer = await forward(allowing, "GET", f"http://{host}:{port}/x", {}, b"", 2.0, 1000)
                assert (answer.status, connections) == (200, [1])
            finally:
                await refusing.close()
                await allowing.close()

    asyncio.run(run())


def test_a_forward_to_a_literal_link_local_address_is_refused_without_a_connect_attempt() -> None:
    async def run() -> None:
        session = open_session(5.0, 4.0, PartyAddresses(networks(LOOPBACK)))
        try:
            started = time.monotonic()
            with pytest.raises(ReceiverNotConnected) as refused:
                await forward(session, "GET", "http://169.254.169.254/latest/meta-data/", {}, b"", 5.0, 1000)
            assert ALLOWANCE in refused.value.message and time.monotonic() - started < 1
        finally:
            await session.close()

    asyncio.run(run())


def test_the_control_plane_refuses_a_host_name_that_resolves_to_loopback_before_connecting() -> None:
    async def run() -> None:
        async with _http_server(OK) as (port, connections):
            async with PartyClient(Settings.from_env({})) as client:
                with pytest.raises(httpx.ConnectError) as refused:
                    await client.fetch("GET", f"http://localhost:{port}/ocpi/versions", {})
            assert isinstance(refused.value.__cause__, RefusedConnect) and ALLOWANCE in str(refused.value)
            assert connections == []
            async with PartyClient(Settings.from_env({ALLOWANCE: LOOPBACK})) as client:
                answer = await client.fetch("GET", f"http://localhost:{port}/ocpi/versions", {})
            assert (answer.status_code, connections) == (200, [1])

    asyncio.run(run())


def test_the_control_plane_follows_no_redirect_into_a_network_it_does_not_call() -> None:
    # 127.0.0.1 is allowed, 127.0.0.2 (loopback too, answering on Linux) is not: a redirect there is refused
    async def run() -> None:
        async with _http_server(OK, "127.0.0.2") as (port, connections):
            moved = f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:{port}/\r\nContent-Length: 0\r\n\r\n".encode()
            client = PartyClient(Settings.from_env({ALLOWANCE: "127.0.0.1/32"}))
            async with _http_server(moved) as (redirecting, _), client:
                with pytest.raises(httpx.ConnectError, match=ALLOWANCE):
                    await client.fetch("GET", f"http://127.0.0.1:{redirecting}/ocpi/versions", {})
            assert connections == []

    asyncio.run(run())


def test_the_control_plane_calls_parties_directly_never_through_a_proxy_of_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy would connect wherever a party's URL leads, where the hub's check does not look (and the data plane's
    # aiohttp session never used one).
    async def run() -> None:
        async with _http_server(OK) as (proxy_port, proxied), _http_server(OK) as (party_port, direct):
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_port}")
            monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{proxy_port}")
            async with PartyClient(Settings.from_env({ALLOWANCE: LOOPBACK})) as client:
                answer = await client.fetch("GET", f"http://127.0.0.1:{party_port}/ocpi/versions", {})
            assert (answer.status_code, direct, proxied) == (200, [1], [])

    asyncio.run(run())


def test_a_failed_connect_of_the_control_plane_leaves_nothing_only_the_garbage_collector_can_free() -> None:
    # The guarded backend kept the last connect error in a local while raising it: a cycle of ~80 objects per failed
    # connect (a probe of a party that went away), which the routing GC test caught in a full run.
    async def attempts(backend: GuardedBackend, port: int) -> None:
        for _ in range(50):
            with contextlib.suppress(httpcore.ConnectError):
                await backend.connect_tcp("127.0.0.1", port, timeout=2)

    gc.collect()
    gc.disable()
    try:
        asyncio.run(attempts(GuardedBackend(PartyAddresses(networks("127.0.0.0/8"))), free_port()))
        freed = gc.collect()
    finally:
        gc.enable()
    assert freed < 50, f"the collector freed {freed} objects after 50 failed connects"
