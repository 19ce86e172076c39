"""OCPI 2.2.1 wire types the hub itself reads or writes (versions, credentials, the response envelope)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import httpx
import msgspec

Role = Literal["CPO", "EMSP", "HUB", "NAP", "NSP", "OTHER", "SCSP"]
ROLES: tuple[str, ...] = get_args(Role)
InterfaceRole = Literal["SENDER", "RECEIVER"]
INTERFACE_ROLES = frozenset(get_args(InterfaceRole))
# credentials.asciidoc CredentialsRole: country_code CiString(2), ISO-3166 alpha-2; party_id CiString(3). Checked by
# usable_party in __post_init__, said in words (as a pattern, msgspec said the regex; and its $ let "NL\n" through)
_COUNTRY_CODE = re.compile(r"[A-Za-z]{2}")
_PARTY_ID = re.compile(r"[A-Za-z0-9]{3}")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
# credentials.asciidoc: token is string(64), printable non-whitespace ASCII (U+0021..U+007E)
CredentialsToken = Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,64}\Z")]
Url = Annotated[str, msgspec.Meta(max_length=255)]  # checked by usable_url, in each struct's __post_init__
# No whitespace or control characters: a URL carries them percent-encoded (and PostgreSQL text holds no NUL)
_HTTP_URL = re.compile(r"https?://[^\x00-\x20\x7f]+")


def usable_party(country_code: str, party_id: str) -> None:
    if not _COUNTRY_CODE.fullmatch(country_code):
        raise ValueError(f"country_code must be 2 letters, got {country_code[:20]!r}")
    if not _PARTY_ID.fullmatch(party_id):
        raise ValueError(f"party_id must be 3 letters or digits, got {party_id[:20]!r}")


def plain_text(name: str, text: str) -> None:
    """NO_CONTROL_CHARACTERS, said in words."""
    if _CONTROL_CHARACTER.search(text):
        raise ValueError(f"{name} must hold no control characters, got {text[:100]!r}")


def usable_url(name: str, url: str) -> None:
    """An http or https URL with no whitespace or control character (said as such: as a Url pattern it was said as
    the regex), a host, a port that is a number, and a host name that IDNA can read ("http://[::1", "http://h:x/" or
    "http://xn--/" would reach the HTTP clients and fail there, outside their error handling)."""
    if not _HTTP_URL.fullmatch(url):
        raise ValueError(f"{name} is not an http or https URL free of spaces and control characters, got {url[:200]!r}")
    try:
        parts = urlsplit(url)
        if not parts.hostname or parts.port == 0:  # .port raises ValueError for one that is not 0 to 65535
            raise ValueError("no host" if not parts.hostname else "port 0")
        if parts.username is not None or parts.password is not None:  # aiohttp refuses them beside Authorization
            raise ValueError("a user name or password in it")
        httpx.URL(url).host  # noqa: B018 - decoding the host is the check: idna's error is a UnicodeError
    except (ValueError, httpx.InvalidURL) as exc:
        raise ValueError(f"{name} is not a URL the hub can call, got {url!r}: {exc}") from None


# Text a party sends that the hub stores and shows (its name, its logo's fields): no control characters. \Z, not $,
# which msgspec's re.search lets match before a final newline ("ABC\n")
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*\Z"
Text = Annotated[str, msgspec.Meta(pattern=NO_CONTROL_CHARACTERS)]


class Image(msgspec.Struct, omit_defaults=True):
    url: Text
    category: Text
    type: Text
    thumbnail: Text | None = None
    width: int | None = None
    height: int | None = None


class BusinessDetails(msgspec.Struct, omit_defaults=True):
    name: Annotated[str, msgspec.Meta(max_length=100, pattern=NO_CONTROL_CHARACTERS)]
    website: Text | None = None
    logo: Image | None = None


class CredentialsRole(msgspec.Struct, omit_defaults=True):
    role: Role
    business_details: BusinessDetails
    party_id: str
    country_code: str

    def __post_init__(self) -> None:
        usable_party(self.country_code, self.party_id)


class Credentials(msgspec.Struct, omit_defaults=True):
    token: CredentialsToken
    url: Url
    roles: Annotated[list[CredentialsRole], msgspec.Meta(min_length=1)]

    def __post_init__(self) -> None:
        usable_url("url", self.url)


class Version(msgspec.Struct):
    version: Text
    url: Url

    def __post_init__(self) -> None:
        usable_url("a version's url", self.url)


class Endpoint(msgspec.Struct):
    # A ModuleID, or a custom one ("nltnm-tokens"): a key of the stored endpoints, so bounded (as the routing log cuts
    # a module to 255 characters); a longer one no index row takes
    identifier: Annotated[str, msgspec.Meta(max_length=255, pattern=NO_CONTROL_CHARACTERS)]
    # An InterfaceRole; as a party sent it, any text ("CPO" from before 2.2): hub.party_api.discover sorts it out
    role: Text
    url: Url

    def __post_init__(self) -> None:
        usable_url(f"the {self.identifier} endpoint's url", self.url)


class VersionDetails(msgspec.Struct):
    version: str
    endpoints: list[Endpoint]


class Envelope(msgspec.Struct):
    """transport_and_format.asciidoc, Response format: every answer is wrapped in this."""

    status_code: int
    timestamp: str
    data: Any = None
    status_message: str | None = None


class VersionsAnswer(msgspec.Struct):
    status_code: int
    data: list[Version]


class DetailsAnswer(msgspec.Struct):
    status_code: int
    data: VersionDetails


class CredentialsAnswer(msgspec.Struct):
    status_code: int
    data: Credentials | None = None
    status_message: str | None = None
