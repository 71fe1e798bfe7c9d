"""Instance hosts are matched exactly; redirects never leave the site."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aigc_gateway.auth.core.secrets import new_slug
from aigc_gateway.domain.hosts import instance_slug, instance_url_target, safe_next

SLUG = "iabcdefghij0123456789"[:20]


def test_exact_instance_hosts() -> None:
    assert instance_slug(f"{SLUG}.localhost", "localhost") == SLUG
    assert instance_slug(f"{SLUG}.LOCALHOST:8080", "localhost") == SLUG
    assert instance_slug(f"{SLUG}.apps.example.com", "apps.example.com") == SLUG


@pytest.mark.parametrize(
    "host",
    [
        f"{SLUG}x.localhost",
        f"x{SLUG}.localhost",
        f"{SLUG}.localhost.evil.com",
        f"a.{SLUG}.localhost",
        f"{SLUG[:-1]}.localhost",
        "localhost",
        f"{SLUG}.evillocalhost",
        "[::1]:80",
        "",
    ],
)
def test_near_misses_are_not_instances(host: str) -> None:
    assert instance_slug(host, "localhost") is None


@given(st.text(max_size=60))
def test_only_real_slugs_match(label: str) -> None:
    slug = instance_slug(f"{label}.localhost", "localhost")
    assert slug is None or slug == label.lower().rstrip(".")


def test_generated_slugs_match() -> None:
    for _ in range(200):
        slug = new_slug()
        assert instance_slug(f"{slug}.localhost:1", "localhost") == slug


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/x?y=1", "/x?y=1"),
        ("/", "/"),
        (None, "/"),
        ("", "/"),
        ("//evil.com", "/"),
        ("/\\evil.com", "/"),
        ("https://evil.com", "/"),
        ("javascript:alert(1)", "/"),
        ("/a\r\nSet-Cookie: x", "/"),
        ("x", "/"),
    ],
)
def test_safe_next(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_instance_url_target() -> None:
    assert instance_url_target(f"http://{SLUG}.localhost:81/lab?x=1", "localhost") == (
        "http",
        f"{SLUG}.localhost:81",
        "/lab?x=1",
    )
    for bad in (
        f"http://user@{SLUG}.localhost/",
        "https://evil.com/",
        f"ftp://{SLUG}.localhost/",
        "/relative",
    ):
        assert instance_url_target(bad, "localhost") is None
