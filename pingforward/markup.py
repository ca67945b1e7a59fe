"""Reading fetched documents: header fields, charsets, and a linear scan of HTML start and end tags.

Pure and shared: discovery and the links of a post (webmention.py), feeds (feed.py) and the check that a
pinging page links to its target (verify.py) all read pages through here. No I/O library is imported.
Specs: https://html.spec.whatwg.org/multipage/parsing.html (tokenization, §13.2.5; encoding sniffing,
§13.2.3.2) and https://www.rfc-editor.org/rfc/rfc7303 (XML media types and their charset, §3).
"""

from __future__ import annotations

import codecs
import html
import html.entities
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final, Generic, TypeVar

Headers = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]
"""Response headers: (name, value) pairs in order, or a mapping whose values may list repeated fields."""

HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})


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


def ascii_lower(text: str) -> str:
    # HTML (§2.3.3) and RFC 8288 compare keywords ASCII case-insensitively; str.lower() would
    # also fold non-ASCII letters, such as U+212A KELVIN SIGN to "k".
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
ASCII_WHITESPACE: Final = "\t\n\f\r "


def words(text: str) -> tuple[str, ...]:
    # Split on ASCII whitespace only (HTML §2.3.8): U+00A0 inside a token is part of the token.
    return tuple(token for token in _ASCII_SPACES.split(ascii_lower(text)) if token)


_ASCII_SPACES: Final = re.compile("[\t\n\f\r ]+")

# ---------------------------------------------------------------------------------------------
# Body decoding


def media_type(headers: Headers) -> str:
    """The first Content-Type's media type, lower-cased; "" when there is none."""
    values = header_values(headers, "content-type")
    return ascii_lower(values[0].split(";", 1)[0].strip()) if values else ""


def is_html(headers: Headers) -> bool:
    """True when the body should be read as HTML: an HTML media type, or none at all."""
    return media_type(headers) in HTML_TYPES | {""}


_CHARSET_PARAM: Final = re.compile(r"""charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_META_CHARSET: Final = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_XML_ENCODING: Final = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
# UTF-32's little-endian mark begins with UTF-16's, so it is looked for first.
_BOMS: Final = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _codec(label: str | bytes | None) -> str | None:
    if label is None:
        return None
    name = label.decode("ascii", "replace") if isinstance(label, bytes) else label
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode(headers: Headers, body: bytes | str, *, xml: bool = False) -> str:
    """The body as text: a BOM, then the Content-Type charset, then the document's own declaration, else UTF-8.

    The declaration is a `<meta>` charset in HTML (a simplified form of HTML §13.2.3.2's prescan of the
    first 1024 bytes), or the XML declaration's encoding with `xml` (RFC 7303 §3: the charset parameter
    wins over it). Undecodable bytes become U+FFFD rather than an error.
    """
    if isinstance(body, str):
        return body
    for bom, name in _BOMS:
        if body.startswith(bom):
            return body.decode(name, "replace")
    content_type = header_values(headers, "content-type")
    declared = _CHARSET_PARAM.search(content_type[0]) if content_type else None
    inside = _XML_ENCODING.match(body) if xml else _META_CHARSET.search(body[:1024])
    name = (declared and _codec(declared[1])) or (inside and _codec(inside[1])) or "utf-8"
    return body.decode(name, "replace")


# ---------------------------------------------------------------------------------------------
# HTML: a tokenizer that finds start and end tags
#
# Not html.parser: on Python 3.11 it re-scans the rest of the page from every "<" that does not
# complete a tag or comment, so its time grows with the square of a hostile page's size (a page of
# repeated "<a " stalls it for minutes: bench/README.md); it also expands "&region=" in an href to
# "®ion=". Nor a tree builder: lexbor (selectolax) is not linear on deep nesting either. This tokenizer
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
VOID: Final = frozenset("area base br col embed hr img input keygen link meta param source track wbr".split())
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
        attributes.setdefault(ascii_lower(name_match[0]), _unescape_attribute(value))


# Phrasing elements that a browser renders inside a run of text without a break: `L<span>ast</span>` is
# one word (HTML §3.2.5.2.5). Every other tag, <br> and <p> among them, separates the text around it.
INLINE: Final = frozenset(
    "a abbr b bdi bdo cite code data del dfn em font i ins kbd mark q s samp small span strong sub sup time tt u var "
    "wbr".split()
)


def tags(text: str, texts: list[str] | None = None) -> Iterator[Token]:
    """Start and end tags in document order; everything else is skipped.

    With `texts`, the text between constructs is appended to it as the scan passes it, before the tag
    that follows it is yielded, and a space for each tag that is not INLINE (character references not
    expanded; see `visible_text`). The content of raw text elements (<script>, <style>, <title>...) and of
    comments is not text.
    """
    pos = 0
    while (lt := text.find("<", pos)) != -1:
        if texts is not None and lt > pos:
            texts.append(text[pos:lt])
        after = text[lt + 1 : lt + 2]
        if after.isascii() and after.isalpha():  # §13.2.5.6 tag open state
            name_match = _TAG_NAME.match(text, lt + 1)
            assert name_match is not None
            name = ascii_lower(name_match[0])
            parsed = _attributes(text, name_match.end())
            if parsed is None:
                return
            attributes, pos = parsed
            if texts is not None and name not in INLINE:
                texts.append(" ")
            yield True, name, attributes
            if name == "plaintext":
                if texts is not None:
                    texts.append(text[pos:])
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
                name = ascii_lower(name_match[0])
                if texts is not None and name not in INLINE:
                    texts.append(" ")
                yield False, name, {}
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
            if texts is not None:
                texts.append("<")
            pos = lt + 1
    if texts is not None and pos < len(text):
        texts.append(text[pos:])


def visible_text(text: str) -> str:
    """The text a reader of the page sees: no markup, comments, scripts or styles; words split only where tags
    that are not INLINE stand between them.

    Linear, as `tags` is. Character references are expanded (html.unescape follows HTML §13.2.5.72).
    """
    texts: list[str] = []
    for _ in tags(text, texts):
        pass
    return html.unescape("".join(texts))


# microformats2 root class names (microformats.org/wiki/microformats2-parsing): h-entry, h-card, h-x-y...
MF2_ROOT: Final = re.compile(r"h(?:-[a-z0-9]+)+\Z")

T = TypeVar("T")


class OpenElements(Generic[T]):
    """The elements open at a point of the scan, each with what its reader keeps about it.

    An end tag closes its element and whatever is still open inside it (<p>, <li>...); a stray one
    closes nothing, and </body> and </html> close nothing either (HTML §13.2.6.4.7). Counting per tag
    name makes a stray end tag cost no walk of the stack.
    """

    def __init__(self) -> None:
        self.stack: list[tuple[str, T]] = []
        self._count: dict[str, int] = {}

    def open(self, name: str, item: T) -> None:
        """Note a start tag; void elements (VOID) are never open, so they are not noted."""
        if name not in VOID:
            self.stack.append((name, item))
            self._count[name] = self._count.get(name, 0) + 1

    def close(self, name: str) -> None:
        if self._count.get(name) and name not in ("body", "html"):
            while (closed := self.stack.pop()[0]) != name:
                self._count[closed] -= 1
            self._count[name] -= 1

    @property
    def innermost(self) -> T | None:
        return self.stack[-1][1] if self.stack else None
