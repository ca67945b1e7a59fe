"""The landing page: what pingforward does, a form that builds a site's pingback tags, the fault table.

Pure: values in, HTML out. Every interpolated value goes through `html.escape` in `_fill`. One page
with a handful of values does not justify a template engine in the runtime slug. Its one script adds
copy buttons; the Content-Security-Policy allows it by hash (`SCRIPT_SOURCE`), and the page works without it.
Specs: https://www.hixie.ch/specs/pingback/pingback#TOC2.3 (the `<link>` element and `X-Pingback`).
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from string import Template
from typing import Final
from urllib.parse import quote, urlsplit

from pingforward import PROJECT_URL, __version__
from pingforward.config import Settings
from pingforward.errors import EndpointError, ForwardError, Refused
from pingforward.forward import ERROR_NAMES, MAX_FORWARD_URL, parse_forward
from pingforward.net.policy import SCHEME_PORTS, Policy
from pingforward.pingback import FaultCode, is_http_url

EXAMPLE_ENDPOINT: Final = "https://webmention.io/example.com/webmention"
INSTALL: Final = f"pipx install git+{PROJECT_URL}"

# Adds a Copy button after each block marked data-copy, where the browser lets a page write to the
# clipboard (https, or localhost); elsewhere, and without scripts, the text is selected by hand.
SCRIPT: Final = """
if (navigator.clipboard) {
  for (const block of document.querySelectorAll("pre[data-copy]")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy " + block.dataset.copy);
    button.addEventListener("click", () => {
      navigator.clipboard.writeText(block.textContent).then(
        () => { button.textContent = "Copied"; },
        () => { button.textContent = "Select and copy it by hand"; },
      );
    });
    block.after(button);
  }
}
"""
# CSP Level 3 §8.4: a hash source is the base64 SHA-256 of the script element's text, exactly.
SCRIPT_SOURCE: Final = "'sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode() + "'"


class Html(str):
    """Markup that is already escaped; `_fill` inserts it as is."""


def _fill(template: Template, **values: str) -> Html:
    return Html(template.substitute({k: v if isinstance(v, Html) else html.escape(v) for k, v in values.items()}))


@dataclass(frozen=True, slots=True)
class Tags:
    """What a site puts in its pages to send its pingbacks through this instance."""

    href: str

    @property
    def link(self) -> str:
        # Rel before href, double quotes: WordPress finds `rel="pingback"` and then reads the first
        # `href=` after it up to the next quote of the same kind (discover_pingback_server_uri in
        # WordPress's wp-includes/comment.php); the spec's own client regex is
        # `<link rel="pingback" href="([^"]+)" ?/?>`.
        return f'<link rel="pingback" href="{self.href}">'

    @property
    def header(self) -> str:
        return f"X-Pingback: {self.href}"


def tags_for(page_url: str, endpoint: str, policy: Policy) -> Tags:
    """The tags for forwarding to `endpoint` through the instance at `page_url`, or raise `EndpointError`."""
    endpoint = endpoint.strip()
    if not endpoint:
        raise EndpointError("Enter the URL of your Webmention endpoint.")
    if len(endpoint) > MAX_FORWARD_URL:
        raise EndpointError(f"That URL is longer than {MAX_FORWARD_URL} characters; this instance refuses it.")
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
    except ValueError:  # an unbalanced IPv6 bracket
        raise EndpointError("The host name is not valid.") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise EndpointError("The endpoint must be a full URL starting with https:// or http://.")
    if not is_http_url(endpoint):
        raise EndpointError("The URL contains spaces, control characters or an invalid port.")
    if not all(ch.isalnum() or ch in "-._:" for ch in host):  # ':' from an IPv6 literal
        raise EndpointError(f"The host name {host} is not valid.")
    if parts.username is not None:
        raise EndpointError("The URL contains a user name or password; pingforward does not send credentials.")
    own = urlsplit(page_url)
    if (host, parts.port or SCHEME_PORTS[parts.scheme.lower()]) == (
        own.hostname,
        own.port or SCHEME_PORTS.get(own.scheme, 80),
    ):
        raise EndpointError(
            "That is this pingforward instance itself, which refuses to forward pings to itself. "
            'Enter the Webmention endpoint of your site (its rel="webmention" link).'
        )
    try:  # the same rules the proxy applies before forwarding; host names are not resolved here
        policy.check_url(endpoint)
    except Refused as exc:
        raise EndpointError(f"This instance does not forward there: {exc.reason}.") from None
    # The forward URL is percent-encoded whole, so its own `&`, `#` and `+` survive the trip.
    tags = Tags(f"{page_url}?forward={quote(endpoint, safe='')}")
    try:  # the proxy must read back exactly what was typed
        forwarded = parse_forward(urlsplit(tags.href).query)
    except ForwardError as exc:
        raise EndpointError(str(exc)) from None
    if forwarded != endpoint:
        raise EndpointError("That URL does not survive encoding unchanged.")
    return tags


# WordPress marks a link as pinged only on success or fault 48 and retries every other outcome
# when the post is next published or updated (pingback() in WordPress's wp-includes/comment.php).
def _wordpress(code: FaultCode) -> str:
    return "marks the link pinged" if code is FaultCode.ALREADY_REGISTERED else "tries again on the next update"


def _receiver_errors(code: FaultCode, names: Mapping[str, FaultCode]) -> str:
    return ", ".join(name for name, mapped in names.items() if mapped is code)


_ROW: Final = Template(
    '<tr><th scope="row">$code</th><td>$message</td><td class="names" data-label="Your endpoint\'s error">$names</td>'
    '<td data-label="WordPress">$wordpress</td></tr>'
)


def _fault_rows(codes: Iterable[FaultCode]) -> Html:
    """One row per Pingback fault code; the XML-RPC ones (negative) are the sender's bugs, summed up in one line."""
    return Html(
        "\n".join(
            _fill(
                _ROW,
                code=str(int(code)),
                message=code.message,
                names=_receiver_errors(code, ERROR_NAMES),
                wordpress=_wordpress(code),
            )
            for code in codes
        )
    )


_POLICY: Final = Template("""<ul>
<li>Forwards to: $hosts</li>
<li>Ports: $ports</li>
<li>Addresses in private networks: $private</li>
<li>Your endpoint gets $timeout seconds to answer; requests larger than $max_body bytes are refused.</li>
<li>Spam checks: $checks</li>
</ul>""")


def _checks(settings: Settings) -> str:
    """What this instance's spam checks do, in a site owner's words."""
    if not settings.spam_checks:
        return "off: every well-formed ping is forwarded."
    if not settings.verify_source:
        return "on, without reading sources: a ping whose source is its own target is refused."
    copy = (
        f", and so is a copy of your post, carrying {settings.copy_share:.0%} or more of its text (fault 49)"
        if settings.copy_share is not None
        else ""
    )
    return (
        f"on. Before forwarding a ping, this instance reads its source (within {settings.verify_timeout:g} s): "
        f"a source that does not exist (fault 16) or does not link to your page (fault 17) is refused{copy}; "
        "one that cannot be read just now gets fault 50, so the sender tries again. Refused pings never reach "
        "your endpoint."
    )


def _policy(settings: Settings) -> Html:
    if settings.allowed_hosts:
        hosts = ", ".join(sorted(settings.allowed_hosts))
    else:
        hosts = "any host" if settings.allow_private_networks else "any public host"
    ports = "any" if settings.allowed_ports is None else ", ".join(map(str, sorted(settings.allowed_ports)))
    return _fill(
        _POLICY,
        hosts=hosts,
        ports=ports,
        private="allowed" if settings.allow_private_networks else "refused",
        timeout=f"{settings.timeout:g}",
        max_body=str(settings.max_body),
        checks=_checks(settings),
    )


_RESULT: Final = Template("""<section aria-labelledby="result-heading">
<h2 id="result-heading">Your tags</h2>
<p>Put this element in the <code>&lt;head&gt;</code> of every page that should receive pingbacks:</p>
<pre data-copy="the link element"><code id="link-tag">$link</code></pre>
<p>Or send this HTTP header with those pages. If you use both, keep them identical; senders prefer the header.</p>
<pre data-copy="the header"><code id="header-line">$header</code></pre>
<p>Copy the element as it is: <code>rel</code> before <code>href</code>, double quotes. WordPress reads the
first <code>href</code> after <code>rel="pingback"</code> literally, so any other order or quoting can send
your pings elsewhere.</p>
</section>""")

_EXAMPLE: Final = Template("""<div class="example" id="example">
<p>For example, with the endpoint <code>$endpoint</code> your pages would carry:</p>
<pre><code id="example-tag">$link</code></pre>
</div>""")

_ERROR: Final = Template('<p class="error" id="endpoint-error" role="alert"><strong>Not usable:</strong> $message</p>')

_PAGE: Final = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pingforward: pingbacks in, Webmentions out</title>
<style>
:root { color-scheme: light dark; --fg: #1b1b1b; --bg: #fdfdfd; --muted: #4a4a4a; --line: #c8c8c8;
  --code: #f0f0f0; --accent: #0b57d0; --error: #b3261e; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #ececec; --bg: #161616; --muted: #c4c4c4; --line: #555; --code: #262626; --accent: #8ab4f8;
    --error: #f2b8b5; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 1.0625rem/1.55 system-ui, sans-serif; }
main { max-width: 46rem; margin: 0 auto; padding: 1.25rem 1rem 3rem; }
h1 { font-size: 1.9rem; margin: 0.5rem 0 0.25rem; }
h2 { font-size: 1.3rem; margin-top: 2.25rem; border-bottom: 1px solid var(--line); padding-bottom: 0.2rem; }
.tagline { color: var(--muted); margin-top: 0; }
a { color: var(--accent); }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.92em; overflow-wrap: anywhere; }
pre { background: var(--code); border: 1px solid var(--line); border-radius: 6px; padding: 0.75rem;
  white-space: pre-wrap; overflow-wrap: anywhere; }
label { display: block; font-weight: 600; margin-bottom: 0.3rem; }
.hint { color: var(--muted); font-size: 0.95rem; margin: 0.3rem 0 0.6rem; }
.row { display: flex; flex-wrap: wrap; gap: 0.5rem; }
input[type=url] { flex: 1 1 16rem; min-width: 0; font: inherit; padding: 0.55rem 0.65rem; color: var(--fg);
  background: var(--bg); border: 1px solid var(--muted); border-radius: 6px; }
button { font: inherit; font-weight: 600; padding: 0.55rem 1.1rem; min-height: 2.75rem; border: 0;
  border-radius: 6px; background: var(--accent); color: var(--bg); cursor: pointer; }
input:focus-visible, button:focus-visible, a:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.error { color: var(--error); border-left: 4px solid var(--error); padding-left: 0.75rem; }
.table { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 0.95rem; }
caption { text-align: left; color: var(--muted); padding-bottom: 0.4rem; }
th, td { text-align: left; vertical-align: top; padding: 0.4rem 0.5rem; border-bottom: 1px solid var(--line); }
tbody th { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-weight: 400; white-space: nowrap; }
.names { overflow-wrap: anywhere; }
/* A phone is too narrow for four columns: each code becomes a block of labelled lines. */
@media (max-width: 36rem) {
  table, caption, tbody, tr, th, td { display: block; }
  thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); }
  tr { padding: 0.5rem 0; border-bottom: 1px solid var(--line); }
  th, td { border: 0; padding: 0.1rem 0; }
  tbody th { font-weight: 700; }
  td:empty { display: none; }
  td[data-label]::before { content: attr(data-label) ": "; color: var(--muted); }
}
footer { margin-top: 2.5rem; color: var(--muted); font-size: 0.95rem; }
details { margin-top: 0.75rem; }
summary { cursor: pointer; color: var(--accent); font-weight: 600; }
.example { margin-top: 1rem; }
.example p { color: var(--muted); margin-bottom: 0.3rem; }
pre { margin-bottom: 0.4rem; }
button.copy { min-height: 2.25rem; padding: 0.3rem 0.9rem; background: var(--code); color: var(--fg);
  border: 1px solid var(--line); }
</style>
</head>
<body>
<main>
<header>
<h1>pingforward</h1>
<p class="tagline">Pingbacks in, Webmentions out.</p>
</header>
<p>Many blogs, WordPress first among them, still notify the pages they link to with Pingback, an XML-RPC
protocol. pingforward receives those pingbacks for your site and sends each one on to your Webmention endpoint
as a Webmention. It stores nothing: your endpoint's answer goes straight back to the sender as the pingback
result.</p>

<section aria-labelledby="setup-heading">
<h2 id="setup-heading">Set up your site</h2>
<form method="get" action="$action">
<label for="endpoint">Your Webmention endpoint</label>
<p class="hint" id="endpoint-hint">The URL your pages already name in <code>rel="webmention"</code>, for example
<code>https://webmention.io/example.com/webmention</code>.</p>
<div class="row">
<input type="url" id="endpoint" name="endpoint" value="$endpoint" autocomplete="url" spellcheck="false"
 required aria-describedby="endpoint-hint$described"$invalid>
<button type="submit">Show my tags</button>
</div>
</form>
$error$result
<h3 id="check-heading">Check it</h3>
<p>Once your pages carry the tag, check a post of your site with the <code>pingforward</code> command;
<a href="https://pipx.pypa.io/">pipx</a> installs it (Python 3.11 or later), no clone needed:</p>
<pre data-copy="the commands"><code id="check-commands">$install
pingforward check --ping https://your.site/a-post</code></pre>
</section>

<section aria-labelledby="faults-heading">
<h2 id="faults-heading">What senders get back</h2>
<p>The sender gets your endpoint's answer: success for any 2xx, else a Pingback fault code picked by your
endpoint's JSON <code>error</code>; 49 when this instance refuses the forward URL, 50 when your endpoint
cannot be reached or fails. Pings its spam checks refuse (below) never reach your endpoint: 16 when the
source does not exist, 17 when it does not link to your page, 49 when it copies your post, 0 when it is
your page itself.</p>
<details>
<summary>Every fault code, and what WordPress does next</summary>
<div class="table">
<table>
<caption>Pingback fault codes</caption>
<thead><tr><th scope="col">Code</th><th scope="col">Meaning</th><th scope="col">From your endpoint's
<code>error</code></th><th scope="col">WordPress then</th></tr></thead>
<tbody>
<tr><th scope="row">success</th><td>The Webmention was accepted (any 2xx).</td><td class="names"></td>
<td data-label="WordPress">marks the link pinged</td></tr>
$faults
</tbody>
</table>
</div>
<p>Negative codes (−32700 to −32601) are XML-RPC errors: the sender's request was broken, and it never
reached your endpoint.</p>
</details>
</section>

<section aria-labelledby="policy-heading">
<h2 id="policy-heading">This instance</h2>
$policy
</section>

<footer>
<p>pingforward $version · <a href="$project">source and documentation</a></p>
</footer>
</main>
<script>$script</script>
</body>
</html>
""")


def render(page_url: str, endpoint: str | None, settings: Settings) -> tuple[int, str]:
    """The page at `page_url` (no query), with tags for `endpoint` if one was submitted: (status, html)."""
    result, error = Html(""), Html("")
    if endpoint is None:  # what a site's tag looks like, before anything is typed
        example = Tags(f"{page_url}?forward={quote(EXAMPLE_ENDPOINT, safe='')}")
        result = _fill(_EXAMPLE, endpoint=EXAMPLE_ENDPOINT, link=example.link)
    else:
        try:
            tags = tags_for(page_url, endpoint, settings.policy)
        except EndpointError as exc:
            error = _fill(_ERROR, message=str(exc))
        else:
            result = _fill(_RESULT, link=tags.link, header=tags.header)
    page = _fill(
        _PAGE,
        action=urlsplit(page_url).path or "/",
        endpoint=endpoint or "",
        described=" endpoint-error" if error else "",
        invalid=Html(' aria-invalid="true"') if error else Html(""),
        error=error,
        result=result,
        faults=_fault_rows(code for code in FaultCode if code >= 0),
        script=Html(SCRIPT),
        install=INSTALL,
        policy=_policy(settings),
        version=__version__,
        project=PROJECT_URL,
    )
    return (400 if error else 200), page
