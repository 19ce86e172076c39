"""The hub with a bytecode counter switched on by SIGUSR1 and off by SIGUSR2, for `python -m bench.bytecodes`. Never
for serving: tracing makes it about 30 times slower.

    OCPI_HUB_BENCH_COUNTS=counts.json python -m bench.tracing_hub serve --port 8080 --workers 1

SIGUSR2 writes [file, first line, function, bytecodes] per function, most first, to the file the variable names.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
from types import FrameType
from typing import Any

COUNTS_FILE = "OCPI_HUB_BENCH_COUNTS"

_counts: collections.Counter[tuple[str, int, str]] = collections.Counter()


def _traced(frame: FrameType, event: str, arg: Any) -> Any:
    """A frame entered (a call, or a coroutine resumed): its bytecodes counted under its function."""
    frame.f_trace_opcodes, frame.f_trace_lines = True, False
    code = frame.f_code
    key = (code.co_filename, code.co_firstlineno, code.co_name)

    def counted(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            _counts[key] += 1
        return counted

    return counted


def _start(*_: object) -> None:
    _counts.clear()
    sys.settrace(_traced)  # the event loop's thread: the hub's one


def _stop(*_: object) -> None:
    sys.settrace(None)
    rows = [[*key, count] for key, count in _counts.most_common()]
    path = os.environ[COUNTS_FILE]
    with open(f"{path}.part", "w") as out:
        json.dump(rows, out)
    os.replace(f"{path}.part", path)  # whole, once its reader sees it


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    from hub.cli import main

    sys.argv = ["ocpi-hub", *sys.argv[1:]]
    main()
