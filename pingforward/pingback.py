"""Pingback 1.0 over XML-RPC: parse and render calls and responses, both directions.

Pure: bytes in, values out, or a `Fault` raised. No I/O library is imported here.
Specs: https://www.hixie.ch/specs/pingback/pingback (Pingback 1.0),
http://xmlrpc.com/spec.md (XML-RPC) and
http://xmlrpc-epi.sourceforge.net/specs/rfc.fault_codes.php (fault code interoperability).
"""

from __future__ import annotations

import re
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final
from urllib.parse import urlsplit

from defusedxml import DefusedXmlException
from defusedxml.xmlrpc import DefusedExpatParser

from pingforward.errors import PingforwardError

PINGBACK_PING: Final = "pingback.ping"
LIST_METHODS: Final = "system.listMethods"
METHODS: Final = (PINGBACK_PING, LIST_METHODS)

# The Pingback spec asks for no limit, but every fault string we emit is bounded: it is read by
# people in blog dashboards and must not carry a receiver's whole error page.
MAX_FAULT_STRING: Final = 300
MAX_SUCCESS_STRING: Final = 1000


class FaultCode(IntEnum):
    """Fault codes a pingback server may answer, each with its default faultString."""

    message: str

    def __new__(cls, value: int, message: str = "") -> FaultCode:
        obj = int.__new__(cls, value)
        obj._value_ = value
        obj.message = message
        return obj

    # Pingback 1.0 §3: "0x0010 (16) The source URI does not exist. ... 0x0032 (50) The server
    # could not communicate with an upstream server, or received an error from an upstream
    # server, and therefore could not complete the request. ... This error SHOULD be used by
    # pingback proxies when propagating errors." The high nibble groups them: 0x001x source,
    # 0x002x target, 0x003x everything else; 0 when the server cannot tell.
    GENERIC = 0, "Error."
    SOURCE_NOT_FOUND = 0x10, "The source URI does not exist."
    NO_LINK = 0x11, "The source URI does not contain a link to the target URI."
    TARGET_NOT_FOUND = 0x20, "The specified target URI does not exist."
    TARGET_NOT_PINGABLE = 0x21, "The specified target URI cannot be used as a target."
    ALREADY_REGISTERED = 0x30, "The pingback has already been registered."
    ACCESS_DENIED = 0x31, "Access denied."
    UPSTREAM_ERROR = 0x32, "Could not communicate with the upstream server."
    # Not in the spec: WordPress answers a client that pings too fast with 429, the status of its comment
    # flood error (`wp_allow_comment`, https://developer.wordpress.org/reference/functions/wp_allow_comment/).
    TOO_MANY = 429, "You are posting comments too quickly. Slow down."

    # Fault Code Interoperability (version 20010516); the values match xmlrpc.client's constants.
    PARSE_ERROR = xmlrpc.client.PARSE_ERROR, "parse error. not well formed"
    UNSUPPORTED_ENCODING = xmlrpc.client.UNSUPPORTED_ENCODING, "parse error. unsupported encoding"
    INVALID_XMLRPC = xmlrpc.client.INVALID_XMLRPC, "server error. invalid xml-rpc. not conforming to spec."
    METHOD_NOT_FOUND = xmlrpc.client.METHOD_NOT_FOUND, "server error. requested method not found"
    INVALID_PARAMS = xmlrpc.client.INVALID_METHOD_PARAMS, "server error. invalid method parameters"
    INTERNAL_ERROR = xmlrpc.client.INTERNAL_ERROR, "server error. internal xml-rpc error"


class Fault(PingforwardError):
    """An XML-RPC fault: one of `FaultCode` plus a message (the code's own by default)."""

    def __init__(self, code: FaultCode, message: str | None = None) -> None:
        self.code = code
        self.message = message or code.message
        super().__init__(self.message)


@dataclass(frozen=True, slots=True)
class Call:
    """A decoded XML-RPC methodCall."""

    method: str
    params: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Ping:
    """The arguments of `pingback.ping(sourceURI, targetURI)`."""

    source: str
    target: str


class _Unmarshaller(xmlrpc.client.Unmarshaller):
    """The stdlib decoder, plus the name of the root element (set by `_Parser`)."""

    root: str | None = None


class _Parser(DefusedExpatParser):  # type: ignore[misc]  # defusedxml has no type hints
    """defusedxml's expat parser for the stdlib decoder, with DTDs refused, noting the root element.

    defusedxml refuses DTDs, entity declarations and external references outright, so the
    billion-laughs family never reaches expat's expansion code.
    """

    def __init__(self, target: _Unmarshaller) -> None:
        super().__init__(target, forbid_dtd=True)
        self._parser.buffer_text = True  # one data callback per text run, not one per line
        self._parser.StartElementHandler = self._root

    def _root(self, tag: str, attrs: dict[str, str]) -> None:
        # Only the first element: then the decoder's own handler, without a Python call in between.
        self._target.root = tag
        self._parser.StartElementHandler = self._target.start
        self._target.start(tag, attrs)


# What the stdlib decoder raises on XML that is well-formed but not valid XML-RPC: an unknown
# tag inside <value> (ResponseError), <int>abc</int> (ValueError), a struct member without a
# value (IndexError), a fault struct without faultCode (TypeError).
_INVALID_VALUE_ERRORS: Final = (
    xmlrpc.client.ResponseError,
    xmlrpc.client.Fault,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
)


# A plain methodCall, as WordPress, IXR, xmlrpc.client and curl scripts send one: printable ASCII
# (checked first: no encoding to decode, no "\r" to normalise), no "&" (no entity or character
# reference) and no "]]>" (not allowed in text, XML 1.0 §2.4), the XML declaration absent or in its
# usual forms, no attributes, comments or CDATA, and every param a <string> or an untyped <value>
# ("If no type is indicated, the type is string", XML-RPC spec). Possessive quantifiers: no backtracking.
_PLAIN_BYTES: Final = re.compile(rb"[\t\n\x20-\x7e]*+")
_PLAIN_CALL: Final = re.compile(
    rb"""(?:<\?xml version=(["'])1\.0\1(?: encoding=(["'])(?i:utf-8|us-ascii|ascii|iso-8859-1)\2)?\s*+\?>)?"""
    rb"\s*+<methodCall>\s*+<methodName>([^<]*+)</methodName>\s*+<params>\s*+"
    rb"((?:<param>\s*+<value>(?:\s*+<string>[^<]*+</string>\s*+|[^<]*+)</value>\s*+</param>\s*+)*+)"
    rb"</params>\s*+</methodCall>\s*+"
)
# Around a <string>, the decoder drops the whitespace; an untyped value keeps all of its text.
_PLAIN_VALUE: Final = re.compile(rb"<value>(?:\s*+<string>([^<]*+)</string>\s*+|([^<]*+))</value>")


def parse_call(body: bytes) -> Call:
    """Decode a methodCall; raise `Fault` with PARSE_ERROR or INVALID_XMLRPC.

    A plain call is read with two regular expressions, anything else by the stdlib decoder under
    defusedxml. Both give the same `Call` for every plain call (tests/test_properties.py). The
    shortcut exists because expat's callbacks into Python, one per tag and per text, were the largest
    part of our own handling of a ping; a body that is not plain pays a little for the attempt
    (bench/README.md has both figures).
    """
    plain = _plain_call(body)
    return plain if plain is not None else _decoded_call(body)


def _plain_call(body: bytes) -> Call | None:
    """The call, if `body` is a plain one (above); None sends it to the full decoder."""
    if b"&" in body or b"]]>" in body or _PLAIN_BYTES.fullmatch(body) is None:
        return None
    match = _PLAIN_CALL.fullmatch(body)
    if match is None:
        return None
    params = tuple(
        (typed if typed is not None else untyped).decode("ascii")
        for typed, untyped in (value.groups() for value in _PLAIN_VALUE.finditer(match[4]))
    )
    return Call(match[3].decode("ascii").strip(), params)


def _decoded_call(body: bytes) -> Call:
    """The stdlib decoder under defusedxml: every methodCall, whatever its encoding, types or entities."""
    unmarshaller = _Unmarshaller()
    parser = _Parser(unmarshaller)
    try:
        parser.feed(body)
        parser.close()
    except (xml.parsers.expat.ExpatError, DefusedXmlException) as exc:
        raise Fault(FaultCode.PARSE_ERROR) from exc
    except _INVALID_VALUE_ERRORS as exc:  # before LookupError: IndexError is one
        raise Fault(FaultCode.INVALID_XMLRPC) from exc
    except LookupError as exc:  # <?xml encoding="..."?> names a codec Python does not have
        raise Fault(FaultCode.UNSUPPORTED_ENCODING) from exc
    method = unmarshaller.getmethodname()
    if unmarshaller.root != "methodCall" or method is None:
        raise Fault(FaultCode.INVALID_XMLRPC, "server error. invalid xml-rpc. not a methodCall")
    try:
        params = unmarshaller.close()
    except _INVALID_VALUE_ERRORS as exc:
        raise Fault(FaultCode.INVALID_XMLRPC) from exc
    return Call(method.strip(), params)


_SPACE_OR_CONTROL: Final = re.compile(r"[\x00-\x20\x7f]")


def is_http_url(url: str) -> bool:
    """True for an absolute http(s) URL with a host and no whitespace or control characters."""
    if not url or _SPACE_OR_CONTROL.search(url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def ping_from_params(params: Sequence[object]) -> Ping:
    """Validate `pingback.ping`'s params; extra ones are ignored (semantic pingback sends three)."""
    if len(params) < 2 or not isinstance(params[0], str) or not isinstance(params[1], str):
        raise Fault(
            FaultCode.INVALID_PARAMS,
            "server error. invalid method parameters: pingback.ping takes two strings",
        )
    # XML-RPC keeps the whitespace around an untyped value; WordPress's IXR trims it, and so do we.
    source, target = params[0].strip(), params[1].strip()
    if not is_http_url(source):
        raise Fault(FaultCode.SOURCE_NOT_FOUND, "The source URI is not an absolute http(s) URL.")
    if not is_http_url(target):
        raise Fault(FaultCode.TARGET_NOT_PINGABLE, "The target URI is not an absolute http(s) URL.")
    return Ping(source, target)


# XML 1.0 §2.2 Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF].
# xmlrpc.client.dumps escapes & < > but passes everything else through, so strip the rest.
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean_text(text: str, limit: int) -> str:
    """Make `text` safe to send as an XML string: valid characters only, at most `limit` long."""
    text = _NOT_XML_CHAR.sub("\ufffd", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_response(value: str | Sequence[str]) -> bytes:
    """A methodResponse carrying one string (or an array of strings, for system.listMethods)."""
    if isinstance(value, str):
        cleaned: str | list[str] = clean_text(value, MAX_SUCCESS_STRING) or "OK"
    else:
        cleaned = [clean_text(item, MAX_SUCCESS_STRING) for item in value]
    return xmlrpc.client.dumps((cleaned,), methodresponse=True).encode()


def render_fault(fault: Fault) -> bytes:
    """A methodResponse carrying a fault, with an `<int>` code and a non-empty `<string>`."""
    message = clean_text(fault.message, MAX_FAULT_STRING) or fault.code.message
    return xmlrpc.client.dumps(xmlrpc.client.Fault(int(fault.code), message), methodresponse=True).encode()


def render_call(ping: Ping) -> bytes:
    """The request body of `pingback.ping(source, target)`, for the sender."""
    return xmlrpc.client.dumps((ping.source, ping.target), PINGBACK_PING).encode()


@dataclass(frozen=True, slots=True)
class RemoteFault:
    """A fault as a pingback server sent it: its code (an int, else the value's text) and faultString."""

    code: int | str
    string: str


def parse_answer(body: bytes) -> str | RemoteFault:
    """Decode a pingback.ping answer: the success string, or the server's fault exactly as sent.

    Raise `Fault` only when the body is not a methodResponse.
    """
    unmarshaller = _Unmarshaller()
    parser = _Parser(unmarshaller)
    try:
        parser.feed(body)
        parser.close()
        values = unmarshaller.close()
    except xmlrpc.client.Fault as fault:
        code = fault.faultCode
        return RemoteFault(code if isinstance(code, int) else str(code), str(fault.faultString))
    except (xml.parsers.expat.ExpatError, DefusedXmlException) as exc:
        raise Fault(FaultCode.PARSE_ERROR) from exc
    except _INVALID_VALUE_ERRORS as exc:  # before LookupError: IndexError is one
        raise Fault(FaultCode.INVALID_XMLRPC) from exc
    except LookupError as exc:
        raise Fault(FaultCode.UNSUPPORTED_ENCODING) from exc
    if unmarshaller.root != "methodResponse" or not values:
        raise Fault(FaultCode.INVALID_XMLRPC, "not a methodResponse")
    return str(values[0])


def parse_response(body: bytes) -> str:
    """Decode a pingback.ping answer: the success string, or raise the server's `Fault`."""
    answer = parse_answer(body)
    if isinstance(answer, RemoteFault):
        code = answer.code if isinstance(answer.code, int) and answer.code in FaultCode._value2member_map_ else 0
        raise Fault(FaultCode(code), answer.string)
    return answer
