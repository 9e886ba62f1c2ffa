"""A webhook receiver for the compose stack's Alertmanager: prints one line per alert it receives.

It lets `docker compose up` show the whole alert path (rules -> Prometheus -> Alertmanager ->
receiver) without an outside service: `docker compose logs -f webhook-logger`. Standard library
only. Replace it with a real receiver (see examples/alertmanager/alertmanager.yml).

    python webhook_logger.py --listen 0.0.0.0:5001
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Alertmanager's webhook bodies are small; anything larger is refused.
MAX_BODY_BYTES = 1_000_000


def alert_lines(path: str, payload: Any) -> list[str]:
    """One logfmt line per alert of an Alertmanager webhook payload (version 4)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise ValueError("not an Alertmanager webhook payload: no 'alerts' list")
    receiver = payload.get("receiver", "")
    lines = []
    for alert in payload["alerts"]:
        labels = alert.get("labels", {}) if isinstance(alert, dict) else {}
        annotations = alert.get("annotations", {}) if isinstance(alert, dict) else {}
        fields = {
            "path": path,
            "receiver": receiver,
            "status": alert.get("status", "") if isinstance(alert, dict) else "",
            "alertname": labels.get("alertname", ""),
            "account": labels.get("account", ""),
            "severity": labels.get("severity", ""),
            "summary": annotations.get("summary", ""),
        }
        lines.append(" ".join(f"{key}={json.dumps(str(value))}" for key, value in fields.items()))
    return lines


class Handler(BaseHTTPRequestHandler):
    """POST: log the alerts of the body, answer 200 (400 for a body that is not a payload)."""

    server_version = "webhook-logger"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.answer(413, f"body larger than {MAX_BODY_BYTES} bytes")
            return
        try:
            lines = alert_lines(self.path, json.loads(self.rfile.read(length)))
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            self.answer(400, str(error))
            return
        for line in lines:
            log(line)
        self.answer(200, f"{len(lines)} alert(s) logged")

    def do_GET(self) -> None:
        self.answer(200, "webhook-logger: POST Alertmanager webhooks here")

    def answer(self, status: int, text: str) -> None:
        if status != 200:
            log(f"path={json.dumps(self.path)} error={json.dumps(f'HTTP {status}: {text}')}")
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log: the alert lines say what arrived."""


def log(line: str) -> None:
    timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    print(f"ts={timestamp} {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="0.0.0.0:5001", help="HOST:PORT (default %(default)s)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    # As a container's PID 1 it must handle SIGTERM itself, or `docker stop` waits 10 s.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    log(f"msg={json.dumps(f'listening on {args.listen}')}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
