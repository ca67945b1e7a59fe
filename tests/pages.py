# ruff: noqa: E501 -- real pages carry long lines, kept as themes write them
"""Pages shaped like the ones the spam checks meet: a WordPress post (the target), replies in other themes,
a scraper's copy, a Latin-1 page, a long page with the link deep. Shared by the table tests and the
end-to-end tests."""

from __future__ import annotations

from html import escape

ARTICLE = (
    "Last spring I rebuilt the little weather station that sits on the shed roof. The old one had a cup "
    "anemometer with a bearing that squealed in every breeze, and the humidity sensor drifted so far that "
    "it reported fog on clear August afternoons.",
    "The new station runs on a single board computer in a sealed box, with the sensors on a short mast. "
    "Power comes from a ten watt panel and a small lead acid battery, which has carried it through three "
    "weeks of grey November without a single gap in the records.",
    "Calibration took longer than the build. I borrowed a reference thermometer from the school across "
    "the road and logged both side by side for a fortnight, then fitted a straight line to the differences "
    "and folded the correction into the software that reads the sensor.",
    "Wind was the hardest part to get right. A mast on a shed roof sits in the eddies of the house, so the "
    "readings are low whenever the wind comes from the west. I moved the mast twice before settling on the "
    "north east corner, where the gusts finally look like the airport's.",
    "Every reading goes into a plain text file, one line per minute, and a small script draws the week's "
    "charts each night. Nothing is sent anywhere, which means nothing breaks when a cloud service changes "
    "its terms, and the whole archive for the year fits on a floppy disk.",
    "If you build one yourself, start with the rain gauge. It is the simplest sensor, the most satisfying "
    "to watch, and the one whose numbers your neighbours will actually ask you about over the fence.",
)

WP_HEAD = """<!doctype html>
<html lang="en-GB">
<head>
<meta charset="UTF-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} &#8211; Field Notes</title>
<link rel="pingback" href="https://site.example/xmlrpc.php">
<link rel='stylesheet' id='wp-block-library-css' href='https://site.example/wp-includes/css/dist/block-library/style.min.css?ver=6.4.2' media='all' />
<script id="twenty-twenty-one-ie11-polyfills-js-after">
( Element.prototype.matches && Element.prototype.closest && window.NodeList && NodeList.prototype.forEach ) || document.write( '<script src="https://site.example/wp-content/themes/twentytwentyone/assets/js/polyfills.js?ver=1.0"></scr' + 'ipt>' );
</script>
<style id='global-styles-inline-css'>
body{{--wp--preset--color--black: #000000;--wp--preset--color--white: #ffffff;}}
</style>
</head>
"""

SIDEBAR = """<aside class="widget-area">
<section id="search-2" class="widget widget_search"><form role="search" method="get" class="search-form" action="https://site.example/">
<label for="search-form-1">Search&hellip;</label><input type="search" id="search-form-1" class="search-field" value="" name="s" />
<input type="submit" class="search-submit" value="Search" /></form></section>
<section id="recent-posts-2" class="widget widget_recent_entries"><h2 class="widget-title">Recent Posts</h2><nav aria-label="Recent Posts"><ul>
<li><a href="https://site.example/2024/03/bees-in-the-chimney/">Bees in the chimney, again</a></li>
<li><a href="https://site.example/2024/02/repairing-a-sash-window/">Repairing a sash window with nothing but patience</a></li>
<li><a href="https://site.example/2024/01/the-allotment-ledger/">The allotment ledger for the year that was</a></li>
</ul></nav></section>
<section id="archives-2" class="widget widget_archive"><h2 class="widget-title">Archives</h2><ul>
<li><a href='https://site.example/2024/03/'>March 2024</a></li><li><a href='https://site.example/2024/02/'>February 2024</a></li>
</ul></section>
</aside>
"""


def paragraphs(texts: tuple[str, ...]) -> str:
    return "\n".join(f"<!-- wp:paragraph -->\n<p>{escape(text)}</p>\n<!-- /wp:paragraph -->" for text in texts)


def wordpress_post(title: str = "A weather station on the shed", comments: int = 3) -> bytes:
    """A post in WordPress's Twenty Twenty-One theme, with its sidebar and comments."""
    replies = "\n".join(
        f'<li id="comment-{n}" class="comment even thread-even depth-1"><article class="comment-body">'
        f'<footer class="comment-meta"><b class="fn">Reader {n}</b> says:</footer>'
        f'<div class="comment-content"><p>Lovely write-up, thank you. Which battery charger do you use, number {n}?</p>'
        f"</div></article></li>"
        for n in range(comments)
    )
    body = f"""<body class="post-template-default single single-post postid-42 wp-embed-responsive">
<div id="page" class="site">
<a class="skip-link screen-reader-text" href="#content">Skip to content</a>
<header id="masthead" class="site-header has-title-and-tagline"><div class="site-branding">
<p class="site-title"><a href="https://site.example/">Field Notes</a></p>
<p class="site-description">Small projects, mostly outdoors</p></div>
<nav id="site-navigation" class="primary-navigation"><ul id="primary-menu-list" class="menu-wrapper">
<li class="menu-item"><a href="https://site.example/about/">About</a></li>
<li class="menu-item"><a href="https://site.example/projects/">Projects</a></li></ul></nav></header>
<div id="content" class="site-content"><div id="primary" class="content-area"><main id="main" class="site-main">
<article id="post-42" class="post-42 post type-post status-publish format-standard hentry category-projects entry">
<header class="entry-header alignwide"><h1 class="entry-title">{escape(title)}</h1></header>
<div class="entry-content">
{paragraphs(ARTICLE)}
</div>
<footer class="entry-footer default-max-width"><div class="posted-by"><span class="posted-on">Published
<time class="entry-date published updated" datetime="2024-03-18T09:12:44+00:00">March 18, 2024</time></span>
</div></footer>
</article>
<div id="comments" class="comments-area default-max-width show-avatars">
<h2 class="comments-title">{comments} comments on &ldquo;{escape(title)}&rdquo;</h2>
<ol class="comment-list">{replies}</ol></div>
</main></div></div>
{SIDEBAR}
<footer id="colophon" class="site-footer"><div class="site-info">Proudly powered by
<a href="https://wordpress.org/">WordPress</a>.</div></footer></div>
<script src="https://site.example/wp-content/themes/twentytwentyone/assets/js/primary-navigation.js?ver=1.0" id="twenty-twenty-one-primary-navigation-script-js"></script>
</body></html>
"""
    return (WP_HEAD.format(title=escape(title)) + body).encode()


def block_theme_reply(target: str, quote: tuple[str, ...] = (ARTICLE[3],), link: bool = True) -> bytes:
    """A reply in a block theme (Twenty Twenty-Four) that quotes part of the target and links to it."""
    own = (
        "Reading about someone else's station made me finally fix mine. My problem was never the wind, it "
        "was the squirrels, who treat the rain gauge as a drinking fountain and the cable as a snack.",
        "The tip about the reference thermometer is a good one; the library lends them out too, at least here.",
        "I have now put a small cage around the gauge, and the readings have stopped looking like a cartoon.",
    )
    anchor = f'<a href="{escape(target)}#comments" data-type="post">Field Notes</a>' if link else "<b>Field Notes</b>"
    quoted = "".join(f"<p>{escape(text)}</p>" for text in quote)
    return f"""<!DOCTYPE html>
<html lang="en-US"><head><meta charset="UTF-8"><title>Squirrels and rain gauges &#8211; Other Blog</title>
<meta name='robots' content='max-image-preview:large' />
<style id='wp-emoji-styles-inline-css'>img.wp-smiley, img.emoji {{ display: inline !important; }}</style>
</head>
<body class="post-template-default single single-post wp-embed-responsive">
<div class="wp-site-blocks"><header class="wp-block-template-part"><div class="wp-block-group alignwide">
<p class="wp-block-site-title"><a href="https://other.example" rel="home">Other Blog</a></p></div></header>
<main class="wp-block-group" style="margin-top:var(--wp--preset--spacing--50)">
<div class="entry-content wp-block-post-content has-global-padding is-layout-constrained">
<p>{escape(own[0])}</p>
<p>Over at {anchor} there is a fine account of building one:</p>
<blockquote class="wp-block-quote">{quoted}</blockquote>
<p>{escape(own[1])}</p><p>{escape(own[2])}</p>
</div></main>
<footer class="wp-block-template-part"><p class="has-text-align-center">Designed with
<a href="https://wordpress.org" rel="nofollow">WordPress</a></p></footer></div>
<script type="speculationrules">{{"prerender":[{{"source":"document","where":{{"href_matches":"\\/*"}}}}]}}</script>
</body></html>
""".encode()


def scraper_copy(target: str) -> bytes:
    """A copy-blog's page: the target's whole text in another theme, with ads and an attribution link."""
    return f"""<html><head><title>A weather station on the shed | Best Tech News Daily</title>
<script async src="https://ads.example/show_ads.js"></script></head>
<body><div id="wrap"><div class="header"><a href="/">Best Tech News Daily</a></div>
<div class="ad"><a href="https://ads.example/click?id=1"><img src="https://ads.example/banner.gif"></a></div>
<div class="post"><h2>A weather station on the shed</h2>
{"".join(f"<p>{escape(text)}</p>" for text in ARTICLE)}
<p class="source">Source: <a href="{escape(target)}" rel="nofollow">site.example</a></p></div>
<div class="related"><h3>Related</h3><ul><li><a href="/cheap-phones">Ten cheap phones</a></li></ul></div>
</div></body></html>""".encode()


def latin1_reply(target: str) -> bytes:
    """A page in ISO-8859-1, declared only by its <meta>, linking the target with an entity in its query."""
    # WordPress writes the "&" of a URL in an attribute as "&#038;".
    href = target.replace("&", "&#038;")
    return f"""<html><head>
<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">
<title>Stations météo</title></head>
<body><h1>Une station météo sur l'abri de jardin</h1>
<p>Très bel article chez nos voisins anglais&nbsp;: <a href="{href}">la station sur le toit</a>.
Nous avons essayé la même chose à Besançon, avec un anémomètre à coupelles récupéré.</p>
<p>Ça marche très bien, même en hiver, écrit Zoë.</p>
</body></html>""".encode("iso-8859-1")


def long_page(target: str, size: int = 900 * 1024) -> bytes:
    """A theme-heavy page of about `size` bytes whose one link to the target comes at its end."""
    block = (
        '<div class="wp-block-group has-background" style="padding:1em"><div class="wp-block-columns">'
        '<div class="wp-block-column"><figure class="wp-block-image"><img src="/wp-content/uploads/x.jpg" '
        'srcset="/wp-content/uploads/x-300.jpg 300w, /wp-content/uploads/x-1024.jpg 1024w" alt=""></figure>'
        "<p>Another day, another photograph of the hills behind the village, and a note on the light.</p>"
        "</div></div></div>\n"
    )
    filler = block * (size // len(block))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Photo diary</title>
<script>window._wpemojiSettings = {{"baseUrl":"https:\\/\\/s.w.org\\/images\\/core\\/emoji\\/14.0.0\\/72x72\\/"}};</script>
</head><body><main>{filler}
<p>At the very end: the <a href='{escape(target)}'>weather station post</a> that started it.</p>
</main></body></html>""".encode()
