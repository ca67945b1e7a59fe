"""The app factory: the pingback endpoint, the landing page, health, and `POST /send` when it is on."""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from pingforward import watchdog
from pingforward.config import Settings
from pingforward.endpoint import PINGBACK_PATHS, PingbackEndpoint, State
from pingforward.errors import ConfigError
from pingforward.fetch import Verifier
from pingforward.forwarded import ForwardedMiddleware
from pingforward.net.transport import make_client, make_transport
from pingforward.pinglog import configure_logging
from pingforward.windows import Windows

logger = logging.getLogger(__name__)

# The landing page loads nothing and runs only its own inline script (allowed by hash, in `page`);
# it may only submit its form to itself.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the ASGI app; settings come from the environment unless given."""
    if settings is None:
        try:
            settings = Settings.from_environ(os.environ)
        except ConfigError as exc:
            # A clear one-line reason in the platform's log instead of a traceback, and no start.
            raise SystemExit(f"pingforward: bad configuration: {exc}") from None
    configure_logging(settings.log_format)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        transport = make_transport(settings)
        # Everything loaded so far lives as long as the worker: keep the cyclic garbage collector
        # from walking it again and again while a burst keeps thousands of young objects alive.
        # No gc.collect() first: it would lengthen every cold start to free the few hundred objects
        # that imports leave unreachable, which stay frozen instead (bench/README.md).
        gc.freeze()
        flushing: asyncio.Task[None] | None = None
        if endpoint.counts is not None:
            from pingforward import metrics

            try:
                app.state.exporter = metrics.start(endpoint.counts, endpoint.ping_log.rejections, transport)
            except OSError as exc:  # no writable directory: pings matter more than their counts (/metrics: 503)
                logger.error("metrics are off: %s (set TMPDIR or PROMETHEUS_MULTIPROC_DIR)", exc)
                endpoint.counts = None
            else:
                flushing = asyncio.create_task(app.state.exporter.keep_flushing())
        try:
            async with transport, make_client(settings) as client:  # the client's own pool, for POST /send
                windows = Windows(settings)
                verifier = Verifier.start(settings, transport, windows.fetch_allowed)
                try:
                    yield {"client": client, "transport": transport, "windows": windows, "verifier": verifier}
                finally:
                    if verifier is not None:
                        await verifier.aclose()
                    await windows.close()
        finally:
            gc.unfreeze()  # the process may go on (tests, an embedding server) and expect a normal gc
            if flushing is not None:
                flushing.cancel()
                app.state.exporter.flush()  # the last counts of this worker stay in the sums
            endpoint.ping_log.summarize()
            endpoint.ping_log.flush()
            watchdog.stop()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def page(request: Request) -> Response:
        from pingforward import landing  # on the first GET: not needed to start answering pings

        page_url = str(request.url.replace(query=""))
        status, body = landing.render(page_url, request.query_params.get("endpoint"), settings)
        csp = f"{PAGE_HEADERS['Content-Security-Policy']}; script-src {landing.SCRIPT_SOURCE}"
        return HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, "Content-Security-Policy": csp})

    # One route per path, so that a 405 names every allowed method.
    endpoint = PingbackEndpoint(settings, page=request_response(page))
    routes = [Route(path, endpoint, methods=["GET", "HEAD", "POST"]) for path in PINGBACK_PATHS]
    routes.append(Route("/healthz", healthz, methods=["GET", "HEAD"]))
    if settings.send_token:  # an open sender would be an amplifier: no token, no route (404)
        token = settings.send_token

        async def send(request: Request) -> Response:
            # Imported on first use: the sender is served only with PINGFORWARD_SEND_TOKEN, and importing
            # it would lengthen every worker's cold start (bench/README.md).
            from pingforward.send_route import send_route

            return await send_route(request, token)

        routes.append(Route("/send", send, methods=["POST"], max_body_size=settings.max_body))
    if settings.metrics_token:  # off unless asked for: no token, no route (404)
        metrics_token = settings.metrics_token

        async def metrics_page(request: Request) -> Response:
            from pingforward.metrics import CONTENT_TYPE

            if not authorized(request, metrics_token):
                return PlainTextResponse(
                    "unauthorized", 401, headers={"WWW-Authenticate": 'Bearer realm="pingforward"'}
                )
            exporter = getattr(request.app.state, "exporter", None)
            if exporter is None:  # no directory to count in, or served without the app's lifespan
                return PlainTextResponse("metrics are off: see the log", 503)
            return Response(exporter.render(), media_type=CONTENT_TYPE)

        routes.append(Route("/metrics", metrics_page, methods=["GET"]))
    app = App(endpoint, settings.proxy_hops, routes=routes, lifespan=lifespan)
    # Never answer with a redirect: webmention.io's GET redirect to `forward` was an open redirect.
    app.router.redirect_slashes = False
    return app


def authorized(request: Request, token: str) -> bool:
    """Whether the request carries `token` as its bearer token, compared in constant time."""
    # RFC 6750 §2.1: "Authorization: Bearer <token>"; the scheme name is case-insensitive (RFC 9110 §11.1).
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = credentials.strip().encode() if scheme.lower() == "bearer" else b""
    return hmac.compare_digest(given, token.encode())


class App(Starlette):
    """Starlette, except that a ping goes straight to the pingback endpoint.

    The endpoint catches its own errors and answers bytes itself, so on the one hot path Starlette's
    error and exception middleware and its router would only add cost (bench/README.md). Everything
    else, and a ping under a `root_path`, takes the router, which leads to the same endpoint. With
    proxies in front (`proxy_hops`), every request first passes `ForwardedMiddleware`.
    """

    def __init__(self, pingback: ASGIApp, proxy_hops: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pingback = pingback
        self._entry: ASGIApp = ForwardedMiddleware(self._dispatch, proxy_hops) if proxy_hops else self._dispatch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in PINGBACK_PATHS:
            await self.pingback(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)
