"""Find where to notify a page (Webmention endpoint, else Pingback server) and which pages a post links to.

Pure: a page is (final URL, headers, body) and the answers are URLs. No I/O library is imported here.
Specs: https://www.w3.org/TR/webmention/#sender-discovers-receiver-webmention-endpoint (§3.1.2),
https://www.rfc-editor.org/rfc/rfc8288 (Link header), https://www.hixie.ch/specs/pingback/pingback (§2)
and https://microformats.org/wiki/h-entry (which part of a page is the post).
"""

# Why hand-rolled rather than a library:
# - Link header: httpx's parser is private (`httpx._models._parse_header_links`), compares no
#   tokens, loses every parameter after a value-less one or a quoted "=", and `Response.links`
#   keys by the whole rel string with the last duplicate winning (fails rocks test 10).
# - HTML: pages come from strangers, so the scan must be linear in their size. Python 3.11's
#   html.parser is not (see the tokenizer below), nor is lexbor/selectolax on deep nesting, and
#   BeautifulSoup sits on one of those. mf2py adds requests, html5lib and BeautifulSoup for the
#   sake of two class names, and its `rels` turns a missing href into the page URL (rocks 20).
# - No surveyed discovery library passes all 23 webmention.rocks tests in a reusable async form.

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import urldefrag, urljoin

from pingforward.markup import (
    ASCII_WHITESPACE,
    MF2_ROOT,
    Headers,
    OpenElements,
    decode,
    header_values,
    is_html,
    tags,
    words,
)
from pingforward.pingback import is_http_url

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
        links.append(Link(start[1].strip(), words(rel or "")))
    return links


# e-content (microformats.org/wiki/h-entry), and those targets are the ones that most want to know.
RESPONSE_PROPERTIES: Final = frozenset({"u-in-reply-to", "u-like-of", "u-repost-of", "u-bookmark-of"})


@dataclass(frozen=True, slots=True)
class _Place:
    """Where an element sits: the microformat item its content belongs to, and the regions around it."""

    root: int  # the item its descendants belong to: itself if it is a root, else its parent's (0: none)
    in_entry: bool = False  # inside (or is) the first h-entry
    in_content: bool = False  # inside that h-entry's own e-content
    in_response: bool = False  # inside one of that h-entry's response properties
    in_article: bool = False  # inside the first <article>
    in_main: bool = False  # inside the first <main>


@dataclass(slots=True)
class _Page:
    links: list[tuple[str, _Place]]  # every <a href>: the href as written, and where it sits
    base: str | None = None  # the first <base href>
    entry: int = 0  # the first h-entry, in element count; 0 when there is none
    content: int = 0  # its e-content
    article: int = 0
    main: int = 0


def _scan(text: str) -> _Page:
    """Every <a href> in document order, with the place each one sits in."""
    page = _Page([])
    document = _Place(0)
    open_elements: OpenElements[_Place] = OpenElements()
    count = 0
    for is_start, name, attributes in tags(text):
        if not is_start:
            open_elements.close(name)
            continue
        count += 1
        parent = open_elements.innermost or document
        classes = words(attributes.get("class", ""))
        # A property class belongs to the nearest root around the element, not to the element.
        owned = page.entry != 0 and parent.root == page.entry
        if not page.entry and "h-entry" in classes:
            page.entry = count
        if not page.content and owned and "e-content" in classes:
            page.content = count
        if not page.article and name == "article":
            page.article = count
        if not page.main and name == "main":
            page.main = count
        place = _Place(
            count if any(MF2_ROOT.match(item) for item in classes) else parent.root,
            parent.in_entry or page.entry == count,
            parent.in_content or page.content == count,
            parent.in_response or (owned and not RESPONSE_PROPERTIES.isdisjoint(classes)),
            parent.in_article or page.article == count,
            parent.in_main or page.main == count,
        )
        if name == "a" and "href" in attributes:
            page.links.append((attributes["href"], place))
        elif name == "base" and page.base is None and "href" in attributes:
            page.base = attributes["href"]
        open_elements.open(name, place)
    return page


def _resolve(base: str, reference: str) -> str:
    # The URL parser strips leading and trailing ASCII whitespace (WHATWG URL §4.4); urljoin
    # does RFC 3986 §5 resolution, which keeps the reference's own query (rocks test 21).
    return urljoin(base, reference.strip(ASCII_WHITESPACE))


def rel_hrefs(text: str, rel: str, elements: Collection[str] = ("a", "link")) -> Iterator[str]:
    """The href of every element named in `elements` whose rel has the token `rel`, in document order.

    Character references are expanded and nothing is resolved. An element without href names
    nothing and is skipped (rocks 20); a valueless or empty href is "", the page itself (rocks 15).
    """
    for is_start, name, attributes in tags(text):
        if is_start and name in elements and "href" in attributes and rel in words(attributes.get("rel", "")):
            yield attributes["href"]


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
    # "The endpoint MAY be a relative URL, in which case the sender MUST resolve it relative to
    # the target URL": the target's final URL (rocks 23), not a <base>.
    for href in rel_hrefs(decode(headers, body), WEBMENTION):
        return _resolve(url, href)
    return None


# Pingback 1.0 §2.3: "<link rel="pingback" href="([^"]+)" ?/?>" -- a plain text search that the
# spec RECOMMENDS over real HTML parsing, so that all clients agree; a match in a comment counts.
PINGBACK_LINK: Final = re.compile(r'<link rel="pingback" href="([^"]+)" ?/?>')
# §2.2: the href may contain only these four entities, and clients MUST expand them; one pass,
# so "&amp;lt;" becomes "&lt;", not "<".
_PINGBACK_ENTITIES: Final = {"amp": "&", "lt": "<", "gt": ">", "quot": '"'}
_PINGBACK_ENTITY: Final = re.compile(r"&(amp|lt|gt|quot);")


def pingback_link(text: str) -> str | None:
    """The href that Pingback 1.0's regular expression finds in `text`, entities expanded, unresolved."""
    match = PINGBACK_LINK.search(text)
    return None if match is None else _PINGBACK_ENTITY.sub(lambda m: _PINGBACK_ENTITIES[m[1]], match[1])


def discover_pingback(url: str, headers: Headers, body: bytes | str) -> str | None:
    """The pingback server of the page at `url`, or None; an unusable advertisement counts as none."""
    # §2.3: "If the resource has an X-Pingback header, use the value of the first one."
    # Its value MUST be absolute (§2.1); a relative one is resolved rather than thrown away.
    for value in header_values(headers, "x-pingback")[:1]:
        if value.strip() and is_http_url(server := _resolve(url, value)):
            return server
    href = pingback_link(decode(headers, body))
    if href is None:
        return None
    server = _resolve(url, href)
    return server if is_http_url(server) else None


def discover(url: str, headers: Headers, body: bytes | str) -> Endpoint | None:
    """Webmention first (Link header, then HTML), then Pingback (X-Pingback, then the link element)."""
    # A Webmention endpoint anywhere beats any pingback advertisement: WordPress pages often
    # advertise both, and Pushl's Link/X-Pingback/HTML order sent them pingbacks
    # (https://github.com/PlaidWeb/Pushl).
    if (webmention := discover_webmention(url, headers, body)) is not None:
        return Endpoint(Protocol.WEBMENTION, webmention)
    if (pingback := discover_pingback(url, headers, body)) is not None:
        return Endpoint(Protocol.PINGBACK, pingback)
    return None


# ---------------------------------------------------------------------------------------------
# The links a post makes


def _post_links(page: _Page, all_links: bool) -> list[str]:
    """The hrefs of the post's <a> elements, as written."""
    if all_links:
        return [href for href, _ in page.links]
    if page.entry:
        # The post is the first h-entry: its e-content and its response properties; the whole
        # entry when it has neither.
        if page.content or any(place.in_response for _, place in page.links):
            return [href for href, place in page.links if place.in_content or place.in_response]
        return [href for href, place in page.links if place.in_entry]
    # Without microformats: the first <article> (HTML §4.3.2, "a complete, or self-contained,
    # composition"), which leaves out the navigation a <main> usually also holds; else <main>;
    # else the whole page (an <a> cannot sit in <head>: the parser moves it to <body>).
    if page.article:
        return [href for href, place in page.links if place.in_article]
    if page.main:
        return [href for href, place in page.links if place.in_main]
    return [href for href, _ in page.links]


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
    page = _scan(decode(headers, body))
    # HTML §2.4.1: links resolve against the document base URL, set by the first <base href>.
    base = url
    if page.base is not None and is_http_url(document_base := _resolve(url, page.base)):
        base = document_base
    itself = {urldefrag(address)[0] for address in (url, *aliases)}
    found: dict[str, None] = {}
    for href in _post_links(page, all_links):
        target = _resolve(base, href)
        if is_http_url(target) and urldefrag(target)[0] not in itself:
            found.setdefault(target)
    return tuple(found)
