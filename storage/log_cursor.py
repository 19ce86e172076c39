"""The cursor of a routing-log search's keyset pages: the (received_at, id) of a page's last row, opaque to the caller
(storage.log_search_sql.page_query reads the rows after it)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from storage.log_search import BadFilter, is_row_id


def encode_cursor(received_at: datetime, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{received_at.isoformat()}|{row_id}".encode()).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[datetime, int]:
    """The (received_at, id) a cursor holds; BadFilter for one this API cannot have handed out, among them values the
    database cannot take (a row id past a bigint, a time outside the years 1 to 9999 in UTC)."""
    try:
        at, _, row_id = base64.urlsafe_b64decode(value.encode() + b"==").decode().partition("|")
        if not (row_id.isascii() and row_id.isdigit()):  # int() also reads other scripts' digits, a sign, "_"
            raise ValueError(row_id)
        received_at, row = datetime.fromisoformat(at), int(row_id)
        received_at = received_at if received_at.tzinfo else received_at.replace(tzinfo=UTC)
        received_at.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadFilter("cursor is not one this API handed out") from None
    if not is_row_id(row):
        raise BadFilter("cursor is not one this API handed out")
    return received_at, row
