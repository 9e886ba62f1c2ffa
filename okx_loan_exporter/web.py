"""The WSGI app factory: ``/metrics``, the landing page ``/``, ``/-/healthy`` and ``/-/ready``.

A failed OKX call is never an HTTP error here: it is ``okx_loan_up 0`` in a 200 answer. The
exposition (text or OpenMetrics by ``Accept``, gzip by ``Accept-Encoding``) is prometheus_client's:
its format negotiation and encoders, answered exactly as its ``make_wsgi_app`` does, with the
``okx_loan_`` families' text reused while no snapshot changed (see ``Exporter.exposition``). Other
methods and ``name[]`` filters go to ``make_wsgi_app`` itself. ``HEAD`` is answered as ``GET`` on
every endpoint; the server sends the headers without the body. Access control, when configured,
wraps the whole app (see ``webconfig``).
"""

from __future__ import annotations

import gzip
import html
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import choose_encoder, gzip_accepted

from okx_loan_exporter import __version__
from okx_loan_exporter.exporter import Exporter
from okx_loan_exporter.webconfig import WebConfigWatcher, auth_middleware

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

SCRAPE_TIMEOUT_HEADER = "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"


def create_app(
    exporter: Exporter,
    watcher: WebConfigWatcher | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> WSGIApp:
    """Build the exporter's WSGI app; with ``watcher``, TLS/basic-auth settings apply to it."""

    def metrics(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        scrape_timeout = _float_or_none(environ.get(SCRAPE_TIMEOUT_HEADER))
        try:
            snapshots = exporter.scrape(scrape_timeout)
        except FutureTimeout:
            log.error("the fetch loop did not answer in time; serving cached values")
            snapshots = exporter.snapshots()
        query = environ.get("QUERY_STRING")
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD") or (query and "name[]" in parse_qs(query)):
            # HEAD is answered as GET; the server leaves the body out.
            as_get = {**environ, "REQUEST_METHOD": "GET"} if method == "HEAD" else environ
            return make_wsgi_app(exporter.registry(snapshots))(as_get, start_response)
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT"))
        body = exporter.exposition(snapshots, encoder)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING")):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    def landing(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = _landing_page(exporter, clock()).encode()
        start_response(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def text(status: str, message: str) -> WSGIApp:
        def answer(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            body = message.encode()
            start_response(
                status,
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]

        return answer

    routes: dict[str, WSGIApp] = {
        "/metrics": metrics,
        "/": landing,
        "/-/healthy": text("200 OK", "Healthy\n"),
        "/-/ready": text("200 OK", "Ready\n"),
    }
    not_found = text("404 Not Found", "Not found: see / for the endpoints\n")
    not_allowed = text("405 Method Not Allowed", "Use GET\n")

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        route = routes.get(environ.get("PATH_INFO") or "/", not_found)
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD") and route is not metrics:
            route = not_allowed
        return route(environ, start_response)

    return auth_middleware(app, watcher) if watcher is not None else app


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _landing_page(exporter: Exporter, now: float) -> str:
    rows = []
    for snapshot in exporter.snapshots():
        if snapshot.last_success is None:
            age = "no answer yet"
        else:
            age = f"{max(0.0, now - snapshot.last_success):.0f} s"
        state = (
            "up"
            if snapshot.up
            else (
                f"down ({snapshot.last_failure.value})" if snapshot.last_failure else "not fetched"
            )
        )
        rows.append(
            f"<tr><td>{html.escape(snapshot.name)}</td><td>{html.escape(state)}</td>"
            f"<td>{html.escape(age)}</td></tr>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>OKX Loan Exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em 1em;text-align:left}}</style>
</head><body>
<h1>OKX Loan Exporter</h1>
<p>Version {html.escape(__version__)}. Metrics: <a href="metrics">/metrics</a>.
Health: <a href="-/healthy">/-/healthy</a>, <a href="-/ready">/-/ready</a>.</p>
<table><thead><tr><th>Account</th><th>State</th><th>Data age</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
<p>Values are cached for {exporter.config.cache_ttl:g} s; this page does not contact OKX.</p>
</body></html>
"""
