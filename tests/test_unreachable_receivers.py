"""A receiver the hub could not reach, or that did not answer in time: the caller reads what happened in words a party
understands, and whether the receiver may have the request; never the receiver's URL, host name or address, which the
routing log's row keeps, with aiohttp's own words, for support staff."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.errors import ReceiverNotConnected
from routing.forward import forward, open_session
from routing.forward_failures import CHECK_FIRST, NOT_CALLABLE
from routing.party_addresses import ALLOWANCE, PartyAddresses, networks
from tests.conftest import LOOPBACK, Hub
from tests.test_routing import party_key

REFUSED = "its server refused the connection (nothing listens at its address and port)"


def _put(hub: Hub, cpo, emsp, name: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    cc, pid = party_key(cpo)
    return cpo.call(hub.base, "PUT", f"receiver/tariffs/{cc}/{pid}/{name}", to=party_key(emsp), body={"id": name},
                    headers={"X-Request-ID": str(uuid.uuid4())})  # fmt: skip


def _error_of(db, answer: httpx.Response) -> str:  # type: ignore[no-untyped-def]
    [row] = db.run(db.fetch("SELECT error FROM routing_log WHERE request_id = $1", answer.headers["x-request-id"]))
    return row["error"]


def test_a_receiver_refusing_connections_is_answered_4003_saying_so_and_that_nothing_was_sent(
    hub: Hub, cpo_and_emsp, db
) -> None:
    # It read "the hub could not reach the receiver (ClientConnectorError)": aiohttp's class, no help to a party.
    cpo, emsp = cpo_and_emsp
    emsp.stop()
    answer = _put(hub, cpo, emsp, "REFUSED")
    assert answer.json()["status_code"] == 4003, answer.text
    told = answer.json()["status_message"]
    assert told == f"the hub could not reach the receiver: {REFUSED}; nothing was sent", told
    assert "127.0.0.1" not in answer.text and str(emsp.port) not in told
    error = _error_of(db, answer)  # the URL, and aiohttp's words, for support staff
    assert error.startswith(f"PUT {emsp.base}/ocpi/2.2.1/tariffs/receiver/") and told in error, error
    assert error.count("sent") == 1, error  # it read "PUT ... was not sent: ...; nothing was sent (...)"
    assert "ClientConnectorError" in error and "Connect call failed" in error, error


async def _forward_failure(url: str, session: aiohttp.ClientSession | None = None) -> ReceiverNotConnected:
    """What forward raised for a GET of url, with the hub's session (one that calls loopback) unless given one."""
    used = session or open_session(2.0, 4.0, PartyAddresses(networks(LOOPBACK)))
    try:
        await forward(used, "GET", url, {}, b"", 2.0, 1000)
    except ReceiverNotConnected as exc:
        return exc
    finally:
        await used.close()
    raise AssertionError(f"GET {url} did not fail")


def test_a_host_name_that_does_not_resolve_and_a_refused_address_are_told_alike_and_logged_as_they_are() -> None:
    # The caller read "its host name does not resolve (no such name)", "could not be resolved (...)" or "its address
    # is not one the hub calls parties at": which names resolve inside the hub's network, and to what, as registration
    # keeps from a holder of a token A (routing.party_addresses.NO_CONNECTION). The row's detail says which it was.
    unresolved = "http://no-such-party.invalid/ocpi/2.2.1/tariffs/receiver/NL/ABC/T1"  # RFC 6761: never resolves
    refused = "http://localhost:9/ocpi/versions"  # loopback, which no allowance covers here

    async def failures_without_allowance() -> list[ReceiverNotConnected]:
        sessions = [open_session(2.0, 4.0, PartyAddresses()) for _ in range(2)]
        return [await _forward_failure(unresolved, sessions[0]), await _forward_failure(refused, sessions[1])]

    failures = [asyncio.run(_forward_failure(unresolved)), *asyncio.run(failures_without_allowance())]
    assert [(f.status_code, f.message) for f in failures] == [(4003, NOT_CALLABLE)] * 3
    assert "no-such-party" not in NOT_CALLABLE and ALLOWANCE in NOT_CALLABLE
    for failed in failures[:2]:  # without a DNS server the resolver says it could not ask: the row says so
        assert failed.detail.startswith(f"GET {unresolved}: the hub could not reach the receiver: its "
                                        f"host name "), failed.detail  # fmt: skip
        assert "(ClientConnectorDNSError: " in failed.detail, failed.detail
    called = f"GET {refused}: the hub did not call the receiver: its address is not one the hub calls"
    assert failures[2].detail.startswith(called), failures[2].detail


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    days_left: int = 1, authority: bool = False
) -> x509.Certificate:  # fmt: skip
    """A certificate for name (self-signed without issuer), valid since yesterday and for days_left more days."""
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.now(UTC)
    built = (
        x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(issuer_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=2)).not_valid_after(now + timedelta(days=days_left))
        .add_extension(x509.BasicConstraints(ca=authority, path_length=None), critical=True)
    )  # fmt: skip
    if not authority:
        built = built.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    return built.sign(issuer_key, hashes.SHA256())


def _serving(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey, folder: Path) -> ssl.SSLContext:
    pem = folder / f"{uuid.uuid4()}.pem"
    pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)  # a request, or the TLS ClientHello that a plain HTTP server answers thus too
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    await writer.drain()
    writer.close()


def _tls_failure(
    context: ssl.SSLContext | None, trusting: x509.Certificate | None = None, host: str = "localhost"
) -> ReceiverNotConnected:
    """What a forward to https://host at a server of that TLS context (plain HTTP without one) raised, with the hub's
    session, or with one that trusts `trusting` besides."""

    async def run() -> ReceiverNotConnected:
        server = await asyncio.start_server(_answer, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        session = None
        if trusting is not None:
            client = ssl.create_default_context(cadata=trusting.public_bytes(serialization.Encoding.PEM).decode())
            factory = PartyAddresses(networks(LOOPBACK)).socket_factory
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client, socket_factory=factory))
        try:
            return await _forward_failure(f"https://{host}:{port}/ocpi/versions", session)
        finally:
            server.close()

    return asyncio.run(run())


def test_tls_trouble_with_a_receivers_server_is_answered_4003_saying_what_was_wrong(tmp_path: Path) -> None:
    authority_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    authority = _certificate("Test Authority", authority_key, authority=True)
    by_authority = ("Test Authority", authority_key)
    cases: list[tuple[Callable[[], ReceiverNotConnected], str]] = [
        (lambda: _tls_failure(None, host="127.0.0.1"),
         "the TLS handshake with its server failed: it does not seem to speak TLS (https) at that port"),
        (lambda: _tls_failure(_serving(_certificate("localhost", key), key, tmp_path)),
         "its server's TLS certificate was refused: its certificate is self-signed"),
        (lambda: _tls_failure(_serving(_certificate("elsewhere.example", key, by_authority), key, tmp_path), authority),
         "its server's TLS certificate was refused: its certificate is not valid for its host name"),
        (lambda: _tls_failure(_serving(_certificate("localhost", key, by_authority, -1), key, tmp_path), authority),
         "its server's TLS certificate was refused: its certificate has expired"),
    ]  # fmt: skip
    for failing, why in cases:
        failed = failing()
        assert failed.status_code == 4003
        assert failed.message == f"the hub could not reach the receiver: {why}; nothing was sent", failed.message
        assert "localhost" not in failed.message and "127.0.0.1" not in failed.message
        assert failed.detail.startswith("GET https://") and failed.message in failed.detail, failed.detail


def test_a_4002_says_the_request_was_forwarded_and_that_what_it_pushed_may_have_been_applied(
    hub: Hub, cpo_and_emsp, db
) -> None:
    # It read "the receiver did not answer within 2 s", and a sender took it for a request that did not arrive.
    cpo, emsp = cpo_and_emsp
    cc, pid = party_key(cpo)
    emsp.delay_s = 3.0  # the test hub waits 2 s (OCPI_HUB_FORWARD_TIMEOUT_S)
    pushed = _put(hub, cpo, emsp, "SLOW")
    fetched = cpo.call(hub.base, "GET", f"receiver/tariffs/{cc}/{pid}/SLOW", to=party_key(emsp))
    assert pushed.json()["status_code"] == fetched.json()["status_code"] == 4002, (pushed.text, fetched.text)
    waited = "the request was forwarded, but the receiver did not answer within 2 s"
    assert pushed.json()["status_message"] == f"{waited}: {CHECK_FIRST}", pushed.text
    assert fetched.json()["status_message"] == waited, fetched.text  # a GET changes nothing: sent again, no harm done
    at_receiver = f"{emsp.base}/ocpi/2.2.1/tariffs/receiver/{cc}/{pid}/SLOW"
    assert _error_of(db, pushed) == f"PUT {at_receiver}: {waited}: {CHECK_FIRST}"  # the URL, for support staff


@contextmanager
def _not_accepting(port: int) -> Iterator[None]:
    """A server at 127.0.0.1:port that never accepts, its backlog full: Linux drops the SYNs of further connects, which
    hang as to a host that does not answer."""
    with socket.create_server(("127.0.0.1", port), backlog=0):
        queued = socket.create_connection(("127.0.0.1", port), timeout=2)  # all that its backlog holds
        try:
            with pytest.raises(TimeoutError):  # the next one is not taken
                socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
            yield
        finally:
            queued.close()


def test_a_receiver_not_taking_connections_is_answered_4003_when_the_connect_timeout_ends_not_4002(
    hub: Hub, cpo_and_emsp, db
) -> None:
    # It was 4002, "the receiver did not answer within 2 s" (status_codes.asciidoc: "message is forwarded"), though the
    # hub had not even connected to it.
    cpo, emsp = cpo_and_emsp
    emsp.stop()
    with _not_accepting(emsp.port):
        started = time.monotonic()
        answer = _put(hub, cpo, emsp, "NOT-TAKEN")
        took = time.monotonic() - started
    assert answer.json()["status_code"] == 4003, answer.text
    told = (
        "the hub could not reach the receiver: connecting to its server did not finish within 1.8 s; nothing was sent"
    )
    assert answer.json()["status_message"] == told and 1.7 < took < 2.5, (answer.text, took)
    error = _error_of(db, answer)
    assert error.startswith(f"PUT {emsp.base}/ocpi/2.2.1/tariffs/receiver/") and error.endswith(f"/NOT-TAKEN: {told}")
