"""A command whose output cannot be written (stdout on a full disk, a pipe its reader closed) says so on stderr and
exits 3, not 1 as if the log did not verify or the database failed, and with no traceback (found by an auditor's
walkthrough: `ocpi-hub verify > /dev/full` said "cannot use the database ... [Errno 28]")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Hub

FULL = Path("/dev/full")


def _ocpi_hub(hub: Hub, *args: str, stdout: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hub.cli", *args], env=hub.env, cwd=ROOT, stdout=stdout,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [("verify",), ("heads",), ("auditor", "list"), ("version",)])
def test_output_to_a_full_disk_is_reported_as_such_with_exit_code_3(hub: Hub, args: tuple[str, ...]) -> None:
    with FULL.open("w") as full:
        process = _ocpi_hub(hub, *args, stdout=full)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    assert stderr.strip().splitlines()[-1] == "ocpi-hub: cannot write the output to stdout: No space left on device"
    assert "database" not in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr


@pytest.mark.parametrize("args", [("verify",), ("heads",)])
def test_output_to_a_pipe_its_reader_closed_is_reported_as_such_with_exit_code_3(
    hub: Hub, args: tuple[str, ...]
) -> None:
    process = _ocpi_hub(hub, *args, stdout=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.close()  # `| head -3` gone before the command wrote
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    assert stderr.strip().splitlines()[-1] == (
        "ocpi-hub: cannot write the output to stdout: its reader closed the pipe (broken pipe)"
    )
    assert "database" not in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr
