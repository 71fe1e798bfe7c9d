"""From a template to the runtime's LaunchSpec, and the runtime's placeholder rendering."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aigc_gateway.catalog.schema import Template
from aigc_gateway.domain.reconcile import Phase
from aigc_gateway.lifecycle.launch import launch_spec
from aigc_gateway.runtime.base import (
    Endpoint,
    LaunchSpec,
    ReadinessCheck,
    ReadinessKind,
    Workload,
    render,
    uses_socket,
)

REPO = Path(__file__).resolve().parents[2]


def template(**changes: Any) -> Template:
    raw: dict[str, Any] = {
        "id": "eng",
        "family": "eng",
        "version": "1",
        "display": {"name": {"en": "Engine"}},
        "launch": {"command": ["{python}", "-m", "eng", "--port", "{port}"]},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return Template.model_validate(raw)


def spec_for(t: Template, **kw: Any) -> LaunchSpec:
    args: dict[str, Any] = {
        "instance_id": "inst-1",
        "template": t,
        "data_dir": "/data/u1/eng",
        "log_max_bytes": 12345,
        "labels": {"owner": "u1", "template": t.id},
    }
    args.update(kw)
    return launch_spec(**args)


def test_basic_fields() -> None:
    spec = spec_for(template())
    assert spec.instance_id == "inst-1"
    assert spec.data_dir == "/data/u1/eng"
    assert spec.log_max_bytes == 12345
    assert dict(spec.labels) == {"owner": "u1", "template": "eng"}
    assert isinstance(spec.command, tuple)
    # {python} is expanded at launch-spec time; {port} is left for the runtime.
    assert spec.command == (sys.executable, "-m", "eng", "--port", "{port}")
    assert spec.working_dir == "{data_dir}"
    assert spec.port is None
    assert spec.port_env == "PORT"
    assert spec.stop_grace_s == 10.0
    assert spec.readiness == ReadinessCheck(kind=ReadinessKind.HTTP, path="/", timeout_s=120.0)
    assert dict(spec.env) == {}


def test_install_dir_is_expanded_everywhere() -> None:
    t = template(
        launch={
            "command": ["{install_dir}/venv/bin/python", "{install_dir}/main.py", "{port}"],
            "install_dir": "/opt/eng",
            "working_dir": "{install_dir}",
            "env": {"ENG_HOME": "{install_dir}", "PY": "{python}", "OUT": "{data_dir}/out"},
        }
    )
    spec = spec_for(t)
    assert spec.command == ("/opt/eng/venv/bin/python", "/opt/eng/main.py", "{port}")
    assert spec.working_dir == "/opt/eng"
    assert dict(spec.env) == {
        "ENG_HOME": "/opt/eng",
        "PY": sys.executable,
        "OUT": "{data_dir}/out",  # rendered by the runtime
    }


def test_storage_data_env_receives_the_data_dir() -> None:
    t = template(
        launch={"command": ["x"], "env": {"KEEP": "1"}},
        storage={"data_env": "ENGINE_DATA"},
    )
    spec = spec_for(t, data_dir="/vol/abc")
    assert dict(spec.env) == {"KEEP": "1", "ENGINE_DATA": "/vol/abc"}


def test_storage_data_env_overrides_a_template_env_of_the_same_name() -> None:
    t = template(
        launch={"command": ["x"], "env": {"ENGINE_DATA": "/wrong"}},
        storage={"data_env": "ENGINE_DATA"},
    )
    assert spec_for(t, data_dir="/vol/abc").env["ENGINE_DATA"] == "/vol/abc"


def test_http_readiness() -> None:
    t = template(readiness={"http": "/api/health", "timeout_s": 42})
    assert spec_for(t).readiness == ReadinessCheck(
        kind=ReadinessKind.HTTP, path="/api/health", timeout_s=42
    )


def test_tcp_readiness() -> None:
    t = template(readiness={"http": None, "tcp": True, "timeout_s": 7})
    r = spec_for(t).readiness
    assert r.kind is ReadinessKind.TCP
    assert r.timeout_s == 7


def test_fixed_port_port_env_and_stop_grace() -> None:
    t = template(launch={"command": ["x"], "port": 7860, "port_env": None, "stop_grace_s": 3.5})
    spec = spec_for(t)
    assert spec.port == 7860
    assert spec.port_env is None
    assert spec.stop_grace_s == 3.5


def test_stop_grace_is_the_templates_else_the_gateways() -> None:
    own = template(launch={"command": ["x"], "stop_grace_s": 0.5})
    assert spec_for(own, default_grace_s=30).stop_grace_s == 0.5
    unset = template(launch={"command": ["x"]})
    assert unset.launch.stop_grace_s is None
    assert spec_for(unset, default_grace_s=30).stop_grace_s == 30


def test_template_env_is_not_shared_with_the_spec() -> None:
    t = template(launch={"command": ["x"], "env": {"A": "1"}}, storage={"data_env": "D"})
    spec_for(t)
    assert t.launch.env == {"A": "1"}  # the template itself is not changed


def test_shipped_demo_template_spec() -> None:
    raw = yaml.safe_load((REPO / "templates" / "demo.yaml").read_text(encoding="utf-8"))
    spec = spec_for(Template.model_validate(raw), data_dir="/d")
    assert spec.command[0] == sys.executable
    assert "{port}" in spec.command
    assert "{data_dir}" in spec.command
    assert spec.readiness.path == "/healthz"
    assert spec.stop_grace_s == 5


# -- render ------------------------------------------------------------------------------------

VALUES = {
    "port": "8123",
    "data_dir": "/vol/x",
    "instance_id": "abc",
    # Values for other names are ignored: only the three runtime placeholders are filled.
    "python": "/usr/bin/python",
    "install_dir": "/opt/x",
    "other": "OTHER",
    "PORT": "9999",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{port}", "8123"),
        ("--port={port}", "--port=8123"),
        ("{data_dir}/out/{instance_id}", "/vol/x/out/abc"),
        ("{port}{port}", "81238123"),
        ("{python}", "{python}"),
        ("{install_dir}/x", "{install_dir}/x"),
        ("{other}", "{other}"),
        ('{"a": {port}}', '{"a": 8123}'),
        ('{"a": 1}', '{"a": 1}'),
        ("{ port }", "{ port }"),
        ("{PORT}", "{PORT}"),
        ("{port", "{port"),
        ("port}", "port}"),
        ("", ""),
        ("no placeholders", "no placeholders"),
    ],
)
def test_render_fills_only_known_placeholders(text: str, expected: str) -> None:
    assert render(text, VALUES) == expected


def test_render_keeps_placeholders_without_a_value() -> None:
    assert render("{port} {data_dir}", {"port": "1"}) == "1 {data_dir}"


def test_render_does_not_rerender_values() -> None:
    assert render("{data_dir}", {"data_dir": "/a/{port}", "port": "9"}) == "/a/{port}"


def test_workload_address_and_with_phase() -> None:
    w = Workload(instance_id="i", phase=Phase.STARTING)
    assert w.address is None
    ready = w.with_phase(Phase.READY, endpoint=Endpoint(host="127.0.0.1", port=8123))
    assert ready.address == "127.0.0.1:8123"
    assert ready.phase is Phase.READY
    assert w.phase is Phase.STARTING


@pytest.mark.parametrize(
    "endpoint",
    [
        Endpoint(unix_path="/run/aigc/e.sock"),
        Endpoint(host="127.0.0.1", port=8123),
        Endpoint(host="::1", port=8),
    ],
)
def test_an_endpoint_reads_back_from_its_text(endpoint: Endpoint) -> None:
    assert Endpoint.parse(endpoint.describe) == endpoint


@pytest.mark.parametrize("text", ["unix:relative.sock", "127.0.0.1", ":80", "host:http", ""])
def test_an_endpoint_text_that_is_none_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        Endpoint.parse(text)


def test_a_command_naming_the_socket_placeholder_uses_a_socket() -> None:
    spec = LaunchSpec(instance_id="i", command=("engine", "--uds", "{socket}"), data_dir="/d")
    assert uses_socket(spec)
    assert not uses_socket(LaunchSpec(instance_id="i", command=("engine",), data_dir="/d"))
    assert render("--uds={socket}", {"socket": "/s"}) == "--uds=/s"
