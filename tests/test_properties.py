"""Property tests of the codec: any input gives a ping or a fault, and every answer parses back."""

from __future__ import annotations

import xmlrpc.client

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pingforward.forward import classify
from pingforward.pingback import Fault, FaultCode, Ping, parse_call, ping_from_params, render_fault, render_response
from pingforward.pingback import _decoded_call as decoded_call
from pingforward.pingback import _plain_call as plain_call

PING = Ping("https://blog.example/post", "https://site.example/")


def outcome_of(body: bytes) -> Ping | Fault:
    try:
        call = parse_call(body)
        return ping_from_params(call.params)
    except Fault as fault:
        return fault


@given(st.binary(max_size=2048))
@example(
    b"<methodCall><methodName>m</methodName><params><param><value><struct><member><name>a</name>"
    b"</member></struct></value></param></params></methodCall>"
)
@example(b"<methodResponse><fault><value><struct></struct></value></fault></methodResponse>")
@example(
    b"<methodCall><methodName>m</methodName><params><param><value><dateTime.iso8601>x"
    b"</dateTime.iso8601></value></param></params></methodCall>"
)
@example(
    b"<methodCall><methodName>m</methodName><params><param><value><base64>!!!</base64></value></param>"
    b"</params></methodCall>"
)
@example(
    b"<methodCall><methodName>m</methodName><params><param><value><double>x</double></value></param>"
    b"</params></methodCall>"
)
@example(b"<methodCall><methodName>m</methodName><params></data></params></methodCall>")
@example(
    b"<methodCall><methodName>m</methodName><params><param><value><boolean>2</boolean></value></param>"
    b"</params></methodCall>"
)
def test_any_bytes_give_a_ping_or_a_fault(body: bytes) -> None:
    result = outcome_of(body)
    assert isinstance(result, (Ping, Fault))
    if isinstance(result, Fault):
        assert isinstance(result.code, FaultCode) and result.message


TAGS = st.sampled_from(
    [
        "methodCall",
        "methodName",
        "params",
        "param",
        "value",
        "string",
        "int",
        "i4",
        "array",
        "data",
        "struct",
        "member",
        "name",
        "boolean",
        "double",
        "nil",
        "base64",
        "dateTime.iso8601",
        "fault",
        "methodResponse",
    ]
)


@st.composite
def xmlish(draw: st.DrawFn, depth: int = 0) -> str:
    """Well-formed documents made of XML-RPC's own tags in random order: the decoder's tricky inputs."""
    tag = draw(TAGS)
    if depth > 6:
        return f"<{tag}>{draw(st.text(max_size=5)).replace('&', '&amp;').replace('<', '&lt;')}</{tag}>"
    children = draw(st.lists(xmlish(depth + 1), max_size=3)) if draw(st.booleans()) else []
    text = draw(st.sampled_from(["", "1", "x", " https://a.example/ ", "0"]))
    return f"<{tag}>{text}{''.join(children)}</{tag}>"


@given(xmlish())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_structured_xml_gives_a_ping_or_a_fault(document: str) -> None:
    assert isinstance(outcome_of(document.encode()), (Ping, Fault))


# Pieces of methodCalls: plain ones, and near misses that a shortcut could get wrong.
SPACE = st.sampled_from(["", " ", "\n", "\t ", "\n  "])
SAFE_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="<&"), max_size=40
)
HOSTILE_TEXT = st.lists(
    st.sampled_from(["a", " ", "]", ">", "&amp;", "&#65;", "]]>", "<", "é", "\x00", "\x7f"]), max_size=6
).map("".join)
PLAIN_DECLARATIONS = [
    "",
    '<?xml version="1.0"?>',
    "<?xml version='1.0' encoding='UTF-8'?>",
    '<?xml version="1.0" encoding="us-ascii" ?>',
]
OTHER_DECLARATIONS = [
    '<?xml version="1.0" encoding="UTF-16"?>',
    '<?xml version="1.0" standalone="yes"?>',
    '<?xml version="1.1"?>',
]


@st.composite
def call_like(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A methodCall's bytes, and whether it was drawn from plain pieces only (which the shortcut must take)."""
    plain = True

    def text() -> str:
        nonlocal plain
        if draw(st.integers(0, 4)) == 0:
            plain = False
            return draw(HOSTILE_TEXT)
        return draw(SAFE_TEXT)

    values = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["untyped", "string", "spaced string", "int", "CDATA"]))
        plain = plain and kind not in ("int", "CDATA")
        inner = text()
        value = {
            "untyped": inner,
            "string": f"<string>{inner}</string>",
            "spaced string": f"{draw(SPACE)}<string>{inner}</string>{draw(SPACE)}",
            "int": f"<int>{inner}</int>",
            "CDATA": f"<string><![CDATA[{inner}]]></string>",
        }[kind]
        values.append(f"<param>{draw(SPACE)}<value>{value}</value>{draw(SPACE)}</param>{draw(SPACE)}")
    declaration = draw(st.sampled_from(PLAIN_DECLARATIONS + OTHER_DECLARATIONS))
    plain = plain and declaration in PLAIN_DECLARATIONS
    body = (
        f"{declaration}{draw(SPACE)}<methodCall>{draw(SPACE)}<methodName>{text()}</methodName>{draw(SPACE)}"
        f"<params>{draw(SPACE)}{''.join(values)}</params>{draw(SPACE)}</methodCall>{draw(SPACE)}"
    ).encode(draw(st.sampled_from(["utf-8", "latin-1"])), "replace")
    if draw(st.integers(0, 9)) == 0:  # one stray byte anywhere, tags included
        at = draw(st.integers(0, len(body)))
        body = (
            body[:at] + draw(st.sampled_from([b"\r", b"\x0c", b"\x7f", b"&", b" ", b"<", b"\xef\xbb\xbf"])) + body[at:]
        )
        plain = False
    return body, plain


@given(call_like())
@settings(max_examples=500)
def test_the_plain_call_shortcut_never_disagrees_with_the_decoder(drawn: tuple[bytes, bool]) -> None:
    body, plain = drawn
    shortcut = plain_call(body)
    if shortcut is not None:
        assert shortcut == decoded_call(body)
    assert shortcut is not None or not plain, "a plain call missed the shortcut"


@given(st.text(max_size=500), st.sampled_from(list(FaultCode)))
def test_every_fault_parses_back(message: str, code: FaultCode) -> None:
    body = render_fault(Fault(code, message))
    try:
        xmlrpc.client.loads(body)
    except xmlrpc.client.Fault as fault:
        assert fault.faultCode == code and fault.faultString
    else:
        raise AssertionError("not a fault")


@given(st.text(max_size=2000))
def test_every_success_parses_back(message: str) -> None:
    (value,), method = xmlrpc.client.loads(render_response(message))
    assert method is None and isinstance(value, str) and value


@given(st.integers(100, 599), st.binary(max_size=300), st.none() | st.text(max_size=50))
def test_every_receiver_answer_maps_to_a_renderable_outcome(status: int, body: bytes, location: str | None) -> None:
    outcome = classify(PING, status, body, location)
    if outcome.fault is None:
        assert 200 <= status < 300 or status == 303
        assert "fault" not in outcome.text.lower()
        xmlrpc.client.loads(render_response(outcome.text))
    else:
        render_fault(Fault(outcome.fault, outcome.text))
