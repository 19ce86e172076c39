"""Builds OCPI responses (the envelope and its timestamp), decodes request bodies and renders every error."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from hub.errors import OUTAGES, InvalidParameters, OcpiError, decoded, unavailable
from hub.ocpi.wire import Envelope
from storage.log_search import is_row_id

log = structlog.get_logger()

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


MAX_OFFSET = 2**31 - 1  # past any list the hub serves: a larger offset is an empty page, not an overflow


Moment = TypeVar("Moment", float, datetime)


def check_dates(params: Mapping[str, str], date_from: Moment | None, date_to: Moment | None) -> None:
    """A date_to before date_from (transport_and_format.asciidoc, Pagination: date_from inclusive, date_to exclusive)
    asks for nothing, surely not what was meant (swapped?): 2001 naming both. Equal is a well-defined empty window, as
    a client stepping through windows may ask, answered empty."""
    if date_from is not None and date_to is not None and date_to < date_from:
        raise InvalidParameters(
            f"date_to ({params['date_to']}) is before date_from ({params['date_from']}): no object can be in that "
            "window (date_from is inclusive, date_to exclusive)"
        )


def not_a_date(name: str, raw: str) -> InvalidParameters:
    """2001 for a date_from or date_to of a list the hub answers itself that is no OCPI DateTime, naming what the hub
    read: "2026-01-01T00:00:00+00:00" unencoded reads "2026-01-01T00:00:00 00:00", a '+' in a query being a space."""
    plus = " ('+' in a query is a space: write it %2B, or the UTC time with Z)" if " " in raw else ""
    return InvalidParameters(f"{name} must be an OCPI DateTime such as 2026-11-25T10:00:00Z, got {raw[:40]!r}{plus}")


def list_parameters(query: str) -> dict[str, str]:
    """The query parameters of a list the hub answers itself, blank ones kept ("limit=" is a limit got wrong, not
    none). One given twice with different values is refused (2001) rather than one of them taken without a word: the
    caller would read a page of a window it did not ask for."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if (first := params.setdefault(name, value)) != value:
            raise InvalidParameters(
                f"{name[:40]} came more than once with different values ({first[:40]!r}, {value[:40]!r}): give it once"
            )
    return params


def paging_window(params: Mapping[str, str], max_limit: int) -> tuple[int, int]:
    """transport_and_format.asciidoc, Pagination: the offset and limit of a GET of a list the hub serves itself, the
    limit capped at the hub's maximum. The limit is also the page's X-Limit, "the maximum number of objects that the
    server can return" for the request (with limit=2000 and a maximum of 100: "The X-Limit HTTP header should be set
    to 100"); the maximum alone, for a smaller limit asked, would have a client stepping its offset by X-Limit skip
    objects. limit=0 asks for no objects, only the page's headers (X-Total-Count): the spec sets no lower bound on
    "The maximum number of objects to GET"."""
    offset, limit = _whole_number(params, "offset", 0), _whole_number(params, "limit", max_limit)
    return min(offset, MAX_OFFSET), min(limit, max_limit)


def x_limit(limit: int, max_limit: int) -> int:
    """A page's X-Limit, "The maximum number of objects that the server can return": the limit applied
    (paging_window), or, for limit=0, the hub's maximum, since X-Limit "SHALL then still show the upper limit, not the
    number of objects returned"."""
    return limit or max_limit


def _whole_number(params: Mapping[str, str], name: str, default: int) -> int:
    """A paging parameter, in the digits 0-9 alone."""
    raw = params.get(name)
    if raw is None:
        return default
    value = whole_number(raw)
    if value is None:
        raise InvalidParameters(f"{name} must be a whole number written in the digits 0-9, got {raw[:40]!r}")
    return value


def whole_number(raw: str) -> int | None:
    """The value of a number sent as text, if it is written in the digits 0-9 alone (int() would also read "1_000",
    " 5", "+1" and other scripts' digits, and raise on more than 4,300 digits); None otherwise."""
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 4000 else None


def path_number(raw: str, name: str) -> int:
    """The id of a row, platform or hold as a URL's path names it (name: its part of the URL), in the digits 0-9 alone.
    Litestar's `int` path type reads it with int(): "٥٢", "+52" and "5_2" named row 52 where "abc" named nothing.
    Anything else is the 404 that Litestar answers "abc" with (NotFoundException): no such URL. A number no row can
    have (0, or past a bigint, which the driver refuses) is refused as the search filters refuse it, 400 naming it,
    before any query."""
    value = whole_number(raw)
    if value is None:
        raise NotFoundException()
    if not is_row_id(value):
        raise ValidationException(f"{name} must be a whole number from 1 to {2**63 - 1}, got {raw[:40]!r}")
    return value


def ocpi_timestamp(moment: datetime | None = None) -> str:
    """types.asciidoc DateTime: UTC, 'Z' suffix, here with milliseconds."""
    moment = moment or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def ocpi_response(
    data: Any,
    *,
    status_code: int = 1000,
    message: str | None = None,
    http_status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    body = _encoder.encode(
        Envelope(status_code=status_code, timestamp=ocpi_timestamp(), data=data, status_message=message)
    )
    return Response(content=body, status_code=http_status, media_type="application/json", headers=headers)


async def decode_body(request: Request, kind: type[T]) -> T:
    """The request body as `kind`, or an OCPI error saying exactly what is wrong with it."""
    return decoded(await request.body(), kind, f"invalid {kind.__name__} object")


_HTTP_TO_OCPI = {400: 2001, 401: 2000, 404: 2000, 405: 2000, 413: 2000}


def render_ocpi_error(request: Request, exc: Exception) -> Response:
    """Exception handler for the whole app: every error leaves as an OCPI envelope, never as a bare 500."""
    if isinstance(exc, OcpiError):
        return ocpi_response(None, status_code=exc.status_code, message=exc.message, http_status=exc.http_status,
                             headers={"Allow": exc.allow} if exc.allow else None)  # fmt: skip
    if isinstance(exc, HTTPException):
        message = http_error_message(request, exc)
        status = exc.status_code
        return ocpi_response(
            None,
            status_code=_HTTP_TO_OCPI.get(status, 3000 if status >= 500 else 2000),
            message=message,
            http_status=status,
            headers=exc.headers,
        )
    _, message = logged_unexpected(request, exc)
    # status_codes.asciidoc: "If a request is syntactically valid JSON and addresses an existing resource, a HTTP error
    # MUST NOT be returned": PostgreSQL or Redis away, or a bug of the hub, is OCPI 3000 (a relayed module's is 4000)
    return ocpi_response(None, status_code=3000, message=message)


def logged_unexpected(request: Request, exc: Exception) -> tuple[int, str]:
    """An error no answer shape knows, logged, as (HTTP status, what the caller is told), for the OCPI envelope, the
    admin API's JSON and the console's page alike: PostgreSQL or Redis away (a restart or failover, not a bug: no
    traceback, and a status that says retry), else a bug of the hub."""
    if isinstance(exc, OUTAGES):
        message = unavailable(exc)
        log.error("service_unavailable", error=message, path=request.url.path)
        return 503, f"{message}; try again shortly"
    log.exception("unhandled_error", path=request.url.path, error=repr(exc))
    return 500, "internal error of the hub; it has been logged"


def http_error_message(request: Request, exc: HTTPException) -> str:
    """What an HTTP error Litestar raised means, for the caller: its detail says only "Not Found" to a wrong URL."""
    if exc.status_code == 404:  # a handler's own ("no platform 999") says more than that
        return (
            exc.detail
            if exc.detail and exc.detail != "Not Found"
            else f"no such endpoint: {request.method} {request.url.path}"
        )
    if exc.status_code == 405:
        return f"method {request.method} is not allowed on {request.url.path}"
    if exc.status_code == 413:
        return "request body too large"
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        # Litestar's detail, "Validation failed for GET /console/log?limit=abc", names neither the parameter nor what
        # is wrong with it, and quotes the whole URL, however long: its errors say both
        wrong = "; ".join(_validation_error(error) for error in exc.extra if isinstance(error, dict))
        return f"{request.method} {request.url.path}: {wrong}"
    return str(exc.detail)


def _validation_error(error: dict[str, Any]) -> str:
    """One of a ValidationException's errors: {"key": "limit", "source": "query", "message": "Expected `int`, ..."}."""
    key, source = str(error.get("key") or ""), str(getattr(error.get("source"), "value", error.get("source")) or "")
    where = f"the {source} parameter {key[:40]}" if key and source else key[:40] or "the request"
    return f"{where}: {str(error.get('message'))[:200]}"
