"""OpenID Connect sign-in (authorization code flow with PKCE, state and nonce).

The HTTP calls (discovery, token, JWKS, userinfo) go through httpx; JWT verification is joserfc's.
The pure parts — building the authorization URL, validating an ID token against a key set,
mapping claims to an identity — are separate functions, tested directly.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from aigc_gateway.errors import Forbidden, TemporaryError

log = logging.getLogger(__name__)

SIGNING_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


class SignInRefused(Forbidden):
    code = "sign_in_refused"


@dataclass(frozen=True, slots=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    scopes: str
    redirect_uri: str
    post_logout_redirect_uri: str
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    admin_group: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None


@dataclass(frozen=True, slots=True)
class LoginState:
    """What the browser carries (signed) between the redirect out and the callback."""

    state: str
    nonce: str
    verifier: str
    next: str

    @classmethod
    def new(cls, next_path: str) -> LoginState:
        return cls(
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(48),
            next_path,
        )


@dataclass(frozen=True, slots=True)
class Identity:
    issuer: str
    subject: str
    username: str
    email: str | None
    name: str
    groups: tuple[str, ...]
    is_admin: bool | None
    """True/False when an admin group is configured; None leaves the admin flag alone."""


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(meta: ProviderMetadata, config: OidcConfig, login: LoginState) -> str:
    query = {
        "response_type": "code",
        "client_id": config.client_id,
        "redirect_uri": config.redirect_uri,
        "scope": config.scopes,
        "state": login.state,
        "nonce": login.nonce,
        "code_challenge": s256(login.verifier),
        "code_challenge_method": "S256",
    }
    return f"{meta.authorization_endpoint}?{urlencode(query)}"


def validate_id_token(
    token: str, keys: KeySet, *, issuer: str, client_id: str, nonce: str, now: int | None = None
) -> dict[str, Any]:
    """Verify signature, issuer, audience, expiry and nonce; return the claims or raise
    :class:`SignInRefused` saying what was wrong."""
    try:
        decoded = jwt.decode(token, keys, algorithms=list(SIGNING_ALGORITHMS))
    except (JoseError, ValueError) as exc:
        raise SignInRefused(f"the provider's ID token is not valid: {exc}") from exc
    claims = dict(decoded.claims)
    registry = JWTClaimsRegistry(
        now=now,
        leeway=60,
        iss={"essential": True, "value": issuer},
        sub={"essential": True},
        exp={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise SignInRefused(f"the provider's ID token is not valid: {exc}") from exc
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else list(audiences or [])
    if client_id not in audiences:
        raise SignInRefused(
            "the provider's ID token is not valid: it was issued for another client (aud)"
        )
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise SignInRefused("the provider's ID token is not valid: azp does not name this client")
    return claims


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in (p.strip() for p in value.replace(",", " ").split()) if v]
    if isinstance(value, Sequence):
        return [str(v) for v in value]
    return []


def map_identity(claims: Mapping[str, Any], config: OidcConfig) -> Identity:
    """Turn merged ID token + userinfo claims into a gateway identity (pure)."""
    subject = str(claims["sub"])
    email = claims.get("email")
    username = str(claims.get(config.username_claim) or email or subject)
    groups = tuple(dict.fromkeys(_as_list(claims.get(config.groups_claim))))
    is_admin = None if config.admin_group is None else config.admin_group in groups
    return Identity(
        issuer=config.issuer,
        subject=subject,
        username=username,
        email=str(email) if email else None,
        name=str(claims.get("name") or username),
        groups=groups,
        is_admin=is_admin,
    )


def merge_claims(id_claims: Mapping[str, Any], userinfo: Mapping[str, Any]) -> dict[str, Any]:
    """Providers differ in where they put groups and names: take both, the ID token's ``sub``
    being authoritative (a userinfo answer for another subject is refused)."""
    if userinfo and userinfo.get("sub") not in (None, id_claims["sub"]):
        raise SignInRefused("the provider's userinfo is for another user (sub mismatch)")
    return {**userinfo, **id_claims}


class OidcClient:
    """Talks to one provider. Discovery and keys are fetched once and cached (keys are
    re-fetched when a token names a key id we do not know, i.e. after the provider rotates)."""

    def __init__(self, config: OidcConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self._http = http
        self._meta: ProviderMetadata | None = None
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    async def metadata(self) -> ProviderMetadata:
        if self._meta is None:
            url = f"{self.config.issuer.rstrip('/')}/.well-known/openid-configuration"
            doc = await self._get_json(url, what="discovery document")
            if doc.get("issuer", "").rstrip("/") != self.config.issuer.rstrip("/"):
                raise TemporaryError(
                    f"the provider's discovery document names issuer {doc.get('issuer')!r}, "
                    f"not the configured {self.config.issuer!r}; fix AIGC_OIDC_ISSUER",
                    code="oidc_misconfigured",
                )
            self._meta = ProviderMetadata(
                issuer=doc["issuer"],
                authorization_endpoint=doc["authorization_endpoint"],
                token_endpoint=doc["token_endpoint"],
                jwks_uri=doc["jwks_uri"],
                userinfo_endpoint=doc.get("userinfo_endpoint"),
                end_session_endpoint=doc.get("end_session_endpoint"),
            )
        return self._meta

    async def begin(self, next_path: str) -> tuple[LoginState, str]:
        login = LoginState.new(next_path)
        return login, authorization_url(await self.metadata(), self.config, login)

    async def finish(self, *, code: str, login: LoginState) -> tuple[Identity, str]:
        """Exchange the code, validate the ID token, merge userinfo; return the identity and the
        raw ID token (the hint for logout)."""
        meta = await self.metadata()
        try:
            response = await self._http.post(
                meta.token_endpoint,
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": self.config.redirect_uri,
                    "code_verifier": login.verifier,
                },
                auth=(self.config.client_id, self.config.client_secret),
            )
        except httpx.HTTPError as exc:
            raise TemporaryError(f"the sign-in provider cannot be reached: {exc}") from exc
        if response.status_code != 200:
            raise SignInRefused(f"the provider refused the sign-in code: {_error_text(response)}")
        tokens = response.json()
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise SignInRefused(
                "the provider returned no ID token (is the `openid` scope requested?)"
            )
        claims = validate_id_token(
            id_token,
            await self._key_set(id_token),
            issuer=meta.issuer,
            client_id=self.config.client_id,
            nonce=login.nonce,
        )
        userinfo: dict[str, Any] = {}
        if meta.userinfo_endpoint and tokens.get("access_token"):
            userinfo = await self._get_json(
                meta.userinfo_endpoint,
                what="userinfo",
                headers={"Authorization": f"Bearer {tokens['access_token']}"},
            )
        return map_identity(merge_claims(claims, userinfo), self.config), id_token

    async def logout_url(self, *, id_token: str | None, state: str) -> str | None:
        meta = await self.metadata()
        if not meta.end_session_endpoint:
            return None
        query = {
            "client_id": self.config.client_id,
            "post_logout_redirect_uri": self.config.post_logout_redirect_uri,
            "state": state,
        }
        if id_token:
            query["id_token_hint"] = id_token
        return f"{meta.end_session_endpoint}?{urlencode(query)}"

    async def _key_set(self, token: str) -> KeySet:
        kid = _header_kid(token)
        stale = self._keys is None or (kid is not None and not _has_kid(self._keys, kid))
        if stale and time.monotonic() - self._keys_at > 1.0:
            doc = await self._get_json((await self.metadata()).jwks_uri, what="signing keys")
            self._keys, self._keys_at = KeySet.import_key_set(doc), time.monotonic()  # type: ignore[arg-type]
        assert self._keys is not None
        return self._keys

    async def _get_json(
        self, url: str, *, what: str, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise TemporaryError(f"the sign-in provider cannot be reached ({what}): {exc}") from exc
        if response.status_code != 200:
            raise TemporaryError(f"the sign-in provider's {what} answered {response.status_code}")
        body = response.json()
        if not isinstance(body, dict):
            raise TemporaryError(f"the sign-in provider's {what} is not a JSON object")
        return body


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('error')}: {body.get('error_description', '')}".strip(": ")
    except ValueError:
        return f"HTTP {response.status_code}"


def _header_kid(token: str) -> str | None:
    import json

    try:
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    except (ValueError, IndexError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return str(kid) if kid else None


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)
