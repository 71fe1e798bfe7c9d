"""Password hashing (argon2) and API token generation/hashing. Pure apart from randomness."""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_PREFIX = "agw_"

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    """A fresh API token: shown once, stored only as :func:`hash_token`."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough (no brute force possible).
    return hashlib.sha256(token.encode()).hexdigest()


def new_id() -> str:
    return secrets.token_hex(16)


def new_slug() -> str:
    """An unguessable, DNS-safe instance slug (lowercase letters and digits, 20 characters)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "i" + "".join(secrets.choice(alphabet) for _ in range(19))


def new_password() -> str:
    return secrets.token_urlsafe(12)
