"""The folder the workers of `ocpi-hub serve --workers N` count metrics in: one serve's own, gone once it stops."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

_MOST_SERVES = 100  # on one data dir and port at once: metrics-PORT, then metrics-PORT-2 and on


@contextlib.contextmanager
def workers_metrics_dir(data_dir: Path, port: int) -> Iterator[Path]:
    """data_dir/metrics-PORT, emptied, held by this serve (a lock on the folder itself) until its workers have stopped,
    then removed. Another serve on the same data dir and port (another --host, a container sharing the volume) finds
    it held and takes metrics-PORT-2, and so on: emptying or removing a folder another serve's workers count in lost
    their counts, and sharing one summed both serves' workers in each one's /metrics. A serve killed (SIGKILL, the
    machine lost) leaves its folder behind, which the next serve on that port empties and takes."""
    for n in range(1, _MOST_SERVES + 1):
        path = data_dir / (f"metrics-{port}" if n == 1 else f"metrics-{port}-{n}")
        if (held := _hold(path)) is not None:
            break
    else:
        raise OSError(f"{_MOST_SERVES} serves on {data_dir} and port {port} hold a metrics folder each")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # still held: a serve starting now waits for none, it takes another
        os.close(held)


def _hold(path: Path) -> int | None:
    """An open descriptor of the folder at path, emptied and locked for this serve; None when another serve holds it."""
    while True:
        path.mkdir(parents=True, exist_ok=True)
        held = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(held)
            return None
        except OSError:  # a file system without locks (some NFS): this serve takes the folder as before there were any
            pass
        try:
            if _is_at(held, path):
                for leftover in path.iterdir():  # a killed serve's workers' counts, which /metrics would add in
                    if leftover.is_dir():
                        shutil.rmtree(leftover)
                    else:
                        leftover.unlink()
                return held
        except BaseException:
            os.close(held)
            raise
        os.close(held)  # locked as the serve that held it removed it on its way out: the folder at path is another


def _is_at(held: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(held), os.stat(path))
    except FileNotFoundError:
        return False
