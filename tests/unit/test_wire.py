"""The proxy's header rules on raw heads (``proxy/wire.py``), shared by both proxies."""

from __future__ import annotations

import httptools
from hypothesis import assume, given
from hypothesis import strategies as st

from aigc_gateway.auth.core.credentials import bearer_secret, carries_gateway_token
from aigc_gateway.proxy.wire import (
    FRAMING,
    GUARDED,
    RequestHead,
    downstream,
    forwardable,
    forwarded_for,
    parse_request_head,
    request_head,
    response_head,
    sets_gateway_cookie,
    upstream_request,
)

HEAD = (
    b"POST /upload?x=1 HTTP/1.1\r\n"
    b"Host: iabc.localhost:8080\r\n"
    b"Cookie: theme=dark; aigc_instance=secret; aigc_session=s2; lang=zh\r\n"
    b"Authorization: Bearer agw_gateway_token\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\n"
    b"X-Aigc-User: admin\r\n"
    b"Connection: keep-alive, X-Private\r\n"
    b"X-Private: hop\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
)


def test_a_head_is_parsed_as_sent() -> None:
    head = parse_request_head(HEAD)
    assert head is not None
    assert (head.method, head.target, head.version) == (b"POST", b"/upload?x=1", "1.1")
    assert head.keep_alive and not head.upgrade
    assert head.one(b"host") == b"iabc.localhost:8080"
    assert head.cookie(b"aigc_instance") == "secret"
    assert head.one(b"content-length") == b"5"


def test_keep_alive_is_what_the_client_asked() -> None:
    closing = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    old = parse_request_head(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
    assert closing is not None and not closing.keep_alive
    assert old is not None and not old.keep_alive


def test_repeated_headers_are_ambiguous() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert head is not None and head.one(b"host") is None and head.count(b"host") == 2


def test_not_http_is_refused() -> None:
    assert parse_request_head(b"HELLO\r\n\r\n") is None
    assert parse_request_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n") is None


def test_websocket_handshakes_are_recognised() -> None:
    head = parse_request_head(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert head is not None and head.upgrade and head.is_websocket()
    other = parse_request_head(
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    )
    assert other is not None and other.upgrade and not other.is_websocket()


def test_what_an_engine_may_see() -> None:
    head = parse_request_head(HEAD)
    assert head is not None
    kept = dict(forwardable(head.headers))
    assert kept[b"cookie"] == b"theme=dark; lang=zh"  # the gateway's cookies are gone
    for gone in (b"authorization", b"x-forwarded-for", b"x-aigc-user", b"connection"):
        assert gone not in kept
    assert b"x-private" not in kept and b"keep-alive" not in kept  # named by Connection
    assert kept[b"host"] == b"iabc.localhost:8080" and kept[b"content-length"] == b"5"


def test_an_engines_own_bearer_token_passes() -> None:
    kept = forwardable([(b"authorization", b"Bearer engine-token"), (b"cookie", b"aigc_session=x")])
    assert kept == [(b"authorization", b"Bearer engine-token")]


def test_a_websocket_handshake_keeps_what_the_tunnel_needs() -> None:
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", b"k"),
        (b"sec-websocket-protocol", b"chat"),
    ]
    tunnel = forwardable(headers, websocket=True, keep_handshake=True)
    assert (b"sec-websocket-key", b"k") in tunnel and (b"sec-websocket-protocol", b"chat") in tunnel
    assert tunnel[-2:] == [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    library = forwardable(headers, websocket=True)  # the client library makes its own
    assert library == []


def test_the_gateways_forwarded_headers() -> None:
    headers = dict(
        forwarded_for(
            client_ip="10.0.0.7", scheme="wss", host="i.localhost", user_name="张三", prefix="/i/x"
        )
    )
    assert headers[b"x-forwarded-proto"] == b"https"
    assert headers[b"x-forwarded-for"] == headers[b"x-real-ip"] == b"10.0.0.7"
    assert headers[b"x-aigc-user"] == "张三".encode()
    assert headers[b"x-forwarded-prefix"] == b"/i/x"


def test_an_engine_cannot_set_the_gateways_cookies() -> None:
    assert sets_gateway_cookie(b"aigc_session=x; Path=/")
    assert sets_gateway_cookie(b" aigc_instance =x")
    assert not sets_gateway_cookie(b"theme=dark; Path=/")
    assert not sets_gateway_cookie(b"my_aigc_session=x")


def test_what_a_client_may_see_of_an_answer() -> None:
    answer = [
        (b"content-type", b"text/plain"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"upgrade"),
        (b"upgrade", b"websocket"),
        (b"set-cookie", b"aigc_session=stolen; Path=/"),
        (b"set-cookie", b"theme=dark"),
    ]
    assert downstream(answer) == [(b"content-type", b"text/plain"), (b"set-cookie", b"theme=dark")]
    switched = downstream(answer, keep=frozenset({b"connection", b"upgrade"}))  # a 101
    assert (b"upgrade", b"websocket") in switched and (
        b"transfer-encoding",
        b"chunked",
    ) not in switched
    assert (b"set-cookie", b"aigc_session=stolen; Path=/") not in switched


def test_heads_are_written_as_http_1_1() -> None:
    assert (
        request_head(b"GET", b"/a?b", [(b"host", b"h")]) == b"GET /a?b HTTP/1.1\r\nhost: h\r\n\r\n"
    )
    assert response_head(404, []) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert response_head(599, []).startswith(b"HTTP/1.1 599 ")


names = st.sampled_from(
    [
        b"cookie",
        b"authorization",
        b"x-forwarded-for",
        b"x-aigc-user",
        b"connection",
        b"te",
        b"accept",
        b"x-custom",
        b"transfer-encoding",
        b"forwarded",
    ]
)
values = st.binary(min_size=0, max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v)


@given(st.lists(st.tuples(names, values), max_size=12))
def test_no_gateway_secret_ever_passes(headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"cookie", b"aigc_session=s; a=b"), (b"authorization", b"Bearer agw_t")]
    for name, value in forwardable(headers):
        assert name not in (b"x-forwarded-for", b"x-aigc-user", b"forwarded", b"te")
        if name == b"cookie":
            assert b"aigc_session=" not in value and b"aigc_instance=" not in value
        if name == b"authorization":
            assert not value[7:].startswith(b"agw_")


def test_a_connection_option_cannot_remove_the_framing() -> None:
    head = parse_request_head(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, content-length, host\r\n"
        b"Content-Length: 5\r\n\r\n"
    )
    assert head is not None and head.body_length() == 5
    kept = dict(forwardable(head.headers))
    assert kept[b"content-length"] == b"5" and kept[b"host"] == b"h"
    sent = upstream_request(head, body_length=5, websocket=False, gateway=[])
    assert sent.count(b"content-length: 5\r\n") == 1 and b"host: h\r\n" in sent


def test_only_a_plain_length_frames_a_relayed_body() -> None:
    def length(fields: bytes) -> int | None:
        head = parse_request_head(b"POST / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n")
        assert head is not None
        return head.body_length()

    assert length(b"") == 0 and length(b"Content-Length: 12\r\n") == 12
    assert length(b"Transfer-Encoding: chunked\r\n") is None
    # httptools refuses these itself; a head it would pass still is not relayed.
    twice = RequestHead()
    twice.on_header(b"Content-Length", b"1")
    twice.on_header(b"content-length", b"1")
    assert twice.body_length() is None
    assert RequestHead(length=b"+1").body_length() is None


def test_look_alikes_of_the_gateways_headers_are_dropped() -> None:
    headers = [
        (b"x_aigc_user", b"alice"),
        (b"x-aigc_user", b"alice"),
        (b"x_forwarded_for", b"6.6.6.6"),
        (b"x_forwarded_proto", b"https"),
        (b"x_real_ip", b"6.6.6.6"),
        (b"transfer_encoding", b"chunked"),
        (b"content_length", b"99"),
        (b"sec_websocket_key", b"k"),
        (b"my_header", b"kept"),
    ]
    assert forwardable(headers) == [(b"my_header", b"kept")]


@given(
    st.sampled_from(["Bearer", "bearer", "BEARER", "BeArEr"]),
    st.text(alphabet=" \t", min_size=1, max_size=4),
    st.text(alphabet=" \t", max_size=3),
)
def test_what_the_gateway_accepts_as_its_token_never_reaches_an_engine(
    scheme: str, gap: str, trailing: str
) -> None:
    value = f"{trailing}{scheme}{gap}agw_secret{trailing}"
    assert bearer_secret(value) == "agw_secret"  # the API's authentication takes it
    assert carries_gateway_token(value.encode())
    assert forwardable([(b"authorization", value.encode())]) == []


@given(st.binary(max_size=60).filter(lambda v: b"\r" not in v and b"\n" not in v))
def test_what_reaches_an_engine_the_gateway_never_takes_for_its_token(value: bytes) -> None:
    if forwardable([(b"authorization", value)]):
        secret = bearer_secret(value.decode("latin-1"))
        assert secret is None or not secret.startswith("agw_")


# Names a client may send: the framing, everything the gateway strips or sets, look-alikes.
HEADER_NAMES = [
    *sorted(GUARDED),
    b"x-aigc-user",
    b"x-aigc-upstream",
    b"x_aigc_user",
    b"x_forwarded_for",
    b"content_length",
    b"accept",
    b"x-private",
]
header_values = st.sampled_from(
    [b"1", b"5", b"chunked", b"aigc_instance=stolen; theme=dark", b"Bearer  agw_stolen", b"x"]
)
connection_options = st.lists(
    st.sampled_from(sorted(FRAMING))
    | st.sampled_from(HEADER_NAMES)
    | st.from_regex(rb"\A[a-z_-]{1,12}\Z"),
    max_size=6,
).map(lambda tokens: b", ".join(tokens))


class Messages:
    """What an engine's HTTP parser makes of the bytes the proxy sends it."""

    def __init__(self) -> None:
        self.heads: list[list[tuple[bytes, bytes]]] = []
        self.bodies: list[bytes] = []

    def on_message_begin(self) -> None:
        self.heads.append([])
        self.bodies.append(b"")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.heads[-1].append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.bodies[-1] += body


@given(
    st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_values), max_size=10),
    st.lists(connection_options, max_size=2),
    st.binary(max_size=40),
)
def test_the_forwarded_framing_is_the_one_the_body_is_sent_with(
    fields: list[tuple[bytes, bytes]], options: list[bytes], body: bytes
) -> None:
    lines = [b"POST /echo HTTP/1.1", b"Host: i.localhost", b"Content-Length: %d" % len(body)]
    lines += [name + b": " + value for name, value in fields if name not in (b"host",)]
    lines += [b"Connection: " + option for option in options]
    head = parse_request_head(b"\r\n".join(lines) + b"\r\n\r\n")
    length = head.body_length() if head is not None else None
    assume(head is not None and length is not None)  # else the ASGI server frames it
    assert head is not None and length == len(body)
    gateway = forwarded_for(
        client_ip="127.0.0.1", scheme="http", host="i.localhost", user_name="bob", prefix=None
    )
    sent = upstream_request(head, body_length=length, websocket=False, gateway=gateway)
    after = b"GET /next HTTP/1.1\r\nHost: i.localhost\r\n\r\n"  # the next client's request
    engine = Messages()
    httptools.HttpRequestParser(engine).feed_data(sent + body + after)
    # Exactly this request, with exactly its body, then the next one: nothing smuggled.
    assert len(engine.heads) == 2 and engine.bodies == [body, b""]
    seen = engine.heads[0]
    assert [v for n, v in seen if n == b"content-length"] == [b"%d" % len(body)]
    for name, value in seen:
        normal = name.replace(b"_", b"-")
        assert normal != b"transfer-encoding"
        if normal.startswith((b"x-aigc-", b"x-forwarded-", b"x-real-ip", b"forwarded")):
            assert (name, value) in gateway  # only the gateway's own
        assert name != b"cookie" or b"aigc_instance" not in value
        assert name != b"authorization" or not carries_gateway_token(value)
