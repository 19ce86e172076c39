"""A Link header read as RFC 8288 writes it: its link-values, their URLs, and the one of relation type "next".

transport_and_format.asciidoc, Pagination: `Link: <url>; rel="next"` leads to the next page. A party may send more
(RFC 8288, 3: `Link = #link-value`): several link-values ("first", "prev", "last"), in one field or several (joined
with ", ", RFC 9110, 5.3), parameters before rel (`; type="application/json"; rel="next"`), a rel naming several
types (`rel="prev next"`), names and types in any case (3.3: "compared case-insensitively"), and quoted parameter
values holding "<", ">" or "," (a title), which name no URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

_PARAMETER = re.compile(r'\s*;\s*([^\s=;,"]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"?|[^\s;,"]*))?', re.DOTALL)


class LinkValue(NamedTuple):
    url: str  # the URI-Reference between < and >, as written
    start: int  # where the URL starts in the header (after "<")
    end: int  # where it ends (at ">")
    rel: tuple[str, ...]  # its relation types, lower-case
    stop: int  # where its parameters end


def link_values(header: str) -> list[LinkValue]:
    """Each link-value of a Link header, in order. Text that is no link-value (a stray word, a comma too many) is
    skipped up to the next "<", as a tolerant reader does; a URL with no closing ">" ends the header."""
    found: list[LinkValue] = []
    at = 0
    while (opened := header.find("<", at)) >= 0:
        closed = header.find(">", opened + 1)
        if closed < 0:
            break
        rel: tuple[str, ...] = ()
        at = closed + 1
        while parameter := _PARAMETER.match(header, at):
            name, value = parameter.group(1).lower(), parameter.group(2) or ""
            if name == "rel" and not rel:  # 3.3: "occurrences after the first MUST be ignored by parsers"
                rel = tuple(_unquoted(value).lower().split())
            at = parameter.end()
        found.append(LinkValue(header[opened + 1 : closed], opened + 1, closed, rel, at))
    return found


def next_url(header: str) -> str | None:
    """The URL of the first link-value of relation type "next" (the next page), or None (the last page)."""
    return next((value.url for value in link_values(header) if "next" in value.rel), None)


def rewritten(header: str, replace: Callable[[str], str]) -> str:
    """The header with each link-value's URL passed through replace(url); its parameters, and all else, as written."""
    parts, at = [], 0
    for value in link_values(header):
        parts += [header[at : value.start], replace(value.url)]
        at = value.end
    return "".join([*parts, header[at:]])


def only(header: str, values: list[LinkValue]) -> str:
    """The header with only the given link-values of it (from link_values(header)), each as written with its
    parameters, in one field (RFC 9110, 5.3: fields of a list header joined with ", ")."""
    return ", ".join(header[value.start - 1 : value.stop] for value in values)


def _unquoted(value: str) -> str:
    if not value.startswith('"'):
        return value
    return re.sub(r"\\(.)", r"\1", value[1:].removesuffix('"'), flags=re.DOTALL)
