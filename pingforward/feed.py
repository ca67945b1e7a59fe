"""Read a site's feed: which posts it lists, and when each was published, newest first.

Pure: a document is (final URL, headers, body) and the answer is a `Feed` or the URL of the feed a
page points to. RSS and Atom go through feedparser, JSON Feed through json, h-feed through the
scanner of markup.py. Specs: https://www.rssboard.org/rss-specification (RSS 2.0),
https://www.rfc-editor.org/rfc/rfc4287 (Atom), https://www.jsonfeed.org/version/1.1/ (JSON Feed),
https://microformats.org/wiki/h-feed and https://microformats.org/wiki/rel-alternate.
"""

from __future__ import annotations

import calendar
import io
import json
import re
import xml.parsers.expat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urldefrag, urljoin

from pingforward.errors import FeedError
from pingforward.markup import MF2_ROOT, Headers, OpenElements, decode, is_html, media_type, tags, words
from pingforward.pingback import is_http_url


class FeedFormat(StrEnum):
    RSS = "rss"  # RSS 0.9x, 1.0 (RDF) and 2.0
    ATOM = "atom"
    JSON = "json-feed"
    HFEED = "h-feed"


@dataclass(frozen=True, slots=True)
class Entry:
    """One post the feed lists: its page, and when it was published (or last updated), if said."""

    url: str
    published: datetime | None = None  # timezone-aware
    updated: datetime | None = None  # when it says it was last changed, if it says so apart from `published`


@dataclass(frozen=True, slots=True)
class Feed:
    url: str  # where it was read, after redirects
    format: FeedFormat
    entries: tuple[Entry, ...]  # as listed, each URL once


# RFC 4287 §7, RSS Advisory Board, JSON Feed 1.1 "Discovery" (which also allows application/json).
FEED_TYPES: Final = frozenset(
    {"application/rss+xml", "application/atom+xml", "application/rdf+xml", "application/feed+json", "application/json"}
)
JSON_TYPES: Final = frozenset({"application/feed+json", "application/json"})
ACCEPT: Final = (
    "application/atom+xml, application/rss+xml, application/feed+json, application/xml;q=0.9, "
    "text/xml;q=0.9, application/json;q=0.8, text/html;q=0.7, */*;q=0.1"
)


def read_feed(url: str, headers: Headers, body: bytes) -> Feed | str:
    """The feed in a document fetched from `url` (its final URL), or the URL of the feed a page names.

    An HTML page names its feed with `<link rel="alternate" type="application/rss+xml" href>` (or
    Atom, JSON Feed), which wins; else the page's own h-entries are its feed (an h-feed); else a
    `rel="feed"` link names the page that holds it. Raise `FeedError` when there is nothing.
    """
    kind = media_type(headers)
    stripped = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    if kind in JSON_TYPES or (kind not in FEED_TYPES and stripped.startswith(b"{")):
        return parse_json_feed(url, body)
    if is_html(headers) and not _looks_like_xml_feed(stripped):
        text = decode(headers, body)
        alternate = feed_links(url, text)
        if alternate:
            return alternate[0]
        entries = h_entries(url, text)
        if entries:
            return Feed(url, FeedFormat.HFEED, entries)
        named = rel_feed(url, text)
        if named is not None and urldefrag(named)[0] != urldefrag(url)[0]:
            return named
        raise FeedError("the page names no feed (rel=alternate) and has no h-entry")
    return parse_xml_feed(url, headers, body)


def _looks_like_xml_feed(start: bytes) -> bool:
    # Feeds served as text/html (or with no type) still start like XML feeds.
    head = start[:1024]
    return head.startswith(b"<?xml") or any(tag in head for tag in (b"<rss", b"<feed", b"<rdf:RDF"))


# ---------------------------------------------------------------------------------------------
# RSS and Atom

# An entity declaration is the one way into entity expansion: nested ones (billion laughs), long
# ones referenced many times (quadratic blowup), external ones (XXE). feedparser keeps the
# declarations it calls safe (no references in the value) and hands them to expat or, when the
# XML is not well-formed, expands them itself without any limit; so a feed that declares any
# entity is refused before feedparser sees it. The check runs on the text as feedparser will
# decode it (below), so no encoding can hide a declaration. Real feeds declare none.
_ENTITY_DECLARATION: Final = re.compile(r"<!ENTITY", re.IGNORECASE)


# feedparser's CPU time grows with the number of elements, several times faster when the XML is not
# well-formed (its loose parser), and with their nesting (bench/README.md). Real feeds have a few
# hundred elements nested a dozen deep (an Atom feed with XHTML content a few thousand); these bounds
# keep a document that is all markup from costing seconds of CPU in a thread nobody can stop.
MAX_DEPTH: Final = 100
MAX_ELEMENTS: Final = 10_000
MAX_ELEMENTS_LOOSE: Final = 2_000  # for XML that is not well-formed, which feedparser parses by hand
# Tags as the XML spec writes them; CDATA sections, comments, processing instructions and
# declarations hold no elements (https://www.w3.org/TR/xml/#sec-cdata-sect).
_MARKUP: Final = re.compile(r"<!\[CDATA\[.*?\]\]>|<!--.*?-->|<\?.*?\?>|<!.*?>|<(/?)[^\s<>/!?][^<>]*?(/?)>", re.DOTALL)


def _bound(text: str) -> None:
    """Raise `FeedError` for a document nested deeper, or with more elements, than feedparser may be given."""
    try:
        # Entity declarations are refused before this; expat without handlers only checks the syntax.
        xml.parsers.expat.ParserCreate().Parse(text.encode("utf-8"), True)
        limit = MAX_ELEMENTS
    except xml.parsers.expat.ExpatError:
        limit = MAX_ELEMENTS_LOOSE
    depth = elements = 0
    for tag in _MARKUP.finditer(text):
        closing, empty = tag.group(1), tag.group(2)
        if closing is None:  # no element
            continue
        if closing:
            depth = max(0, depth - 1)
            continue
        elements += 1
        depth += not empty
        if depth > MAX_DEPTH:
            raise FeedError(f"the feed nests elements more than {MAX_DEPTH} deep, which feeds never do")
        if elements > limit:
            well = "" if limit == MAX_ELEMENTS else " (it is not well-formed XML)"
            raise FeedError(f"the feed has more than {limit} elements{well}, more than feeds have")


def parse_xml_feed(url: str, headers: Headers, body: bytes) -> Feed:
    """An RSS or Atom feed; raise `FeedError` if it is neither, declares entities, or is shaped as no feed is."""
    text = decode(headers, body, xml=True)
    if _ENTITY_DECLARATION.search(text):
        raise FeedError("the feed declares XML entities, which are refused")
    _bound(text)
    import feedparser  # only for feeds: it takes a while to import, and a proxy worker never needs it

    # UTF-8 bytes with a charset that says so: feedparser decodes them as checked above (RFC 7303
    # §3: the charset parameter wins over the XML declaration), and sees no other encoding. Given
    # as a stream, not bytes: feedparser tries to open bytes as a file name first.
    parsed: Any = feedparser.parse(
        io.BytesIO(text.encode("utf-8")),
        response_headers={"content-type": "application/xml; charset=utf-8", "content-location": url},
        resolve_relative_uris=False,
        sanitize_html=False,
    )
    version = str(parsed.get("version") or "")
    if not version:
        raise FeedError("not an RSS, Atom or JSON feed")
    entries = (
        _entry(
            url,
            item.get("link"),
            _struct_time(item.get("published_parsed") or item.get("updated_parsed")),
            # dict.get: feedparser's own get answers a missing updated_parsed with published_parsed.
            _struct_time(dict.get(item, "updated_parsed")),
        )
        for item in parsed.entries
    )
    return Feed(url, FeedFormat.ATOM if version.startswith("atom") else FeedFormat.RSS, _distinct(entries))


def _struct_time(value: Any) -> datetime | None:
    # feedparser gives dates as time.struct_time in UTC.
    try:
        return datetime.fromtimestamp(calendar.timegm(value), UTC) if value else None
    except (TypeError, ValueError, OverflowError):
        return None


# ---------------------------------------------------------------------------------------------
# JSON Feed


def parse_json_feed(url: str, body: bytes) -> Feed:
    """A JSON Feed (1.0 or 1.1): each item's `url` is its page (`external_url` is what it links to)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the decoder's stack
        raise FeedError("not a JSON feed: the JSON does not parse") from None
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise FeedError("not a JSON feed: no list of items")
    entries = (
        _entry(
            url,
            item.get("url"),
            parse_date(item.get("date_published") or item.get("date_modified")),
            parse_date(item.get("date_modified")),
        )
        for item in items
        if isinstance(item, dict)
    )
    return Feed(url, FeedFormat.JSON, _distinct(entries))


# ---------------------------------------------------------------------------------------------
# HTML: feed links and h-feed


def feed_links(url: str, text: str) -> tuple[str, ...]:
    """The feeds a page names with `<link rel="alternate" type=FEED_TYPE href>`, absolute, in document order.

    Plain application/json comes last: JSON Feed 1.1 names application/feed+json, and WordPress
    pages link their REST API record as an application/json alternate.
    """
    found: dict[str, bool] = {}
    for is_start, name, attributes in tags(text):
        if not (is_start and name == "link" and "href" in attributes):
            continue
        kind = attributes.get("type", "").split(";", 1)[0].strip().lower()
        if "alternate" in words(attributes.get("rel", "")) and kind in FEED_TYPES:
            if is_http_url(link := urljoin(url, attributes["href"].strip())):
                found.setdefault(link, kind == "application/json")
    return tuple(sorted(found, key=found.__getitem__))  # stable: document order within each group


def rel_feed(url: str, text: str) -> str | None:
    """The page a `rel="feed"` link names (microformats.org/wiki/rel-feed): where the h-feed is."""
    for is_start, name, attributes in tags(text):
        if is_start and name in ("a", "link") and "href" in attributes and "feed" in words(attributes.get("rel", "")):
            link = urljoin(url, attributes["href"].strip())
            return link if is_http_url(link) else None
    return None


@dataclass(slots=True)
class _HEntry:
    depth: int
    url: str | None = None  # u-url
    published: str | None = None  # dt-published, else dt-updated
    updated: str | None = None
    own_href: str | None = None  # an <a class="h-entry" href>
    child_links: list[str] | None = None  # hrefs of its child <a> elements, for the implied url


def h_entries(url: str, text: str) -> tuple[Entry, ...]:
    """The top-level h-entries of a page: each one's u-url and dt-published (microformats2 parsing, in part).

    A property belongs to the nearest root around it, so the u-url of an h-card or h-cite inside an
    entry is not the entry's. Without a u-url, the implied one: the entry's own href, else the
    href of its only child `<a>` (microformats2 parsing, "implied url"). Dates come from the
    `datetime` (`<time>`), `value` (`<data>`) or `title` (`<abbr>`) attribute; text is not read.
    """
    found: list[_HEntry] = []
    # Per open element: the nearest root it belongs to (an index into `found`, -1 for
    # none or another kind of root), and whether it is inside an h-entry.
    open_elements: OpenElements[tuple[int, bool]] = OpenElements()
    for is_start, name, attributes in tags(text):
        if not is_start:
            open_elements.close(name)
            continue
        owner, in_entry = open_elements.innermost or (-1, False)
        depth = len(open_elements.stack)
        classes = words(attributes.get("class", ""))
        href = attributes.get("href") if name in ("a", "area", "link") else None
        if owner >= 0:
            entry = found[owner]
            if href is not None and "u-url" in classes and entry.url is None:
                entry.url = href
            when = attributes.get("datetime") or attributes.get("value") or attributes.get("title")
            if when and "dt-published" in classes and entry.published is None:
                entry.published = when
            if when and "dt-updated" in classes and entry.updated is None:
                entry.updated = when
            if name == "a" and href is not None and depth == entry.depth + 1 and entry.child_links is not None:
                entry.child_links.append(href)
        if "h-entry" in classes and not in_entry:
            found.append(_HEntry(depth, own_href=href, child_links=[]))
            owner, in_entry = len(found) - 1, True
        elif any(MF2_ROOT.match(item) for item in classes):
            owner = -1
        open_elements.open(name, (owner, in_entry))
    entries = []
    for item in found:
        implied = item.child_links[0] if item.child_links and len(item.child_links) == 1 else None
        link = item.url if item.url is not None else item.own_href if item.own_href is not None else implied
        if link is None:
            link = url if len(found) == 1 else None  # a lone h-entry is the page itself
        entries.append(_entry(url, link, parse_date(item.published or item.updated), parse_date(item.updated)))
    return _distinct(entries)


# ---------------------------------------------------------------------------------------------
# Entries


def _entry(base: str, link: object, published: datetime | None, updated: datetime | None = None) -> Entry | None:
    if not isinstance(link, str):
        return None
    url = urljoin(base, link.strip())
    return Entry(url, published, updated) if is_http_url(url) else None


def _distinct(entries: Iterable[Entry | None]) -> tuple[Entry, ...]:
    seen: dict[str, Entry] = {}
    for entry in entries:
        if entry is not None:
            seen.setdefault(urldefrag(entry.url)[0], entry)
    return tuple(seen.values())


def parse_date(value: object) -> datetime | None:
    """An RFC 3339 / ISO 8601 or RFC 822 date, timezone-aware (UTC when it names no zone); else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    try:
        # "2026-01-02 10:00" (a space) is what many h-entry themes write; ISO 8601 allows it by agreement.
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def pick(entries: Sequence[Entry], *, since: datetime | None = None, limit: int | None = None) -> tuple[Entry, ...]:
    """The entries to notify for, newest first: published at or after `since`, at most `limit`.

    Entries without a date come after the dated ones, in feed order, and never pass `since`.
    """
    oldest = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(entries, key=lambda entry: entry.published or oldest, reverse=True)  # stable
    if since is not None:
        ordered = [entry for entry in ordered if entry.published is not None and entry.published >= since]
    return tuple(ordered if limit is None else ordered[:limit])
