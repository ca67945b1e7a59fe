"""`pingforward check`: does a page advertise its pingback endpoint so that senders forward it right?

`analyze` and `wordpress_pingback` are pure and table-tested; discovery is the sender's own
(`pingforward.webmention`). `fetch_page`, `send_test_ping` and `check` are the I/O, always through an
`httpx.AsyncClient` from `transport.make_client`, whose address policy applies here too
(PINGFORWARD_ALLOW_PRIVATE_NETWORKS=true to check a site on a private network).
Specs: https://www.hixie.ch/specs/pingback/pingback#TOC2 (discovery) and
https://www.w3.org/TR/webmention/#sender-discovers-receiver-webmention-endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final
from urllib.parse import parse_qs, urlsplit

import httpx

from pingforward.errors import Failure, ForwardError, OutboundError, Refused
from pingforward.forward import parse_forward, written_unencoded
from pingforward.markup import decode, header_values
from pingforward.net.policy import SCHEME_PORTS
from pingforward.net.redirect import next_url
from pingforward.pingback import Fault, FaultCode, Ping, is_http_url, parse_response, render_call
from pingforward.send import read_capped
from pingforward.verify import COPY_SETTING, FETCH_BOUND_SETTING, MASTER_SETTING, VERIFY_SETTING
from pingforward.webmention import discover_webmention, pingback_link, rel_hrefs
from pingforward.windows import FLOOD_CLIENT_SETTING, FLOOD_SOURCE_SETTING, REPEAT_SETTING

MAX_PAGE: Final = 1024 * 1024
MAX_REDIRECTS: Final = 20  # httpx's own limit, which check followed before
# The settings that the proxy's spam checks name in their refusals.
SPAM_SETTINGS: Final = (
    MASTER_SETTING,
    VERIFY_SETTING,
    COPY_SETTING,
    FETCH_BOUND_SETTING,
    FLOOD_CLIENT_SETTING,
    FLOOD_SOURCE_SETTING,
)
MAX_ANSWER: Final = 64 * 1024


class Verdict(Enum):
    """FAIL is for what keeps pingbacks from arriving, and only that sets the exit status; WARN is for
    what works but deserves a look."""

    OK = "ok"
    FAIL = "FAIL"
    WARN = "warn"
    INFO = "--"


@dataclass(frozen=True, slots=True)
class Finding:
    verdict: Verdict
    text: str


@dataclass(frozen=True, slots=True)
class Page:
    """What was fetched: the GET response after redirects, and what WordPress's HEAD request saw."""

    url: str
    status: int
    html: str
    headers: tuple[tuple[str, str], ...] = ()  # the GET response's fields, in order
    head_pingback: str | None = None


@dataclass(frozen=True, slots=True)
class Analysis:
    findings: tuple[Finding, ...]
    endpoint: str | None  # the pingback endpoint senders use, if it is an absolute http(s) URL

    @property
    def ok(self) -> bool:
        return all(finding.verdict is not Verdict.FAIL for finding in self.findings)


def wordpress_pingback(head_pingback: str | None, html: str) -> str | None:
    """The endpoint WordPress's `discover_pingback_server_uri` (wp-includes/comment.php) would use."""
    # It sends a HEAD first and takes its X-Pingback header as is (discover_pingback_server_uri in
    # https://github.com/WordPress/wordpress-develop/blob/trunk/src/wp-includes/comment.php).
    if head_pingback:
        return head_pingback
    # Then a GET and a plain search: `rel="pingback"`, else `rel='pingback'`. PHP's strpos() answers 0
    # for a match at the very start, which the `if` takes as "not found".
    double, single = html.find('rel="pingback"'), html.find("rel='pingback'")
    if double <= 0 and single <= 0:
        return None
    quote, offset = ('"', double) if double > 0 else ("'", single)
    # The first `href=` after it, skipping 6 characters (`href="`) whatever quote the href uses,
    # read up to the next quote of the rel attribute's kind. No entity decoding, no resolution.
    # A missing `href=` makes strpos() false, and false + 6 is 6.
    href_at = html.find("href=", offset)
    start = (href_at if href_at >= 0 else 0) + 6
    end = html.find(quote, start)
    if end <= start:
        return None
    return html[start:end]


def _origin(url: str) -> tuple[str | None, int | None]:
    parts = urlsplit(url)
    try:
        return parts.hostname, parts.port or SCHEME_PORTS.get(parts.scheme)
    except ValueError:  # a port that is no number: no origin to compare
        return None, None


def _home_page(url: str) -> bool:
    # WordPress pings only links with a path other than "" or "/", or with a query (pingback() in
    # https://github.com/WordPress/wordpress-develop/blob/trunk/src/wp-includes/comment.php).
    parts = urlsplit(url)
    return parts.path in ("", "/") and not parts.query


@dataclass
class _Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, verdict: Verdict, text: str) -> None:
        self.findings.append(Finding(verdict, text))

    def one(self, values: Sequence[str], name: str) -> None:
        """Report the advertisements of one kind; Pingback 1.0 (§2.1, §2.2) allows one of each."""
        if len(values) > 1:
            self.add(Verdict.FAIL, f"{len(values)} {name}s; Pingback 1.0 allows one")
        elif values:
            self.add(Verdict.OK, f"{name}: {values[0]}")
        else:
            self.add(Verdict.INFO, f"no {name}")


def analyze(page: Page) -> Analysis:
    """Judge what `page` advertises, one finding per question."""
    report = _Report()
    if 200 <= page.status < 300:
        report.add(Verdict.OK, f"fetched {page.url} (HTTP {page.status})")
    else:
        report.add(Verdict.FAIL, f"fetched {page.url}: HTTP {page.status}, not a 2xx")
    if _home_page(page.url):
        report.add(Verdict.INFO, "WordPress never sends pingbacks to a site's home page; check a post instead")

    endpoint = _pingback(page, report)
    if endpoint is not None:
        if not is_http_url(endpoint):
            report.add(Verdict.FAIL, f"the pingback endpoint {endpoint} is not an absolute http(s) URL")
            endpoint = None
        else:
            _forward(page, endpoint, report)
    return Analysis(tuple(report.findings), endpoint)


def _pingback(page: Page, report: _Report) -> str | None:
    headers = header_values(page.headers, "x-pingback")
    report.one(headers, "X-Pingback header")
    links = list(rel_hrefs(page.html, "pingback", ("link",)))
    report.one(links, '<link rel="pingback"> element')
    if links and pingback_link(page.html) != links[0]:
        report.add(
            Verdict.FAIL,
            'the <link> is not in the exact form <link rel="pingback" href="...">, so clients that follow '
            "the spec (mention-client-php, Telegraph) do not find it",
        )

    if not headers and not links:
        report.add(Verdict.FAIL, "the page advertises no pingback endpoint")
        return None
    # Pingback 1.0 §2.3: the header, when there is one, wins.
    endpoint = headers[0] if headers else links[0]
    if headers and links:
        if headers[0] == links[0]:
            report.add(Verdict.OK, "the header and the <link> agree")
        else:
            report.add(Verdict.FAIL, "the header and the <link> differ; senders use the header")

    wordpress = wordpress_pingback(page.head_pingback, page.html)
    if wordpress == endpoint:
        report.add(Verdict.OK, f"WordPress reads {wordpress}")
    elif wordpress is not None and wordpress.replace("&amp;", "&") == endpoint:
        report.add(Verdict.OK, f"WordPress reads {wordpress} (&amp; undecoded; pingforward accepts that)")
    elif wordpress is None:
        hint = " (it looks for X-Pingback in a HEAD request)" if headers else ""
        report.add(Verdict.FAIL, f"WordPress finds no pingback endpoint{hint}")
    elif links and wordpress == links[0]:
        report.add(Verdict.FAIL, f"WordPress reads the <link>, {wordpress}: its HEAD request saw no X-Pingback header")
    else:
        report.add(
            Verdict.FAIL,
            f'WordPress reads {wordpress!r} instead; put rel="pingback" before href and use double quotes',
        )
    return endpoint


def _forward(page: Page, endpoint: str, report: _Report) -> None:
    parts = urlsplit(endpoint)
    if parts.fragment:
        report.add(Verdict.FAIL, "the pingback endpoint has a #fragment, which senders drop; encode # as %23")
    # WordPress copies the href without decoding entities; pingforward reads `&amp;` as `&` (forward.py).
    names = parse_qs(parts.query.replace("&amp;", "&"), keep_blank_values=True)
    if "forward" not in names:
        report.add(Verdict.FAIL, "the pingback endpoint is not a pingforward URL: it has no forward parameter")
        return
    try:
        forward = parse_forward(parts.query)
    except ForwardError as exc:
        report.add(Verdict.FAIL, f"{exc} (the forward value is your Webmention endpoint's whole URL, percent-encoded)")
        return
    if _origin(forward) == _origin(endpoint):
        # The proxy refuses such pings (fault 49) or they come back to it (508): none would arrive.
        report.add(
            Verdict.FAIL,
            f"the forward URL {forward} points at the pingforward proxy itself, so no pingback can arrive; "
            "forward to your Webmention endpoint",
        )
        return
    report.add(Verdict.OK, f"forwards to {forward}")
    report.add(
        Verdict.INFO,
        "the proxy forwards a ping only after reading its source: a source that does not exist, does not link "
        "to this page, or copies most of this page's text is refused, not forwarded (its spam checks)",
    )
    if written_unencoded(parts.query):
        # pingforward reads what follows the forward URL's own "?" as that URL's, "&"s included.
        report.add(
            Verdict.INFO,
            "the forward URL is written without percent-encoding: pingforward reads the rest of the query as "
            "part of it, but a # or + in it is lost on the way; percent-encode the whole forward URL",
        )
    else:
        others = sorted(name for name in names if name != "forward")
        if others:
            report.add(
                Verdict.INFO,
                f"other parameters next to forward ({', '.join(others)}) are ignored; "
                "if they belong to your Webmention endpoint, percent-encode the whole forward URL",
            )

    # Pingbacks go to the forward URL whatever the page says about Webmention; the comparison only
    # catches a forward URL that was mistyped or went stale.
    webmention = discover_webmention(page.url, page.headers, page.html)
    if webmention is None:
        report.add(
            Verdict.WARN,
            'the page advertises no Webmention endpoint (rel="webmention"), so Webmention senders cannot '
            "reach it and the forward URL cannot be compared with one",
        )
    elif webmention == forward:
        report.add(Verdict.OK, f"forward matches the page's Webmention endpoint {webmention}")
    else:
        report.add(
            Verdict.WARN,
            f"forward differs from the page's Webmention endpoint {webmention}: pingbacks go to the forward URL",
        )


# Answers that show the ping got through the proxy to the receiver and the receiver decided; the rest
# (access denied, upstream trouble, XML-RPC errors, a bad forward parameter) are the setup's problems.
_PROXY_PROBLEMS: Final = frozenset({FaultCode.ACCESS_DENIED, FaultCode.UPSTREAM_ERROR}) | {
    code for code in FaultCode if code < 0
}


def judge_ping(status: int, body: bytes) -> Finding:
    """Judge the proxy's answer to the test ping."""
    if status != 200:
        return Finding(Verdict.FAIL, f"test ping: HTTP {status}; pingback servers answer 200")
    try:
        text = parse_response(body)
    except Fault as fault:
        if REPEAT_SETTING in fault.message:  # the same test ping again: the proxy forwarded it a moment ago
            return Finding(
                Verdict.OK,
                f"test ping: fault {int(fault.code)} {fault.message} (the proxy forwarded this same ping "
                "a moment ago; --source URL sends another)",
            )
        if any(setting in fault.message for setting in SPAM_SETTINGS):
            # The proxy's own spam checks refused it (their refusals name their setting): the proxy works,
            # and would forward a ping from a page that links here.
            return Finding(
                Verdict.WARN,
                f"test ping: refused by the proxy's spam checks: fault {int(fault.code)} {fault.message} "
                "(the proxy forwards only pings whose source page links to this page: send one with "
                "--source URL of such a page)",
            )
        proxy = fault.code in _PROXY_PROBLEMS or "'forward'" in fault.message
        verdict = Verdict.FAIL if proxy else Verdict.OK
        who = "" if proxy else " (from your Webmention endpoint: the proxy works)"
        return Finding(verdict, f"test ping: fault {int(fault.code)} {fault.message}{who}")
    return Finding(Verdict.OK, f"test ping delivered: {text}")


# A site owner's words for each kind of failure the network layer reports (errors.Failure).
_EXPLANATIONS: Final = {
    Failure.DNS: "there is no host {host} (check the spelling, or the DNS)",
    Failure.REFUSED: "{host} refused the connection: nothing listens on that port",
    Failure.RESET: "{host} broke off the connection",
    Failure.UNREACHABLE: "there is no route to {host}",
    Failure.TLS: "the TLS handshake with {host} failed, or its certificate is not valid for it or has expired",
    Failure.TIMEOUT: "{host} did not answer in time",
    Failure.BUSY: "{host} did not answer in time",
    Failure.PROTOCOL: "{host} broke off the exchange or answered what is not HTTP",
    Failure.URL: "not a URL that can be fetched",
}


def explain(exc: OutboundError | httpx.InvalidURL | UnicodeError, url: str) -> str:
    """Why a request failed, in a site owner's words rather than an exception's name."""
    host = urlsplit(url).hostname or url
    if isinstance(exc, Refused):
        return exc.reason
    if isinstance(exc, OutboundError):
        return _EXPLANATIONS[exc.failure].format(host=host)
    return _EXPLANATIONS[Failure.URL]


async def _follow(client: httpx.AsyncClient, method: str, url: str) -> httpx.Response:
    """`method` to `url`, redirects followed by the rule of net/redirect.py; the final answer, still to be read."""
    hops = 0
    while True:
        response = await client.send(client.build_request(method, url), stream=True)
        hop = next_url(method, response.status_code, url, response.headers.get("location"))
        if hop is None or hops == MAX_REDIRECTS:  # past the limit, the last redirect is the answer
            return response
        await response.aclose()
        url, hops = hop, hops + 1


async def fetch_page(client: httpx.AsyncClient, url: str) -> Page:
    """HEAD then GET `url` as WordPress does, following redirects; raise `OutboundError`."""
    head = await _follow(client, "HEAD", url)
    await head.aclose()
    response = await _follow(client, "GET", url)
    try:
        body = await read_capped(response, MAX_PAGE)  # inflates within the cap: no gzip bomb
    finally:
        await response.aclose()
    headers = tuple(response.headers.multi_items())
    return Page(
        url=str(response.url),
        status=response.status_code,
        html=decode(headers, body),
        headers=headers,
        head_pingback=head.headers.get("x-pingback"),
    )


async def send_test_ping(client: httpx.AsyncClient, endpoint: str, ping: Ping) -> Finding:
    """Send `ping` to the pingback `endpoint` as WordPress would and judge the answer."""
    try:
        request = client.build_request(
            "POST", endpoint, content=render_call(ping), headers={"Content-Type": "text/xml"}
        )
        # The client marks forwards with `Via: 1.1 pingforward` so that a proxy refuses its own (508);
        # this is a sender's call to the proxy, not a forward.
        del request.headers["via"]
        response = await client.send(request)
    except Refused as exc:
        return Finding(Verdict.FAIL, f"test ping: not sent to {endpoint}: {exc.reason}")
    except (OutboundError, httpx.InvalidURL, UnicodeError) as exc:  # UnicodeError: a host that is not IDNA
        return Finding(Verdict.FAIL, f"test ping: not delivered to {endpoint}: {explain(exc, endpoint)}")
    return judge_ping(response.status_code, response.content[:MAX_ANSWER])


async def check(client: httpx.AsyncClient, url: str, *, ping: bool = False, source: str | None = None) -> Analysis:
    """Fetch `url`, analyze it and, with `ping`, send one real test ping through its endpoint."""
    try:
        page = await fetch_page(client, url)
    except Refused as exc:  # the address policy of make_client applies to this command too
        return Analysis((Finding(Verdict.FAIL, f"did not fetch {url}: {exc.reason}"),), None)
    except (OutboundError, httpx.InvalidURL, UnicodeError) as exc:  # UnicodeError: a host that is not IDNA
        return Analysis((Finding(Verdict.FAIL, f"could not fetch {url}: {explain(exc, url)}"),), None)
    analysis = analyze(page)
    findings: Sequence[Finding] = analysis.findings
    if not ping:
        extra = Finding(Verdict.INFO, "no test ping sent (--ping sends a real one)")
    elif analysis.endpoint is None:
        extra = Finding(Verdict.FAIL, "no test ping sent: no usable pingback endpoint")
    else:
        extra = await send_test_ping(client, analysis.endpoint, Ping(source or url, url))
    return Analysis((*findings, extra), analysis.endpoint)
