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
# - HTML: pages come from strangers, so the scan must be linear in their size. Python 3.11's
#   html.parser is not (see the tokenizer below), nor is lexbor/selectolax on deep nesting, and
#   BeautifulSoup sits on one of those. mf2py adds requests, html5lib and BeautifulSoup for the
#   sake of two class names, and its `rels` turns a missing href into the page URL (rocks 20).
# - No surveyed discovery library passes all 23 webmention.rocks tests in a reusable async form.

from __future__ import annotations

import codecs
import html
import html.entities
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
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
        # httpx.Headers.items() joins repeated fields with ", " (two X-Pingback fields would
        # become one bogus URL); its multi_items() keeps the fields apart.
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
# HTML: a tokenizer that finds start and end tags, and one pass that places every <a href>
#
# Not html.parser: on Python 3.11 it re-scans the rest of the page from every "<" that does not
# complete a tag or comment, so "<a " repeated 13,000 times takes 28 s and a hostile 1 MB target
# page would stall the event loop for hours; it also expands "&region=" in an href to "®ion=".
# Nor a tree builder: lexbor (selectolax) needs minutes for 200,000 nested <div>s. This tokenizer
# follows HTML §13.2.5 where it matters here: comments, bogus comments, raw text and escapable
# raw text are skipped, and a construct still open at the end of the input runs to the end of
# the input (an EOF parse error), so scanning stops there and every character is looked at once.

# Elements whose content is text, not markup (HTML §13.1.2: raw text and escapable raw text
# elements; <noscript> as a browser with scripting sees it). After <plaintext>, all is text.
_TEXT_ONLY: Final = frozenset(
    {"script", "style", "xmp", "iframe", "noembed", "noframes", "noscript", "title", "textarea"}
)
_TEXT_END: Final = {name: re.compile(f"</{name}[\t\n\f\r />]", re.IGNORECASE) for name in _TEXT_ONLY}
# HTML §13.1.2: void elements have no end tag, so they never enclose anything.
_VOID: Final = frozenset("area base br col embed hr img input keygen link meta param source track wbr".split())
_TAG_NAME: Final = re.compile(r"[A-Za-z][^\t\n\f\r />]*")
_ATTRIBUTE_GAP: Final = re.compile(r"[\t\n\f\r /]*")
_ATTRIBUTE_NAME: Final = re.compile(r"[^\t\n\f\r />][^\t\n\f\r /=>]*")
_ATTRIBUTE_EQUALS: Final = re.compile(r"[\t\n\f\r ]*=[\t\n\f\r ]*")
_UNQUOTED_VALUE: Final = re.compile(r"[^\t\n\f\r >]*")
_COMMENT_END: Final = re.compile("--!?>")
_CHARACTER_REFERENCE: Final = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]*;?)")

Attributes = dict[str, str]
Token = tuple[bool, str, Attributes]  # (is a start tag, lower-case name, attributes)


def _unescape_attribute(value: str) -> str:
    """Expand character references in an attribute value the way HTML §13.2.5.72-80 does."""

    def expand(match: re.Match[str]) -> str:
        reference = match[1]
        if reference.startswith("#"):
            return html.unescape(match[0])  # numeric: the spec's replacements are built in
        if reference.endswith(";") and reference in html.entities.html5:
            return html.entities.html5[reference]
        # A legacy name without ";" (&copy, &not, &reg...) is left alone in an attribute when an
        # "=" or an alphanumeric follows (§13.2.5.73), so "?a=1&region=2" keeps its "&region".
        if (
            not reference.endswith(";")
            and reference in html.entities.html5
            and value[match.end() : match.end() + 1] != "="
        ):
            return html.entities.html5[reference]
        return match[0]

    return _CHARACTER_REFERENCE.sub(expand, value) if "&" in value else value


def _end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """Where a pattern that also matches "" stops matching from `pos`."""
    match = pattern.match(text, pos)
    assert match is not None
    return match.end()


def _attributes(text: str, pos: int) -> tuple[Attributes, int] | None:
    """The attributes of a start tag from `pos` and the position after its ">"; None at EOF."""
    attributes: Attributes = {}
    while True:
        pos = _end(_ATTRIBUTE_GAP, text, pos)
        if pos >= len(text):
            return None
        if text[pos] == ">":
            return attributes, pos + 1
        name_match = _ATTRIBUTE_NAME.match(text, pos)
        assert name_match is not None  # text[pos] is none of the gap characters nor ">"
        pos, value = name_match.end(), ""
        if equals := _ATTRIBUTE_EQUALS.match(text, pos):
            pos = equals.end()
            if pos >= len(text):
                return None
            if text[pos] in "\"'":
                end = text.find(text[pos], pos + 1)
                if end == -1:
                    return None
                value, pos = text[pos + 1 : end], end + 1
            else:
                end = _end(_UNQUOTED_VALUE, text, pos)
                value, pos = text[pos:end], end
        # §13.2.5.33: a repeated attribute is a parse error and the first one counts.
        attributes.setdefault(_ascii_lower(name_match[0]), _unescape_attribute(value))


def _html_tokens(text: str) -> Iterator[Token]:
    """Start and end tags in document order; everything else is skipped."""
    pos = 0
    while (lt := text.find("<", pos)) != -1:
        after = text[lt + 1 : lt + 2]
        if after.isascii() and after.isalpha():  # §13.2.5.6 tag open state
            name_match = _TAG_NAME.match(text, lt + 1)
            assert name_match is not None
            name = _ascii_lower(name_match[0])
            parsed = _attributes(text, name_match.end())
            if parsed is None:
                return
            attributes, pos = parsed
            yield True, name, attributes
            if name == "plaintext":
                return
            if name in _TEXT_ONLY:
                end = _TEXT_END[name].search(text, pos)
                if end is None:
                    return
                pos = end.start()
        elif after == "/":  # §13.2.5.7 end tag open state
            name_match = _TAG_NAME.match(text, lt + 2)
            gt = text.find(">", lt + 2)
            if gt == -1:
                return
            if name_match is not None:
                yield False, _ascii_lower(name_match[0]), {}
            pos = gt + 1
        elif text.startswith("!--", lt + 1):  # §13.2.5.43 comment start state
            if text.startswith(">", lt + 4) or text.startswith("->", lt + 4):  # <!--> and <!--->
                pos = text.index(">", lt + 4) + 1
                continue
            end = _COMMENT_END.search(text, lt + 4)
            if end is None:
                return
            pos = end.end()
        elif after in ("!", "?"):  # <!DOCTYPE ...>, <![CDATA[...]>, <?xml ...?>: bogus comments
            gt = text.find(">", lt + 2)
            if gt == -1:
                return
            pos = gt + 1
        else:  # a "<" that opens nothing is text
            pos = lt + 1


# h-entry "response" properties: a reply, like, repost or bookmark names its target outside
# e-content (microformats.org/wiki/h-entry), and those targets are the ones that most want to know.
RESPONSE_PROPERTIES: Final = frozenset({"u-in-reply-to", "u-like-of", "u-repost-of", "u-bookmark-of"})
_ROOT_CLASS: Final = re.compile(r"h(?:-[a-z0-9]+)+\Z")  # microformats2 root class names


@dataclass(frozen=True, slots=True)
class _Place:
    """Where an element sits: the microformat item its content belongs to, and the regions around it."""

    tag: str
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
    document = _Place("", 0)
    open_elements: list[_Place] = []
    open_count: dict[str, int] = {}  # per tag name, so a stray end tag costs no stack walk
    count = 0
    for is_start, name, attributes in _html_tokens(text):
        if not is_start:
            # An end tag closes its element and whatever is still open inside it (<p>, <li>...).
            # A stray one closes nothing; </body> and </html> close nothing either (§13.2.6.4.7).
            if open_count.get(name) and name not in ("body", "html"):
                while (closed := open_elements.pop()).tag != name:
                    open_count[closed.tag] -= 1
                open_count[name] -= 1
            continue
        count += 1
        parent = open_elements[-1] if open_elements else document
        classes = _tokens(attributes.get("class", ""))
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
            name,
            count if any(_ROOT_CLASS.match(item) for item in classes) else parent.root,
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
        if name not in _VOID:
            open_elements.append(place)
            open_count[name] = open_count.get(name, 0) + 1
    return page


def _resolve(base: str, reference: str) -> str:
    # The URL parser strips leading and trailing ASCII whitespace (WHATWG URL §4.4); urljoin
    # does RFC 3986 §5 resolution, which keeps the reference's own query (rocks test 21).
    return urljoin(base, reference.strip(_ASCII_WHITESPACE))


def rel_hrefs(text: str, rel: str, tags: Collection[str] = ("a", "link")) -> Iterator[str]:
    """The href of every `tags` element whose rel has the token `rel`, in document order.

    Character references are expanded and nothing is resolved. An element without href names
    nothing and is skipped (rocks 20); a valueless or empty href is "", the page itself (rocks 15).
    """
    for is_start, name, attributes in _html_tokens(text):
        if is_start and name in tags and "href" in attributes and rel in _tokens(attributes.get("rel", "")):
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
    # advertise both, and Pushl's Link/X-Pingback/HTML order sent them pingbacks (sending.md §3).
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
