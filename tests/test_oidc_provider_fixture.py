"""The test OIDC provider (tests/oidc, panva's oidc-provider) works on its own, without the gateway.

A hand-written authorization code flow with PKCE against the real provider, the browser helper
against a tiny relying party, and RP-initiated logout.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support.oidc import OidcProvider, oidc_provider
from tests.support.oidc_browser import (
    follow_until,
    login_via_provider,
    origin,
    page_text,
    parse_forms,
    provider_error_text,
    submit_logout,
)
from tests.support.server import serve_in_thread

pytestmark = pytest.mark.needs("oidc-provider")

CLIENT_ID = "aigc-gateway"
CLIENT_SECRET = "s3cret-" + "x" * 24
ALICE: dict[str, Any] = {
    "sub": "u-alice",
    "username": "alice",
    "password": "correct horse",
    "email": "alice@example.test",
    "name": "Alice Liddell",
    "groups": ["aigc-users", "aigc-admins"],
}
BOB: dict[str, Any] = {
    "sub": "u-bob",
    "username": "bob",
    "password": "hunter2",
    "email": "bob@example.test",
    "name": "Bob",
    "groups": [],
}
SCOPE = "openid profile email groups"


def _b64url_json(segment: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return data


def _jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _signature = token.split(".")
    return _b64url_json(header), _b64url_json(payload)


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


def _client(redirect_base: str, auth_method: str = "client_secret_basic") -> dict[str, Any]:
    return {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [f"{redirect_base}/cb"],
        "post_logout_redirect_uris": [f"{redirect_base}/bye"],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": auth_method,
    }


@dataclass
class RelyingParty:
    """A tiny client app: /login redirects to the provider, /cb and /bye echo their query."""

    url: str = ""
    authorization_endpoint: str = ""
    pending: dict[str, dict[str, str]] = field(default_factory=dict)  # state -> verifier, nonce

    def app(self) -> Starlette:
        async def login(request: Request) -> Response:
            verifier, challenge = _pkce()
            state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
            self.pending[state] = {"verifier": verifier, "nonce": nonce}
            query = urlencode(
                {
                    "client_id": CLIENT_ID,
                    "response_type": "code",
                    "redirect_uri": f"{self.url}/cb",
                    "scope": SCOPE,
                    "state": state,
                    "nonce": nonce,
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                }
            )
            return RedirectResponse(f"{self.authorization_endpoint}?{query}", status_code=302)

        async def echo(request: Request) -> Response:
            return JSONResponse({"path": request.url.path, **dict(request.query_params)})

        return Starlette(
            routes=[
                Route("/login", login),
                Route("/cb", echo),
                Route("/bye", echo),
            ]
        )


@pytest.fixture
def relying_party() -> Iterator[RelyingParty]:
    rp = RelyingParty()
    with serve_in_thread(rp.app()) as url:
        rp.url = url
        yield rp


@pytest.fixture
def start_provider() -> Iterator[Any]:
    with ExitStack() as stack:

        def start(redirect_base: str, *, groups_in: str = "both", **client: Any) -> OidcProvider:
            return stack.enter_context(
                oidc_provider(
                    clients=[{**_client(redirect_base), **client}],
                    users=[ALICE, BOB],
                    groups_in=groups_in,
                )
            )

        yield start


async def _discover(http: httpx.AsyncClient, op: OidcProvider) -> dict[str, Any]:
    response = await http.get(op.discovery_url)
    assert response.status_code == 200
    meta: dict[str, Any] = response.json()
    assert meta["issuer"] == op.issuer
    return meta


async def _sign_in_by_hand(
    http: httpx.AsyncClient, meta: dict[str, Any], redirect_uri: str, password: str
) -> tuple[dict[str, list[str]], str, str, str]:
    """authorize -> login form -> wrong password -> right password -> redirect with a code."""
    verifier, challenge = _pkce()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    authorize = await http.get(
        meta["authorization_endpoint"],
        params={
            "client_id": CLIENT_ID,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": SCOPE,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    assert authorize.status_code == 303, authorize.text
    form_page = await follow_until(http, authorize, lambda url: False)
    assert form_page.status_code == 200
    assert urlsplit(str(form_page.url)).path.startswith("/interaction/")
    (form,) = parse_forms(form_page.text, form_page.url)
    assert form.method == "POST"
    assert form.action == f"{form_page.url}/login"
    assert {"username": "text", "password": "password"}.items() <= form.input_types.items()

    wrong = await http.post(form.action, data=form.data(username="alice", password="nope"))
    assert wrong.status_code == 200
    assert "Invalid username or password" in page_text(wrong.text)
    (again,) = parse_forms(wrong.text, wrong.url)
    assert again.action == form.action

    right = await http.post(again.action, data=again.data(username="alice", password=password))
    assert right.status_code == 303
    back = await follow_until(http, right, lambda url: str(url).startswith(redirect_uri))
    assert back.status_code in {302, 303}, back.text
    location = back.headers["location"]
    assert location.startswith(redirect_uri + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state]
    return query, verifier, nonce, state


@pytest.mark.parametrize("groups_in", ["id_token", "userinfo", "both"])
async def test_code_flow_with_pkce_by_hand(start_provider: Any, groups_in: str) -> None:
    redirect_base = "http://127.0.0.1:9"  # never contacted: the flow stops at the redirect
    op = start_provider(redirect_base, groups_in=groups_in)
    async with httpx.AsyncClient(timeout=10) as http:
        meta = await _discover(http, op)
        assert meta["code_challenge_methods_supported"] == ["S256"]
        assert {"openid", "profile", "email", "groups"} <= set(meta["scopes_supported"])
        assert "groups" in meta["claims_supported"]
        assert meta["end_session_endpoint"] == f"{op.issuer}/session/end"

        query, verifier, nonce, _state = await _sign_in_by_hand(
            http, meta, f"{redirect_base}/cb", ALICE["password"]
        )
        assert query["iss"] == [op.issuer]
        (code,) = query["code"]

        token = await http.post(
            meta["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": f"{redirect_base}/cb",
                "code_verifier": verifier,
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        assert token.status_code == 200, token.text
        tokens = token.json()
        assert tokens["token_type"].lower() == "bearer"
        assert tokens["access_token"]

        header, claims = _jwt_parts(tokens["id_token"])
        jwks = (await http.get(meta["jwks_uri"])).json()
        assert header["alg"] == "RS256"
        assert header["kid"] in {key["kid"] for key in jwks["keys"]}
        assert all("d" not in key for key in jwks["keys"])  # public keys only
        assert claims["iss"] == op.issuer
        assert claims["aud"] == CLIENT_ID
        assert claims["nonce"] == nonce
        assert claims["sub"] == ALICE["sub"]
        assert claims["preferred_username"] == "alice"
        assert claims["email"] == ALICE["email"]
        assert claims["name"] == ALICE["name"]

        userinfo = await http.get(
            meta["userinfo_endpoint"],
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
        assert userinfo.status_code == 200, userinfo.text
        info = userinfo.json()
        assert info["sub"] == ALICE["sub"]
        assert info["preferred_username"] == "alice"
        assert info["email_verified"] is True

        expect = ALICE["groups"]
        assert (claims.get("groups") == expect) is (groups_in in {"id_token", "both"})
        assert (info.get("groups") == expect) is (groups_in in {"userinfo", "both"})
        assert ("groups" in claims) is (groups_in != "userinfo")
        assert ("groups" in info) is (groups_in != "id_token")

        # The code is single-use, and a wrong verifier is refused.
        replay = await http.post(
            meta["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": f"{redirect_base}/cb",
                "code_verifier": verifier,
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        assert replay.status_code == 400
        assert replay.json()["error"] == "invalid_grant"


async def test_pkce_is_required(start_provider: Any) -> None:
    op = start_provider("http://127.0.0.1:9")
    async with httpx.AsyncClient(timeout=10) as http:
        meta = await _discover(http, op)
        response = await http.get(
            meta["authorization_endpoint"],
            params={
                "client_id": CLIENT_ID,
                "response_type": "code",
                "redirect_uri": "http://127.0.0.1:9/cb",
                "scope": SCOPE,
                "state": "s",
            },
        )
        assert response.status_code == 303
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert query["error"] == ["invalid_request"]
        assert "PKCE" in query["error_description"][0]


async def test_wrong_verifier_is_refused_with_client_secret_post(start_provider: Any) -> None:
    redirect_base = "http://127.0.0.1:9"
    op = start_provider(redirect_base, token_endpoint_auth_method="client_secret_post")
    async with httpx.AsyncClient(timeout=10) as http:
        meta = await _discover(http, op)
        query, verifier, _nonce, _state = await _sign_in_by_hand(
            http, meta, f"{redirect_base}/cb", ALICE["password"]
        )
        form = {
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": f"{redirect_base}/cb",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
        bad = await http.post(
            meta["token_endpoint"], data={**form, "code_verifier": verifier[::-1]}
        )
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_grant"


async def test_browser_helper_signs_in_through_a_relying_party(
    relying_party: RelyingParty, start_provider: Any
) -> None:
    op = start_provider(relying_party.url)
    async with httpx.AsyncClient(timeout=10) as http:
        meta = await _discover(http, op)
        relying_party.authorization_endpoint = meta["authorization_endpoint"]

        wrong = await login_via_provider(http, f"{relying_party.url}/login", "bob", "nope")
        assert origin(wrong.url) == origin(op.issuer)
        assert "Invalid username or password" in provider_error_text(wrong)

        landed = await login_via_provider(http, f"{relying_party.url}/login", "bob", "hunter2")
        assert landed.status_code == 200
        assert origin(landed.url) == origin(relying_party.url)
        echo = landed.json()
        assert echo["path"] == "/cb"
        assert echo["iss"] == op.issuer
        pending = relying_party.pending[echo["state"]]

        token = await http.post(
            meta["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": echo["code"],
                "redirect_uri": f"{relying_party.url}/cb",
                "code_verifier": pending["verifier"],
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        assert token.status_code == 200, token.text
        _header, claims = _jwt_parts(token.json()["id_token"])
        assert claims["preferred_username"] == "bob"
        assert claims["nonce"] == pending["nonce"]
        assert claims["groups"] == []
        # The provider's cookies have names of their own (the gateway shares 127.0.0.1).
        assert {"op_session", "op_session.sig"} <= {cookie.name for cookie in http.cookies.jar}

        # The provider session is remembered: a second sign-in needs no form.
        again = await login_via_provider(http, f"{relying_party.url}/login", "x", "y")
        assert again.status_code == 200
        assert again.json()["path"] == "/cb"

        # RP-initiated logout with a registered post_logout_redirect_uri, followed to the RP.
        end = meta["end_session_endpoint"]
        query = urlencode(
            {
                "client_id": CLIENT_ID,
                "post_logout_redirect_uri": f"{relying_party.url}/bye",
                "state": "after-logout",
            }
        )
        bye = await submit_logout(http, f"{end}?{query}")
        assert bye.status_code == 200
        assert bye.json() == {"path": "/bye", "state": "after-logout"}

        # Signed out: the next sign-in shows the form again.
        fresh = await login_via_provider(http, f"{relying_party.url}/login", "alice", "wrong")
        assert "Invalid username or password" in provider_error_text(fresh)


async def test_cancel_returns_access_denied(start_provider: Any) -> None:
    redirect_base = "http://127.0.0.1:9"
    op = start_provider(redirect_base)
    async with httpx.AsyncClient(timeout=10) as http:
        meta = await _discover(http, op)
        _verifier, challenge = _pkce()
        authorize = await http.get(
            meta["authorization_endpoint"],
            params={
                "client_id": CLIENT_ID,
                "response_type": "code",
                "redirect_uri": f"{redirect_base}/cb",
                "scope": SCOPE,
                "state": "st",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        form_page = await follow_until(http, authorize, lambda url: False)
        cancel = await http.get(f"{form_page.url}/abort")
        back = await follow_until(http, cancel, lambda url: str(url).startswith(redirect_base))
        query = parse_qs(urlsplit(back.headers["location"]).query)
        assert query["error"] == ["access_denied"]
        assert query["state"] == ["st"]


async def test_end_session(start_provider: Any) -> None:
    redirect_base = "http://127.0.0.1:9"
    op = start_provider(redirect_base)
    async with httpx.AsyncClient(timeout=10) as http:
        meta = await _discover(http, op)
        end = meta["end_session_endpoint"]
        await _sign_in_by_hand(http, meta, f"{redirect_base}/cb", ALICE["password"])

        # Unregistered post_logout_redirect_uri: the provider's error page names the parameter.
        bad = await submit_logout(
            http,
            end
            + "?"
            + urlencode(
                {"client_id": CLIENT_ID, "post_logout_redirect_uri": "http://127.0.0.1:9/evil"}
            ),
        )
        assert bad.status_code == 400
        assert origin(bad.url) == origin(op.issuer)
        assert bad.headers["content-type"].startswith("text/html")
        text = provider_error_text(bad)
        assert text == (
            "oops! something went wrong error: invalid_request"
            " error_description: post_logout_redirect_uri not registered"
        )
        # Without Accept: text/html (httpx's default */*) the same error comes as JSON.
        as_json = await http.get(bad.url)
        assert as_json.status_code == 400
        assert as_json.json() == {
            "error": "invalid_request",
            "error_description": "post_logout_redirect_uri not registered",
        }
        assert "post_logout_redirect_uri not registered" in provider_error_text(as_json)

        # The confirmation page is a real form: xsrf + logout=yes + a submit button.
        registered = (
            end
            + "?"
            + urlencode(
                {
                    "client_id": CLIENT_ID,
                    "post_logout_redirect_uri": f"{redirect_base}/bye",
                    "state": "s1",
                }
            )
        )
        confirm_page = await http.get(registered)
        assert confirm_page.status_code == 200
        assert "Do you want to sign out" in page_text(confirm_page.text)
        (form,) = parse_forms(confirm_page.text, confirm_page.url)
        assert form.method == "POST"
        assert form.action == f"{op.issuer}/session/end/confirm"
        assert set(form.input_types) == {"xsrf", "logout"}

        out = await submit_logout(http, registered, follow_off_provider=False)
        assert out.status_code == 303
        assert out.headers["location"] == f"{redirect_base}/bye?state=s1"
        # The session is gone: end_session now auto-submits (JS) the same form, which the
        # helper submits too.
        silent = await http.get(registered, headers={"Accept": "text/html"})
        assert "Signed out" not in page_text(silent.text)
        (auto,) = parse_forms(silent.text, silent.url)
        assert auto.only_hidden
        assert set(auto.input_types) == {"xsrf", "logout"}

        # Without a post_logout_redirect_uri the provider shows its own "Signed out" page.
        done = await submit_logout(http, end)
        assert done.status_code == 200
        assert "Signed out" in page_text(done.text)


def test_provider_starts_and_stops_cleanly() -> None:
    """(How fast it starts is bench/runtime's figure.)"""
    with oidc_provider(clients=[_client("http://127.0.0.1:9")], users=[ALICE]) as op:
        assert op.issuer == f"http://127.0.0.1:{op.port}"
        assert op.discovery_url == f"{op.issuer}/.well-known/openid-configuration"
        assert httpx.get(op.discovery_url, timeout=10).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(op.discovery_url, timeout=10)


def test_bad_config_fails_with_the_provider_message() -> None:
    with (
        pytest.raises(RuntimeError, match="clients: need at least one"),
        oidc_provider(clients=[], users=[ALICE]),
    ):
        pass
