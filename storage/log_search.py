"""Routing-log searches: a whitelist of filters, each a static SQL fragment with bound parameters, parsed from a
request's query parameters; storage.log_search_sql makes a search's keyset pages and exports of them.

Each combination of filters gives its own SQL text, so PostgreSQL plans it for the indexes that fit (a generic
"($1 IS NULL OR col = $1)" plan cannot use them), and the queries run with plan_cache_mode = force_custom_plan so
that partial indexes (rare statuses, unusual routings) and skewed parties are planned with the actual values.

http_status and ocpi_status match what the caller was answered: a row's own status, or for an amended row (migration
0015: its caller was answered 4000 while the row says what the receiver answered) its amendment's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from storage.log_object_ids import REQUEST
from storage.log_row import stored_text

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
ROUTINGS = frozenset({"direct", "broadcast", "open", "hub", "rejected"})
_PARTY = re.compile(r"([A-Za-z]{2})-([A-Za-z0-9]{3})")
_WORD = re.compile(r"[a-z0-9_]{1,40}")
_MS = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,3})?")


class BadFilter(ValueError):
    """A filter value the API cannot use; the message names the parameter."""


def _party(name: str, raw: str) -> list[Any]:
    match = _PARTY.fullmatch(raw.strip())
    if not match:
        raise BadFilter(f"{name} must be a country code and party id such as NL-ABC, got {raw!r}")
    return [match.group(1).upper(), match.group(2).upper()]


def checked_text(name: str, raw: str) -> str:
    """raw, unless it is a text no row holds (BadFilter naming it): a text filter's value, or an id a path names. The
    hub keeps at most 255 characters of an id (hub.request_context.MAX_ID_LENGTH); a longer one would match nothing."""
    if not raw or len(raw) > 255:
        raise BadFilter(f"{name} must be 1 to 255 characters")
    return raw


def _text(name: str, raw: str) -> list[Any]:
    return [checked_text(name, raw)]


def _object_id(name: str, raw: str) -> list[Any]:
    """An object id is a CiString: stored upper-cased (storage.routing_log), and as sent by hubs before that."""
    return [*_text(name, raw), raw.upper()]


def _request_id(name: str, raw: str) -> list[Any]:
    """A request id as sent, and as a result's row lists the request it answers (storage.log_object_ids.REQUEST)."""
    return [*_text(name, raw), f"{REQUEST}{raw}".upper()]


def _word(name: str, raw: str) -> list[Any]:
    if not _WORD.fullmatch(raw):
        raise BadFilter(f"{name} must be a module name such as locations, got {raw!r}")
    return [raw]


def _choice(choices: frozenset[str], transform: Callable[[str], str]) -> Callable[[str, str], list[Any]]:
    def parse(name: str, raw: str) -> list[Any]:
        if transform(raw) not in choices:
            raise BadFilter(f"{name} must be one of {', '.join(sorted(choices))}, got {raw!r}")
        return [transform(raw)]

    return parse


def _integer(low: int, high: int) -> Callable[[str, str], list[Any]]:
    def parse(name: str, raw: str) -> list[Any]:
        # digits 0-9 alone; no more than a bigint has (int() raises on more than 4,300)
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or not low <= int(raw) <= high:
            raise BadFilter(f"{name} must be a whole number from {low} to {high}, got {raw[:40]!r}")
        return [int(raw)]

    return parse


def _milliseconds(name: str, raw: str) -> list[Any]:
    """Milliseconds: digits 0-9 with up to 3 decimals; no sign, exponent, NaN or inf (float() takes those)."""
    if not _MS.fullmatch(raw):
        raise BadFilter(f"{name} must be milliseconds from 0 to 999999999, such as 2000 or 2.5, got {raw[:40]!r}")
    return [float(raw)]


def parse_time(name: str, raw: str) -> datetime:
    """ISO 8601; without an offset the time is taken as UTC."""
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadFilter(f"{name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z, got {raw!r}") from None
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        value.astimezone(UTC)  # what the database compares: 9999-12-31T23:59:59-01:00 is past the year 9999
    except OverflowError:
        raise BadFilter(f"{name} is out of range in UTC, got {raw!r}") from None
    return value


def _time(name: str, raw: str) -> list[Any]:
    return [parse_time(name, raw)]


# Rows about an object (its id as sent and upper-cased) and rows naming it: the object_id filter's two sides.
OBJECT_CLAUSE, LISTED_CLAUSE = "object_id IN ({0}, {1})", "listed_ids && ARRAY[{0}, {1}]::text[]"
# name -> (SQL fragment with {0}, {1}... for its parameters, parser). "party" and "object_id" are handled apart: see
# storage.log_search_sql.page_query.
FILTERS: dict[str, tuple[str, Callable[[str, str], list[Any]]]] = {
    "from_party": ("from_country_code = {0} AND from_party_id = {1}", _party),
    "to_party": ("to_country_code = {0} AND to_party_id = {1}", _party),
    "module": ("module = {0}", _word),
    "method": ("method = {0}", _choice(METHODS, str.upper)),
    "routing": ("routing = {0}", _choice(ROUTINGS, str.lower)),
    # the id the caller sent, or the one the hub sent the receiver: either side of a dispute may hold it; and the rows
    # of the results that answer it (posted to the response_url it handed out), which list it
    "request_id": ("(request_id = {0} OR forwarded_request_id = {0} OR listed_ids && ARRAY[{1}]::text[])", _request_id),
    "correlation_id": ("correlation_id = {0}", _text),
    # "object_id" is handled apart (see Search.either_object): the rows about an object and those naming it
    # an id a row names other than as its object (storage.log_object_ids): a list answer's, a CDR's session...
    "listed_id": (LISTED_CLAUSE, _object_id),
    # either side, as GET /admin/api/parties numbers them: a party id two platforms held one after the other
    "platform": ("(caller_platform_id = {0} OR receiver_platform_id = {0})", _integer(1, 2**63 - 1)),
    # slow exchanges: the whole time, or the receiver's part of it (null, so never found, where no party was sent to);
    # no index of their own: each is a filter on the rows of the other filters' index ranges, or of since/until's
    "min_duration_ms": ("duration_ms >= {0}", _milliseconds),
    "min_receiver_ms": ("receiver_ms >= {0}", _milliseconds),
    "since": ("received_at >= {0}", _time),
    "until": ("received_at < {0}", _time),
}
# What the caller was answered (handled apart: see Search.either_answer): the column of the row and of its amendment.
ANSWERED: dict[str, tuple[str, Callable[[str, str], list[Any]]]] = {
    "http_status": ("http_status", _integer(100, 599)),
    "ocpi_status": ("ocpi_status_code", _integer(1000, 4999)),
}
FILTER_NAMES = frozenset({*FILTERS, *ANSWERED, "party", "object_id"})
# The row's amendment (migration 0015), in a clause on routing_log.
_AMENDMENT = "routing_log_amendment AS a WHERE a.chain_id = routing_log.chain_id AND a.seq = routing_log.seq"
_FROM = "from_country_code = {0} AND from_party_id = {1}"
_TO = "to_country_code = {0} AND to_party_id = {1}"
_NOT_FROM = "(from_country_code, from_party_id) IS DISTINCT FROM ({0}, {1})"


@dataclass
class Search:
    """Parsed filters: SQL fragments in a fixed order and their values, numbered as they are added."""

    fragments: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    party: list[Any] | None = None
    object: list[Any] | None = None  # the object_id filter's values
    answered: list[tuple[str, int]] = field(default_factory=list)  # (column, value) of the status filters
    given: dict[str, str] = field(default_factory=dict)

    def bind(self, values: list[Any]) -> list[str]:
        placeholders = [f"${len(self.args) + n + 1}" for n in range(len(values))]
        self.args.extend(values)
        return placeholders

    def add(self, fragment: str, values: list[Any]) -> str:
        return fragment.format(*self.bind(values))

    def either_party(self) -> tuple[str, str, str]:
        """(sent by, received by, not sent by) the party filter, sharing its two parameters."""
        assert self.party is not None
        placeholders = self.bind(self.party)
        return _FROM.format(*placeholders), _TO.format(*placeholders), _NOT_FROM.format(*placeholders)

    def either_object(self) -> tuple[str, str]:
        """(about it, naming it) the object_id filter, sharing its parameters: rows whose object_id it is (a btree
        range), and rows whose listed_ids name it and whose object_id is another (a GIN lookup): "everything about
        session S", its pushes, the commands, results and CDRs naming it, the list answers that held it."""
        assert self.object is not None
        placeholders = self.bind(self.object)
        about = OBJECT_CLAUSE.format(*placeholders)
        return about, f"{LISTED_CLAUSE.format(*placeholders)} AND (object_id IS NULL OR NOT {about})"

    def either_answer(self) -> tuple[str, str]:
        """(as the row says, as its amendment says) the status filters, sharing their parameters: a row not amended
        whose own status matches, or an amended row whose amendment's does. Apart (a page's merged ranges), the first
        is an index range on the row's status with an anti-join on the amendment's key, the second a join from the few
        amendments; ORed (stats, exports), a bitmap OR of the row's status and its received_at among the amendments'."""
        matches = [(column, placeholder) for (column, _), placeholder in
                   zip(self.answered, self.bind([value for _, value in self.answered]), strict=True)]  # fmt: skip
        as_logged = " AND ".join([f"NOT EXISTS (SELECT 1 FROM {_AMENDMENT})",
                                  *(f"{column} = {placeholder}" for column, placeholder in matches)])  # fmt: skip
        amendment = " AND ".join(f"a.{column} = {placeholder}" for column, placeholder in matches)
        amended = (f"received_at = ANY(ARRAY(SELECT a.row_received_at FROM routing_log_amendment AS a"
                   f" WHERE {amendment})) AND EXISTS (SELECT 1 FROM {_AMENDMENT} AND {amendment})")  # fmt: skip
        return as_logged, amended

    def where(self, *extra: str) -> str:
        clauses = [*self.fragments, *extra]
        return "WHERE " + " AND ".join(clauses) if clauses else ""


def parse_filters(params: Mapping[str, str], allowed_extra: frozenset[str] = frozenset()) -> Search:
    """Filters from query parameters; an unknown parameter or a bad value is BadFilter naming it."""
    unknown = sorted(set(params) - FILTER_NAMES - allowed_extra)
    if unknown:
        raise BadFilter(f"unknown parameter {unknown[0]}; filters are {', '.join(sorted(FILTER_NAMES))}")
    search = Search()
    params = {name: stored_text(value) for name, value in params.items()}  # "%00" finds what the log stored for it
    parsed: dict[str, list[Any]] = {}
    for name in sorted(FILTERS):  # a fixed order: the same filters always give the same SQL text
        raw = params.get(name)
        if raw is None or raw == "":
            continue
        fragment, parse = FILTERS[name]
        parsed[name] = parse(name, raw)
        search.fragments.append(search.add(fragment, parsed[name]))
        search.given[name] = raw
    for name in sorted(ANSWERED):
        if raw := params.get(name):
            column, parse = ANSWERED[name]
            search.answered.append((column, parse(name, raw)[0]))
            search.given[name] = raw
    if params.get("party"):
        search.party = _party("party", params["party"])
        search.given["party"] = params["party"]
    if params.get("object_id"):
        search.object = _object_id("object_id", params["object_id"])
        search.given["object_id"] = params["object_id"]
    check_range(*(parsed[name][0] if name in parsed else None for name in ("since", "until")))
    return search


def check_range(since: datetime | None, until: datetime | None) -> None:
    """BadFilter for a range that holds no time: an answer of nothing would read as "nothing happened then"."""
    if since is not None and until is not None and since >= until:
        raise BadFilter(f"since ({since.isoformat()}) is not before until ({until.isoformat()}): the range is empty")


def is_row_id(value: int) -> bool:
    """Whether value can be the id of a row (a bigint from 1): a larger one would fail in the driver, not match."""
    return 0 < value < 2**63
