from __future__ import annotations

import xmlrpc.client

import pytest

from pingforward.pingback import (
    MAX_FAULT_STRING,
    Call,
    Fault,
    FaultCode,
    Ping,
    clean_text,
    parse_call,
    parse_response,
    ping_from_params,
    render_call,
    render_fault,
    render_response,
)
from pingforward.pingback import _decoded_call as decoded_call
from pingforward.pingback import _plain_call as plain_call
from tests.conftest import load

POST = "https://blog.example/post"
NOTE = "https://site.example/notes/42"


def call(*values: str, method: str = "pingback.ping") -> bytes:
    params = "".join(f"<param><value>{value}</value></param>" for value in values)
    return f"<methodCall><methodName>{method}</methodName><params>{params}</params></methodCall>".encode()


# Request body -> the ping it carries, or the fault code it earns.
CASES = [
    pytest.param(
        load("pingback/wordpress.xml"), Ping("https://blog.example/2026/11/a-post/?p=1&lang=en's", NOTE), id="wordpress"
    ),
    pytest.param(load("pingback/node.xml"), Ping(POST, NOTE), id="node-pingback"),
    pytest.param(load("pingback/curl-untyped.xml"), Ping(POST, NOTE), id="curl-untyped"),
    pytest.param(load("pingback/pushl.xml"), Ping(POST, NOTE), id="pushl-ascii"),
    pytest.param(load("pingback/latin1.xml"), Ping("https://blog.example/café", NOTE), id="iso-8859-1"),
    pytest.param(load("pingback/pretty-whitespace.xml"), Ping(POST, NOTE), id="whitespace-trimmed"),
    pytest.param(load("pingback/cdata.xml"), Ping("https://blog.example/post?a=1&b=2", NOTE), id="cdata"),
    pytest.param(load("pingback/semantic-third-param.xml"), Ping(POST, NOTE), id="extra-param-ignored"),
    pytest.param(b"\xef\xbb\xbf" + load("pingback/node.xml"), Ping(POST, NOTE), id="utf8-bom"),
    pytest.param(
        call(f"<string>{POST}</string>", f"<string>{NOTE}</string>", method=" pingback.ping\n"),
        Ping(POST, NOTE),
        id="methodname-whitespace",
    ),
    pytest.param(load("pingback/methodresponse.xml"), FaultCode.INVALID_XMLRPC, id="methodresponse"),
    pytest.param(load("pingback/billion-laughs.xml"), FaultCode.PARSE_ERROR, id="billion-laughs"),
    pytest.param(load("pingback/quadratic-blowup.xml"), FaultCode.PARSE_ERROR, id="quadratic-blowup"),
    pytest.param(load("pingback/external-entity-file.xml"), FaultCode.PARSE_ERROR, id="xxe-file"),
    pytest.param(load("pingback/external-entity-url.xml"), FaultCode.PARSE_ERROR, id="xxe-url"),
    pytest.param(load("pingback/dtd.xml"), FaultCode.PARSE_ERROR, id="dtd"),
    pytest.param(b"", FaultCode.PARSE_ERROR, id="empty"),
    pytest.param(
        call("<struct><member><name>a</name></member></struct>", f"<string>{NOTE}</string>"),
        FaultCode.INVALID_XMLRPC,
        id="struct-member-without-value",
    ),
    pytest.param(
        b"<?xml version='1.0' encoding='klingon'?><methodCall/>", FaultCode.UNSUPPORTED_ENCODING, id="encoding"
    ),
    pytest.param(b"source=a&target=b", FaultCode.PARSE_ERROR, id="form-body"),
    pytest.param(load("pingback/node.xml")[:-20], FaultCode.PARSE_ERROR, id="truncated"),
    pytest.param(load("pingback/node.xml") + b"<x/>", FaultCode.PARSE_ERROR, id="two-roots"),
    pytest.param(load("pingback/node.xml") + b"garbage", FaultCode.PARSE_ERROR, id="trailing-garbage"),
    pytest.param(call("a\x00b", NOTE).replace(b"a\\x00b", b"a\x00b"), FaultCode.PARSE_ERROR, id="nul-byte"),
    pytest.param(call("\xff\xfe", NOTE).replace("ÿþ".encode(), b"\xff\xfe"), FaultCode.PARSE_ERROR, id="invalid-utf8"),
    pytest.param(b"<foo><methodName>pingback.ping</methodName></foo>", FaultCode.INVALID_XMLRPC, id="wrong-root"),
    pytest.param(b"<methodCall><params/></methodCall>", FaultCode.INVALID_XMLRPC, id="no-methodname"),
    pytest.param(call("<int>abc</int>", NOTE), FaultCode.INVALID_XMLRPC, id="bad-int"),
    pytest.param(call("<bogus>1</bogus>", NOTE), FaultCode.INVALID_XMLRPC, id="unknown-type"),
    pytest.param(call(POST), FaultCode.INVALID_PARAMS, id="one-param"),
    pytest.param(call(), FaultCode.INVALID_PARAMS, id="no-params"),
    pytest.param(
        b"<methodCall><methodName>pingback.ping</methodName></methodCall>",
        FaultCode.INVALID_PARAMS,
        id="no-params-element",
    ),
    pytest.param(call("<int>1</int>", NOTE), FaultCode.INVALID_PARAMS, id="int-source"),
    pytest.param(call(POST, "<array><data/></array>"), FaultCode.INVALID_PARAMS, id="array-target"),
    pytest.param(call(POST, "<nil/>"), FaultCode.INVALID_PARAMS, id="nil-target"),
    pytest.param(call("ftp://blog.example/post", NOTE), FaultCode.SOURCE_NOT_FOUND, id="ftp-source"),
    pytest.param(call("/relative/post", NOTE), FaultCode.SOURCE_NOT_FOUND, id="relative-source"),
    pytest.param(call("https://", NOTE), FaultCode.SOURCE_NOT_FOUND, id="hostless-source"),
    pytest.param(call("", NOTE), FaultCode.SOURCE_NOT_FOUND, id="empty-source"),
    pytest.param(call(POST, "notes/42"), FaultCode.TARGET_NOT_PINGABLE, id="relative-target"),
    pytest.param(call(POST, "https://site.example:99999/"), FaultCode.TARGET_NOT_PINGABLE, id="bad-port-target"),
    pytest.param(call(POST, "https://site.example/a b"), FaultCode.TARGET_NOT_PINGABLE, id="space-in-target"),
    pytest.param(call(POST, "javascript:alert(1)"), FaultCode.TARGET_NOT_PINGABLE, id="javascript-target"),
]


def parse_ping(body: bytes) -> Ping:
    parsed = parse_call(body)
    assert parsed.method == "pingback.ping"
    return ping_from_params(parsed.params)


@pytest.mark.parametrize(("body", "expected"), CASES)
def test_parse(body: bytes, expected: Ping | FaultCode) -> None:
    if isinstance(expected, Ping):
        assert parse_ping(body) == expected
    else:
        with pytest.raises(Fault) as info:
            parse_ping(body)
        assert info.value.code is expected
        assert info.value.message


# parse_call reads plain calls with two regular expressions; everything else goes to the stdlib decoder.
PLAIN = [
    pytest.param(load("pingback/node.xml"), id="node-pingback"),
    pytest.param(load("pingback/curl-untyped.xml"), id="curl-untyped"),
    pytest.param(load("pingback/pushl.xml"), id="pushl-ascii"),
    pytest.param(load("pingback/pretty-whitespace.xml"), id="whitespace"),
    pytest.param(load("pingback/semantic-third-param.xml"), id="third-param"),
    pytest.param(render_call(Ping(POST, NOTE)), id="xmlrpc-client"),
    pytest.param(call(POST, "<string></string>", "", method="m"), id="empty-values"),
    pytest.param(call(method="m"), id="no-params"),
    pytest.param(call("\t a > b \n", "<string> 'q\" ] </string>", method="\n m \t"), id="whitespace-and-marks"),
    pytest.param(b"<?xml version='1.0' encoding='utf-8' ?>\n" + call(POST, NOTE) + b"\n\n", id="declaration"),
]


@pytest.mark.parametrize("body", PLAIN)
def test_plain_calls_take_the_shortcut_and_decode_as_the_stdlib_does(body: bytes) -> None:
    plain = plain_call(body)
    assert isinstance(plain, Call)
    assert plain == decoded_call(body) == parse_call(body)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(load("pingback/wordpress.xml"), id="entity-and-character-reference"),
        pytest.param(load("pingback/cdata.xml"), id="cdata"),
        pytest.param(load("pingback/latin1.xml"), id="iso-8859-1-bytes"),
        pytest.param(load("pingback/dtd.xml"), id="dtd"),
        pytest.param(load("pingback/billion-laughs.xml"), id="billion-laughs"),
        pytest.param(b"\xef\xbb\xbf" + load("pingback/node.xml"), id="utf8-bom"),
        pytest.param(call(POST, NOTE).replace(b"<params>", b"<params><!-- c -->"), id="comment"),
        pytest.param(call(POST, NOTE).replace(b"<params>", b"<params>\r\n"), id="carriage-return"),
        pytest.param(call("a]]>b", NOTE), id="cdata-end-in-text"),
        pytest.param(call(POST, NOTE).replace(b"<methodCall>", b'<methodCall xmlns="x">'), id="attribute"),
        pytest.param(b'<?xml version="1.0" standalone="yes"?>' + call(POST, NOTE), id="standalone"),
        pytest.param(b'<?xml version="1.0" encoding="UTF-16"?>' + call(POST, NOTE), id="utf-16-declared"),
        pytest.param(b' <?xml version="1.0"?>' + call(POST, NOTE), id="space-before-declaration"),
        pytest.param(call("<int>1</int>", NOTE), id="int"),
        pytest.param(call(POST, "<array><data/></array>"), id="array"),
        pytest.param(call(POST, "\x7f"), id="delete-character"),
        pytest.param(call(POST, "a\x00b"), id="nul"),
        pytest.param(b"<methodCall><methodName>m</methodName></methodCall>", id="no-params-element"),
        pytest.param(b"<methodCall><methodName>m</methodName><params/></methodCall>", id="empty-element-tag"),
        pytest.param(call(POST, NOTE) + b"<x/>", id="two-roots"),
        pytest.param(call(POST, NOTE)[:-5], id="truncated"),
        pytest.param(call(POST, "<string>x</string> y"), id="text-beside-string"),
    ],
)
def test_anything_else_goes_to_the_full_decoder(body: bytes) -> None:
    assert plain_call(body) is None


@pytest.mark.parametrize("ping", [case.values[1] for case in CASES if isinstance(case.values[1], Ping)])
def test_render_call_round_trips(ping: Ping) -> None:
    # The sender's direction: what we render, we (and the stdlib) parse back unchanged.
    body = render_call(ping)
    assert parse_ping(body) == ping
    assert xmlrpc.client.loads(body) == ((ping.source, ping.target), "pingback.ping")


def test_unknown_method_is_reported_by_name() -> None:
    assert parse_call(call(POST, NOTE, method="weblogUpdates.ping")).method == "weblogUpdates.ping"


@pytest.mark.parametrize("code", list(FaultCode))
def test_render_fault(code: FaultCode) -> None:
    body = render_fault(Fault(code))
    assert body.startswith(b"<?xml") and b"<methodResponse>" in body
    assert f"<int>{int(code)}</int>".encode() in body
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(body)
    assert (info.value.faultCode, info.value.faultString) == (int(code), code.message)
    with pytest.raises(Fault) as ours:
        parse_response(body)
    assert ours.value.code is code


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("plain", "plain"),
        ("bell\x07 and nul\x00", "bell\ufffd and nul\ufffd"),
        ("  padded\n", "padded"),
        ("<&>", "<&>"),
        ("", FaultCode.UPSTREAM_ERROR.message),  # never an empty faultString
        ("\x01", "\ufffd"),
        ("x" * 5000, "x" * (MAX_FAULT_STRING - 1) + "…"),
    ],
)
def test_fault_strings_are_valid_xml_and_bounded(message: str, expected: str) -> None:
    body = render_fault(Fault(FaultCode.UPSTREAM_ERROR, message))
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(body)
    assert info.value.faultString == expected


def test_render_response_is_an_explicit_string() -> None:
    body = render_response("ok\x0b")
    assert b"<value><string>ok\xef\xbf\xbd</string></value>" in body
    assert xmlrpc.client.loads(body) == (("ok\ufffd",), None)
    assert parse_response(body) == "ok\ufffd"
    assert xmlrpc.client.loads(render_response(["a", "b"])) == ((["a", "b"],), None)


def test_clean_text_keeps_astral_characters() -> None:
    assert clean_text("📌 pinned", 100) == "📌 pinned"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"<html>nope</html>", FaultCode.INVALID_XMLRPC),
        (b"not xml", FaultCode.PARSE_ERROR),
        (
            b"<methodResponse><params><param><value><struct><member><name>a</name></member></struct>"
            b"</value></param></params></methodResponse>",
            FaultCode.INVALID_XMLRPC,
        ),
        (
            xmlrpc.client.dumps(xmlrpc.client.Fault(48, "dup"), methodresponse=True).encode(),
            FaultCode.ALREADY_REGISTERED,
        ),
        (xmlrpc.client.dumps(xmlrpc.client.Fault(1234, "odd"), methodresponse=True).encode(), FaultCode.GENERIC),
    ],
)
def test_parse_response_faults(body: bytes, code: FaultCode) -> None:
    with pytest.raises(Fault) as info:
        parse_response(body)
    assert info.value.code is code
