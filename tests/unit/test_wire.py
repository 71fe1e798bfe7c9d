"""The proxy's header rules on raw heads (``proxy/wire.py``), shared by both proxies."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aigc_gateway.proxy.wire import (
    downstream,
    forwardable,
    forwarded_for,
    parse_request_head,
    request_head,
    response_head,
    sets_gateway_cookie,
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
