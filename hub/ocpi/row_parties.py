"""Who a routing-log row names when no route did: the parties of a request refused before it was routed (its token,
its headers, its body), and the calling party of any row, so that an auditor finds each row under the party that sent
it and the one it was for, and nothing an anonymous caller made up."""

from __future__ import annotations

import contextlib

from hub.auth import identify
from hub.envelope import whole_number
from hub.errors import InvalidParameters
from routing.request import routing_party
from storage.directory import Directory, Platform
from storage.log_row import LogEntry


def row_of_a_refusal(
    entry: LogEntry, caller: Platform | None, directory: Directory, headers: dict[str, str], *, looked_up: bool
) -> None:
    """The row of a request refused before it was routed: its parties named (name_the_parties), and the size its body
    announced kept, not the body, and its path, query and headers cut short, unless a registered party's token C sent
    it: anyone could fill the log's disk otherwise (LogEntry.keep_anonymous_request_short). A
    caller is None here when the relay refused its token (looked_up), or when the request was refused before the relay
    looked at it (a body too large, a malformed hub mark): then its token is looked up here, once."""
    known = identify(directory, headers.get("authorization")) if caller is None and not looked_up else None
    if entry.from_country_code is None:
        name_the_parties(entry, caller or (known.platform if known else None), headers)
    if caller is None and (known is None or known.token_kind != "C"):
        entry.keep_anonymous_request_short(whole_number(headers.get("content-length", "")))


def name_the_parties(entry: LogEntry, caller: Platform | None, headers: dict[str, str]) -> None:
    """The parties of a row no route named (a request refused before it was routed: a body too large, a malformed
    header, a token A, a foreign OCPI-from, an unknown receiver, a malformed body; a party's own credentials request),
    so that an auditor finds the row under the party that sent it and the one it was for: the calling platform's
    party its OCPI-from headers name, else its first (a caller refused before it was authenticated, by its token), and
    the receiver its OCPI-to headers address. A caller no token names names nobody: a "to party" search would find
    rows anyone could have made up. What it claimed stays in the row's request headers."""
    if caller is None:  # whoever it is: what it addressed stays in the row's request headers alone
        return
    entry.caller_platform_id = caller.id
    name_the_caller(entry, caller, headers)
    if entry.to_country_code is None:
        with contextlib.suppress(InvalidParameters):  # not a party's codes: only in the request headers
            entry.to_country_code, entry.to_party_id = routing_party(headers, "to") or (None, None)


def name_the_caller(entry: LogEntry, platform: Platform, headers: dict[str, str]) -> None:
    """The from of a row: the calling platform's party its OCPI-from headers name, else its first."""
    claimed = (headers.get("ocpi-from-country-code", "").upper(), headers.get("ocpi-from-party-id", "").upper())
    party = next((r for r in platform.roles if r.key == claimed), None) or next(iter(platform.roles), None)
    if party is not None:
        entry.from_country_code, entry.from_party_id = party.country_code, party.party_id
