"""ID token validation and claim mapping (pure), with tokens signed by keys made here."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from aigc_gateway.auth.core.oidc import (
    LoginState,
    OidcConfig,
    ProviderMetadata,
    SignInRefused,
    authorization_url,
    map_identity,
    merge_claims,
    s256,
    validate_id_token,
)

ISSUER = "https://idp.example"
CLIENT = "gateway"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
KEYS = KeySet.import_key_set({"keys": [KEY.as_dict(private=False)]})
CONFIG = OidcConfig(
    issuer=ISSUER,
    client_id=CLIENT,
    client_secret="s",
    scopes="openid profile groups",
    redirect_uri="https://gw.example/auth/oidc/callback",
    post_logout_redirect_uri="https://gw.example/auth/logged-out",
    admin_group="admins",
)


def token(key: RSAKey = KEY, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "u1",
        "nonce": "n1",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)


def check(raw: str, nonce: str = "n1") -> dict[str, Any]:
    return validate_id_token(raw, KEYS, issuer=ISSUER, client_id=CLIENT, nonce=nonce)


def test_a_good_token_passes() -> None:
    assert check(token())["sub"] == "u1"


# The tokens are made when each test runs, not at collection: a long suite must not let the
# good ones expire before their turn (and so fail for the wrong reason).
@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: token(key=OTHER_KEY), "signature"),
        (lambda: token(aud="someone-else"), "another client"),
        (lambda: token(aud=["someone-else", CLIENT]), "azp"),
        (lambda: token(iss="https://evil.example"), "iss"),
        (lambda: token(exp=int(time.time()) - 3600), "exp"),
        (lambda: token(nonce="replayed"), "nonce"),
        (lambda: token(nonce=None), "nonce"),
        (lambda: token(sub=None), "sub"),
    ],
    ids=[
        "tampered-signature",
        "wrong-audience",
        "multi-aud-no-azp",
        "wrong-issuer",
        "expired",
        "wrong-nonce",
        "no-nonce",
        "no-subject",
    ],
)
def test_bad_tokens_are_refused_with_the_reason(make: Callable[[], str], why: str) -> None:
    with pytest.raises(SignInRefused) as refused:
        check(make())
    assert why in str(refused.value)


def test_a_tampered_payload_breaks_the_signature() -> None:
    header, _payload, signature = token().split(".")
    forged = token(sub="admin").split(".")[1]
    with pytest.raises(SignInRefused):
        check(f"{header}.{forged}.{signature}")
    with pytest.raises(SignInRefused):
        check("not-a-jwt")


def test_multiple_audiences_with_azp_pass() -> None:
    assert check(token(aud=[CLIENT, "api"], azp=CLIENT))["azp"] == CLIENT


def test_authorization_url_carries_pkce_state_and_nonce() -> None:
    meta = ProviderMetadata(
        ISSUER, f"{ISSUER}/auth", f"{ISSUER}/token", f"{ISSUER}/jwks", None, None
    )
    login = LoginState.new("/x")
    url = authorization_url(meta, CONFIG, login)
    assert f"state={login.state}" in url and f"nonce={login.nonce}" in url
    assert f"code_challenge={s256(login.verifier)}" in url and "code_challenge_method=S256" in url
    assert login.verifier not in url
    # RFC 7636 appendix B test vector.
    assert (
        s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


def test_claims_map_to_identity() -> None:
    identity = map_identity(
        merge_claims(
            {"sub": "u1", "preferred_username": "ann"},
            {"sub": "u1", "groups": ["admins", "art"], "email": "a@x"},
        ),
        CONFIG,
    )
    assert (identity.username, identity.groups, identity.is_admin, identity.email) == (
        "ann",
        ("admins", "art"),
        True,
        "a@x",
    )
    # Providers that send groups as one string, or no user name at all.
    identity = map_identity({"sub": "u2", "email": "b@x", "groups": "art, video"}, CONFIG)
    assert (identity.username, identity.groups, identity.is_admin) == (
        "b@x",
        ("art", "video"),
        False,
    )


def test_userinfo_for_another_subject_is_refused() -> None:
    with pytest.raises(SignInRefused):
        merge_claims({"sub": "u1"}, {"sub": "u2", "groups": ["admins"]})
