"""Ports, waits and process stops shared by the tests and the benchmarks (no pytest needed here).

Every test or benchmark that runs a real program on 127.0.0.1 takes its port from
:func:`free_port`, polls with :func:`wait_for` and stops the program with :func:`stop_process`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice, so rarely reused).

    Another program can still take it before ours binds it: ``e2e_support.ProcessGroup.start``
    retries with a new port when the program says its address is already in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def stop_process(popen: subprocess.Popen[Any], timeout: float = 5.0) -> int:
    """SIGTERM, then SIGKILL if it still runs after ``timeout`` seconds; its exit code.

    Only this process is signalled; one that already exited is left as it is.
    """
    if popen.poll() is not None:
        return popen.returncode
    with contextlib.suppress(ProcessLookupError):
        popen.send_signal(signal.SIGTERM)
    try:
        return popen.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        return popen.wait(5.0)


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.1,
    details: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` until it returns something true (not None, False, 0 or empty); return it.

    Raises AssertionError after ``timeout`` seconds naming ``what`` and, if given, ``details()``.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)
