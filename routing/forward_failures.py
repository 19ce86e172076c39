"""Why a forward failed, in a party's words: aiohttp's exceptions as the hub's 4002 and 4003 (routing.forward).

status_codes.asciidoc: 4002 "message is forwarded, but request times out"; 4003 "receiving party is not connected".
What a sender needs to know before it sends a request again is whether the receiver may have it: a failure to connect
says that nothing was sent, a timeout or a connection that broke after the request went out that the receiver may
have applied it. The caller never reads the receiver's URL, host name or address, which the hub keeps from the other
parties; the routing log's detail adds the URL and aiohttp's own words, for whoever supports the parties.

Nor does the caller learn what the hub's DNS knows, as a registering party does not (routing.party_addresses
NO_CONNECTION): that a receiver's host name does not resolve and that it resolves to an address the hub does not call
parties at are told alike (NOT_CALLABLE), and the row and the hub's log line party_not_reached say which it was. What
happened connecting to an address the hub does call (a public one, or one in the operator's allowance) is told as
it is.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl

import aiohttp

from hub.errors import ForwardTimeout, ReceiverNotCalled, ReceiverNotConnected, ReceiverNotResolved
from routing.party_addresses import ALLOWANCE, REFUSED_ADDRESS, AddressRefused

NOT_REACHED = "the hub could not reach the receiver"
NOTHING_SENT = "nothing was sent"
# What a sender does when the receiver may have applied its request: sent again at once, a command could be carried
# out twice, and a push applied twice or over a newer one.
CHECK_FIRST = (
    "it may have been applied, so check before sending it again (a command: wait for its result; a push: GET it)"
)
# A receiver's host name that does not resolve, or resolves to an address refused (for all the caller knows, one inside
# the hub's network): one message, whichever it was.
NOT_CALLABLE = (f"{NOT_REACHED}: its host name does not resolve, or resolves to no address the hub calls parties at "
                f"({ALLOWANCE}); {NOTHING_SENT}")  # fmt: skip

_ON_CONNECT = {
    errno.ECONNREFUSED: "its server refused the connection (nothing listens at its address and port)",
    errno.ECONNRESET: "its server reset the connection",
    errno.ETIMEDOUT: "connecting to its server timed out",
    errno.EHOSTUNREACH: "its server's host is unreachable",
    errno.ENETUNREACH: "its server's network is unreachable",
}
_UNTRUSTED = "its certificate is not issued by an authority the hub trusts (or its server leaves out the intermediates)"
# OpenSSL's verify codes (X509_V_ERR_*) of the certificate trouble a party can fix, told without the names they hold
_CERTIFICATE = {
    9: "its certificate is not valid yet",
    10: "its certificate has expired",
    18: "its certificate is self-signed",
    19: "its certificate chain ends in a self-signed certificate the hub does not trust",
    20: _UNTRUSTED,
    21: _UNTRUSTED,
    23: "its certificate has been revoked",
    62: "its certificate is not valid for its host name",
    64: "its certificate is not valid for its address",
}


def timed_out(method: str, timeout: aiohttp.ClientTimeout, after_waiting: bool, sent: str) -> ForwardTimeout:
    """4002: the request went out, and no whole answer came within the deadline."""
    told = f"the request was forwarded, but the receiver did not answer within {_seconds(timeout.total)} s"
    if after_waiting:
        told += ", what was left of the deadline after waiting for a connection to it"
    if method != "GET":
        told += f": {CHECK_FIRST}"
    return ForwardTimeout(told, f"{sent}: {told}")


def not_connected_in_time(timeout: aiohttp.ClientTimeout, sent: str) -> ReceiverNotConnected:
    """4003: no connection to the receiver's server within the connect timeout (routing.forward.client_timeout)."""
    told = (
        f"{NOT_REACHED}: connecting to its server did not finish within {_seconds(timeout.connect)} s; {NOTHING_SENT}"
    )
    return ReceiverNotConnected(told, f"{sent}: {told}")


def not_reached(exc: BaseException, method: str, sent: str) -> ReceiverNotConnected:
    """4003 for one of aiohttp's connection errors (or an OSError, or a URL it will not call), saying what happened
    and whether the request was sent."""
    said = f"({type(exc).__name__}: {_cut(str(exc))})"
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, AddressRefused) or _refused_among(os_error):  # not tried: a URL into the hub's network
        told = f"the hub did not call the receiver: its address is not one the hub calls parties at ({ALLOWANCE})"
        return ReceiverNotCalled(NOT_CALLABLE, f"{sent}: {told} {said}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(os_error, socket.gaierror):
        told = f"{NOT_REACHED}: {_why_unresolved(os_error)}; {NOTHING_SENT}"
        return ReceiverNotResolved(NOT_CALLABLE, f"{sent}: {told} {said}")
    if isinstance(exc, aiohttp.ClientConnectorError):  # raised while connecting: before any of the request went out
        told = f"{NOT_REACHED}: {_why_no_connection(exc)}; {NOTHING_SENT}"
        return ReceiverNotConnected(told, f"{sent}: {told} {said}")
    if isinstance(exc, ValueError) and not isinstance(exc, OSError):  # a URL aiohttp will not call (a backstop)
        told = f"{NOT_REACHED}: the hub cannot call its URL; {NOTHING_SENT}"
        return ReceiverNotConnected(told, f"{sent}: {told} {said}")
    # After the connection was made: the request, or some of it, went out, and no answer came back.
    reset = isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET
    how = "reset" if reset else "closed"
    told = f"the connection to the receiver's server was {how} before it answered"
    if method != "GET":
        told += f": {CHECK_FIRST}"
    return ReceiverNotConnected(told, f"{sent} failed: {told} {said}")


def _refused_among(os_error: object) -> bool:
    """Whether an error of several addresses (aiohappyeyeballs: "Multiple exceptions: ...", no errno) has one of an
    address the hub did not call among them."""
    return isinstance(os_error, OSError) and os_error.errno is None and REFUSED_ADDRESS in str(os_error)


def _why_unresolved(os_error: OSError | None) -> str:
    """For the row and the hub's log: the caller reads NOT_CALLABLE."""
    if os_error is not None and os_error.errno == socket.EAI_NONAME:
        return "its host name does not resolve (no such name)"
    return f"its host name could not be resolved ({getattr(os_error, 'strerror', None) or 'no answer from DNS'})"


def _why_no_connection(exc: aiohttp.ClientConnectorError) -> str:
    os_error = exc.os_error
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        certificate = exc.certificate_error
        code = getattr(certificate, "verify_code", None)
        verified = _CERTIFICATE.get(code) if isinstance(code, int) else None
        said = verified or getattr(certificate, "verify_message", None) or "it could not be verified"
        return f"its server's TLS certificate was refused: {said}"
    if isinstance(os_error, ssl.SSLError):
        if os_error.reason == "WRONG_VERSION_NUMBER":  # the usual answer of a server that speaks plain HTTP there
            return "the TLS handshake with its server failed: it does not seem to speak TLS (https) at that port"
        return f"the TLS handshake with its server failed ({os_error.reason or os_error.strerror})"
    code = os_error.errno
    if code is None:  # aiohttp tried several addresses of its host name, which failed each in its own way
        return "no address of its host name took the connection"
    return _ON_CONNECT.get(code) or f"connecting to its server failed ({os.strerror(code).lower()})"


def _seconds(value: float | None) -> str:
    return f"{round(value or 0, 1):g}"


def _cut(text: str, at_most: int = 200) -> str:
    return text if len(text) <= at_most else f"{text[:at_most]}..."
