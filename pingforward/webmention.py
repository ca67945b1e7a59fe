"""Find where to notify a page (Webmention endpoint, else Pingback server) and which pages a post links to.

Pure: a page is (final URL, headers, body) and the answers are URLs. No I/O library is imported here.
Specs: https://www.w3.org/TR/webmention/#sender-discovers-receiver-webmention-endpoint (§3.1.2),
https://www.rfc-editor.org/rfc/rfc8288 (Link header), https://www.hixie.ch/specs/pingback/pingback (§2)
and https://microformats.org/wiki/h-entry (which part of a page is the post).
"""

# Why hand-rolled rather than a library (reference/sending.md §3 has the survey):
# - Link header: httpx's parser is private (`httpx._models._parse_header_links`), compares no
#   tokens, loses every parameter after a value-less one or a quoted "=", and `Response.links`
#   keys by the whole rel string with the last duplicate winning (fails rocks test 10).
# - HTML: the stdlib `html.parser` tokenizes like a browser for what matters here (comments,
#   <script>/<style> raw text, attribute entities), and one pass collects everything we need.
#   mf2py would add requests, html5lib and BeautifulSoup for the sake of two class names, and its
#   `rels` turns a missing href into the page URL (fails rocks test 20).
# - No surveyed discovery library passes all 23 webmention.rocks tests in a reusable async form.

from __future__ import annotations

import codecs
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from html.parser import HTMLParser
from typing import Final
from urllib.parse import urldefrag, urljoin

from pingforward.pingback import is_http_url

Headers = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]
"""Response headers: (name, value) pairs in order, or a mapping whose values may list repeated fields."""

HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})
WEBMENTION: Final = "webmention"


class Protocol(StrEnum):
    WEBMENTION = "webmention"
    PINGBACK = "pingback"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to notify one target."""

    protocol: Protocol
    url: str


@dataclass(frozen=True, slots=True)
class Link:
    """One RFC 8288 link-value: the URI reference as written and its relation types, lower-cased."""

    url: str
    rels: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Headers


def header_values(headers: Headers, name: str) -> list[str]:
    """Every field named `name` (case-insensitively, rocks test 7), in order, one entry per field."""
    name = name.lower()
    if isinstance(headers, Mapping):
        # httpx.Headers and starlette's Headers are mappings that join repeated fields with ", ";
        # their multi_items() keeps the fields apart.
        multi_items = getattr(headers, "multi_items", None)
        if multi_items is None:
            return [
                item
                for key, value in headers.items()
                if key.lower() == name
                for item in ([value] if isinstance(value, str) else value)
            ]
        pairs: Iterable[tuple[str, str]] = multi_items()
    else:
        pairs = headers
    return [value for key, value in pairs if key.lower() == name]


# RFC 8288 §3: Link = #link-value; link-value = "<" URI-Reference ">" *( OWS ";" OWS link-param );
# link-param = token BWS [ "=" BWS ( token / quoted-string ) ]. Parameter names are
# case-insensitive (§3), hence the flag; a URI reference cannot contain ">" (RFC 3986).
_URI_REFERENCE: Final = re.compile(r"[ \t]*<([^>]*)>")
_PARAM: Final = re.compile(
    r"""[ \t]*;[ \t]*([!#$%&'*+.^_`|~0-9a-z-]+)[ \t]*(?:=[ \t]*("(?:[^"\\]|\\.)*"|[^ \t;,"]*))?""",
    re.IGNORECASE,
)
_QUOTED_PAIR: Final = re.compile(r"\\(.)")


def _skip_link_value(value: str, pos: int) -> int:
    """The position after the next comma that is outside <...> and quotes: recovery from junk."""
    quoted = bracketed = False
    while pos < len(value):
        char = value[pos]
        if quoted:
            if char == "\\":
                pos += 1
            elif char == '"':
                quoted = False
        elif bracketed:
            bracketed = char != ">"
        elif char == '"':
            quoted = True
        elif char == "<":
            bracketed = True
        elif char == ",":
            return pos + 1
        pos += 1
    return pos


def parse_link_header(value: str) -> list[Link]:
    """The link-values of one Link field in order; malformed ones are skipped, not fatal."""
    links: list[Link] = []
    pos = 0
    while pos < len(value):
        if value[pos] in " \t,":
            pos += 1
            continue
        start = _URI_REFERENCE.match(value, pos)
        if start is None:
            pos = _skip_link_value(value, pos)
            continue
        pos = start.end()
        rel: str | None = None
        while param := _PARAM.match(value, pos):
            pos = param.end()
            name, raw = param[1].lower(), param[2] or ""
            # §3.3: "The rel parameter MUST NOT appear more than once in a given link-value;
            # occurrences after the first MUST be ignored by parsers."
            if name == "rel" and rel is None:
                rel = _QUOTED_PAIR.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
        rest = value[pos:].lstrip(" \t")
        if rest and not rest.startswith(","):
            pos = _skip_link_value(value, pos)  # junk after the parameters: drop this link-value
            continue
        # §3.3: the relation types are a space-separated list, compared case-insensitively (§2.1.1).
        links.append(Link(start[1].strip(), _tokens(rel or "")))
    return links


def _ascii_lower(text: str) -> str:
    # HTML (§2.3.3) and RFC 8288 compare keywords ASCII case-insensitively; str.lower() would
    # also fold non-ASCII letters, such as U+212A KELVIN SIGN to "k".
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_WHITESPACE: Final = "\t\n\f\r "


def _tokens(text: str) -> tuple[str, ...]:
    # Split on ASCII whitespace only (HTML §2.3.8): U+00A0 inside a token is part of the token.
    return tuple(token for token in _ASCII_SPACES.split(_ascii_lower(text)) if token)


_ASCII_SPACES: Final = re.compile("[\t\n\f\r ]+")


# ---------------------------------------------------------------------------------------------
# Body decoding


def media_type(headers: Headers) -> str:
    """The first Content-Type's media type, lower-cased; "" when there is none."""
    values = header_values(headers, "content-type")
    return _ascii_lower(values[0].split(";", 1)[0].strip()) if values else ""


def is_html(headers: Headers) -> bool:
    """True when the body should be read as HTML: an HTML media type, or none at all."""
    return media_type(headers) in HTML_TYPES | {""}


_CHARSET_PARAM: Final = re.compile(r"""charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_META_CHARSET: Final = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_BOMS: Final = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _codec(label: str | bytes | None) -> str | None:
    if label is None:
        return None
    name = label.decode("ascii", "replace") if isinstance(label, bytes) else label
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode(headers: Headers, body: bytes | str) -> str:
    """The body as text: a BOM, then the Content-Type charset, then a <meta> charset, else UTF-8."""
    if isinstance(body, str):
        return body
    # A simplified form of the HTML encoding sniffing algorithm (HTML §13.2.3.2): the prescan
    # looks at the first 1024 bytes. Undecodable bytes become U+FFFD rather than an error.
    for bom, name in _BOMS:
        if body.startswith(bom):
            return body.decode(name, "replace")
    content_type = header_values(headers, "content-type")
    declared = _CHARSET_PARAM.search(content_type[0]) if content_type else None
    meta = _META_CHARSET.search(body[:1024])
    name = (declared and _codec(declared[1])) or (meta and _codec(meta[1])) or "utf-8"
    return body.decode(name, "replace")


# ---------------------------------------------------------------------------------------------
# HTML: one pass collects every <a>/<link> with its rel and href, and where it sits in the page


# HTML §13.1.2: void elements have no end tag, so they never enclose anything.
_VOID: Final = frozenset(
    "area base br col embed hr img input keygen link meta param source track wbr".split(),
)
# Elements whose content is text, not markup (HTML §13.1.2.6, raw text and escapable raw text).
# html.parser itself knows only <script> and <style> (before Python 3.14), so the rest are skipped here.
_TEXT_ONLY: Final = frozenset({"title", "textarea", "xmp", "iframe", "noembed", "noframes"})
# h-entry "response" properties: a reply, like, repost or bookmark names its target outside
# e-content (microformats.org/wiki/h-entry), and those targets are the ones that most want to know.
RESPONSE_PROPERTIES: Final = frozenset({"u-in-reply-to", "u-like-of", "u-repost-of", "u-bookmark-of"})
_ROOT_CLASS: Final = re.compile(r"h(?:-[a-z0-9]+)+\Z")  # microformats2 root class names


@dataclass(frozen=True, slots=True)
class _Anchor:
    tag: str
    rels: tuple[str, ...]
    href: str | None  # None: no href attribute at all, "" for href="" (rocks tests 15 and 20)
    in_head: bool
    in_entry: bool  # inside the first h-entry
    in_content: bool  # inside that h-entry's first e-content
    in_response: bool  # inside one of its response properties
    in_article: bool  # inside the first <article>
    in_main: bool  # inside the first <main>


@dataclass(frozen=True, slots=True)
class _Element:
    tag: str
    id: int
    root: int | None  # the microformat root its descendants belong to: itself if it is one
    response_of: int | None  # the root this element is a response property of


class _Scan(HTMLParser):
    """Collects <a> and <link> elements with the page regions they sit in, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[_Anchor] = []
        self.base: str | None = None
        self.entry: int | None = None
        self.content: int | None = None
        self.article: int | None = None
        self.main: int | None = None
        self._open: list[_Element] = []
        self._count = 0
        self._text_only: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._text_only is not None:
            return
        if tag in _TEXT_ONLY:
            self._text_only = tag
            return
        # HTML §13.2.5.33: a repeated attribute is a parse error, and the first one counts.
        first: dict[str, str | None] = {}
        for name, value in attrs:
            first.setdefault(name, value)
        if tag == "base" and self.base is None and "href" in first:
            self.base = first["href"] or ""
        if tag in _VOID and tag != "link":
            return
        classes = _tokens(first.get("class") or "")
        owner = self._open[-1].root if self._open else None  # the item this element belongs to
        self._count += 1
        element = _Element(
            tag,
            self._count,
            self._count if any(_ROOT_CLASS.match(name) for name in classes) else owner,
            owner if RESPONSE_PROPERTIES.intersection(classes) else None,
        )
        if self.entry is None and "h-entry" in classes:
            self.entry = element.id
        # The e-content of the first h-entry itself, not of an item nested inside it.
        if self.content is None and self.entry is not None and owner == self.entry and "e-content" in classes:
            self.content = element.id
        if self.article is None and tag == "article":
            self.article = element.id
        if self.main is None and tag == "main":
            self.main = element.id
        if tag == "link":
            self._anchor(tag, first, [*self._open, element])
        else:
            self._open.append(element)
            if tag == "a":
                self._anchor(tag, first, self._open)

    def _anchor(self, tag: str, attrs: Mapping[str, str | None], chain: Sequence[_Element]) -> None:
        ids = {element.id for element in chain}
        self.anchors.append(
            _Anchor(
                tag,
                # HTML §4.6.7: rel is a set of space-separated tokens, ASCII case-insensitive.
                _tokens(attrs.get("rel") or ""),
                (attrs["href"] or "") if "href" in attrs else None,
                in_head=any(element.tag == "head" for element in chain),
                in_entry=self.entry in ids,
                in_content=self.content in ids,
                in_response=self.entry is not None and any(element.response_of == self.entry for element in chain),
                in_article=self.article in ids,
                in_main=self.main in ids,
            )
        )

    def handle_endtag(self, tag: str) -> None:
        if self._text_only is not None:
            if tag == self._text_only:
                self._text_only = None
            return
        # An end tag closes its element and whatever was left open inside it (<p>, <li>...);
        # a stray end tag closes nothing.
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index].tag == tag:
                del self._open[index:]
                return


def _scan(text: str) -> _Scan:
    scan = _Scan()
    scan.feed(text)
    scan.close()
    return scan


def _resolve(base: str, reference: str) -> str:
    # The URL parser strips leading and trailing ASCII whitespace (WHATWG URL §4.4); urljoin
    # does RFC 3986 §5 resolution, which keeps the reference's own query (rocks test 21).
    return urljoin(base, reference.strip(_ASCII_WHITESPACE))


# ---------------------------------------------------------------------------------------------
# Discovery


def discover_webmention(url: str, headers: Headers, body: bytes | str) -> str | None:
    """The Webmention endpoint of the page at `url` (its final URL, after redirects), or None."""
    # §3.1.2: "check for an HTTP Link header with a rel value of webmention. If the content type
    # of the document is HTML, then the sender MUST look for an HTML <link> and <a> element with
    # a rel value of webmention. If more than one of these is present, the first HTTP Link header
    # takes precedence, followed by the first <link> or <a> element in document order."
    for field_value in header_values(headers, "link"):  # every field (rocks 18), every value (19)
        for link in parse_link_header(field_value):
            if WEBMENTION in link.rels:
                return _resolve(url, link.url)
    if not is_html(headers):
        return None
    for anchor in _scan(decode(headers, body)).anchors:
        # A <link> without href names no endpoint and is skipped (rocks 20); href="" is the page
        # itself (rocks 15). "The endpoint MAY be a relative URL, in which case the sender MUST
        # resolve it relative to the target URL": the target's final URL (rocks 23), not a <base>.
        if WEBMENTION in anchor.rels and anchor.href is not None:
            return _resolve(url, anchor.href)
    return None


# Pingback 1.0 §2.3: "<link rel="pingback" href="([^"]+)" ?/?>" -- a plain text search that the
# spec RECOMMENDS over real HTML parsing, so that all clients agree; a match in a comment counts.
PINGBACK_LINK: Final = re.compile(r'<link rel="pingback" href="([^"]+)" ?/?>')
# §2.2: the href may contain only these four entities, and clients MUST expand them; one pass,
# so "&amp;lt;" becomes "&lt;", not "<".
_PINGBACK_ENTITIES: Final = {"amp": "&", "lt": "<", "gt": ">", "quot": '"'}
_PINGBACK_ENTITY: Final = re.compile(r"&(amp|lt|gt|quot);")


def discover_pingback(url: str, headers: Headers, body: bytes | str) -> str | None:
    """The pingback server of the page at `url`, or None; an unusable advertisement counts as none."""
    # §2.3: "If the resource has an X-Pingback header, use the value of the first one."
    # Its value MUST be absolute (§2.1); a relative one is resolved rather than thrown away.
    for value in header_values(headers, "x-pingback")[:1]:
        if value.strip() and is_http_url(server := _resolve(url, value)):
            return server
    match = PINGBACK_LINK.search(decode(headers, body))
    if match is None:
        return None
    server = _resolve(url, _PINGBACK_ENTITY.sub(lambda m: _PINGBACK_ENTITIES[m[1]], match[1]))
    return server if is_http_url(server) else None


def discover(url: str, headers: Headers, body: bytes | str) -> Endpoint | None:
    """Webmention first (Link header, then HTML), then Pingback (X-Pingback, then the link element)."""
    # A Webmention endpoint anywhere beats any pingback advertisement: WordPress pages often
    # advertise both, and Pushl's Link/X-Pingback/HTML order sent them pingbacks (sending.md §3).
    if (webmention := discover_webmention(url, headers, body)) is not None:
        return Endpoint(Protocol.WEBMENTION, webmention)
    if (pingback := discover_pingback(url, headers, body)) is not None:
        return Endpoint(Protocol.PINGBACK, pingback)
    return None


# ---------------------------------------------------------------------------------------------
# The links a post makes


def _post_anchors(anchors: Sequence[_Anchor], scan: _Scan, all_links: bool) -> Iterator[_Anchor]:
    links = [anchor for anchor in anchors if anchor.tag == "a" and anchor.href is not None]
    if all_links:
        return iter(links)
    if scan.entry is not None:
        # The post is the first h-entry: its e-content and its response properties; the whole
        # entry when it has neither.
        if scan.content is not None or any(anchor.in_response for anchor in links):
            return (anchor for anchor in links if anchor.in_content or anchor.in_response)
        return (anchor for anchor in links if anchor.in_entry)
    # Without microformats: the first <article> (HTML §4.3.2, "a complete, or self-contained,
    # composition"), which leaves out the navigation a <main> usually also holds; else <main>.
    if scan.article is not None:
        return (anchor for anchor in links if anchor.in_article)
    if scan.main is not None:
        return (anchor for anchor in links if anchor.in_main)
    return (anchor for anchor in links if not anchor.in_head)


def extract_links(
    url: str,
    headers: Headers,
    body: bytes | str,
    *,
    all_links: bool = False,
    aliases: Collection[str] = (),
) -> tuple[str, ...]:
    """The distinct http(s) URLs the post at `url` links to, absolute, in document order.

    Links to the page itself (`url` or any of `aliases`, fragments ignored) are left out.
    """
    scan = _scan(decode(headers, body))
    # HTML §2.4.1: links resolve against the document base URL, set by the first <base href>.
    base = url
    if scan.base is not None and is_http_url(document_base := _resolve(url, scan.base)):
        base = document_base
    itself = {urldefrag(page)[0] for page in (url, *aliases)}
    found: dict[str, None] = {}
    for anchor in _post_anchors(scan.anchors, scan, all_links):
        assert anchor.href is not None
        target = _resolve(base, anchor.href)
        if is_http_url(target) and urldefrag(target)[0] not in itself:
            found.setdefault(target)
    return tuple(found)
