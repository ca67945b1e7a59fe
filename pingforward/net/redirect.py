"""The one redirect rule for every request pingforward makes: the proxy's forward, the sender and `check`.

Pure: given the method, the status and the Location of an answer, `next_url` says where to send the same
request next, or that this answer is the final one. Each caller keeps its own limit on hops and checks
each new URL against the address policy as it sends it. Spec: https://www.rfc-editor.org/rfc/rfc9110#section-15.4
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urljoin

from pingforward.pingback import is_http_url

# RFC 9110 §15.4: the redirections that name their target in Location. 300 (a choice for a
# person), 304 (a cache's answer) and 305/306 (deprecated) are not followed.
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})

# Why each status is followed the way it is, for a POST (a Webmention or a pingback):
# - 307 and 308 (§15.4.8, §15.4.9): the user agent "MUST NOT change the request method", so the
#   same POST goes to the new URL.
# - 301 and 302 (§15.4.2, §15.4.3): "for historical reasons, a user agent MAY change the request
#   method from POST to GET". Browsers and httpx do, and the Webmention is then lost: the GET
#   answers 200 and looks like a success (snarfed/bridgy#753). Keeping the method is what the
#   status means, and what a receiver that moved its endpoint wants, so the same POST is re-sent.
# - 303 (§15.4.4): the server has processed the POST and points at a page about it, to be read
#   with a GET. It is the final answer to the POST: the receiver has taken the mention.
# A GET or HEAD follows every one of them with the same method.
FINAL_FOR_POST: Final = frozenset({303})


def next_url(method: str, status: int, url: str, location: str | None) -> str | None:
    """The absolute http(s) URL to send the same request (method and body) to next, or None if this answer is final.

    A redirect without a Location, or to a URL that is not http(s), is final: the caller reports its status.
    """
    if status not in REDIRECTS or location is None:
        return None
    if status in FINAL_FOR_POST and method.upper() not in ("GET", "HEAD"):
        return None
    try:
        target = urljoin(url, location.strip())
    except ValueError:  # a Location that is no URL at all, such as "http://["
        return None
    return target if is_http_url(target) else None
