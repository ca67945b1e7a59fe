"""Whether a ping deserves forwarding: its source really links to its target, and is not a copy of it.

Pure: fetched pages go in as values, a `Refusal` (or None) comes out; fetch.py does the fetching. What a
careful receiver does before it accepts a mention, done before the proxy forwards one.
Specs: https://www.hixie.ch/specs/pingback/pingback (§3, the server "SHOULD" check that the source links
to the target; faults 0x10, 0x11) and https://www.w3.org/TR/webmention/#webmention-verification (§3.2.2).
"""

from __future__ import annotations

import functools
import html
import re
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import urldefrag, urljoin, urlsplit

from pingforward.markup import ASCII_WHITESPACE, VOID, Headers, OpenElements, decode, is_html, tags, words
from pingforward.pingback import FaultCode, Ping, is_http_url

# The settings named in refusals (config.py reads them).
VERIFY_SETTING: Final = "PINGFORWARD_VERIFY_SOURCE"
COPY_SETTING: Final = "PINGFORWARD_COPY_SHARE"
MASTER_SETTING: Final = "PINGFORWARD_SPAM_CHECKS"
FETCH_BOUND_SETTING: Final = "PINGFORWARD_FETCH_BOUND"  # the reflector's bound, kept by windows.py

# Read of a fetched page. WordPress reads 150 KB; theme-heavy pages carry a post's links deeper.
MAX_PAGE: Final = 1024 * 1024

# The copy measure: the share of the target's word shingles (runs of SHINGLE consecutive words, Broder's
# resemblance measure, "On the resemblance and containment of documents", 1997) that the source's text
# also contains, its "containment" of the target. A scraper's copy contains nearly all of the target's
# text, whatever it adds around it; a post quoting a paragraph of a five-paragraph article contains
# about a fifth. Only the target's main content counts (see `_CONTENT_CLASSES`), so that its sidebar
# and comments cannot dilute the share. A target shorter than MIN_SHINGLES (a note of a few sentences)
# is never judged: quoting a short note whole is what a reply does.
SHINGLE: Final = 5
MIN_SHINGLES: Final = 40
DEFAULT_COPY_SHARE: Final = 0.5
# The element holding a post's own text: microformats2's e-content (https://microformats.org/wiki/h-entry),
# and the class names WordPress's themes give it (classic themes' entry-content, block themes'
# wp-block-post-content); else the first <article>, else the first <main>, else the whole page.
_CONTENT_CLASSES: Final = frozenset({"e-content", "entry-content", "post-content", "wp-block-post-content"})
_WORD: Final = re.compile(r"\w+")
# Characters that show nothing: a soft hyphen or a zero-width joiner inside a word leaves it whole for a
# reader, so it must for the measure too (else "weath&shy;er" hides a copy). Unicode's format characters
# (category Cf) that occur in text: https://www.unicode.org/reports/tr44/#General_Category_Values
_INVISIBLE: Final = re.compile("[\u00ad\u034f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
# The target's shingles are made only for the copy check, which most junk never reaches; its set holds at
# most the shingles of this much text (about 40,000, 3 MB). The source's text is read whole, up to the page
# cap: a copy pushed below this much filler is still a copy.
MAX_SHINGLED: Final = 256 * 1024


class Missing(StrEnum):
    """Why a page could not be read."""

    GONE = "gone"  # it does not exist: 404, 410, no such host name, not a URL that can be fetched
    UNREACHABLE = "unreachable"  # for now: a timeout, a 5xx, a refused or broken connection
    BOUND = "bound"  # not fetched: too many fetches to its host just now (a reflector's bound)


@dataclass(frozen=True, slots=True)
class Unread:
    """A page that could not be read, and why, in words that name the host."""

    missing: Missing
    reason: str


@dataclass(frozen=True, slots=True)
class Page:
    """What the checks need of a fetched page; `url` is where it was read, after redirects."""

    url: str
    links: frozenset[str]  # every href and src, resolved, by `_same_resource`'s key
    text: str | None  # a document that is not HTML: its text, where a link is a URL written out
    visible: str  # all its visible text, for the copy check as a source
    content: str  # the text of its main content: what a copy of it would carry, as a target

    @property
    def size(self) -> int:
        """About the bytes it holds, for the cache's bound (the content is a slice of the rest)."""
        return sum(len(link) + 50 for link in self.links) + 2 * len(self.visible) + 200


@dataclass(frozen=True, slots=True)
class Refusal:
    """A ping refused before forwarding: its fault, the words saying why, and a short name for logs."""

    code: FaultCode
    text: str
    name: str  # self_ping, source_gone, source_unreachable, fetch_bound, no_link, copy


def _same_resource(url: str) -> str | None:
    """A key equal for URLs naming one resource: fragment dropped, scheme and host lower-cased, an IDN host in
    its ASCII form, default port and empty path made explicit, percent-encodings normalized and dot-segments
    removed (RFC 3986 §6.2.2 and §6.2.3). None for what is not an http(s) URL."""
    try:
        parts = urlsplit(urldefrag(url)[0])
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = _ascii_host(parts.hostname.rstrip("."))
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, {"http": 80, "https": 443}[scheme]) else f"{host}:{port}"
    # urljoin removes dot-segments (RFC 3986 §5.2.4), as a browser does before it requests the page.
    path = _normal_escapes(urlsplit(urljoin("http://h/", parts.path or "/")).path)
    query = _normal_escapes(parts.query)
    return f"{scheme}://{netloc}{path}{'?' + query if query else ''}"


# RFC 3986 §2.3: unreserved characters mean the same percent-encoded or not.
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE: Final = re.compile(r"%([0-9A-Fa-f]{2})")
# What a browser percent-encodes in a URL's path and query before requesting it (WHATWG URL, "path
# percent-encode set"): controls, space, and every non-ASCII character, as UTF-8.
_TO_ENCODE: Final = re.compile(r'[^\x21-\x7e]|["<>`{}]')


def _normal_escapes(part: str) -> str:
    """`part` with what a browser encodes encoded, unreserved characters decoded and the rest's hex in
    upper case (RFC 3986 §6.2.2.1 and §6.2.2.2)."""
    part = _TO_ENCODE.sub(lambda m: "".join(f"%{byte:02X}" for byte in m[0].encode("utf-8", "replace")), part)

    def one(match: re.Match[str]) -> str:
        char = chr(int(match[1], 16))
        return char if char in _UNRESERVED else f"%{match[1].upper()}"

    return _ESCAPE.sub(one, part)


def _ascii_host(host: str) -> str:
    """An internationalized host name in its ASCII (punycode) form, as it is looked up (RFC 5891 §4)."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:  # not a valid IDN: compared as written
        return host


def shingles(text: str) -> frozenset[int]:
    """The hashes of every run of SHINGLE consecutive words, case folded (a shorter text: the text's one run).

    Only the first MAX_SHINGLED characters count: a target's main content is its post, and the sets of the
    last few targets are kept (one post's 40 pings compare one source with 40 targets).
    """
    return _shingles(text[:MAX_SHINGLED])


@functools.lru_cache(maxsize=8)
def _shingles(text: str) -> frozenset[int]:
    return frozenset(_runs(text))


@functools.lru_cache(maxsize=8)
def _all_runs(text: str) -> array[int]:
    # 8 bytes a shingle: the runs of a source read whole (at most the page cap) cost about a tenth of a set.
    return array("q", _runs(text))


def _runs(text: str) -> Iterable[int]:
    found = _WORD.findall(_INVISIBLE.sub("", text).lower())
    if len(found) < SHINGLE:
        return (hash(tuple(found)),) if found else ()
    return map(hash, zip(*(found[i:] for i in range(SHINGLE)), strict=False))


def read_page(url: str, headers: Headers, body: bytes) -> Page:
    """Read a fetched page: its links (HTML), or its text (anything else), and its words for the copy check.

    `url` is the page's final URL; links resolve against it or the page's first <base href> (HTML §2.4.1),
    as `urljoin` resolves references (RFC 3986 §5). Character references in attributes are expanded by
    the scanner (HTML §13.2.5).
    """
    text = decode(headers, body)
    if not is_html(headers):
        return Page(url, frozenset(), text, text, text)
    texts: list[str] = []
    hrefs: list[str] = []
    base = url
    based = False
    # Where each candidate for the main content starts and ends, as indices into `texts`, and its depth.
    spans: dict[str, tuple[int, int | None, int]] = {}
    open_elements: OpenElements[None] = OpenElements()
    for is_start, name, attributes in tags(text, texts):
        if not is_start:
            open_elements.close(name)
            for kind, (start, end, depth) in spans.items():
                if end is None and len(open_elements.stack) <= depth:  # it was closed, with what it held
                    spans[kind] = (start, len(texts), depth)
            continue
        for attribute in ("href", "src"):
            if attribute in attributes:
                hrefs.append(attributes[attribute])
        if name == "base" and not based and "href" in attributes:
            based = True
            candidate = urljoin(url, attributes["href"].strip(ASCII_WHITESPACE))
            if is_http_url(candidate):
                base = candidate
        if name not in VOID:
            if "content" not in spans and not _CONTENT_CLASSES.isdisjoint(words(attributes.get("class", ""))):
                spans["content"] = (len(texts), None, len(open_elements.stack))
            elif name in ("article", "main") and name not in spans:
                spans[name] = (len(texts), None, len(open_elements.stack))
        open_elements.open(name, None)
    links = frozenset(filter(None, (_same_resource(urljoin(base, href.strip(ASCII_WHITESPACE))) for href in hrefs)))
    visible = _unescaped(texts)
    content = visible
    for kind in ("content", "article", "main"):
        if kind in spans:
            start, end, _ = spans[kind]
            content = _unescaped(texts[start:end])
            break
    return Page(url, links, None, visible, content)


def _unescaped(texts: Iterable[str]) -> str:
    return html.unescape("".join(texts))  # markup.tags put a space wherever a tag breaks the text


def links_to(page: Page, target: str) -> bool:
    """Whether the page links to `target`: an href or src resolving to it (fragments aside), or, in a
    document that is not HTML, the URL written out in its text (Webmention §3.2.2: by media type)."""
    if page.text is not None:
        bare = urldefrag(target)[0]
        # JSON may write "/" as "\/" (RFC 8259 §7), as WordPress's REST API does.
        return bare in page.text or bare.replace("/", "\\/") in page.text
    key = _same_resource(target)
    return key is not None and key in page.links


def copied_share(source: Page, target: Page) -> float | None:
    """The share of the target's main-content shingles that the source's text contains; None when the
    target has too little text to tell a copy from a quotation."""
    theirs = shingles(target.content)
    if len(theirs) < MIN_SHINGLES:
        return None
    return len(theirs.intersection(_all_runs(source.visible))) / len(theirs)


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").rstrip(".")


def junk(ping: Ping) -> Refusal | None:
    """What is refused without fetching anything: a source that is its own target (WordPress's fault 0)."""
    if _same_resource(ping.source) == _same_resource(ping.target):
        return Refusal(
            FaultCode.GENERIC,
            f"The source URI and the target URI cannot both point to the same resource ({MASTER_SETTING}).",
            "self_ping",
        )
    return None


def judge(ping: Ping, source: Page | Unread, target: Page | Unread | None, copy_share: float | None) -> Refusal | None:
    """Decide on a ping from its fetched source (and target, for the copy check; None: not fetched).

    `copy_share` is the share of the target's text above which the source is a copy (None: no copy check).
    """
    if isinstance(source, Unread):
        if source.missing is Missing.GONE:
            return Refusal(
                FaultCode.SOURCE_NOT_FOUND,
                f"The source URI does not exist: {source.reason} ({VERIFY_SETTING}).",
                "source_gone",
            )
        # Pingback 1.0's 0x0032, "could not communicate with an upstream server": a sender retries it
        # (WordPress pings again on the next update after any fault but 48).
        bound = source.missing is Missing.BOUND
        return Refusal(
            FaultCode.UPSTREAM_ERROR,
            f"The source URI could not be checked now: {source.reason}; try again later "
            f"({FETCH_BOUND_SETTING if bound else VERIFY_SETTING}).",
            "fetch_bound" if bound else "source_unreachable",
        )
    if not links_to(source, ping.target):
        return Refusal(
            FaultCode.NO_LINK,
            f"The source URI does not contain a link to the target URI ({VERIFY_SETTING}).",
            "no_link",
        )
    if isinstance(target, Unread) and target.missing is Missing.BOUND and copy_share is not None:
        # Past the fetch bound a ping waits, as every other ping past it does: a copy must not pass for
        # want of the target's text while junk pings naming the owner's pages use up the bound.
        return Refusal(
            FaultCode.UPSTREAM_ERROR,
            f"The target URI could not be read now to compare: {target.reason}; try again later "
            f"({FETCH_BOUND_SETTING}).",
            "fetch_bound",
        )
    if copy_share is None or not isinstance(target, Page) or _host(source.url) == _host(target.url):
        # A site cannot scrape itself: two posts of one blog share its theme's text, and may link.
        return None
    share = copied_share(source, target)
    if share is not None and share >= copy_share:
        # Fault 0x31, access denied: the source exists and links, so 16 and 17 would be untrue; 48 would
        # tell the sender the mention was taken (WordPress stops pinging on it and some senders count it
        # a success). A copy-blog pinging again later is refused again, from the cache.
        return Refusal(
            FaultCode.ACCESS_DENIED,
            f"The source URI copies the target URI: it carries {share:.0%} of the target's text ({COPY_SETTING}).",
            "copy",
        )
    return None
