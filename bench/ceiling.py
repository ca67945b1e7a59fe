"""The ceiling: a bare Starlette app that reads the body and answers a constant XML-RPC success.

run.py starts it with the Procfile's uvicorn command, so proxy and ceiling pay the same server costs.
"""

from __future__ import annotations

import xmlrpc.client

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = xmlrpc.client.dumps(
    ("Pingback from http://source.example/post to http://target.example/post was successful!",),
    methodresponse=True,
).encode()


async def xmlrpc_endpoint(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="text/xml; charset=utf-8")


def create_app() -> Starlette:
    return Starlette(routes=[Route("/", xmlrpc_endpoint, methods=["POST"])])
