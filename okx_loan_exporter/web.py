"""The WSGI app factory: ``/metrics``, the landing page ``/``, ``/-/healthy``, ``/-/ready`` and
``POST /-/reload``.

A failed OKX call is never an HTTP error here: it is ``okx_loan_up 0`` in a 200 answer. A GET of
``/metrics`` is answered from :class:`~okx_loan_exporter.exposition.Exposition`, exactly as
prometheus_client's ``make_wsgi_app`` would; other methods and ``name[]`` filters go to
``make_wsgi_app`` itself. ``HEAD`` is answered as ``GET`` on every endpoint; the server sends the
headers without the body. Access control, when configured, wraps the whole app (see
``basicauth``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import parse_qs
from wsgiref.types import StartResponse
from wsgiref.types import WSGIApplication as WSGIApp

from prometheus_client import make_wsgi_app

from okx_loan_exporter import __version__
from okx_loan_exporter.basicauth import auth_middleware
from okx_loan_exporter.exporter import Exporter
from okx_loan_exporter.exposition import Exposition
from okx_loan_exporter.landing import render_landing_page
from okx_loan_exporter.reload import Reloader, ReloadFailed
from okx_loan_exporter.webconfig import WebConfigWatcher

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_HEADER = "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"


def create_app(
    exporter: Exporter,
    watcher: WebConfigWatcher | None = None,
    *,
    exposition: Exposition | None = None,
    reloader: Reloader | None = None,
    clock: Callable[[], float] = time.time,
) -> WSGIApp:
    """Build the exporter's WSGI app; with ``watcher``, TLS/basic-auth settings apply to it;
    with ``reloader``, ``POST /-/reload`` reloads the configuration (200, or 500 and why)."""
    render = exposition if exposition is not None else Exposition(__version__)

    def metrics(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        with exporter.answering():
            return answer_metrics(environ, start_response)

    def answer_metrics(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
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
            filtered: WSGIApp = make_wsgi_app(render.registry(snapshots))
            return filtered(as_get, start_response)
        body, headers = render.answer(
            snapshots, environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING")
        )
        start_response("200 OK", headers)
        return [body]

    def landing(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = render_landing_page(
            exporter.snapshots(),
            now=clock(),
            cache_ttl=exporter.config.cache_ttl,
            version=__version__,
        ).encode()
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

    def reload(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        assert reloader is not None
        if environ.get("REQUEST_METHOD") != "POST":
            return text("405 Method Not Allowed", "Use POST\n")(environ, start_response)
        try:
            summary = reloader.reload()
        except ReloadFailed as failed:
            problems = "".join(f"{line}\n" for line in failed.lines)
            return text("500 Internal Server Error", f"reload failed:\n{problems}")(
                environ, start_response
            )
        return text("200 OK", f"configuration reloaded: {summary}\n")(environ, start_response)

    if reloader is not None:
        routes["/-/reload"] = reload

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        route = routes.get(environ.get("PATH_INFO") or "/", not_found)
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD") and route not in (metrics, reload):
            route = not_allowed
        return route(environ, start_response)

    return auth_middleware(app, watcher) if watcher is not None else app


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
