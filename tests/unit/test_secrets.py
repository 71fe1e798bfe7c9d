"""Password hashing, API tokens, ids and instance slugs."""

from __future__ import annotations

import hashlib
import re

from aigc_gateway.auth.core.secrets import (
    TOKEN_PREFIX,
    hash_password,
    hash_token,
    new_id,
    new_password,
    new_slug,
    new_token,
    verify_password,
)

DRAWS = 2000


def test_password_round_trip_and_wrong_password() -> None:
    h = hash_password("correct horse battery staple")
    assert h != "correct horse battery staple"
    assert h.startswith("$argon2")
    assert verify_password(h, "correct horse battery staple")
    assert not verify_password(h, "correct horse battery stapl")
    assert not verify_password(h, "")


def test_password_hashes_are_salted() -> None:
    a, b = hash_password("same"), hash_password("same")
    assert a != b
    assert verify_password(a, "same")
    assert verify_password(b, "same")


def test_unicode_password() -> None:
    h = hash_password("密码🔑")
    assert verify_password(h, "密码🔑")
    assert not verify_password(h, "密码")


def test_garbage_hash_is_false_not_an_error() -> None:
    assert not verify_password("not-a-hash", "x")
    assert not verify_password("", "x")


def test_tokens_are_prefixed_unique_and_url_safe() -> None:
    tokens = {new_token() for _ in range(DRAWS)}
    assert len(tokens) == DRAWS
    assert TOKEN_PREFIX == "agw_"
    for t in tokens:
        assert t.startswith("agw_")
        assert re.fullmatch(r"agw_[A-Za-z0-9_-]{43}", t), t


def test_token_hash_is_stable_and_not_the_token() -> None:
    token = new_token()
    h = hash_token(token)
    assert h == hash_token(token)
    assert h != token
    assert token not in h
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert hash_token(new_token()) != h
    # sha256 of the token's UTF-8 bytes: stable across processes and releases.
    assert hash_token("agw_x") == hashlib.sha256(b"agw_x").hexdigest()


def test_slugs_are_dns_safe_and_unique() -> None:
    slugs = [new_slug() for _ in range(DRAWS)]
    assert len(set(slugs)) == DRAWS
    for s in slugs:
        assert len(s) == 20
        # A DNS label: lowercase letters and digits, starting with a letter.
        assert re.fullmatch(r"[a-z][a-z0-9]{19}", s), s
    # Randomness covers the alphabet (not a constant tail).
    assert len({c for s in slugs for c in s[1:]}) == 36


def test_ids_and_passwords() -> None:
    ids = {new_id() for _ in range(DRAWS)}
    assert len(ids) == DRAWS
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    passwords = {new_password() for _ in range(200)}
    assert len(passwords) == 200
    assert all(len(p) >= 16 for p in passwords)
