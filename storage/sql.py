"""Named SQL queries from storage/queries.sql (a "-- name: x" line starts each block)."""

from __future__ import annotations

import re
from importlib.resources import files


def _load() -> dict[str, str]:
    text = files("storage").joinpath("queries.sql").read_text(encoding="utf-8")
    blocks = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    return {name: body.strip() for name, body in zip(blocks[1::2], blocks[2::2], strict=True)}


QUERIES = _load()
