"""`serve --workers N` counts its workers' metrics in a folder of the data dir: its own while it runs, gone once it
stops."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import OUTPUT, Hub, Services, hub_env, start_hub, unique_party_id
from tests.parties import token_header


def _metrics_folders(data_dir: Path) -> list[str]:
    return sorted(path.name for path in data_dir.iterdir() if path.name.startswith("metrics-"))


def _counted(hub: Hub) -> float:
    """The requests the hub's workers counted, summed over them as its /metrics sums them."""
    lines = httpx.get(f"{hub.base}/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("ocpi_hub_requests_total{"))


def _workers_started(hub: Hub) -> Hub:
    deadline = time.monotonic() + 30
    while hub.log().count('"hub_started"') < 2:  # a worker still starting when the test stops it is another matter
        assert time.monotonic() < deadline, hub.log()
        time.sleep(0.1)
    return hub


def _requests(hub: Hub, token: str, count: int) -> None:
    for _ in range(count):  # a token A on a functional module: refused, and counted as rejected
        httpx.get(f"{hub.base}/ocpi/2.2.1/sender/locations", headers=token_header(token))


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_a_serve_with_two_workers_stopped_by_sigterm_leaves_no_metrics_folder(
    services: Services, tmp_path: Path, server: str
) -> None:
    hub = _workers_started(start_hub(hub_env(services, tmp_path), OUTPUT / f"hub-metrics-folder-{server}.log",
                                     "--workers", "2", "--server", server))  # fmt: skip
    try:
        assert _metrics_folders(tmp_path) == [f"metrics-{hub.base.rsplit(':', 1)[1]}"]
        hub.process.send_signal(signal.SIGTERM)
        assert hub.process.wait(40) == 0
    finally:
        hub.stop()
    assert _metrics_folders(tmp_path) == []


def test_two_serves_on_one_port_and_data_dir_count_apart_and_leave_each_other_their_folder(
    services: Services, tmp_path: Path
) -> None:
    # Another --host on the same port (or a container sharing the volume) shares the data dir's metrics-PORT: the
    # second serve's start emptied the first one's counts, and its stop would remove the folder the first counts in.
    env = hub_env(services, tmp_path)
    first = _workers_started(start_hub(env, OUTPUT / "hub-metrics-folder-first.log", "--workers", "2"))
    port = int(first.base.rsplit(":", 1)[1])
    try:
        token_a = first.invite("Metrics Co", ("CPO", "NL", unique_party_id()))["token_a"]
        time.sleep(1.1)  # both workers know the token
        _requests(first, token_a, 10)
        assert _counted(first) == 10
        second = start_hub(env, OUTPUT / "hub-metrics-folder-second.log", "--workers", "2", host="127.0.0.2", port=port)
        try:
            _workers_started(second)
            _requests(second, token_a, 3)
            assert (_counted(first), _counted(second)) == (10, 3)
            assert _metrics_folders(tmp_path) == [f"metrics-{port}", f"metrics-{port}-2"]
        finally:
            assert second.stop() == 0
        assert _metrics_folders(tmp_path) == [f"metrics-{port}"]
        _requests(first, token_a, 1)
        assert _counted(first) == 11
    finally:
        assert first.stop() == 0
    assert _metrics_folders(tmp_path) == []


def test_a_worker_that_died_and_was_started_again_no_longer_counts_in_the_gauges(
    services: Services, tmp_path: Path
) -> None:
    # /metrics sums each worker's last count of routing-log rows waiting (a live gauge): a worker killed (the kernel's
    # OOM killer) left its file, with whatever rows it had waiting, summed in for as long as serve ran.
    hub = _workers_started(start_hub(hub_env(services, tmp_path), OUTPUT / "hub-worker-died.log", "--workers", "2"))
    try:
        folder = tmp_path / f"metrics-{hub.base.rsplit(':', 1)[1]}"
        workers = [json.loads(line)["pid"] for line in hub.log().splitlines() if '"hub_started"' in line]
        assert sorted(path.name for path in folder.glob("gauge_livesum_*")) == sorted(
            f"gauge_livesum_{pid}.db" for pid in workers
        )
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while hub.log().count('"hub_started"') < 3:  # uvicorn starts another in its place
            assert time.monotonic() < deadline, hub.log()
            time.sleep(0.1)
        restarted = json.loads([line for line in hub.log().splitlines() if '"hub_started"' in line][-1])["pid"]
        assert sorted(path.name for path in folder.glob("gauge_livesum_*")) == sorted(
            f"gauge_livesum_{pid}.db" for pid in (workers[1], restarted)
        )
        assert httpx.get(f"{hub.base}/metrics").text.count("\nocpi_hub_routing_log_rows_waiting ") == 1
    finally:
        assert hub.stop() == 0
