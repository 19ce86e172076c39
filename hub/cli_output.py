"""The CLI's output on stdout, whose failure (a full disk, a reader that closed the pipe) is told apart from the
command's: `ocpi-hub verify > /dev/full` must not read as "the log does not verify" or "cannot use the database"."""

from __future__ import annotations

import contextlib
import errno
import os
import sys

OUTPUT_FAILED = 3  # the exit code of a command whose output could not be written (README's CLI part)


class OutputError(Exception):
    """stdout could not be written: what the command did is done (and in the audit trail), its output is lost."""


def out(text: str) -> None:
    """text and a newline on stdout, flushed now: an error writing it is an OutputError here, not an OSError read as
    the database's, or an "Exception ignored" at the interpreter's exit."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except OSError as exc:
        _discard_stdout()
        gone = exc.errno == errno.EPIPE
        why = "its reader closed the pipe (broken pipe)" if gone else (exc.strerror or str(exc))
        raise OutputError(f"cannot write the output to stdout: {why}") from None


def _discard_stdout() -> None:
    """What is left in stdout's buffer goes nowhere: the interpreter flushes it at exit, and would fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
