"""`ocpi-hub serve`: the hub handed to its ASGI server (uvicorn or granian), in one process or several workers."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import resource
import signal
import sys
from typing import TYPE_CHECKING, Any

import structlog

from hub.metrics_dir import workers_metrics_dir
from hub.settings import LISTEN_ADDRESS, START_CHECKED

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from types import FrameType

    from hub.data_dir_serves import Serve
    from hub.settings import Settings

    Handler = Callable[[int, FrameType | None], None]

# uvicorn and granian wait for their workers to stop for as long as they take: one that does not (a stop lost, a
# shutdown stuck) would hold serve past the orchestrator's grace period, and be left running once serve is killed.
# The hub's own graceful shutdown takes at most 30 s (deploy/README.md, Graceful shutdown); Compose gives 45 s,
# Kubernetes 60 s.
WORKERS_KILL_AFTER_S = 35


# The SIGTERMs and SIGINTs serve received before its server took them over (hub.cli.stop_asked): a KeyboardInterrupt
# raised where Python ignores exceptions (a finalizer: "Exception ignored in: <function BaseEventLoop.__del__>") is
# lost, and serve would go on to serve; seen here, the server stops as soon as it has started.
STOPS_ASKED: list[int] = []


def _raise_open_files_limit() -> None:
    """Every connection is a file: a soft limit of 1,024 (a common default, Docker's among them) is reached by a few
    hundred parties' kept-alive connections plus the hub's own to them. Raised to the hard limit, for the workers
    too (they inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _on_loopback_only(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: whatever it resolves to, parties may reach it
        return False


def serve(settings: Settings, host: str, port: int, workers: int, server: str, others: list[Serve]) -> int:
    """Serve the hub until it is stopped; the exit code. Workers are separate processes: they read the resolved
    settings from the environment. others: the serves running on its data dir as it was recorded there
    (hub.data_dir_serves)."""
    if not os.environ.get("OCPI_HUB_PUBLIC_URL", "").strip() and not _on_loopback_only(host):
        # Parties would be handed this in every token A's versions URL and registration: reachable from this machine
        # only. Said, not refused: a container behind a proxy on the same host may mean it.
        structlog.get_logger().warning(
            "public_url_not_set",
            public_url=settings.public_url,
            message=f"OCPI_HUB_PUBLIC_URL is not set: parties are told the hub is at {settings.public_url}, which "
            "they cannot reach from elsewhere; set it to the URL they reach the hub at",
        )
    if settings.metrics_token is None and not _on_loopback_only(host):
        # /metrics names every party, its status and its traffic: open on a port parties reach unless a proxy in
        # front keeps it off. Said, not refused: Prometheus inside the cluster may scrape it there on purpose.
        structlog.get_logger().warning(
            "metrics_open",
            message="OCPI_HUB_METRICS_TOKEN is not set: /metrics, which names every party, answers anyone who reaches "
            f"{host}:{port}; set it, or keep /metrics off the port parties reach",
        )
    os.environ.update(
        OCPI_HUB_DATABASE_URL=settings.database_url or "",
        OCPI_HUB_REDIS_URL=settings.redis_url or "",
        OCPI_HUB_PUBLIC_URL=settings.public_url,
        OCPI_HUB_DATA_DIR=str(settings.data_dir),
        **{LISTEN_ADDRESS: f"{host}:{port}", START_CHECKED: "1" if settings.start_checked else ""},
    )
    if not os.environ.get("OCPI_HUB_ADMIN_TOKEN"):
        print(
            f"ocpi-hub: admin token (kept in {settings.data_dir / 'admin-token'}): {settings.admin_token}", flush=True
        )
    if not os.environ.get("OCPI_HUB_SECRET_KEY"):
        # The parties' tokens B and the routing log's keys hang on it: a backup of the database alone is useless.
        print(
            f"ocpi-hub: secret key (kept in {settings.data_dir / 'secret.key'}): back it up with the database, "
            "which cannot be read or verified without it (deploy/README.md, Backups)",
            flush=True,
        )
    _raise_open_files_limit()
    if others:
        _warn_of_sharing(settings.data_dir, others)
    with contextlib.ExitStack() as stack:
        if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Each worker counts in files of its own there; /metrics, whichever worker answers, sums them.
            metrics_dir = stack.enter_context(workers_metrics_dir(settings.data_dir, port))
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        # a JSON line as every other line of serve's, where the workers' hub_started follow
        structlog.get_logger().info("hub_serving", versions_url=settings.versions_url, host=host, port=port,
                                    workers=workers, server=server)  # fmt: skip
        if STOPS_ASKED:  # its KeyboardInterrupt lost: stopped before serving began, as it would have been
            return 0
        if server == "uvicorn":
            return _on_uvicorn(settings, host, port, workers)
        return _on_granian(settings, host, port, workers)


def _warn_of_sharing(data_dir: Path, others: list[Serve]) -> None:
    """Said, not refused: two hub processes on one data dir may be meant (behind a local load balancer, say)."""
    running = ", ".join(f"pid {other.pid} at {other.url}" for other in others)
    structlog.get_logger().warning(
        "data_dir_shared",
        serves=[{"pid": other.pid, "url": other.url} for other in others],
        message=f"another `ocpi-hub serve` runs on {data_dir} ({running}): this one shares with it the embedded "
        "PostgreSQL and Valkey there (those whose URL is not set), which stop with the last serve there to stop, and "
        "the admin-token and secret.key there (unless set); the commands beside them use the URL, and the settings "
        "they do not set, of the one started last that still runs",
    )


def _on_uvicorn(settings: Settings, host: str, port: int, workers: int) -> int:
    import uvicorn
    from uvicorn.server import STARTUP_FAILURE

    from hub.supervisor import Supervisor

    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again; with these handlers in place
    # that second signal stops nothing more, so the embedded servers are stopped and the exit code is 0. One that
    # comes before uvicorn takes the signals over (its server or supervisor made, its loop started) is kept, and the
    # server stops as soon as it has started: it was swallowed, and serve went on serving (a SIGTERM right at start).
    asked = STOPS_ASKED
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda signum, _: asked.append(signum))
    # No proxy-header middleware: nothing reads the client's address or scheme (public_url says where we are).
    # timeout_keep_alive: uvicorn closes an idle connection after 5 s by default, while a party's pooled client
    # or a proxy may send on it at that very moment: a POST or PATCH then fails with a reset, and clients do
    # not resend those. http: httptools, answering what does not parse as HTTP with an OCPI envelope instead of
    # uvicorn's plain text. log_config=None: uvicorn's own lines (a warning about such bytes) are JSON lines too.
    config = uvicorn.Config(
        "hub.app:create_app", factory=True, host=host, port=port, workers=workers, lifespan="on",
        access_log=False, log_config=None, log_level="warning", loop="uvloop",
        http="hub.http_protocol:OcpiHttpToolsProtocol", timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=30, proxy_headers=False,
    )  # fmt: skip
    if workers == 1:
        worker = uvicorn.Server(config)
        for handled in (signal.SIGTERM, signal.SIGINT):  # until its loop takes them over
            signal.signal(handled, lambda *_: setattr(worker, "should_exit", True))
        worker.should_exit = worker.should_exit or bool(asked)  # then it stops as soon as it has started
        worker.run()
        return 0 if worker.started else STARTUP_FAILURE  # as uvicorn.run
    # uvicorn.run's own path for several workers
    supervisor = Supervisor(config, sockets=[config.bind_socket()], kill_after_s=WORKERS_KILL_AFTER_S)
    supervisor.signal_queue.extend(asked)  # its handlers are in place from its making on: handled as it runs
    supervisor.run()
    if supervisor.stopped_by_a_failed_start:  # exit 0 would be taken for a shutdown asked for
        print("ocpi-hub: stopped, since a worker could not start (see the lines above)", file=sys.stderr, flush=True)
        return 1
    return 0


def _on_granian(settings: Settings, host: str, port: int, workers: int) -> int:
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    server = Granian(
        "hub.app:create_app",
        factory=True,
        address=host,
        port=port,
        workers=workers,
        interface=Interfaces.ASGI,
        log_access=False,
        # granian's own lines go to the hub's handler (JSON lines) instead of its "[INFO] ..." text
        log_dictconfig={"version": 1, "loggers": {"_granian": {"handlers": [], "propagate": True}}},
        # granian's time to read a request's headers is also how long an idle keep-alive connection stays open
        http1_settings=HTTP1Settings(header_read_timeout=settings.keep_alive_s * 1000),
        workers_kill_timeout=WORKERS_KILL_AFTER_S,
    )
    server.on_startup(_workers_stop_at_once_until_they_handle_signals)
    server.serve()
    return 0


def _workers_stop_at_once_until_they_handle_signals() -> None:
    """granian forks its workers with its own SIGTERM and SIGINT handler in place, which only sets a flag (the
    worker's copy of the parent's): a worker told to stop while it still imported and built the app, before it put
    its own handlers in place, went on to start and serve, and granian waited for it for ever (a SIGTERM right after
    a start, as in a rollout). Run once granian's handlers are in place, before it forks: in a worker, they now stop
    it at once, as a process that has not started yet stops."""
    parent, stops = os.getpid(), {signal.SIGTERM, signal.SIGINT}
    for handled in stops:
        signal.signal(handled, _stopping_workers_at_once(parent, signal.getsignal(handled)))
    # One the kernel hands a new worker before Python is done forking it is dropped there (CPython clears the signals
    # pending in a forked child): blocked around the fork, it waits, and comes once the worker runs Python again.
    os.register_at_fork(
        before=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, stops),
        after_in_parent=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, stops),
        after_in_child=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, stops),
    )


def _stopping_workers_at_once(parent: int, granians: Callable[[int, FrameType | None], Any] | int | None) -> Handler:
    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != parent:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        elif callable(granians):
            granians(signum, frame)

    return handler
