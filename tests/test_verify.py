"""verify.py: links, copies and the decision, from pages as values (no I/O)."""

from __future__ import annotations

import re

import pytest

from pingforward.markup import visible_text
from pingforward.pingback import FaultCode, Ping
from pingforward.verify import (
    DEFAULT_COPY_SHARE,
    Missing,
    Page,
    Unread,
    copied_share,
    judge,
    junk,
    links_to,
    read_page,
    shingles,
)
from tests import pages

TARGET = "https://site.example/2024/03/weather-station/"
SOURCE = "https://other.example/2024/03/squirrels/"
HTML = [("Content-Type", "text/html; charset=utf-8")]

# (page URL, headers, body, target) -> linked?
LINK_CASES = [
    pytest.param(SOURCE, HTML, f'<a href="{TARGET}">x</a>', TARGET, True, id="plain"),
    pytest.param(SOURCE, HTML, f'<a href="{TARGET}#comments">x</a>', TARGET, True, id="fragment-ignored"),
    pytest.param(SOURCE, HTML, f'<a href="{TARGET}">x</a>', TARGET + "#top", True, id="target-fragment-ignored"),
    pytest.param(
        SOURCE,
        HTML,
        '<a href="https://SITE.example:443/2024/03/weather-station/">x</a>',
        TARGET,
        True,
        id="host-case-default-port",
    ),
    pytest.param(SOURCE, HTML, '<img src="https://site.example/2024/03/weather-station/">', TARGET, True, id="img-src"),
    pytest.param(
        SOURCE,
        HTML,
        '<a href="https://site.example/?p=42&#038;lang=en">x</a>',
        "https://site.example/?p=42&lang=en",
        True,
        id="entity-in-query",
    ),
    pytest.param(
        SOURCE,
        HTML,
        '<a href="https://site.example/?p=42&amp;lang=en">x</a>',
        "https://site.example/?p=42&lang=en",
        True,
        id="amp-in-query",
    ),
    pytest.param(
        "https://site.example/2024/03/other/", HTML, '<a href="../weather-station/">x</a>', TARGET, True, id="relative"
    ),
    pytest.param(
        SOURCE,
        HTML,
        '<base href="https://site.example/2024/"><a href="03/weather-station/">x</a>',
        TARGET,
        True,
        id="base",
    ),
    pytest.param(SOURCE, HTML, f'<a href="  {TARGET}\n">x</a>', TARGET, True, id="whitespace-around"),
    pytest.param(
        SOURCE,
        HTML,
        '<a href="https://xn--bcher-kva.example/x">x</a>',
        "https://bücher.example/x",
        True,
        id="idn-punycode",
    ),
    pytest.param(
        SOURCE,
        HTML,
        '<a href="https://bücher.example/x">x</a>',
        "https://xn--bcher-kva.example/x",
        True,
        id="idn-unicode",
    ),
    pytest.param(
        SOURCE, HTML, '<a href="https://site.example/café">x</a>', "https://site.example/caf%C3%A9", True, id="raw-utf8"
    ),
    pytest.param(
        SOURCE, HTML, '<a href="https://site.example/caf%C3%A9">x</a>', "https://site.example/café", True, id="encoded"
    ),
    pytest.param(
        SOURCE,
        HTML,
        '<a href="https://site.example/caf%c3%a9">x</a>',
        "https://site.example/caf%C3%A9",
        True,
        id="hex-case",
    ),
    pytest.param(
        SOURCE,
        HTML,
        '<a href="https://site.example/%7Eme/?q=%61">x</a>',
        "https://site.example/~me/?q=a",
        True,
        id="unreserved",
    ),
    pytest.param(
        SOURCE, HTML, '<a href="https://site.example/a b">x</a>', "https://site.example/a%20b", True, id="space-in-path"
    ),
    pytest.param(
        SOURCE,
        HTML,
        '<a href="https://site.example/2024/x/../03/weather-station/">x</a>',
        TARGET,
        True,
        id="dot-segments",
    ),
    pytest.param(
        SOURCE,
        HTML,
        '<a href="https://site.example/a%2Fb">x</a>',
        "https://site.example/a/b",
        False,
        id="reserved-kept",
    ),
    pytest.param(SOURCE, HTML, f"<p>{TARGET}</p>", TARGET, False, id="html-text-is-no-link"),
    pytest.param(SOURCE, HTML, f"<!-- <a href='{TARGET}'> -->", TARGET, False, id="in-a-comment"),
    pytest.param(SOURCE, HTML, f"<script>var u = '<a href=\"{TARGET}\">';</script>", TARGET, False, id="in-a-script"),
    pytest.param(
        SOURCE, HTML, '<a href="https://site.example/2024/03/weather-station">x</a>', TARGET, False, id="other-path"
    ),
    pytest.param(
        SOURCE, HTML, '<a href="http://site.example/2024/03/weather-station/">x</a>', TARGET, False, id="other-scheme"
    ),
    pytest.param(SOURCE, HTML, f'<a data-href="{TARGET}">x</a>', TARGET, False, id="other-attribute"),
    pytest.param(SOURCE, [("Content-Type", "text/plain")], f"see {TARGET} for more", TARGET, True, id="text"),
    pytest.param(
        SOURCE,
        [("Content-Type", "application/json")],
        '{"u": "https:\\/\\/site.example\\/2024\\/03\\/weather-station\\/"}',
        TARGET,
        True,
        id="json-escaped-slashes",
    ),
    pytest.param(
        SOURCE, [("Content-Type", "text/plain")], "see https://site.example/ for more", TARGET, False, id="text-without"
    ),
]


@pytest.mark.parametrize(("url", "headers", "body", "target", "linked"), LINK_CASES)
def test_links_to(url: str, headers: list[tuple[str, str]], body: str, target: str, linked: bool) -> None:
    assert links_to(read_page(url, headers, body.encode()), target) is linked


# Real-world-shaped pages: (body, target) -> linked?
PAGE_CASES = [
    pytest.param(pages.block_theme_reply(TARGET), HTML, True, id="block-theme-reply"),
    pytest.param(pages.block_theme_reply(TARGET, link=False), HTML, False, id="block-theme-no-link"),
    pytest.param(pages.scraper_copy(TARGET), HTML, True, id="scraper-attribution"),
    # Declared only in <meta>: no charset in the Content-Type.
    pytest.param(
        pages.latin1_reply("https://site.example/?p=42&lang=fr"),
        [("Content-Type", "text/html")],
        True,
        id="latin1-meta",
    ),
    pytest.param(pages.long_page(TARGET), HTML, True, id="long-page-link-deep"),
]


@pytest.mark.parametrize(("body", "headers", "linked"), PAGE_CASES)
def test_links_in_real_world_pages(body: bytes, headers: list[tuple[str, str]], linked: bool) -> None:
    target = "https://site.example/?p=42&lang=fr" if b"iso-8859-1" in body else TARGET
    assert links_to(read_page(SOURCE, headers, body), target) is linked


def test_latin1_text_is_decoded_by_its_meta() -> None:
    page = read_page(SOURCE, [("Content-Type", "text/html")], pages.latin1_reply(TARGET))
    assert "même en hiver, écrit Zoë" in page.visible


def _target() -> Page:
    return read_page(TARGET, HTML, pages.wordpress_post())


# (source page) -> share of the target's text it carries, within bounds
SHARE_CASES = [
    pytest.param(pages.scraper_copy(TARGET), 0.95, 1.0, id="full-copy"),
    pytest.param(pages.block_theme_reply(TARGET), 0.1, 0.25, id="one-paragraph-quoted"),
    pytest.param(pages.block_theme_reply(TARGET, quote=()), 0.0, 0.0, id="nothing-quoted"),
    pytest.param(pages.block_theme_reply(TARGET, quote=pages.ARTICLE[:2]), 0.2, 0.45, id="two-paragraphs-quoted"),
    pytest.param(pages.block_theme_reply(TARGET, quote=pages.ARTICLE[:4]), 0.6, 0.8, id="most-quoted"),
    # A scraper's tricks that leave the copy as it reads: below much filler, or with invisible characters in words.
    pytest.param(
        b"<div hidden>" + b"buy cheap phones now " * 15_000 + b"</div>" + pages.scraper_copy(TARGET),
        0.95,
        1.0,
        id="copy-below-filler",
    ),
    pytest.param(pages.scraper_copy(TARGET).replace(b"e", b"&shy;e"), 0.95, 1.0, id="copy-soft-hyphens"),
    pytest.param(pages.scraper_copy(TARGET).replace(b"a", "a\u200d".encode()), 0.95, 1.0, id="copy-zero-width-joiners"),
]


@pytest.mark.parametrize(("source", "low", "high"), SHARE_CASES)
def test_copied_share(source: bytes, low: float, high: float) -> None:
    share = copied_share(read_page(SOURCE, HTML, source), _target())
    assert share is not None and low <= share <= high


def test_the_targets_comments_and_sidebar_do_not_dilute_a_copy() -> None:
    # Forty comments outweigh the article itself; only its entry-content counts.
    target = read_page(TARGET, HTML, pages.wordpress_post(comments=40))
    share = copied_share(read_page(SOURCE, HTML, pages.scraper_copy(TARGET)), target)
    assert share is not None and share > 0.95


def test_a_short_target_is_never_called_copied() -> None:
    note = read_page(TARGET, HTML, b"<article><p>Rain again. The gauge says 12 mm since breakfast.</p></article>")
    assert (
        copied_share(read_page(SOURCE, HTML, b"<p>Rain again. The gauge says 12 mm since breakfast.</p>"), note) is None
    )


@pytest.mark.parametrize(
    ("markup", "words"),
    [
        ("<main><p>in main</p></main><p>out</p>", "in main"),
        ("<article><p>in article</p></article><main>main</main>", "in article"),
        ('<main><div class="x e-content">mf2</div><article>a</article></main>', "mf2"),
        ("<p>whole page</p>", "whole page"),
        ("<main><p>never closed", "never closed"),
    ],
)
def test_main_content(markup: str, words: str) -> None:
    assert shingles(read_page(TARGET, HTML, markup.encode()).content) == shingles(words)


def test_visible_text_skips_markup_scripts_styles_and_comments() -> None:
    text = visible_text("<p>one &amp; two</p><script>no</script><style>p{}</style><!-- no --><b>three</b> < four")
    assert text.split() == ["one", "&", "two", "three", "<", "four"]


def test_inline_tags_do_not_split_words_and_other_tags_do() -> None:
    # A copy whose words are cut by inline tags reads as the same words, as a browser shows them.
    assert visible_text("<p>L<span>ast</span> <em>w</em>ords</p><p>next<br>line</p>").split() == [
        "Last",
        "words",
        "next",
        "line",
    ]


P = Ping(SOURCE, TARGET)
LINKING = read_page(SOURCE, HTML, pages.block_theme_reply(TARGET))
COPY = read_page(SOURCE, HTML, pages.scraper_copy(TARGET))
NOT_LINKING = read_page(SOURCE, HTML, pages.block_theme_reply(TARGET, link=False))

# (source, target, copy share) -> (fault, refusal name), or None: forward it
JUDGE_CASES = [
    pytest.param(LINKING, _target(), DEFAULT_COPY_SHARE, None, id="honest"),
    pytest.param(
        Unread(Missing.GONE, "HTTP 404"),
        None,
        DEFAULT_COPY_SHARE,
        (FaultCode.SOURCE_NOT_FOUND, "source_gone"),
        id="gone",
    ),
    pytest.param(
        Unread(Missing.UNREACHABLE, "no answer"),
        None,
        DEFAULT_COPY_SHARE,
        (FaultCode.UPSTREAM_ERROR, "source_unreachable"),
        id="unreachable",
    ),
    pytest.param(
        Unread(Missing.BOUND, "too many"),
        None,
        DEFAULT_COPY_SHARE,
        (FaultCode.UPSTREAM_ERROR, "fetch_bound"),
        id="bound",
    ),
    pytest.param(NOT_LINKING, _target(), DEFAULT_COPY_SHARE, (FaultCode.NO_LINK, "no_link"), id="no-link"),
    pytest.param(COPY, _target(), DEFAULT_COPY_SHARE, (FaultCode.ACCESS_DENIED, "copy"), id="copy"),
    pytest.param(COPY, _target(), None, None, id="copy-check-off"),
    pytest.param(COPY, None, DEFAULT_COPY_SHARE, None, id="target-not-fetched"),
    pytest.param(COPY, Unread(Missing.UNREACHABLE, "x"), DEFAULT_COPY_SHARE, None, id="target-unreadable"),
    # Junk pings naming the owner's pages can use up the bound: the next ping waits, a copy does not pass.
    pytest.param(
        COPY,
        Unread(Missing.BOUND, "too many"),
        DEFAULT_COPY_SHARE,
        (FaultCode.UPSTREAM_ERROR, "fetch_bound"),
        id="target-past-the-bound",
    ),
    pytest.param(COPY, Unread(Missing.BOUND, "too many"), None, None, id="target-past-the-bound-copy-check-off"),
    pytest.param(
        read_page(SOURCE, HTML, pages.block_theme_reply(TARGET, quote=pages.ARTICLE[:4])),
        _target(),
        0.9,
        None,
        id="tuned-threshold",
    ),
]


@pytest.mark.parametrize(("source", "target", "share", "expected"), JUDGE_CASES)
def test_judge(
    source: Page | Unread, target: Page | Unread | None, share: float | None, expected: tuple[FaultCode, str] | None
) -> None:
    refusal = judge(P, source, target, share)
    assert (refusal and (refusal.code, refusal.name)) == expected
    if refusal is not None:  # every refusal names the setting that turns its check off or tunes it
        assert "PINGFORWARD_" in refusal.text


def test_a_copy_refusal_says_the_source_copies_the_target() -> None:
    refusal = judge(P, COPY, _target(), DEFAULT_COPY_SHARE)
    assert refusal is not None and "copies the target" in refusal.text


def test_a_site_cannot_copy_itself() -> None:
    same_site = read_page("https://site.example/2024/04/more/", HTML, pages.scraper_copy(TARGET))
    assert judge(Ping("https://site.example/2024/04/more/", TARGET), same_site, _target(), DEFAULT_COPY_SHARE) is None


@pytest.mark.parametrize(
    ("source", "target", "refused"),
    [
        (TARGET, TARGET, True),
        (TARGET + "#comment-3", TARGET, True),
        ("https://SITE.example:443/2024/03/weather-station/", TARGET, True),
        ("https://site.example/2024/03/weather%2Dstation/", TARGET, True),
        (SOURCE, TARGET, False),
        (TARGET + "?replytocom=3", TARGET, False),
    ],
)
def test_junk(source: str, target: str, refused: bool) -> None:
    refusal = junk(Ping(source, target))
    assert (refusal is not None) is refused
    if refusal is not None:
        assert refusal.code == FaultCode.GENERIC and refusal.name == "self_ping"


def test_a_copy_with_its_words_cut_by_inline_tags_is_still_a_copy() -> None:
    markup = pages.scraper_copy(TARGET).decode()
    cut = re.sub(r">([^<]+)<", lambda text: ">" + text[1].replace("e", "<span>e</span>") + "<", markup)
    assert cut != markup
    refusal = judge(P, read_page(SOURCE, HTML, cut.encode()), _target(), DEFAULT_COPY_SHARE)
    assert refusal is not None and refusal.name == "copy"
