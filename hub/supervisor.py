"""uvicorn's supervisor of several workers (`serve --workers N`), stopping as a load balancer needs it to."""

from __future__ import annotations

import os
import time
from socket import socket

import structlog
from prometheus_client.multiprocess import mark_process_dead
from uvicorn import Config
from uvicorn.server import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

log = structlog.get_logger()


class Supervisor(Multiprocess):
    """Also closes its own copy of the listening socket when told to stop. It held it open while the workers finished
    their requests (up to 30 s): a new connection was taken into the socket's backlog and never answered, where it
    should be refused at once, for a client or a load balancer to try another instance."""

    asked_to_stop = False  # by SIGTERM or SIGINT

    def __init__(self, config: Config, sockets: list[socket], kill_after_s: float) -> None:
        super().__init__(config, sockets)
        self.kill_after_s = kill_after_s

    def join_all(self) -> None:
        """Waits for the workers to stop, as uvicorn does, but kills one still running kill_after_s after they were
        told: uvicorn waited for ever, holding serve past the orchestrator's grace period."""
        deadline = time.monotonic() + self.kill_after_s
        for process in self.processes:
            process.process.join(max(deadline - time.monotonic(), 0))
            if process.process.exitcode is None:
                log.warning(
                    "worker_killed", pid=process.pid, reason=f"still running {self.kill_after_s:g} s after the stop"
                )
                process.process.kill()
                process.process.join()

    def keep_subprocess_alive(self) -> None:
        """As uvicorn's, and a worker that died and was started again no longer counts in the gauges /metrics sums (its
        last count of routing-log rows waiting stayed in, for as long as serve ran)."""
        running = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        if metrics_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            for gone in running - {process.pid for process in self.processes}:
                mark_process_dead(gone, metrics_dir)

    def handle_term(self) -> None:
        self._asked("SIGTERM")
        super().handle_term()
        self._stop_listening()

    def handle_int(self) -> None:
        self._asked("SIGINT")
        super().handle_int()
        self._stop_listening()

    def _asked(self, signal: str) -> None:
        # said at once: the workers' own hub_stopping comes once their requests are answered, up to 30 s later (an
        # operator watching a stop, with PostgreSQL stalled, saw nothing for 28 s)
        if not self.asked_to_stop:
            log.info("hub_stop_asked", signal=signal, pid=os.getpid(), workers=len(self.processes))
        self.asked_to_stop = True

    def _stop_listening(self) -> None:
        for sock in self.sockets:
            sock.close()  # the workers close theirs as their shutdown begins

    @property
    def stopped_by_a_failed_start(self) -> bool:
        """Whether it stopped since a worker it started again, after that one died, failed to start (as while
        PostgreSQL is away): uvicorn then stops every worker and returns as from a shutdown asked for. Not when it was
        asked to stop: a worker still starting then exits as one that failed to start."""
        return not self.asked_to_stop and any(process.exitcode == STARTUP_FAILURE for process in self.processes)
