"""The hub's settings, read once from OCPI_HUB_* environment variables."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from hub.settings_variables import VARIABLES
from routing.party_addresses import Network, networks
from storage.secrets import (
    TokenBox,
    audit_trail_key,
    export_signing_key,
    hub_instance,
    new_token,
    read_or_create,
    routing_log_key,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# Not an operator's setting: `ocpi-hub serve` passes its --host and --port to its workers in it, so that they refuse
# a party URL at the hub's own listening address (routing.party_addresses.for_hub).
LISTEN_ADDRESS = "OCPI_HUB_LISTEN_ADDRESS"
# Nor this one: `ocpi-hub serve` tells its workers in it that it checked the secret key and Redis before it started them
# (Settings.start_checked), so that their lifespan does not check them again.
START_CHECKED = "OCPI_HUB_START_CHECKED"


_DEFAULTS = {name: default for name, default, _ in VARIABLES}


class SettingsError(ValueError):
    """A setting has a value the hub cannot run with; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None
    owner_database_url: str | None
    redis_url: str | None
    data_dir: Path
    public_url: str
    country_code: str
    party_id: str
    name: str
    admin_token: str | None
    secret_key: str | None
    metrics_token: str | None
    forward_timeout_s: float
    party_keep_alive_s: float
    party_connections: int
    max_body_bytes: int
    keep_alive_s: int
    log_mode: str
    sync_interval_s: float
    sync_check_s: float
    pull_page_limit: int
    max_locations_per_cpo: int
    max_location_bytes_per_cpo: int
    kept_url_bytes_per_day: int
    still_alive_s: float
    offline_probe_s: float
    owner_index_period_s: float
    log_body_max_bytes: int
    log_partitions_ahead: int
    redis_prefix: str
    log_level: str
    party_networks_allowed: tuple[Network, ...] = ()
    checkpoint_log_s: float = 3600.0  # 0: no checkpoints in the hub's log
    invitation_ttl_s: float = 14 * 86400.0  # 0: an invitation's token A never expires
    # host and port `ocpi-hub serve` (or demo) listens on; None for the commands beside it
    listen: tuple[str, int] | None = None
    # OCPI_HUB_PUBLIC_URL was given, or a command beside serve read it from serve's data dir: public_url is not a guess
    public_url_known: bool = False
    # the command that starts the hub (serve, demo) checked the schema, the secret key and Redis's eviction policy
    # (hub.runtime.check_at_start): the app's lifespan does not, as it does for a hub an ASGI server runs on create_app
    start_checked: bool = False
    # where secret_key came from, for a refusal of it to name (with_secrets: the data dir's file, when it filled it in)
    secret_key_source: str = "OCPI_HUB_SECRET_KEY"

    @property
    def versions_url(self) -> str:
        return f"{self.public_url}/ocpi/versions"

    @property
    def details_url(self) -> str:
        return f"{self.public_url}/ocpi/2.2.1"

    @property
    def routing_log_key(self) -> bytes:
        """The routing log's chain key (storage.secrets.routing_log_key); after with_secrets."""
        if self.secret_key is None:
            raise SettingsError("no secret key: Settings.with_secrets() was not called")
        return routing_log_key(self.secret_key)

    @property
    def audit_trail_key(self) -> bytes:
        """The audit trail's chain key (storage.secrets.audit_trail_key); after with_secrets."""
        return audit_trail_key(self.routing_log_key)

    @property
    def export_signing_key(self) -> Ed25519PrivateKey:
        """The key that signs export manifests (storage.secrets.export_signing_key); after with_secrets."""
        if self.secret_key is None:
            raise SettingsError("no secret key: Settings.with_secrets() was not called")
        return export_signing_key(self.secret_key)

    @property
    def hub_instance(self) -> str:
        """The hub's mark on the requests it sends and on its own answers (storage.secrets.hub_instance)."""
        return hub_instance(self.secret_key or "", self.public_url)

    def with_secrets(self) -> Settings:
        """Fill in the admin token and secret key from the data dir, generating them on first start."""
        admin_token = self.admin_token or read_or_create(self.data_dir / "admin-token", new_token)
        secret_key = self.secret_key or read_or_create(self.data_dir / "secret.key", TokenBox.generate_key)
        try:
            TokenBox(secret_key)  # a malformed OCPI_HUB_SECRET_KEY fails here, at start, with a clear message
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        source = self.secret_key_source
        if self.secret_key is None:
            source = f"{self.data_dir / 'secret.key'}, OCPI_HUB_SECRET_KEY being unset"
        return replace(self, admin_token=admin_token, secret_key=secret_key, secret_key_source=source)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, *, host: str = "127.0.0.1", port: int = 8080) -> Settings:
        env = dict(os.environ if env is None else env)

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def number(name: str, kind: type[int] | type[float]) -> float:
            """A positive number, its default the one VARIABLES documents."""
            return _number(name, get(name) or _DEFAULTS[name], kind)

        default_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        public_url = (get("OCPI_HUB_PUBLIC_URL") or f"http://{default_host}:{port}").rstrip("/")
        _check_url("OCPI_HUB_PUBLIC_URL", public_url, ("http", "https"))
        for name, schemes in (
            ("OCPI_HUB_DATABASE_URL", ("postgresql", "postgres")),
            ("OCPI_HUB_REDIS_URL", ("redis", "rediss", "unix", "valkey")),
        ):
            if (value := get(name)) is not None:
                _check_url(name, value, schemes)
        _check_owner_url(get("OCPI_HUB_OWNER_DATABASE_URL"), get("OCPI_HUB_DATABASE_URL"))
        country_code = (get("OCPI_HUB_COUNTRY_CODE") or "NL").upper()
        if not re.fullmatch(r"[A-Z]{2}", country_code):
            raise SettingsError(f"OCPI_HUB_COUNTRY_CODE must be two letters (ISO 3166 alpha-2), got {country_code!r}")
        party_id = (get("OCPI_HUB_PARTY_ID") or "HUB").upper()
        if not re.fullmatch(r"[A-Z0-9]{3}", party_id):
            raise SettingsError(f"OCPI_HUB_PARTY_ID must be three letters or digits, got {party_id!r}")
        log_mode = (get("OCPI_HUB_LOG_MODE") or "strict").lower()
        if log_mode not in ("strict", "async"):
            raise SettingsError(f"OCPI_HUB_LOG_MODE must be strict or async, got {log_mode!r}")
        redis_prefix = get("OCPI_HUB_REDIS_PREFIX") or "ocpi-hub:"
        if re.search(r"[*?\[\]\\]", redis_prefix):  # the hub finds keys under it by pattern (SCAN MATCH, SORT GET)
            raise SettingsError(f"OCPI_HUB_REDIS_PREFIX must not contain * ? [ ] or \\, got {redis_prefix!r}")
        if (admin_token := get("OCPI_HUB_ADMIN_TOKEN")) is not None:
            _check_admin_token(admin_token)
        partitions_ahead = _partitions_ahead(int(number("OCPI_HUB_LOG_PARTITIONS_AHEAD", int)))
        log_level = (get("OCPI_HUB_LOG_LEVEL") or "info").lower()
        if log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"OCPI_HUB_LOG_LEVEL must be debug, info, warning or error, got {log_level!r}")
        try:
            party_networks_allowed = networks(get("OCPI_HUB_PARTY_NETWORKS_ALLOWED") or "")
        except ValueError as exc:
            raise SettingsError(f"OCPI_HUB_PARTY_NETWORKS_ALLOWED: {exc}") from None
        return cls(
            database_url=get("OCPI_HUB_DATABASE_URL"),
            owner_database_url=get("OCPI_HUB_OWNER_DATABASE_URL"),
            redis_url=get("OCPI_HUB_REDIS_URL"),
            data_dir=Path(get("OCPI_HUB_DATA_DIR") or ".ocpi-hub").absolute(),
            public_url=public_url,
            public_url_known=bool(get("OCPI_HUB_PUBLIC_URL")),
            country_code=country_code,
            party_id=party_id,
            name=get("OCPI_HUB_NAME") or "ocpi-hub",
            admin_token=admin_token,
            secret_key=get("OCPI_HUB_SECRET_KEY"),
            metrics_token=get("OCPI_HUB_METRICS_TOKEN"),
            forward_timeout_s=number("OCPI_HUB_FORWARD_TIMEOUT_S", float),
            party_keep_alive_s=number("OCPI_HUB_PARTY_KEEP_ALIVE_S", float),
            party_connections=int(number("OCPI_HUB_PARTY_CONNECTIONS", int)),
            max_body_bytes=int(number("OCPI_HUB_MAX_BODY_BYTES", int)),
            keep_alive_s=int(number("OCPI_HUB_KEEP_ALIVE_S", int)),
            log_mode=log_mode,
            sync_interval_s=number("OCPI_HUB_SYNC_INTERVAL_S", float),
            sync_check_s=number("OCPI_HUB_SYNC_CHECK_S", float),
            pull_page_limit=int(number("OCPI_HUB_PULL_PAGE_LIMIT", int)),
            max_locations_per_cpo=int(number("OCPI_HUB_MAX_LOCATIONS_PER_CPO", int)),
            max_location_bytes_per_cpo=int(number("OCPI_HUB_MAX_LOCATION_BYTES_PER_CPO", int)),
            kept_url_bytes_per_day=int(number("OCPI_HUB_KEPT_URL_BYTES_PER_DAY", int)),
            still_alive_s=number("OCPI_HUB_STILL_ALIVE_S", float),
            offline_probe_s=number("OCPI_HUB_OFFLINE_PROBE_S", float),
            owner_index_period_s=number("OCPI_HUB_OWNER_INDEX_PERIOD_S", float),
            log_body_max_bytes=int(number("OCPI_HUB_LOG_BODY_MAX_BYTES", int)),
            log_partitions_ahead=partitions_ahead,
            redis_prefix=redis_prefix,
            log_level=log_level,
            party_networks_allowed=party_networks_allowed,
            # each checkpoint is an audit-trail entry, taken under the trail's head lock: below a second they would
            # queue on it faster than it is taken
            checkpoint_log_s=_number_or_zero("OCPI_HUB_CHECKPOINT_LOG_S", get("OCPI_HUB_CHECKPOINT_LOG_S"), least=1),
            invitation_ttl_s=_number_or_zero("OCPI_HUB_INVITATION_TTL_S", get("OCPI_HUB_INVITATION_TTL_S")),
            listen=_listen_address(get(LISTEN_ADDRESS)),
            start_checked=get(START_CHECKED) == "1",
        )


def _listen_address(raw: str | None) -> tuple[str, int] | None:
    host, _, port = (raw or "").rpartition(":")
    if not raw:
        return None
    if not host or not port.isdigit():
        raise SettingsError(f"{LISTEN_ADDRESS} must be HOST:PORT (set by `ocpi-hub serve`), got {raw!r}")
    return host, int(port)


# The admin token opens every platform's removal and the whole routing log: one a person would type, or one of deploy/'s
# placeholders left in place, is refused at start (a generated one has 43 characters).
MIN_ADMIN_TOKEN_LENGTH = 32
PLACEHOLDER = "change-me"  # deploy/kubernetes/secret.yaml and deploy/.env.example: CHANGE-ME, CHANGE-ME-to-...


def _check_admin_token(token: str) -> None:
    if PLACEHOLDER in token.lower():
        raise SettingsError("OCPI_HUB_ADMIN_TOKEN is still deploy/'s placeholder (CHANGE-ME): set a random one, e.g. "
                            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")  # fmt: skip
    if len(token) < MIN_ADMIN_TOKEN_LENGTH:
        raise SettingsError(f"OCPI_HUB_ADMIN_TOKEN has {len(token)} characters; it must have at least "
                            f"{MIN_ADMIN_TOKEN_LENGTH} (a random one: python3 -c 'import secrets; "
                            "print(secrets.token_urlsafe(32))')")  # fmt: skip


def _check_url(name: str, value: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise SettingsError(
            f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}, got {value!r}"
        )


def _partitions_ahead(months: int) -> int:
    if months > 120:  # the most migration 0022's routing_log_ensure_partitions creates
        raise SettingsError(f"OCPI_HUB_LOG_PARTITIONS_AHEAD must be at most 120 (months), got {months}")
    return months


def _check_owner_url(owner_url: str | None, database_url: str | None) -> None:
    if owner_url is None:
        return
    _check_url("OCPI_HUB_OWNER_DATABASE_URL", owner_url, ("postgresql", "postgres"))
    if database_url is None:
        raise SettingsError("OCPI_HUB_OWNER_DATABASE_URL is set without OCPI_HUB_DATABASE_URL, the serving role's URL")


def _number(name: str, raw: str, kind: type[int] | type[float]) -> float:
    wanted = "a positive whole number" if kind is int else "a positive number"
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {wanted}, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be {wanted}, got {raw!r}")
    return value


def _number_or_zero(name: str, raw: str | None, least: float = 0.0) -> float:
    """A number of seconds: positive (least or more), or 0 for never."""
    raw = raw or _DEFAULTS[name]
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or 0 < value < least:
        what = f"{least:g} second or more" if least else "a positive number of seconds"
        raise SettingsError(f"{name} must be {what}, or 0 for none, got {raw!r}")
    return value
