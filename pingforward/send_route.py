"""`POST /send`: the sender over HTTP, only where `PINGFORWARD_SEND_TOKEN` is set (an open sender would be an
amplifier). Bearer tokens: https://www.rfc-editor.org/rfc/rfc6750#section-2.1
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pingforward import send as sender
from pingforward.app import authorized
from pingforward.feed import parse_date

# POST /send calls served at once by one worker; more wait for none of them and get a 503. Each
# call makes at most SEND_MAX_REQUESTS outbound requests (fetches, redirects, notifications), so
# one worker has at most the product in flight or queued for it.
MAX_SENDS: Final = 4
SEND_MAX_REQUESTS: Final = 200
SEND_RETRY_AFTER: Final = "10"  # seconds; about half of a call's deadline


async def send_route(request: Request, token: str) -> Response:
    """Send for one post (`source`) or a feed (`feed`); answer with send.py's `report_json` or `feed_json`."""
    if not authorized(request, token):
        return JSONResponse({"error": "unauthorized"}, 401, headers={"WWW-Authenticate": 'Bearer realm="pingforward"'})
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    sources, feeds = form.get("source", []), form.get("feed", [])
    if len(sources) + len(feeds) != 1:
        return JSONResponse({"error": "send exactly one form field 'source' or 'feed'"}, 400)
    flags = {name for name, values in form.items() if values[0].lower() in ("1", "true", "on", "yes")}
    since = parse_date(form["since"][0]) if "since" in form else None
    limit = form["limit"][0] if "limit" in form else None
    if ("since" in form and since is None) or (limit is not None and not (limit.isdigit() and int(limit) > 0)):
        return JSONResponse({"error": "'since' must be a date and 'limit' a positive whole number"}, 400)
    # The count lives on the app, so each worker (and each app in tests) has its own.
    state = request.app.state
    active = getattr(state, "sends_in_flight", 0)
    if active >= MAX_SENDS:
        body = {"error": f"this worker is already serving {MAX_SENDS} sends; retry later"}
        return JSONResponse(body, 503, headers={"Retry-After": SEND_RETRY_AFTER})
    state.sends_in_flight = active + 1
    # PaaS routers cut requests at 30 s. Never this proxy itself, however named: its pages would
    # be fetched and its forwards made outside this call's budget.
    own = sender.origins(request.headers.get("host", ""), request.scope.get("server"))
    limits = sender.Limits(target_timeout=10.0, deadline=25.0, max_requests=SEND_MAX_REQUESTS, own=own)
    client = request.state.client
    try:
        if feeds:
            report = await sender.send_feed(
                client,
                feeds[0].strip(),
                since=since,
                limit=int(limit) if limit else None,
                all_links="all_links" in flags,
                dry_run="dry_run" in flags,
                limits=limits,
            )
            return JSONResponse(sender.feed_json(report))
        one = await sender.send(
            client,
            sources[0].strip(),
            all_links="all_links" in flags,
            dry_run="dry_run" in flags,
            limits=limits,
        )
    except sender.SendError as exc:
        body = {"feed" if feeds else "source": (feeds or sources)[0], "status": exc.status, "error": exc.detail}
        return JSONResponse(body, 502 if exc.status == sender.Status.ERROR else 422)
    finally:
        state.sends_in_flight -= 1
    return JSONResponse(sender.report_json(one))
