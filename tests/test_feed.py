"""feed.py: what each kind of feed lists, how a page names its feed, and the entries picked from it."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pingforward.errors import FeedError
from pingforward.feed import Entry, Feed, FeedFormat, parse_date, pick, read_feed

BASE = "https://blog.example/feed"
RSS = [("Content-Type", "application/rss+xml")]
ATOM = [("Content-Type", "application/atom+xml; charset=utf-8")]
JSON = [("Content-Type", "application/feed+json")]
HTML = [("Content-Type", "text/html; charset=utf-8")]
XML = [("Content-Type", "application/xml")]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


RSS2 = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Blog</title><link>https://blog.example/</link>
<item><title>Two</title><link>https://blog.example/2</link><pubDate>Tue, 03 Feb 2026 09:00:00 +0100</pubDate></item>
<item><title>One</title><link>/1</link><pubDate>Mon, 02 Feb 2026 10:00:00 GMT</pubDate></item>
<item><title>Guid only</title><guid isPermaLink="true">https://blog.example/g</guid></item>
<item><title>Not a page</title><link>mailto:me@blog.example</link></item>
<item><title>Again</title><link>https://blog.example/2#comments</link></item>
</channel></rss>"""

RSS1 = b"""<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/"
 xmlns:dc="http://purl.org/dc/elements/1.1/">
<channel rdf:about="https://blog.example/"><title>Blog</title><link>https://blog.example/</link></channel>
<item rdf:about="https://blog.example/r"><title>R</title><link>https://blog.example/r</link>
<dc:date>2026-01-05T00:00:00Z</dc:date></item>
</rdf:RDF>"""

ATOM1 = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Blog</title><id>urn:x</id><updated>2026-02-01T00:00:00Z</updated>
<entry><id>urn:a</id><title>A</title><link rel="edit" href="https://blog.example/edit/a"/>
<link rel="alternate" type="text/html" href="https://blog.example/a"/>
<published>2026-01-31T23:00:00-01:00</published><updated>2026-02-03T00:00:00Z</updated></entry>
<entry><id>urn:b</id><title>B</title><link href="b"/><updated>2026-01-01T00:00:00Z</updated></entry>
</feed>"""

JSON11 = b"""{"version": "https://jsonfeed.org/version/1.1", "title": "Blog", "items": [
 {"id": "1", "url": "https://blog.example/j1", "date_published": "2026-01-10T10:00:00+02:00"},
 {"id": "2", "url": "/j2", "date_modified": "2026-01-09T00:00:00Z"},
 {"id": "3", "external_url": "https://elsewhere.example/", "content_text": "a link post without its own url"},
 {"id": "4", "url": 42}, "not an item"]}"""

HFEED = b"""<!doctype html><html><body><main class="h-feed">
<article class="h-entry"><h2 class="p-name"><a class="u-url" href="/h1">One</a></h2>
<time class="dt-published" datetime="2026-01-03 12:00:00+00:00">3 Jan</time>
<div class="p-author h-card"><a class="u-url" href="https://me.example/">me</a></div>
<div class="e-content"><a href="https://other.example/">a link</a></div></article>
<div class="h-entry"><a href="/h2">implied: the only child a</a>
<data class="dt-updated" value="2026-01-02"></data></div>
<a class="h-entry" href="/h3">the entry is the link</a>
<div class="h-entry"><p class="p-name">no url at all</p></div>
<div class="h-cite"><a class="u-url" href="/not-an-entry">cite</a></div>
</main></body></html>"""


CASES = [
    pytest.param(
        RSS,
        RSS2,
        FeedFormat.RSS,
        [
            Entry("https://blog.example/2", when("2026-02-03T08:00:00+00:00")),
            Entry("https://blog.example/1", when("2026-02-02T10:00:00+00:00")),
            Entry("https://blog.example/g"),
        ],
        id="rss2",
    ),
    pytest.param(
        XML,
        RSS1,
        FeedFormat.RSS,
        [Entry("https://blog.example/r", when("2026-01-05T00:00:00Z"), when("2026-01-05T00:00:00Z"))],
        id="rss1",
    ),
    pytest.param(
        ATOM,
        ATOM1,
        FeedFormat.ATOM,
        [
            Entry(
                "https://blog.example/a", when("2026-02-01T00:00:00Z"), when("2026-02-03T00:00:00Z")
            ),  # published first
            Entry("https://blog.example/b", when("2026-01-01T00:00:00Z"), when("2026-01-01T00:00:00Z")),
        ],
        id="atom",
    ),
    pytest.param(HTML, ATOM1, FeedFormat.ATOM, None, id="atom-served-as-html"),
    pytest.param([], RSS2, FeedFormat.RSS, None, id="rss-without-content-type"),
    pytest.param(
        JSON,
        JSON11,
        FeedFormat.JSON,
        [
            Entry("https://blog.example/j1", when("2026-01-10T08:00:00Z")),
            Entry("https://blog.example/j2", when("2026-01-09T00:00:00Z"), when("2026-01-09T00:00:00Z")),
        ],
        id="json-feed-1.1",
    ),
    pytest.param([("Content-Type", "text/plain")], JSON11, FeedFormat.JSON, None, id="json-feed-as-text"),
    pytest.param(
        HTML,
        HFEED,
        FeedFormat.HFEED,
        [
            Entry("https://blog.example/h1", when("2026-01-03T12:00:00Z")),
            Entry("https://blog.example/h2", when("2026-01-02T00:00:00Z"), when("2026-01-02T00:00:00Z")),
            Entry("https://blog.example/h3"),
        ],
        id="h-feed",
    ),
    pytest.param(
        HTML,
        b'<div class="h-entry"><p class="e-content">one post, no url</p></div>',
        FeedFormat.HFEED,
        [Entry(BASE)],
        id="lone-h-entry-is-the-page",
    ),
    pytest.param(
        HTML,
        b'<div class="h-entry"><a class="u-url" href="/x">x</a>'
        b'<div class="h-entry"><a class="u-url" href="/comment">a comment</a></div></div>',
        FeedFormat.HFEED,
        [Entry("https://blog.example/x")],
        id="nested-h-entry-is-not-an-entry",
    ),
]


@pytest.mark.parametrize(("headers", "body", "kind", "entries"), CASES)
def test_read_feed(headers: list[tuple[str, str]], body: bytes, kind: FeedFormat, entries: list[Entry] | None) -> None:
    feed = read_feed(BASE, headers, body)
    assert isinstance(feed, Feed)
    assert feed.format == kind
    if entries is not None:
        assert list(feed.entries) == entries


DISCOVERY = [
    pytest.param(
        b'<head><link rel="stylesheet" href="/s.css"><link rel="alternate" type="application/rss+xml" href="/feed/">'
        b'<link rel="alternate" type="application/rss+xml" href="/comments/feed/"></head>'
        b'<div class="h-entry"><a class="u-url" href="/p">p</a></div>',
        "https://blog.example/feed/",
        id="rss-alternate-first-beats-h-feed",
    ),
    pytest.param(
        b'<link rel="Alternate home" type="application/atom+xml; charset=utf-8" href=" atom.xml ">',
        "https://blog.example/atom.xml",
        id="atom-rel-token-type-params",
    ),
    pytest.param(
        b'<link rel="alternate" type="application/feed+json" href="https://blog.example/feed.json">',
        "https://blog.example/feed.json",
        id="json-feed",
    ),
    pytest.param(
        b'<link rel="alternate" type="application/json" href="/wp-json/wp/v2/posts/7">'
        b'<link rel="alternate" type="application/rss+xml" href="/feed/">',
        "https://blog.example/feed/",
        id="plain-json-last",
    ),
    pytest.param(
        b'<link rel="alternate" hreflang="fr" href="/fr/"><link rel="feed" href="/posts">',
        "https://blog.example/posts",
        id="rel-feed-names-the-h-feed-page",
    ),
    pytest.param(
        b'<!-- <link rel="alternate" type="application/rss+xml" href="/commented-out"> -->'
        b'<link rel="alternate" type="application/rss+xml" href="/real">',
        "https://blog.example/real",
        id="comment-is-not-markup",
    ),
]


@pytest.mark.parametrize(("body", "expected"), DISCOVERY)
def test_a_page_names_its_feed(body: bytes, expected: str) -> None:
    assert read_feed(BASE, HTML, body) == expected


NOT_FEEDS = [
    pytest.param(HTML, b"<p>no feed here</p>", "names no feed", id="plain-page"),
    pytest.param(HTML, b'<link rel="feed" href="">', "names no feed", id="rel-feed-to-itself"),
    pytest.param(XML, b"<html><body>xml but no feed</body></html>", "not an RSS", id="xml-not-a-feed"),
    pytest.param(XML, b"", "not an RSS", id="empty"),
    pytest.param(JSON, b'{"version": "x"}', "no list of items", id="json-without-items"),
    pytest.param(JSON, b"[1, 2]", "no list of items", id="json-array"),
    pytest.param(JSON, b"{not json", "does not parse", id="json-broken"),
    pytest.param(JSON, b"[" * 200_000, "does not parse", id="json-nested-too-deep"),
]


@pytest.mark.parametrize(("headers", "body", "words"), NOT_FEEDS)
def test_not_a_feed(headers: list[tuple[str, str]], body: bytes, words: str) -> None:
    with pytest.raises(FeedError, match=words):
        read_feed(BASE, headers, body)


# Entity declarations, however encoded. Left to feedparser, the first one expands to 30 MB from
# 40 kB: expat stops at its amplification limit, then feedparser's loose parser expands it all.
QUADRATIC = (
    b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "' + b"x" * 10_000 + b'">\n]>\n'
    b'<rss version="2.0"><channel><item><title>' + b"&a;" * 3000 + b"</title></item></channel></rss>"
)
LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "lol">\n'
    + b"".join(
        b'<!ENTITY %s "%s">\n' % (chr(98 + n).encode(), (b"&" + chr(97 + n).encode() + b";") * 10) for n in range(9)
    )
    + b']>\n<rss version="2.0"><channel><item><title>&j;</title></item></channel></rss>'
)
EXTERNAL = (
    b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY x SYSTEM "file:///etc/passwd">\n]>\n'
    b'<rss version="2.0"><channel><item><title>&x;</title><link>https://blog.example/1</link></item></channel></rss>'
)

ENTITIES = [
    pytest.param(RSS, QUADRATIC, id="quadratic-blowup"),
    pytest.param(RSS, LAUGHS, id="billion-laughs"),
    pytest.param(RSS, EXTERNAL, id="external-entity"),
    pytest.param(RSS, QUADRATIC.replace(b"<rss", b"<rss<broken"), id="not-well-formed"),
    pytest.param(RSS, QUADRATIC.replace(b"<!ENTITY", b"<!entity"), id="lower-case"),
    pytest.param(RSS, QUADRATIC.replace(b"1.0", b'1.0" encoding="utf-16').decode().encode("utf-16"), id="utf-16"),
    pytest.param(
        [("Content-Type", "application/rss+xml; charset=cp037")], QUADRATIC.decode().encode("cp037"), id="ebcdic"
    ),
    pytest.param(HTML, QUADRATIC, id="served-as-html"),
]


@pytest.mark.parametrize(("headers", "body"), ENTITIES)
def test_entity_declarations_are_refused(headers: list[tuple[str, str]], body: bytes) -> None:
    with pytest.raises(FeedError, match="declares XML entities"):
        read_feed(BASE, headers, body)


def test_encodings_as_declared() -> None:
    latin = b'<?xml version="1.0" encoding="iso-8859-1"?><rss version="2.0"><channel><item><link>https://blog.example/caf\xe9</link></item></channel></rss>'
    feed = read_feed(BASE, RSS, latin)
    assert isinstance(feed, Feed) and feed.entries == (Entry("https://blog.example/café"),)
    # The Content-Type charset wins over the XML declaration (RFC 7303 §3).
    utf8 = latin.replace(b"\xe9", "é".encode())
    feed = read_feed(BASE, [("Content-Type", "text/xml; charset=utf-8")], utf8)
    assert isinstance(feed, Feed) and feed.entries == (Entry("https://blog.example/café"),)


def test_a_feed_body_is_never_a_file_name(tmp_path: Path) -> None:
    # feedparser.parse(bytes) first tries to open the bytes as a path, and would read that file.
    local = tmp_path / "local.xml"
    local.write_bytes(b'<rss version="2.0"><channel><item><link>https://local.example/</link></item></channel></rss>')
    with pytest.raises(FeedError):
        read_feed(BASE, XML, str(local).encode())


def test_the_feed_url_is_the_base() -> None:
    rss = b'<rss version="2.0"><channel><item><link>../p/1</link></item></channel></rss>'
    feed = read_feed("https://blog.example/a/b/feed.xml", RSS, rss)
    assert isinstance(feed, Feed) and feed.entries == (Entry("https://blog.example/a/p/1"),)


JAN = [Entry(f"https://blog.example/{day}", datetime(2026, 1, day, tzinfo=UTC)) for day in (3, 1, 2)]
UNDATED = [Entry("https://blog.example/u1"), Entry("https://blog.example/u2")]

PICKS = [
    pytest.param(JAN, None, None, [3, 2, 1], id="newest-first"),
    pytest.param([*UNDATED[:1], *JAN, *UNDATED[1:]], None, None, [3, 2, 1, "u1", "u2"], id="undated-last-in-order"),
    pytest.param(JAN, None, 2, [3, 2], id="limit"),
    pytest.param(JAN, datetime(2026, 1, 2, tzinfo=UTC), None, [3, 2], id="since-is-inclusive"),
    pytest.param([*JAN, *UNDATED], datetime(2026, 1, 1, tzinfo=UTC), 2, [3, 2], id="since-and-limit"),
    pytest.param(UNDATED, datetime(2000, 1, 1, tzinfo=UTC), None, [], id="undated-never-pass-since"),
]


@pytest.mark.parametrize(("entries", "since", "limit", "expected"), PICKS)
def test_pick(entries: list[Entry], since: datetime | None, limit: int | None, expected: list[int | str]) -> None:
    assert [entry.url.rsplit("/", 1)[1] for entry in pick(entries, since=since, limit=limit)] == [
        str(item) for item in expected
    ]


DATES = [
    pytest.param("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC), id="date-is-utc-midnight"),
    pytest.param("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), id="rfc3339-z"),
    pytest.param("2026-01-02 03:04:05+01:00", when("2026-01-02T02:04:05Z"), id="space-and-offset"),
    pytest.param("Fri, 02 Jan 2026 03:04:05 GMT", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), id="rfc822"),
    pytest.param("yesterday", None, id="words"),
    pytest.param("", None, id="empty"),
    pytest.param(20260102, None, id="not-a-string"),
]


@pytest.mark.parametrize(("text", "expected"), DATES)
def test_parse_date(text: object, expected: datetime | None) -> None:
    assert parse_date(text) == expected


def test_feed_module_is_pure() -> None:
    code = "import sys, pingforward.feed as f; f.read_feed('https://e.org/', [], b'<rss version=\"2.0\"></rss>'); "
    code += "print(sorted(m for m in ('httpx', 'starlette', 'asyncio', 'anyio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def atom(content: str, entries: int = 1) -> bytes:
    entry = f'<entry><id>urn:e</id><link href="/p"/><content type="xhtml"><div>{content}</div></content></entry>'
    return f'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom">{entry * entries}</feed>'.encode()


def rss_items(count: int, tail: str = "") -> bytes:
    items = "".join(f"<item><link>/p/{n}</link><title>t</title></item>" for n in range(count))
    return f'<?xml version="1.0"?><rss version="2.0"><channel>{items}{tail}</channel></rss>'.encode()


SHAPES_NO_FEED_HAS = [
    # Each costs feedparser seconds of CPU in a thread that cannot be stopped.
    pytest.param(atom("<div>" * 100_000 + "</div>" * 100_000)[:1_000_000], "nests elements more than 100", id="deep"),
    pytest.param(atom("<b>a</b>" * 110_000), "more than 10000 elements", id="wide"),
    pytest.param(rss_items(25_000), "more than 10000 elements", id="many-items"),
    pytest.param(rss_items(1_000, "<a></b>"), "more than 2000 elements (it is not well-formed XML)", id="loose"),
    pytest.param(atom("<br>" * 200), "nests elements more than 100", id="unclosed"),
]


@pytest.mark.parametrize(("body", "words"), SHAPES_NO_FEED_HAS)
def test_documents_shaped_as_no_feed_is_are_refused_before_parsing(body: bytes, words: str) -> None:
    with pytest.raises(FeedError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_feed(BASE, ATOM, body)


SHAPES_OF_REAL_FEEDS = [
    pytest.param(atom("<div>" * 40 + "<p>deep</p>" + "</div>" * 40), 1, id="xhtml-40-deep"),
    pytest.param(atom("<p><a href='/x'>x</a> <b>y</b></p>" * 100, 20), 1, id="xhtml-8000-elements"),
    pytest.param(rss_items(900, "<![CDATA[" + "<br>" * 5000 + "]]><!-- <x> -->"), 900, id="cdata-and-comments"),
    pytest.param(rss_items(300, "<description>a &nbsp; b</description>"), 300, id="not-well-formed-small"),
]


@pytest.mark.parametrize(("body", "count"), SHAPES_OF_REAL_FEEDS)
def test_feeds_as_real_ones_are_shaped_pass(body: bytes, count: int) -> None:
    feed = read_feed(BASE, ATOM, body)
    assert isinstance(feed, Feed) and len(feed.entries) == count
