"""Both catalogs hold every string the pages and their script use, with the same placeholders."""

from __future__ import annotations

import json
import re
import string
import typing
from pathlib import Path

import pytest

from aigc_gateway.api.gpus import GpuPublic
from aigc_gateway.dashboard.ui.i18n import KNOWN_TEXTS, LANGUAGES, Translator, negotiate, normalize
from aigc_gateway.domain.states import InstanceState

WEB = Path(__file__).resolve().parents[2] / "src" / "aigc_gateway" / "dashboard" / "ui"
DASHBOARD = sorted((WEB.parent / "routes").glob("*.py"))  # the page routes
T_CALL = re.compile(r"""\bt\(\s*["']([^"']+)["'](?!\s*~)""")
"""``t("key")``; not ``t("state." ~ x)``, whose keys :func:`dynamic_keys` lists."""
KEY_LITERAL = re.compile(
    r"""["']((?:js|state|admin|error|home|catalog|files|usage|account)\.[A-Za-z0-9_.-]+)["']"""
)


def load(lang: str) -> dict[str, str]:
    data = json.loads((WEB / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def literal_values(model: type[GpuPublic], field: str) -> set[str | None]:
    """The values a ``Literal[...]`` (or ``Literal[...] | None``) field of an API model takes."""
    annotation = model.model_fields[field].annotation
    parts = [annotation] if typing.get_origin(annotation) is typing.Literal else []
    parts = parts or list(typing.get_args(annotation))  # a union: Literal[...] | None
    found: set[str | None] = set()
    for part in parts:
        found |= set(typing.get_args(part)) if typing.get_origin(part) is typing.Literal else {None}
    return found


def template_keys() -> set[str]:
    keys: set[str] = set()
    for path in (WEB / "html").glob("*.html"):
        keys |= set(T_CALL.findall(path.read_text(encoding="utf-8")))
    return keys


def dynamic_keys() -> set[str]:
    """Keys the templates build from data, and keys code passes to them."""
    keys = {f"state.{s.value}" for s in InstanceState}
    keys |= {"share.with_user", "share.with_team"}
    keys |= {"admin.users.sign_in_local", "admin.users.sign_in_sso"}
    keys |= {"error.not_found_text", "error.bad_request_text"}
    keys |= {f"admin.gpus.{action}" for action in ("cordon", "drain", "uncordon")}
    keys |= {f"admin.gpus.mode_{m}" for m in literal_values(GpuPublic, "mode")}
    keys |= {f"admin.gpus.status_{c}" for c in literal_values(GpuPublic, "cordon") if c}
    keys |= set(KNOWN_TEXTS.values())
    for path in (*DASHBOARD, *WEB.glob("*.py")):  # keys the page code passes to t()
        keys |= {k for k in KEY_LITERAL.findall(path.read_text()) if not k.endswith(".html")}
    return keys


def script_keys() -> set[str]:
    return set(re.findall(r"""["'](js\.[a-z_]+)["']""", (WEB / "static" / "app.js").read_text()))


def test_the_scan_finds_the_templates_keys() -> None:
    keys = template_keys()
    assert {"nav.sign_out", "home.title", "login.username", "catalog.create"} <= keys
    assert len(script_keys()) > 10
    # Keys only code names: the costs page's downloads (dashboard) and charts (web.costs).
    assert {"admin.costs.csv_team_day", "admin.costs.no_gpu", "usage.hours_value"} <= (
        dynamic_keys() - keys
    )


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_key_used_is_in_the_catalog(lang: str) -> None:
    catalog = load(lang)
    used = template_keys() | dynamic_keys() | script_keys()
    missing = sorted(used - catalog.keys())
    assert not missing, f"missing from {lang}.json: {missing}"


def test_both_catalogs_have_the_same_keys_and_placeholders() -> None:
    en, zh = load("en"), load("zh-CN")
    assert sorted(en.keys() - zh.keys()) == [] and sorted(zh.keys() - en.keys()) == []
    for key in en:
        assert en[key].strip() and zh[key].strip(), f"empty text for {key}"
        names = {f for _, f, _, _ in string.Formatter().parse(en[key]) if f}
        assert names == {f for _, f, _, _ in string.Formatter().parse(zh[key]) if f}, key


def test_chinese_catalog_is_translated() -> None:
    en, zh = load("en"), load("zh-CN")
    same = [k for k in en if en[k] == zh[k] and re.search(r"[a-z]{4}", en[k])]
    assert not [k for k in same if not k.startswith("lang.")], same


@pytest.mark.parametrize(
    ("cookie", "header", "expected"),
    [
        (None, None, "en"),
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        (None, "en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        (None, "fr-FR, zh;q=0.5, en;q=0.4", "zh-CN"),
        (None, "zh-Hans-CN", "zh-CN"),
        (None, "en;q=0.2, zh-TW;q=0.1, zh-CN;q=0.9", "zh-CN"),
        (None, "zh-CN;q=0, en", "en"),
        (None, "de, fr", "en"),
        (None, "zh-CN;q=abc", "en"),
        ("zh-CN", "en", "zh-CN"),
        ("en", "zh-CN", "en"),
        ("klingon", "zh", "zh-CN"),
    ],
)
def test_language_negotiation(cookie: str | None, header: str | None, expected: str) -> None:
    assert negotiate(cookie, header) == expected


def test_normalize() -> None:
    assert normalize("zh_cn") == "zh-CN"
    assert normalize("EN-gb") == "en"
    assert normalize("") is None and normalize(None) is None and normalize("e") is None


def test_translator_formats_and_falls_back() -> None:
    zh = Translator("zh-CN")
    assert zh("home.exit_code", code=3) == "退出码 3"
    assert zh("no.such.key") == "no.such.key"
    assert Translator("xx").lang == "en"
    assert zh.text("Signed out") == "已退出登录"
    assert zh.text("something else") == "something else"
    assert set(zh.for_script()) == {k for k in load("zh-CN") if k.startswith(("js.", "state."))}
