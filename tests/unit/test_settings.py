"""Gateway settings: file < environment < overrides, refused default secrets, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aigc_gateway.errors import UserError
from aigc_gateway.settings import (
    DEV_SECRET,
    Settings,
    default_templates_dir,
    load_settings,
    read_config_file,
)

GOOD_SECRET = "x" * 40
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AIGC_* variable of the developer's shell leaks in, and relative paths land in tmp."""
    for name in list(os.environ):
        if name.upper().startswith("AIGC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_default_secret_refused_outside_dev() -> None:
    with pytest.raises(UserError) as info:
        load_settings()
    assert "AIGC_SECRET_KEY" in info.value.message
    assert info.value.status == 400


def test_short_secret_refused_outside_dev() -> None:
    with pytest.raises(UserError, match="AIGC_SECRET_KEY"):
        load_settings(secret_key="too-short")


def test_default_secret_refused_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGC_SECRET_KEY", DEV_SECRET)
    with pytest.raises(UserError, match="AIGC_SECRET_KEY"):
        load_settings()


def test_dev_mode_allows_the_default_secret() -> None:
    s = load_settings(dev=True)
    assert s.dev
    assert s.secret_key == DEV_SECRET


def test_a_real_secret_works_outside_dev() -> None:
    s = load_settings(secret_key=GOOD_SECRET)
    assert not s.dev
    assert s.secret_key == GOOD_SECRET


def test_defaults() -> None:
    s = load_settings(dev=True)
    assert s.host == "127.0.0.1"
    assert s.port == 8080
    assert s.runtime == "local"
    assert s.templates_dir == default_templates_dir() == REPO / "templates"


def test_yaml_file_is_read(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"port: 9001\nhost: 0.0.0.0\nsecret_key: {GOOD_SECRET}\nmax_instances_per_user: 7\n",
        encoding="utf-8",
    )
    s = load_settings(cfg)
    assert (s.port, s.host, s.secret_key, s.max_instances_per_user) == (
        9001,
        "0.0.0.0",
        GOOD_SECRET,
        7,
    )


def test_toml_file_is_read(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'port = 9002\ndev = false\nsecret_key = "{GOOD_SECRET}"\ndata_dir = "{tmp_path / "d"}"\n',
        encoding="utf-8",
    )
    s = load_settings(cfg)
    assert s.port == 9002
    assert s.data_dir == tmp_path / "d"


def test_config_file_from_aigc_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("port: 9003\ndev: true\n", encoding="utf-8")
    monkeypatch.setenv("AIGC_CONFIG", str(cfg))
    assert load_settings().port == 9003


def test_environment_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("port: 9001\ndev: true\nhost: 10.0.0.1\n", encoding="utf-8")
    monkeypatch.setenv("AIGC_PORT", "9100")
    s = load_settings(cfg)
    assert s.port == 9100
    assert s.host == "10.0.0.1"  # not in the environment: the file's value stays


def test_overrides_win_over_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("port: 9001\ndev: true\n", encoding="utf-8")
    monkeypatch.setenv("AIGC_PORT", "9100")
    assert load_settings(cfg, port=9200).port == 9200


def test_none_overrides_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("port: 9001\n", encoding="utf-8")
    monkeypatch.setenv("AIGC_DEV", "true")
    s = load_settings(cfg, port=None, host=None)
    assert s.port == 9001
    assert s.dev


def test_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGC_SECRET_KEY", GOOD_SECRET)
    monkeypatch.setenv("AIGC_RECONCILE_INTERVAL_S", "0.5")
    s = load_settings()
    assert s.secret_key == GOOD_SECRET
    assert s.reconcile_interval_s == 0.5


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"reconcile_interval_s": 0}, "reconcile_interval_s"),
        ({"log_max_bytes": 10}, "log_max_bytes"),
        ({"runtime": "kubernetes"}, "runtime"),
        ({"max_instances_per_user": -1}, "max_instances_per_user"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_invalid_value_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(UserError) as info:
        load_settings(dev=True, **overrides)
    assert f"{field}:" in info.value.message
    assert "environment" in info.value.message


def test_invalid_environment_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGC_PORT", "eighty")
    with pytest.raises(UserError, match="port"):
        load_settings(dev=True)


def test_invalid_file_value_names_field_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("dev: true\nport: lots\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_settings(cfg)
    assert "port" in info.value.message
    assert str(cfg) in info.value.message


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("dev: true\nprot: 9000\n", encoding="utf-8")
    with pytest.raises(UserError, match="prot"):
        load_settings(cfg)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "missing.yaml"
    with pytest.raises(UserError) as info:
        load_settings(cfg, dev=True)
    assert str(cfg) in info.value.message
    assert "cannot read" in info.value.message


def test_a_folder_as_config_names_it(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        read_config_file(tmp_path)
    assert str(tmp_path) in info.value.message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bad.yaml", "port: [unclosed\n"),
        ("bad.yml", "a: b: c\n"),
        ("bad.toml", "port = = 1\n"),
        ("bad2.toml", "[unclosed\n"),
    ],
)
def test_invalid_file_syntax_names_the_file(tmp_path: Path, name: str, text: str) -> None:
    cfg = tmp_path / name
    cfg.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_settings(cfg, dev=True)
    assert str(cfg) in info.value.message
    assert "not valid" in info.value.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_file_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_settings(cfg, dev=True)
    assert str(cfg) in info.value.message
    assert "mapping" in info.value.message


def test_empty_file_is_no_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("# nothing yet\n", encoding="utf-8")
    assert read_config_file(cfg) == {}
    assert load_settings(cfg, dev=True).port == 8080


def test_sqlalchemy_url_defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    s = load_settings(dev=True, data_dir=tmp_path / "data")
    expected = tmp_path.resolve() / "data" / "gateway.db"
    assert s.sqlalchemy_url == f"sqlite+aiosqlite:///{expected}"
    assert s.volumes_dir == tmp_path.resolve() / "data" / "volumes"
    assert s.runtime_dir == tmp_path.resolve() / "data" / "runtime" / "local"


def test_sqlalchemy_url_relative_data_dir_is_made_absolute(tmp_path: Path) -> None:
    s = load_settings(dev=True)  # data_dir "var", relative to the cwd (tmp_path)
    assert s.sqlalchemy_url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'var' / 'gateway.db'}"


def test_database_url_wins(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://u:p@db/gw"
    s = load_settings(dev=True, data_dir=tmp_path, database_url=url)
    assert s.sqlalchemy_url == url


def test_settings_model_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="nope"):
        Settings(dev=True, nope=1)  # type: ignore[call-arg]


def test_no_proxy_is_trusted_by_default() -> None:
    assert load_settings(dev=True).trusted_proxies == []


def test_trusted_proxies_from_the_environment_and_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIGC_TRUSTED_PROXIES", "10.0.0.5, 10.1.0.0/16,::1")
    assert load_settings(dev=True).trusted_proxies == ["10.0.0.5", "10.1.0.0/16", "::1"]
    monkeypatch.delenv("AIGC_TRUSTED_PROXIES")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("dev: true\ntrusted_proxies: [127.0.0.1]\n")
    assert load_settings(cfg).trusted_proxies == ["127.0.0.1"]


def test_a_trusted_proxy_that_is_no_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGC_TRUSTED_PROXIES", "10.0.0.5,gateway.local")
    with pytest.raises(UserError, match=r"trusted_proxies: 'gateway.local' is not an IP address"):
        load_settings(dev=True)
