"""`ocpi-hub serve` names a Redis that evicts keys at its maxmemory, which can drop cached locations and keep the marks
saying a CPO's cache is whole; a Redis that does not let it read its configuration is said, never a failed start."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from structlog.testing import capture_logs

from hub.runtime import open_redis, warn_of_eviction
from storage.embedded import EmbeddedValkey
from tests.conftest import OUTPUT, ROOT, UVICORN_FACTORY, Services, hub_env, start_hub


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Valkey of these tests' own, whose configuration they change (the session's is shared by every test)."""
    valkey = EmbeddedValkey(tmp_path_factory.mktemp("evicting-valkey"))
    url = valkey.start()
    try:
        yield url
    finally:
        valkey.stop()


def _configure(url: str, maxmemory: str, policy: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.config_set("maxmemory", maxmemory)
        client.config_set("maxmemory-policy", policy)


def _lines(log: str, event: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if f'"{event}"' in line]


def test_serve_warns_of_a_redis_that_evicts_keys_at_its_maxmemory(
    services: Services, own_redis: str, tmp_path: Path
) -> None:
    _configure(own_redis, "100mb", "allkeys-lru")
    hub = start_hub(hub_env(services, tmp_path, OCPI_HUB_REDIS_URL=own_redis), OUTPUT / "hub-evicting-redis.log")
    try:
        [warning] = _lines(hub.log(), "redis_eviction_policy")
        assert (warning["level"], warning["policy"], warning["maxmemory"]) == ("warning", "allkeys-lru", 100 << 20)
        assert "cached locations" in warning["message"] and "noeviction" in warning["message"]
    finally:
        assert hub.stop() == 0


def test_the_app_an_asgi_server_runs_itself_warns_of_a_redis_that_evicts_keys_once(
    services: Services, own_redis: str, tmp_path: Path
) -> None:
    # uvicorn --factory hub.app:create_app, without the CLI: no warning at all (serve's, above, is said once too: by
    # serve, not again by its worker)
    _configure(own_redis, "100mb", "volatile-lru")
    env = hub_env(services, tmp_path, OCPI_HUB_REDIS_URL=own_redis)
    subprocess.run([sys.executable, "-m", "hub.cli", "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    hub = start_hub(env, OUTPUT / "hub-evicting-redis-uvicorn.log", command=UVICORN_FACTORY)
    try:
        [warning] = _lines(hub.log(), "redis_eviction_policy")
        assert (warning["level"], warning["policy"], warning["maxmemory"]) == ("warning", "volatile-lru", 100 << 20)
    finally:
        hub.stop()


def test_serve_starts_and_says_so_when_redis_refuses_to_show_its_configuration(
    services: Services, own_redis: str, tmp_path: Path
) -> None:
    # managed Redis disables or renames CONFIG, or its ACL leaves it out: as here
    _configure(own_redis, "100mb", "allkeys-lru")
    with redis.Redis.from_url(own_redis) as client:
        client.acl_setuser("hub", enabled=True, passwords=["+not-config"], keys="*", channels="*",
                           commands=["+@all", "-config"])  # fmt: skip
    parts = urlsplit(own_redis)
    without_config = urlunsplit(parts._replace(netloc=f"hub:not-config@{parts.netloc}"))
    hub = start_hub(hub_env(services, tmp_path, OCPI_HUB_REDIS_URL=without_config), OUTPUT / "hub-no-config.log")
    try:
        [unknown] = _lines(hub.log(), "redis_eviction_policy_unknown")
        assert unknown["level"] == "info" and "noeviction" in unknown["message"]
        assert not _lines(hub.log(), "redis_eviction_policy")
    finally:
        assert hub.stop() == 0


@pytest.mark.parametrize(
    ("maxmemory", "policy", "warned"),
    [
        ("100mb", "volatile-lru", True),
        ("100mb", "allkeys-random", True),
        ("100mb", "noeviction", False),  # writes fail at maxmemory: said by the requests that need them
        ("0", "allkeys-lru", False),  # no maxmemory, nothing evicted
    ],
)
def test_only_an_evicting_policy_with_a_maxmemory_is_warned_of(
    own_redis: str, maxmemory: str, policy: str, warned: bool
) -> None:
    _configure(own_redis, maxmemory, policy)

    async def check() -> None:
        client = open_redis(own_redis)
        try:
            await warn_of_eviction(client)
        finally:
            await client.aclose()

    with capture_logs() as logs:
        asyncio.run(check())
    assert [(e["event"], e["policy"]) for e in logs] == ([("redis_eviction_policy", policy)] if warned else [])
