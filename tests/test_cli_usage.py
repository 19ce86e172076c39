"""The installed `ocpi-hub` console script: its version, and its usage when the command line names no command or an
unknown one (what the operator's side commands do: tests/test_admin_and_cli.py)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import fresh_env

OCPI_HUB = str(Path(sys.executable).parent / "ocpi-hub")  # the console script pip installed beside the interpreter


def _ran(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OCPI_HUB, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [("--version",), ("version",)])
def test_version_prints_the_installed_package_version(args: tuple[str, ...]) -> None:
    result = _ran(*args)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"ocpi-hub {version('ocpi-hub')}\n", "")


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("--frobnicate",)])
def test_no_command_or_an_unknown_one_prints_usage_to_stderr_and_exits_2(args: tuple[str, ...]) -> None:
    result = _ran(*args)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("usage: ocpi-hub ") and "Traceback" not in result.stderr
    assert "ocpi-hub: error: " in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("hold", "list", "--reason", "x"),
        ("hold", "list", "--party", "NL-ABC"),
        ("hold", "release", "1", "--reason", "x"),
        ("hold", "list", "7"),
    ],
)
def test_hold_refuses_an_option_its_action_does_not_take(args: tuple[str, ...]) -> None:
    # ignored, a filter the operator meant to apply would look applied (found by a walkthrough); refused before the
    # command looks for a hub, as any usage error
    result = _ran(*args)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "unrecognized arguments" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("serve", "EXTRA"), "EXTRA"),
        (("demo", "EXTRA"), "EXTRA"),
        (("migrate", "EXTRA"), "EXTRA"),
        (("invite", "--name", "n", "--role", "CPO:NL:ABC", "EXTRA"), "EXTRA"),
        (("connect", "--versions-url", "http://127.0.0.1:9/v", "--token-a", "a", "EXTRA"), "EXTRA"),
        (("parties", "list", "7"), "7"),
        (("parties", "list", "--yes"), "--yes"),
        (("parties", "show", "7", "--yes"), "--yes"),
        (("parties", "show", "7", "EXTRA"), "EXTRA"),
        (("parties", "remove", "7", "--yes", "EXTRA"), "EXTRA"),
        (("sync", "locations", "EXTRA"), "EXTRA"),
        (("auditor", "list", "NAME"), "NAME"),
        (("auditor", "add", "NAME", "EXTRA"), "EXTRA"),
        (("auditor", "remove", "NAME", "EXTRA"), "EXTRA"),
        (("retention", "--keep", "400d", "EXTRA"), "EXTRA"),
        (("hold", "list", "EXTRA"), "EXTRA"),
        (("hold", "release", "1", "EXTRA"), "EXTRA"),
        (("verify", "EXTRA"), "EXTRA"),
        (("heads", "EXTRA"), "EXTRA"),
        (("checkpoint", "EXTRA"), "EXTRA"),
        (("verify-checkpoint", "FILE", "EXTRA"), "EXTRA"),
        (("grant-serving-role", "ROLE", "EXTRA"), "EXTRA"),
        (("verify-export", "FILE", "EXTRA"), "EXTRA"),
        (("version", "EXTRA"), "EXTRA"),
    ],
)
def test_every_command_refuses_an_argument_it_does_not_take(args: tuple[str, ...], extra: str, tmp_path: Path) -> None:
    # `auditor list NAME` listed every auditor, and `parties show 7 --yes` showed one: an argument ignored looks taken.
    # Refused as a usage error before the command looks for a hub (none here: nothing must start or connect).
    env = fresh_env(tmp_path)
    result = subprocess.run([OCPI_HUB, *args], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert f"unrecognized arguments: {extra}" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("sync", "locations", "--party", "NLX"),
        ("sync", "tokens", "--party", "NL-ABCD"),
        ("hold", "set", "--reason", "x", "--party", "NLX", "--since", "2026-01-01", "--until", "2026-02-01"),
    ],
)
def test_a_party_not_written_cc_party_is_a_usage_error_saying_how_to_write_it(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    # A walkthrough: `sync locations --party NLX` said "no connected CPO NLX" and exited 1 as if the hub lacked it;
    # `hold set --party NLX` quoted msgspec's regex and asked for the --reason it had. Refused before any hub is sought.
    env = fresh_env(tmp_path)
    result = subprocess.run([OCPI_HUB, *args], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "argument --party: " in result.stderr and "such as NL-ABC" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "regex" not in result.stderr
