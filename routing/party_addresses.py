"""Which network addresses the hub calls parties at: public ones, and the non-public networks the operator allows.

A party's URLs (its versions, version details and endpoints; a response_url, Link or Location at a host it registered)
are called with the party's token B and the answer relayed to it: a URL at an address inside the hub's network would
have the hub fetch what that network holds (a cloud metadata service, the hub's own /metrics, an internal API) and
hand it to the party. The check is made where a socket is about to connect, after the host name was resolved (the
data plane's aiohttp session: `socket_factory`; the control plane's httpx client: `GuardedBackend`), so a name that
resolves elsewhere later (DNS rebinding) cannot get round it, and costs nothing on a kept-alive connection. A party's
URLs are judged when it registers them too (hub.party_api.discover): a literal address as it is, a host name by the
addresses it resolves to then (`usable_addresses`, as the control plane's connect does).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore

ALLOWANCE = "OCPI_HUB_PARTY_NETWORKS_ALLOWED"
NOT_PUBLIC = f"the hub calls a party only at a public address, or in a network the hub's operator allows ({ALLOWANCE})"
HUB_ITSELF = "it is the address the hub itself listens on"
REFUSED_ADDRESS = f"the receiver's address is not one the hub calls parties at ({ALLOWANCE})"  # AddressRefused's
# What a party is told when the hub could not connect to a host outside the operator's allowance, whichever of these
# it was (Unreached): a holder of a token A must not learn by the hub's answers which names resolve inside the hub's
# network, nor which addresses of it answer.
NO_CONNECTION = (f"the hub could not connect: the host name does not resolve, or resolves to no address the hub calls "
                 f"parties at ({ALLOWANCE}), or nothing answers there")  # fmt: skip

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 forms whose packets reach an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64's well-known prefix, 6to4): such
# an address is judged as that IPv4 address, so that ::ffff:169.254.169.254 is what 169.254.169.254 is.
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Global by the registries, yet a cloud platform's own service on every VM: Azure's WireServer (and IMDS-like
# endpoints), which answers a VM's unauthenticated requests. Never a party's.
_PLATFORM_SERVICES = (ipaddress.ip_network("168.63.129.16/32"),)


class AddressRefused(OSError):
    """A connection to a party was not attempted: its address is not one the hub calls parties at. The message is the
    same whatever the address, so that neither the party nor a combined error of several addresses says which."""


def networks(raw: str) -> tuple[Network, ...]:
    """The networks of a comma-separated list of CIDRs ("10.0.0.0/8, fd00::/8"; a lone address is its own /32 or
    /128); ValueError naming the entry that is none."""
    found = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        try:
            found.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is no network (a CIDR such as 10.0.0.0/8 or fd00::/8)") from None
    return tuple(found)


def _ipv4_inside(address: Address) -> ipaddress.IPv4Address | None:
    if address.version == 4:
        return None
    assert isinstance(address, ipaddress.IPv6Address)
    if address in _MAPPED or address in _COMPATIBLE or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def is_public(address: Address) -> bool:
    """Whether the address is one of the public internet's: not loopback, unspecified, private (RFC 1918, ULA),
    shared (CGNAT 100.64.0.0/10), link-local (169.254.0.0/16, fe80::/10), site-local, multicast or reserved.
    `is_global` alone lets multicast and fec0::/10 through."""
    if (inside := _ipv4_inside(address)) is not None:
        return is_public(inside)
    site_local = address.version == 6 and address.is_site_local  # type: ignore[union-attr]
    platform_service = any(address in network for network in _PLATFORM_SERVICES)
    return address.is_global and not (address.is_multicast or address.is_reserved or site_local or platform_service)


@dataclass(frozen=True, slots=True)
class PartyAddresses:
    """The hub's address policy for calls to parties."""

    allowed: tuple[Network, ...] = ()  # OCPI_HUB_PARTY_NETWORKS_ALLOWED
    hub_port: int | None = None  # the port `ocpi-hub serve` listens on
    hub_addresses: frozenset[Address] = frozenset()  # the addresses it listens on, beside loopback

    def why_refused(self, host: str, port: int) -> str | None:
        """Why the hub will not connect to a party at host (an address, not a name) and port, or None."""
        try:
            address: Address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None  # a name: judged once resolved
        if address in _MAPPED:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)  # the kernel connects to the IPv4 address
        if port == self.hub_port and (
            address.is_loopback or address.is_unspecified or address in self.hub_addresses or _is_local(address)
        ):
            return HUB_ITSELF
        if is_public(address) or any(address in network for network in self.allowed):
            return None
        return f"it is not a public address: {NOT_PUBLIC}"

    def allows(self, address: str) -> bool:
        """Whether address is within a network the operator allows (ALLOWANCE), where the hub may say more of what
        happened than NO_CONNECTION."""
        ip = ipaddress.ip_address(address.strip("[]"))
        return any(ip in network for network in self.allowed)

    async def usable_addresses(self, host: str, port: int, timeout: float | None) -> list[str]:
        """The addresses of host (an address, or a name resolved now) the hub may connect to at port, in the
        resolver's order; Unreached when its name does not resolve, RefusedConnect when it is at none of them."""
        try:
            ipaddress.ip_address(host.strip("[]"))
            candidates = [host.strip("[]")]
        except ValueError:
            try:
                with anyio.fail_after(timeout):
                    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except TimeoutError:
                raise Unreached(f"resolving {host} took longer than {timeout:g} s") from None
            except OSError as exc:
                raise Unreached(f"{host} does not resolve: {exc}") from None
            candidates = list(dict.fromkeys(str(info[4][0]) for info in infos))
        refused = {address: self.why_refused(address, port) for address in candidates}
        usable = [address for address, why in refused.items() if not why]
        if not usable and HUB_ITSELF in refused.values():  # known to whoever names it: nothing to hide
            raise RefusedConnect(f"{host}:{port} is the hub itself: {HUB_ITSELF}")
        if not usable:
            raise RefusedConnect(f"{host} is at no address the hub calls parties at: {NOT_PUBLIC}")
        return usable

    async def why_unusable(self, url: str, timeout: float | None, judged: set[tuple[str, int]]) -> str | None:
        """Why the hub would not connect to url's host (a name resolved now) when it is not in judged, or None (then
        it is added): the message of the Unreached that usable_addresses raises."""
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        if host is None or (host, port) in judged:
            return None
        try:
            await self.usable_addresses(host, port, timeout)
        except Unreached as exc:
            return str(exc)
        judged.add((host, port))
        return None

    def why_refused_url(self, url: str) -> str | None:
        """Why the hub will not call url, judged by its host when that is a literal address (a host name is judged
        once resolved, as the hub connects), or None; None too for no URL the hub can call (the call says why)."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        return self.why_refused(parts.hostname, port) if parts.hostname else None

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohttp's TCPConnector(socket_factory=...): the socket for one resolved address, or AddressRefused."""
        family, kind, proto, _, sockaddr = addr_info
        if self.why_refused(sockaddr[0], sockaddr[1]):
            raise AddressRefused(REFUSED_ADDRESS)
        return socket.socket(family=family, type=kind, proto=proto)


def _is_local(address: Address) -> bool:
    """Whether address is one of this machine's own (a socket binds to it): an interface's address, which the host
    name need not resolve to (Debian's /etc/hosts gives 127.0.1.1), public or not."""
    with socket.socket(socket.AF_INET if address.version == 4 else socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def refused_urls(urls: Iterable[str], policy: PartyAddresses) -> list[tuple[str, str]]:
    """(url, why) of each URL at a literal address the policy refuses: what a hub started with a narrower policy than
    the parties were registered under (an upgrade, a changed allowance) will not call. Host names are judged when the
    hub connects."""
    return [(url, why) for url in urls if (why := policy.why_refused_url(url))]


def for_hub(allowed: tuple[Network, ...], listen: tuple[str, int] | None) -> PartyAddresses:
    """The policy of a hub listening on listen (host, port): a party's URL at that port of an address of the hub's
    (loopback, the address it listens on; when it listens on every address, those of its host name) is the hub itself,
    allowed network or not."""
    if listen is None:
        return PartyAddresses(allowed)
    host, port = listen
    own: set[Address] = set()
    names = [host]
    try:
        if ipaddress.ip_address(host).is_unspecified:
            names.append(socket.gethostname())
    except ValueError:
        pass
    for name in names:
        try:
            own.update(ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(name, None))
        except OSError:  # a host name that resolves to nothing: only loopback is known to be the hub
            continue
    return PartyAddresses(allowed, port, frozenset(own))


class Unreached(httpcore.ConnectError):
    """No connection to a party's host outside the operator's allowance: its name did not resolve, it is at no address
    the hub calls parties at (RefusedConnect), or nothing answered at those it may call. The message says which, for
    the hub's own log; a party is told NO_CONNECTION for each (hub.party_api). httpx maps it to an httpx.ConnectError
    caused by it."""


class RefusedConnect(Unreached):
    """The control plane's AddressRefused: httpx maps it to an httpx.ConnectError with this message."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend for the control plane's client: resolves the host itself and connects only to the
    addresses the policy allows (httpcore calls it only for a new connection, not for a request on a kept one)."""

    def __init__(self, policy: PartyAddresses) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        usable = await self.policy.usable_addresses(host, port, timeout)
        failed: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in usable:  # in the resolver's order, as anyio would try them (less its happy eyeballs)
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failed = exc
        assert failed is not None
        try:
            if any(self.policy.allows(address) for address in usable):  # the operator's network: the error as it is
                raise failed
            raise Unreached(f"nothing answered at {host}:{port}: {failed}") from None
        finally:  # this frame holding the exception whose traceback holds the frame: a cycle for the collector
            failed = None

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedConnect("the hub calls parties over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
