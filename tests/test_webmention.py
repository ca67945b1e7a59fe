"""Discovery and link extraction, as case tables: webmention.rocks, RFC 8288 corners, Pingback 1.0 §2."""

from __future__ import annotations

import httpx
import pytest

from pingforward.markup import decode, header_values
from pingforward.webmention import (
    Endpoint,
    Link,
    Protocol,
    discover,
    discover_pingback,
    discover_webmention,
    extract_links,
    parse_link_header,
    pingback_link,
    rel_hrefs,
)

HTML = ("Content-Type", "text/html; charset=utf-8")
ROCKS = "https://webmention.rocks"


def rocks_page(head: str = "", body: str = "") -> str:
    """A page in the shape of webmention.rocks' layout, with the test's markup in head and body."""
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=utf-8>\n<title>Webmention Rocks!</title>\n"
        '<link rel="stylesheet" href="/assets/semantic.min.css">\n'
        f"{head}\n</head>\n<body>\n"
        '<div class="post-container h-entry"><div class="post-main"><div class="e-content">\n'
        f"{body}\n"
        '</div></div></div>\n<a href="/">Home</a> <a rel="author" href="https://aaronparecki.com/">Aaron</a>\n'
        "</body>\n</html>\n"
    )


def rocks(number: int, headers: list[tuple[str, str]], page: str, endpoint: str) -> object:
    """One webmention.rocks discovery test: GET /test/N answers `headers` and `page`."""
    return pytest.param(f"{ROCKS}/test/{number}", [HTML, *headers], page, endpoint, id=f"rocks-{number}")


# Each case is one rule of https://webmention.rocks/, built from the rules of
# its discovery tests; the expected endpoint is the one the rocks receiver accepts.
ROCKS_CASES = [
    rocks(1, [("Link", "</test/1/webmention>; rel=webmention")], rocks_page(), f"{ROCKS}/test/1/webmention"),
    rocks(2, [("Link", f"<{ROCKS}/test/2/webmention>; rel=webmention")], rocks_page(), f"{ROCKS}/test/2/webmention"),
    rocks(3, [], rocks_page('<link rel="webmention" href="/test/3/webmention">'), f"{ROCKS}/test/3/webmention"),
    rocks(4, [], rocks_page(f'<link rel="webmention" href="{ROCKS}/test/4/webmention">'), f"{ROCKS}/test/4/webmention"),
    rocks(5, [], rocks_page(body='<a rel="webmention" href="/test/5/webmention">x</a>'), f"{ROCKS}/test/5/webmention"),
    rocks(
        6,
        [],
        rocks_page(body=f'<a rel="webmention" href="{ROCKS}/test/6/webmention">x</a>'),
        f"{ROCKS}/test/6/webmention",
    ),
    rocks(7, [("LinK", f"<{ROCKS}/test/7/webmention>; rel=webmention")], rocks_page(), f"{ROCKS}/test/7/webmention"),
    rocks(8, [("Link", f'<{ROCKS}/test/8/webmention>; rel="webmention"')], rocks_page(), f"{ROCKS}/test/8/webmention"),
    rocks(
        9,
        [],
        rocks_page('<link rel="webmention somethingelse" href="/test/9/webmention">'),
        f"{ROCKS}/test/9/webmention",
    ),
    rocks(
        10,
        [("Link", f'<{ROCKS}/test/10/webmention>; rel="webmention somethingelse"')],
        rocks_page(),
        f"{ROCKS}/test/10/webmention",
    ),
    rocks(
        11,
        [("Link", f'<{ROCKS}/test/11/webmention>; rel="webmention"')],
        rocks_page(
            '<link rel="webmention" href="/test/11/webmention/error">',
            '<a rel="webmention" href="/test/11/webmention/error">x</a>',
        ),
        f"{ROCKS}/test/11/webmention",
    ),
    rocks(
        12,
        [],
        rocks_page(
            '<link rel="not-webmention" href="/test/12/webmention/error">\n'
            '<link rel="webmention" href="/test/12/webmention">'
        ),
        f"{ROCKS}/test/12/webmention",
    ),
    rocks(
        13,
        [],
        rocks_page(
            '<!-- <link rel="webmention" href="/test/13/webmention/error"> -->\n'
            '<link rel="webmention" href="/test/13/webmention">',
            '<!-- <a rel="webmention" href="/test/13/webmention/error">x</a> -->',
        ),
        f"{ROCKS}/test/13/webmention",
    ),
    rocks(
        14,
        [],
        rocks_page(
            body='<code>&lt;a href="/test/14/webmention/error" rel="webmention"&gt;&lt;/a&gt;</code>\n'
            '<a href="/test/14/webmention" rel="webmention">x</a>'
        ),
        f"{ROCKS}/test/14/webmention",
    ),
    rocks(15, [], rocks_page('<link rel="webmention" href="">'), f"{ROCKS}/test/15"),
    rocks(
        16,
        [],
        rocks_page(
            body='<a href="/test/16/webmention" rel="webmention">x</a>\n'
            '<link rel="webmention" href="/test/16/webmention/error">'
        ),
        f"{ROCKS}/test/16/webmention",
    ),
    rocks(
        17,
        [],
        rocks_page(
            body='<link rel="webmention" href="/test/17/webmention">\n'
            '<a href="/test/17/webmention/error" rel="webmention">x</a>'
        ),
        f"{ROCKS}/test/17/webmention",
    ),
    rocks(
        18,
        [
            ("Link", f'<{ROCKS}/test/18/webmention/error>; rel="other"'),
            ("Link", f'<{ROCKS}/test/18/webmention>; rel="webmention"'),
        ],
        rocks_page(),
        f"{ROCKS}/test/18/webmention",
    ),
    rocks(
        19,
        [("Link", f'<{ROCKS}/test/19/webmention/error>; rel="other", <{ROCKS}/test/19/webmention>; rel="webmention"')],
        rocks_page(),
        f"{ROCKS}/test/19/webmention",
    ),
    rocks(
        20,
        [],
        rocks_page('<link rel="webmention">', '<a href="/test/20/webmention" rel="webmention">x</a>'),
        f"{ROCKS}/test/20/webmention",
    ),
    rocks(
        21,
        [],
        rocks_page('<link rel="webmention" href="/test/21/webmention?query=yes">'),
        f"{ROCKS}/test/21/webmention?query=yes",
    ),
    rocks(22, [], rocks_page('<link rel="webmention" href="22/webmention">'), f"{ROCKS}/test/22/webmention"),
    # 23: GET /test/23/page answers 302 "Location: page/KEY1"; discovery runs on the final page,
    # and a relative endpoint resolves against that final URL, not the URL first asked for.
    pytest.param(
        f"{ROCKS}/test/23/page/Kx1Yz2",
        [HTML, ("Link", '<webmention-endpoint/Qw3Er4>; rel="webmention"')],
        rocks_page(),
        f"{ROCKS}/test/23/page/webmention-endpoint/Qw3Er4",
        id="rocks-23",
    ),
]


@pytest.mark.parametrize(("url", "headers", "body", "expected"), ROCKS_CASES)
def test_rocks_discovery(url: str, headers: list[tuple[str, str]], body: str, expected: str) -> None:
    assert discover_webmention(url, headers, body) == expected
    assert discover_webmention(url, headers, body.encode()) == expected
    assert discover(url, headers, body) == Endpoint(Protocol.WEBMENTION, expected)


def test_rocks_23_resolves_against_the_final_url_only() -> None:
    headers = [HTML, ("Link", '<webmention-endpoint/Qw3Er4>; rel="webmention"')]
    assert discover_webmention(f"{ROCKS}/test/23/page", headers, "") == f"{ROCKS}/test/23/webmention-endpoint/Qw3Er4"


def test_every_rocks_discovery_test_has_a_case() -> None:
    assert sorted(int(case.id.split("-")[1]) for case in ROCKS_CASES) == list(range(1, 24))  # type: ignore[attr-defined]


W = "https://example.org/post"
C = "https://site.example/blog/post"

# Beyond rocks: the corners other senders got wrong,
# RFC 8288 syntax and HTML tokenization.
EDGE_CASES = [
    pytest.param(
        "https://example.org/post?p=5",
        [("Link", "</wm>; rel=webmention")],
        "",
        "https://example.org/wm",
        id="no-inherited-query",
    ),
    pytest.param(
        W,
        [("Link", '<https://e.org/wm>; type="text/html"; rel="webmention"')],
        "",
        "https://e.org/wm",
        id="rel-not-first",
    ),
    pytest.param(W, [("Link", '<https://e.org/wm>; REL="webmention"')], "", "https://e.org/wm", id="param-name-case"),
    pytest.param(W, [("Link", "<https://e.org/wm>; rel=WebMention")], "", "https://e.org/wm", id="rel-value-case"),
    pytest.param(W, [("Link", "<https://e.org/wm>;rel=webmention")], "", "https://e.org/wm", id="no-space"),
    pytest.param(W, [("Link", "<https://e.org/wm> ; rel = webmention")], "", "https://e.org/wm", id="bws"),
    pytest.param(
        W,
        [("Link", '<https://e.org/a>; rel="webmention", <https://e.org/b>; rel="webmention"')],
        "",
        "https://e.org/a",
        id="two-values-first-wins",
    ),
    pytest.param(
        W, [("Link", "<https://e.org/wm?a=1,2>; rel=webmention")], "", "https://e.org/wm?a=1,2", id="comma-in-url"
    ),
    pytest.param(
        W, [("Link", "<https://e.org/wm;v=1>; rel=webmention")], "", "https://e.org/wm;v=1", id="semicolon-in-url"
    ),
    pytest.param(
        W,
        [("Link", '<https://e.org/x>; title="a, <b>; rel=webmention", <https://e.org/wm>; rel=webmention')],
        "",
        "https://e.org/wm",
        id="quoted-comma-and-rel",
    ),
    pytest.param(
        W, [("Link", "<https://e.org/x>; crossorigin; rel=webmention")], "", "https://e.org/x", id="valueless-param"
    ),
    pytest.param(W, [("Link", "<https://e.org/x>; rel=other; rel=webmention")], "", None, id="second-rel-ignored"),
    pytest.param(
        W, [("Link", 'garbage, <https://e.org/x>; rel="webmention"')], "", "https://e.org/x", id="junk-value-skipped"
    ),
    pytest.param(W, [("Link", "<https://e.org/x>; rel=webmentions")], "", None, id="token-not-substring"),
    pytest.param(
        W,
        [("Content-Type", "image/png"), ("Link", "<https://e.org/wm>; rel=webmention")],
        b"\x89PNG\r\n\x1a\n",
        "https://e.org/wm",
        id="link-header-on-png",
    ),
    pytest.param(
        W, [("Content-Type", "text/plain")], '<link rel="webmention" href="/wm">', None, id="plain-text-not-parsed"
    ),
    pytest.param(W, [], '<link rel="webmention" href="/wm">', "https://example.org/wm", id="no-content-type-is-html"),
    pytest.param(
        W, [HTML], '<link rel="somethingelse webmention" href="/wm">', "https://example.org/wm", id="rel-second-token"
    ),
    pytest.param(W, [HTML], '<link rel="Webmention" href="/wm">', "https://example.org/wm", id="html-rel-case"),
    pytest.param(W, [HTML], '<LINK REL="webmention" HREF="/wm">', "https://example.org/wm", id="html-name-case"),
    pytest.param(W, [HTML], "<link rel=webmention href=/wm>", "https://example.org/wm", id="unquoted-attributes"),
    pytest.param(W, [HTML], '<link rel="webmention\xa0x" href="/wm">', None, id="nbsp-is-not-a-separator"),
    pytest.param(W, [HTML], '<link rel="web mention" href="/wm">', None, id="split-token"),
    pytest.param(W, [HTML], '<link rel="webmention" href>', W, id="valueless-href-is-page"),
    pytest.param(
        W, [HTML], '<a rel="webmention" href="\n /wm \t">x</a>', "https://example.org/wm", id="href-whitespace"
    ),
    pytest.param(
        W,
        [HTML],
        '<a rel="webmention" href="/wm?a=1&amp;b=2">x</a>',
        "https://example.org/wm?a=1&b=2",
        id="attr-entity",
    ),
    pytest.param(
        W, [HTML], '<link rel="webmention" href="/a" href="/b">', "https://example.org/a", id="first-duplicate-attr"
    ),
    pytest.param(
        W,
        [HTML],
        '<a rel="webmention" href="/wm" rel="other">x</a>',
        "https://example.org/wm",
        id="first-duplicate-rel",
    ),
    pytest.param(
        W,
        [HTML],
        '<base href="https://elsewhere.example/"><link rel="webmention" href="wm">',
        "https://example.org/wm",
        id="base-ignored",
    ),
    pytest.param(
        W,
        [HTML],
        '<script>var a = \'<a rel="webmention" href="/no">\';</script><a rel=webmention href=/wm>',
        "https://example.org/wm",
        id="script-is-text",
    ),
    pytest.param(
        W,
        [HTML],
        '<title><link rel="webmention" href="/no"></title><a rel=webmention href=/wm>',
        "https://example.org/wm",
        id="title-is-text",
    ),
    pytest.param(
        W,
        [HTML],
        '<textarea><a rel="webmention" href="/no"></a></textarea><a rel=webmention href=/wm>',
        "https://example.org/wm",
        id="textarea-is-text",
    ),
    pytest.param(W, [HTML], '<area rel="webmention" href="/no"><p>nothing</p>', None, id="area-does-not-count"),
    pytest.param(
        W,
        [HTML],
        '<a rel="webmention" href="https://other.example/wm#frag">x</a>',
        "https://other.example/wm#frag",
        id="absolute-kept",
    ),
    # HTML §13.2.5 tokenization, as browsers do it.
    pytest.param(
        W,
        [HTML],
        '<a rel=webmention href="/wm?a=1&region=2&not=3&copy;&amp;b&#38;c&#x26;d">x</a>',
        "https://example.org/wm?a=1&region=2&not=3©&b&c&d",
        id="attribute-character-references",
    ),
    pytest.param(
        W, [HTML], '<a rel=webmention href="/wm?x&not">x</a>', "https://example.org/wm?x¬", id="legacy-at-end"
    ),
    pytest.param(W, [HTML], '<!-- <a rel=webmention href="/no">', None, id="comment-open-at-eof"),
    pytest.param(W, [HTML], '<!--> <a rel=webmention href="/wm">', "https://example.org/wm", id="empty-comment"),
    pytest.param(W, [HTML], '<!---> <a rel=webmention href="/wm">', "https://example.org/wm", id="empty-comment-dash"),
    pytest.param(
        W, [HTML], '<!-- x --!><a rel=webmention href="/wm">', "https://example.org/wm", id="comment-closed-by-bang"
    ),
    pytest.param(
        W,
        [HTML],
        '<!-- <a rel=webmention href="/no"> -- > --><a rel=webmention href="/wm">',
        "https://example.org/wm",
        id="comment-with-dashes",
    ),
    pytest.param(W, [HTML], '<a rel=webmention href="/wm"', None, id="tag-open-at-eof"),
    pytest.param(W, [HTML], '<a rel=webmention href="/wm>', None, id="quote-open-at-eof"),
    pytest.param(W, [HTML], "<a rel=webmention href=/wm/>", "https://example.org/wm/", id="unquoted-keeps-slash"),
    pytest.param(W, [HTML], "<a rel=webmention href='/wm' />", "https://example.org/wm", id="self-closing-syntax"),
    pytest.param(
        W,
        [HTML],
        '<![CDATA[<a rel=webmention href="/no">]]><a rel=webmention href="/wm">',
        "https://example.org/wm",
        id="cdata-is-a-bogus-comment",
    ),
    pytest.param(
        W,
        [HTML],
        '<?php echo "<a rel=webmention href=/no>" ?><a rel=webmention href="/wm">',
        "https://example.org/wm",
        id="processing-instruction-swallows-up-to-first-gt",
    ),
    pytest.param(
        W,
        [HTML],
        '<script>a = "</scriptx><a rel=webmention href=/no>";</SCRIPT ><a rel=webmention href="/wm">',
        "https://example.org/wm",
        id="script-end-tag-exact",
    ),
    pytest.param(W, [HTML], '<script><a rel=webmention href="/no">', None, id="script-open-at-eof"),
    pytest.param(
        W,
        [HTML],
        '<noscript><a rel=webmention href="/no"></noscript><a rel=webmention href="/wm">',
        "https://example.org/wm",
        id="noscript-is-text",
    ),
    pytest.param(W, [HTML], '<plaintext><a rel=webmention href="/no">', None, id="plaintext"),
    pytest.param(W, [HTML], '< a rel=webmention href="/no">', None, id="lt-space-is-text"),
    pytest.param(
        W,
        [HTML],
        '</ a rel=webmention href="/no"><a rel=webmention href="/wm">',
        "https://example.org/wm",
        id="bogus-end-tag",
    ),
    pytest.param(
        W, [HTML], '<a\nrel=\twebmention\fhref\r=\n"/wm"\n>x</a>', "https://example.org/wm", id="tag-whitespace"
    ),
    pytest.param(W, [HTML], "<p>no endpoint here</p>", None, id="none"),
    pytest.param(W, [HTML], "", None, id="empty-body"),
    # `pingforward check` compares a pingback endpoint's forward parameter with this discovery.
    pytest.param(
        C, [("Link", '<https://wm.example/a>; rel="webmention"')], "", "https://wm.example/a", id="check-header"
    ),
    pytest.param(C, [("Link", "</wm>; rel=webmention")], "", "https://site.example/wm", id="check-header-relative"),
    pytest.param(
        C,
        [("Link", '<https://x/>; rel="other", <https://wm/>; rel="webmention x"')],
        "",
        "https://wm/",
        id="check-list",
    ),
    pytest.param(C, [("Link", '<https://x/>; rel="not-webmention"')], "", None, id="check-header-decoy"),
    pytest.param(
        C,
        [("Link", '<https://h/>; rel="webmention"')],
        '<link rel="webmention" href="https://l/">',
        "https://h/",
        id="check-header-wins",
    ),
    pytest.param(
        C,
        [],
        '<a rel="webmention" href="wm">x</a><link rel="webmention" href="/l">',
        "https://site.example/blog/wm",
        id="check-a-first",
    ),
    pytest.param(C, [], '<link rel="Webmention other" href="/l">', "https://site.example/l", id="check-token"),
    pytest.param(
        C, [], '<link rel="webmention"><link rel="webmention" href="/2">', "https://site.example/2", id="check-no-href"
    ),
    pytest.param(C, [], '<link rel="webmention" href="">', C, id="check-empty-href"),
    pytest.param(
        C,
        [],
        '<!-- <link rel="webmention" href="/c"> --><p>&lt;link rel="webmention"&gt;',
        None,
        id="check-comment-text",
    ),
]


@pytest.mark.parametrize(("url", "headers", "body", "expected"), EDGE_CASES)
def test_discovery_edge_cases(
    url: str, headers: list[tuple[str, str]], body: str | bytes, expected: str | None
) -> None:
    assert discover_webmention(url, headers, body) == expected


def test_headers_as_pairs_mappings_and_httpx_headers() -> None:
    fields = [("Link", "<https://e.org/no>; rel=other"), ("link", "<https://e.org/wm>; rel=webmention")]
    assert header_values(fields, "LINK") == ["<https://e.org/no>; rel=other", "<https://e.org/wm>; rel=webmention"]
    as_mapping = {"Link": [value for _, value in fields]}
    # httpx.Headers joins repeated fields for .get() and ["link"]; multi_items() keeps them apart.
    as_httpx = httpx.Headers(fields)
    assert header_values(as_httpx, "link") == header_values(fields, "link")
    for headers in (fields, as_mapping, as_httpx, {"LINK": "<https://e.org/wm>; rel=webmention"}):
        assert discover_webmention(W, headers, "") == "https://e.org/wm"


def test_parse_link_header_values() -> None:
    assert parse_link_header('<a>; rel="x  Y\\"z", <b>, <c>; rel=webmention') == [
        Link("a", ("x", 'y"z')),
        Link("b", ()),
        Link("c", ("webmention",)),
    ]
    assert parse_link_header("") == []
    assert parse_link_header("<unterminated; rel=webmention") == []


# Pingback 1.0 §2: strict client behaviour.
PB = "http://example.com/xmlrpc.php"
PINGBACK_CASES = [
    pytest.param([("Content-Type", "image/png"), ("X-Pingback", PB)], b"\x89PNG\r\n", PB, id="header-on-png"),
    pytest.param([HTML], f'<head><link rel="pingback" href="{PB}"></head>', PB, id="html-link"),
    pytest.param([HTML], f'<head><link rel="pingback" href="{PB}" /></head>', PB, id="xhtml-link"),
    pytest.param([HTML], f'<link rel="pingback" href="{PB}"/>', PB, id="xhtml-link-no-space"),
    pytest.param(
        [HTML, ("X-Pingback", PB)],
        '<link rel="pingback" href="http://other.example/xmlrpc">',
        PB,
        id="header-beats-link",
    ),
    pytest.param([HTML], '<link rel="pingback" href="http://e.com/x?a=1&amp;b=2">', "http://e.com/x?a=1&b=2", id="amp"),
    pytest.param(
        [HTML],
        '<link rel="pingback" href="http://e.com/x?q=&lt;&gt;&quot;&#38;">',
        'http://e.com/x?q=<>"&#38;',
        id="four-entities-only",
    ),
    pytest.param(
        [HTML], '<link rel="pingback" href="http://e.com/x?q=&amp;lt;">', "http://e.com/x?q=&lt;", id="single-pass"
    ),
    pytest.param([HTML], f'<link href="{PB}" rel="pingback">', None, id="reversed-attributes"),
    pytest.param([HTML], f"<link rel='pingback' href='{PB}'>", None, id="single-quotes"),
    pytest.param([HTML], f'<LINK REL="pingback" HREF="{PB}">', None, id="upper-case"),
    pytest.param([HTML], f'<link rel="pingback" type="x" href="{PB}">', None, id="extra-attribute"),
    pytest.param([HTML], f'<link  rel="pingback" href="{PB}">', None, id="extra-space"),
    pytest.param(
        [HTML],
        f'<!-- <link rel="pingback" href="{PB}"> --><link rel="pingback" href="http://other.example/x">',
        PB,
        id="comment-match-counts",
    ),
    pytest.param([("X-Pingback", PB), ("X-Pingback", "http://other.example/x")], "", PB, id="first-header"),
    pytest.param([("x-pingback", f" {PB} ")], "", PB, id="header-name-case-and-space"),
    pytest.param([("Link", f'<{PB}>; rel="pingback"')], "", None, id="link-header-is-not-pingback"),
    pytest.param([HTML, ("X-Pingback", "")], f'<link rel="pingback" href="{PB}">', PB, id="empty-header-falls-through"),
    pytest.param([HTML], '<link rel="pingback" href="mailto:x@example.com">', None, id="not-http"),
    pytest.param([HTML], "<p>nothing</p>", None, id="none"),
]


@pytest.mark.parametrize(("headers", "body", "expected"), PINGBACK_CASES)
def test_pingback_discovery(headers: list[tuple[str, str]], body: str | bytes, expected: str | None) -> None:
    assert discover_pingback("http://blog.example/post", headers, body) == expected


PF = "https://pf.example/?forward=https%3A%2F%2Fwm.example%2Fwebmention"
# body -> the href the spec's regular expression reads, before resolution (Pingback 1.0 §2.3)
PINGBACK_LINK_CASES = [
    pytest.param(f'<link rel="pingback" href="{PF}">', PF, id="html"),
    pytest.param('<link rel="pingback" href="https://a/" />', "https://a/", id="xhtml"),
    pytest.param('<link rel="pingback" href="https://a/?b=1&amp;c=&lt;&quot;">', 'https://a/?b=1&c=<"', id="entities"),
    pytest.param('<link rel="pingback" href="https://a/?b=&amp;lt;">', "https://a/?b=&lt;", id="no-double-decode"),
    pytest.param('<link rel="pingback" href="/xmlrpc">', "/xmlrpc", id="unresolved"),
    pytest.param('<link href="https://a/" rel="pingback">', None, id="href-first"),
    pytest.param('<link  rel="pingback" href="https://a/">', None, id="two-spaces"),
    pytest.param("<link rel='pingback' href='https://a/'>", None, id="single-quotes"),
]


@pytest.mark.parametrize(("body", "expected"), PINGBACK_LINK_CASES)
def test_pingback_link(body: str, expected: str | None) -> None:
    assert pingback_link(body) == expected


# (body, rel, tags) -> every matching href, as written but with character references expanded
REL_HREFS_CASES = [
    pytest.param(
        '<link rel="pingback" href="/a"><a rel="pingback" href="/b">b</a><link rel=pingback href=/c>',
        "pingback",
        ("link",),
        ["/a", "/c"],
        id="links-only",
    ),
    pytest.param(
        '<a rel="webmention" href="/a">a</a><link rel="Webmention x" href="/b"><area rel=webmention href=/c>',
        "webmention",
        ("a", "link"),
        ["/a", "/b"],
        id="a-and-link-in-order",
    ),
    pytest.param('<link rel="pingback"><link rel="pingback" href>', "pingback", ("link",), [""], id="no-href-skipped"),
    pytest.param(
        '<link rel="pingback" href="/p?a=1&amp;b=2&region=3">',
        "pingback",
        ("link",),
        ["/p?a=1&b=2&region=3"],
        id="refs",
    ),
    pytest.param(
        '<!-- <link rel="pingback" href="/no"> --><script><link rel="pingback" href="/no"></script>',
        "pingback",
        ("link",),
        [],
        id="comment-and-script",
    ),
    pytest.param(
        '<link rel="pingbacks" href="/no"><link rel="x\xa0pingback" href="/no">', "pingback", ("link",), [], id="tokens"
    ),
]


@pytest.mark.parametrize(("body", "rel", "tags", "expected"), REL_HREFS_CASES)
def test_rel_hrefs(body: str, rel: str, tags: tuple[str, ...], expected: list[str]) -> None:
    assert list(rel_hrefs(body, rel, tags)) == expected


def test_pingback_discovered_on_final_response_resolves_relative_values() -> None:
    # Pingback 1.0 asks for absolute URIs; a relative one is resolved against the final URL.
    assert discover_pingback("http://b.example/2024/post", [("X-Pingback", "/xmlrpc.php")], "") == (
        "http://b.example/xmlrpc.php"
    )


PROTOCOL_CASES = [
    pytest.param(
        [HTML, ("X-Pingback", PB)],
        '<a rel="webmention" href="/wm">',
        Endpoint(Protocol.WEBMENTION, "https://blog.example/wm"),
        id="html-webmention-beats-x-pingback",
    ),
    pytest.param(
        [HTML],
        f'<link rel="pingback" href="{PB}"><link rel="webmention" href="/wm">',
        Endpoint(Protocol.WEBMENTION, "https://blog.example/wm"),
        id="webmention-beats-pingback-link",
    ),
    pytest.param([HTML, ("X-Pingback", PB)], "<p>hi</p>", Endpoint(Protocol.PINGBACK, PB), id="pingback-only"),
    pytest.param([HTML], "<p>hi</p>", None, id="nothing"),
]


@pytest.mark.parametrize(("headers", "body", "expected"), PROTOCOL_CASES)
def test_discover_prefers_webmention(headers: list[tuple[str, str]], body: str, expected: Endpoint | None) -> None:
    assert discover("https://blog.example/post", headers, body) == expected


DECODE_CASES = [
    pytest.param([HTML], "café".encode(), "café", id="utf-8-header"),
    pytest.param([("Content-Type", "text/html; charset=ISO-8859-1")], "café".encode("latin-1"), "café", id="latin-1"),
    pytest.param([], b'<meta charset="windows-1252">caf\xe9', '<meta charset="windows-1252">café', id="meta-charset"),
    pytest.param(
        [],
        b'<meta http-equiv="Content-Type" content="text/html; charset=koi8-r">\xc1',
        '<meta http-equiv="Content-Type" content="text/html; charset=koi8-r">а',
        id="meta-http-equiv",
    ),
    pytest.param([("Content-Type", "text/html; charset=nonsense")], b"caf\xc3\xa9", "café", id="unknown-charset"),
    pytest.param([], "\ufeffhi".encode("utf-16-le"), "hi", id="bom"),
    pytest.param([], b"caf\xff", "caf\ufffd", id="invalid-bytes"),
]


@pytest.mark.parametrize(("headers", "body", "expected"), DECODE_CASES)
def test_decode(headers: list[tuple[str, str]], body: bytes, expected: str) -> None:
    assert decode(headers, body) == expected


def test_endpoint_in_declared_charset() -> None:
    body = '<meta charset="iso-8859-1"><link rel="webmention" href="/café">'.encode("latin-1")
    assert discover_webmention("https://e.org/", [], body) == "https://e.org/café"


# Link extraction for the source page: which part of the page is the post.
SOURCE = "https://me.example/2024/05/post?id=7"
NAV = '<nav><a href="https://me.example/">home</a> <a href="https://other.example/nav">nav</a></nav>'

EXTRACT_CASES = [
    pytest.param(
        f"""<html><head><link rel="stylesheet" href="https://cdn.example/s.css"></head><body>{NAV}
        <article class="h-entry"><h1 class="p-name">Post</h1>
        <a class="u-url" href="/2024/05/post?id=7">permalink</a>
        <div class="e-content"><p>See <a href="https://a.example/x?q=1#frag">this</a> and
        <a href="../04/older">my older post</a>, <a href="#comments">comments</a>,
        <a href="mailto:me@me.example">mail</a>, <a href="javascript:alert(1)">js</a>,
        <a href="https://a.example/x?q=1#frag">again</a>, <a>no href</a>.</p></div>
        <footer><a href="https://footer.example/">footer</a></footer></article></body></html>""",
        False,
        ("https://a.example/x?q=1#frag", "https://me.example/2024/04/older"),
        id="h-entry-e-content",
    ),
    pytest.param(
        f"""{NAV}<div class="h-entry">
        <a class="u-in-reply-to" href="https://reply.example/note">in reply to</a>
        <div class="u-like-of h-cite"><a class="u-url" href="https://liked.example/">liked</a></div>
        <div class="e-content"><a href="https://inside.example/">inside</a></div>
        <a class="u-author h-card" href="https://me.example/">me</a></div>""",
        False,
        ("https://reply.example/note", "https://liked.example/", "https://inside.example/"),
        id="response-properties",
    ),
    pytest.param(
        """<div class="h-feed"><div class="h-entry"><div class="e-content"><a href="https://first.example/">1</a>
        </div></div><div class="h-entry"><div class="e-content"><a href="https://second.example/">2</a></div></div></div>""",
        False,
        ("https://first.example/",),
        id="first-h-entry-only",
    ),
    pytest.param(
        """<div class="h-entry"><div class="p-comment h-cite"><div class="e-content">
        <a href="https://comment.example/">a comment's content</a></div></div>
        <div class="e-content"><a href="https://own.example/">own content</a>
        <blockquote class="h-cite"><a class="u-url" href="https://quoted.example/">quote</a></blockquote></div></div>""",
        False,
        ("https://own.example/", "https://quoted.example/"),
        id="nested-item-e-content-is-not-the-entry's",
    ),
    pytest.param(
        f"""{NAV}<div class="h-entry"><p class="p-name">Bookmarked <a href="https://b.example/">b</a></p>
        <a class="u-url" href="{SOURCE}">link</a></div><a href="https://after.example/">after</a>""",
        False,
        ("https://b.example/",),
        id="h-entry-without-e-content",
    ),
    pytest.param(
        f"""<body>{NAV}<main><article><p><a href="https://art.example/">in article</a></p></article>
        <nav><a href="/prev">previous</a></nav></main></body>""",
        False,
        ("https://art.example/",),
        id="article-before-main",
    ),
    pytest.param(
        f"""<body>{NAV}<main><p><a href="https://main.example/">in main</a></p></main>
        <footer><a href="https://footer.example/">f</a></footer></body>""",
        False,
        ("https://main.example/",),
        id="main",
    ),
    pytest.param(
        """<html><head><link href="https://cdn.example/s.css" rel="stylesheet"></head>
        <body><p>Text <A HREF="https://body.example/">link</A><p>more <a href='/local'>local</a></body></html>""",
        False,
        ("https://body.example/", "https://me.example/local"),
        id="body",
    ),
    pytest.param(
        f"""{NAV}<div class="h-entry"><div class="e-content"><a href="https://in.example/">in</a></div></div>
        <!-- <a href="https://commented.example/">x</a> --><a href="{SOURCE}#top">top</a>""",
        True,
        ("https://me.example/", "https://other.example/nav", "https://in.example/"),
        id="all-links",
    ),
    pytest.param(
        """<head><base href="https://cdn.example/base/"></head><article><a href="x">x</a>
        <a href="//proto.example/y">y</a> <a href="ftp://files.example/z">z</a></article>""",
        False,
        ("https://cdn.example/base/x", "https://proto.example/y"),
        id="base-href",
    ),
    pytest.param(
        """<article><a href="https://me.example/2024/05/post?id=7#c1">self</a>
        <a href="https://me.example/2024/05/post?id=8">other post</a>
        <a href="http://old.example/post">old address of this page</a></article>""",
        False,
        ("https://me.example/2024/05/post?id=8",),
        id="self-and-alias",
    ),
    pytest.param(
        """<html><body><main><div><p><a href="/1">1</a></div></body></html><a href="/2">2</a></main>
        <a href="/3">3</a>""",
        False,
        ("https://me.example/1", "https://me.example/2"),
        id="end-tags-close-inner-elements-but-not-body",
    ),
    pytest.param(
        """<div class="h-entry"><div class="e-content"><p><a href="/1">1</a></span></div>
        <a href="/2">2</a></div>""",
        False,
        ("https://me.example/1",),
        id="stray-end-tag-closes-nothing",
    ),
    pytest.param(
        """<article><a href="/x?a=1&region=2">x</a> <a href="/y?z=1&amp;q=2">y</a></article>""",
        False,
        ("https://me.example/x?a=1&region=2", "https://me.example/y?z=1&q=2"),
        id="query-strings-as-browsers-read-them",
    ),
]


@pytest.mark.parametrize(("body", "all_links", "expected"), EXTRACT_CASES)
def test_extract_links(body: str, all_links: bool, expected: tuple[str, ...]) -> None:
    assert extract_links(SOURCE, [HTML], body, all_links=all_links, aliases=["http://old.example/post"]) == expected


HOSTILE_SIZE = 200_000
# Inputs that make Python 3.11's html.parser (or a tree builder) take quadratic time or worse.
HOSTILE_PAGES = [
    pytest.param("<!--" * (HOSTILE_SIZE // 4), id="comment-starts"),
    pytest.param("<" * HOSTILE_SIZE, id="lt"),
    pytest.param("<a " * (HOSTILE_SIZE // 3), id="open-tags"),
    pytest.param('<a href="' * (HOSTILE_SIZE // 9), id="open-quotes"),
    pytest.param("<?" * (HOSTILE_SIZE // 2), id="processing-instructions"),
    pytest.param("<div>" * (HOSTILE_SIZE // 10) + "</x>" * (HOSTILE_SIZE // 8), id="deep-and-stray-ends"),
    pytest.param('<div class="h-entry e-content">' * (HOSTILE_SIZE // 60) + "<a href=/x>" * 2000, id="deep-links"),
    pytest.param("<a href='" + "&amp" * (HOSTILE_SIZE // 4) + "'>", id="references"),
    pytest.param("<script>" + "</scrip" * (HOSTILE_SIZE // 7), id="script-open"),
]


@pytest.mark.parametrize("body", HOSTILE_PAGES)
def test_hostile_pages_are_scanned_in_one_pass(body: str) -> None:
    # No timing assertion: a quadratic scan of these takes hours, a linear one a fraction of a second.
    assert discover_webmention(W, [HTML], body) is None
    assert len(extract_links(W, [HTML], body)) <= 1
