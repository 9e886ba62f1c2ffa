"""Headless Chromium for the tests, driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe`` makes Chromium read protocol commands from file descriptor 3 and
write answers and events to descriptor 4, as NUL-terminated JSON: no port, no websocket library.
:class:`Chromium` starts it with a new empty profile, opens pages and evaluates JavaScript in
them, so a test sees what the browser computed (layout, styles), not only the HTML.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from e2e_support import stop_process

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


class BrowserError(AssertionError):
    """Chromium failed, answered with a protocol error, or did not answer in time."""


class Chromium:
    """One headless Chromium process; use as a context manager, which always stops it."""

    def __init__(self, binary: str, workdir: Path, *, window: tuple[int, int] = (1200, 800)):
        self._workdir = workdir
        self._argv = [
            binary,
            *FLAGS,
            f"--user-data-dir={workdir / 'profile'}",
            f"--window-size={window[0]},{window[1]}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self._process: subprocess.Popen[bytes] | None = None
        self._to_browser = self._from_browser = -1
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        (self._workdir / "profile").mkdir(parents=True)
        commands_read, self._to_browser = os.pipe()
        self._from_browser, answers_write = os.pipe()
        # Chromium wants the pipe at descriptors 3 and 4: bash puts them there before exec.
        script = f'exec "$@" 3<&{commands_read} 4>&{answers_write}'
        self.log_path = self._workdir / "chromium.log"
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                ["bash", "-c", script, "chromium", *self._argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(commands_read, answers_write),
            )
        os.close(commands_read)
        os.close(answers_write)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._process is not None and self._process.poll() is None:
                with contextlib.suppress(BrowserError, OSError):
                    self.call("Browser.close", timeout=5)
                stop_process(self._process, timeout=5)
        finally:
            for descriptor in (self._to_browser, self._from_browser):
                if descriptor >= 0:
                    os.close(descriptor)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline, f"the answer to {method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error']}")
                return dict(reply.get("result", {}))
            if "method" in reply:
                self._events.append(reply)

    def wait_event(self, method: str, *, session: str, timeout: float = 15.0) -> dict[str, Any]:
        """The next event ``method`` of ``session`` (one that already arrived counts)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self._events:
                if event["method"] == method and event.get("sessionId") == session:
                    self._events.remove(event)
                    return event
            self._events.append(self._receive(deadline, f"the event {method}"))

    def open(self, url: str, *, timeout: float = 15.0) -> Page:
        """A new tab showing ``url``, once its load event fired."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        self.call("Page.enable", session=session)
        navigated = self.call("Page.navigate", {"url": url}, session=session, timeout=timeout)
        if navigated.get("errorText"):
            raise BrowserError(f"Chromium could not open {url}: {navigated['errorText']}")
        self.wait_event("Page.loadEventFired", session=session, timeout=timeout)
        return Page(self, session)

    def _receive(self, deadline: float, what: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, left))
            if not ready:
                raise BrowserError(f"Chromium sent no {what} in time\n{self._tail()}")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed its pipe before {what}\n{self._tail()}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return dict(json.loads(message))

    def _tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-20:]
        except OSError:
            lines = []
        return f"--- {shlex.join(self._argv)}\n" + "\n".join(lines)


class Page:
    """One tab of :class:`Chromium`."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self._browser = browser
        self._session = session

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression evaluated in the page."""
        answer = self._browser.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True},
            session=self._session,
        )
        if "exceptionDetails" in answer:
            raise BrowserError(f"the page's JavaScript failed: {answer['exceptionDetails']}")
        return answer["result"].get("value")
