"""Template schema and folder loader: valid files load, invalid ones become precise problems."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from aigc_gateway.catalog.loader import (
    Catalog,
    LoadedTemplate,
    TemplateProblem,
    check_installed,
    expand,
    load_dir,
    parse_template,
)
from aigc_gateway.catalog.schema import GpuRequest, Localized, Readiness, Template
from tests.support.tools import require

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "templates"

INSTALL_DIRS = {
    "sd-webui": "/opt/stable-diffusion-webui",
    "comfyui": "/opt/ComfyUI",
    "fooocus": "/opt/Fooocus",
    "invokeai": "/opt/invokeai",
}


def minimal(template_id: str = "tiny", **extra_lines: str) -> str:
    """A small valid template; ``extra_lines`` replaces or adds top-level YAML blocks."""
    blocks = {
        "id": f"id: {template_id}",
        "family": f"family: {template_id}",
        "version": 'version: "1"',
        "display": "display: {name: {en: Tiny, zh-CN: 小引擎}}",
        "launch": "launch:\n  command: ['{python}', '-c', 'pass']",
    }
    blocks.update(extra_lines)
    return "\n".join(v for v in blocks.values() if v) + "\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def parse_ok(text: str, name: str = "t.yaml") -> LoadedTemplate:
    result = parse_template(Path(name), text.encode())
    assert isinstance(result, LoadedTemplate), result
    return result


def parse_bad(text: str, name: str = "t.yaml") -> list[TemplateProblem]:
    result = parse_template(Path(name), text.encode())
    assert isinstance(result, list), result
    assert result
    return result


# -- the shipped folder ------------------------------------------------------------------------


def test_shipped_templates_load_without_problems() -> None:
    catalog = load_dir(SHIPPED)
    assert catalog.problems == ()
    assert set(catalog.templates) == {
        "demo",
        "jupyterlab",
        "sd-webui",
        "comfyui",
        "fooocus",
        "invokeai",
    }
    for tid, loaded in catalog.templates.items():
        assert loaded.id == tid
        assert loaded.source == str(SHIPPED / f"{tid}.yaml")
        assert loaded.digest == hashlib.sha256(Path(loaded.source).read_bytes()).hexdigest()
        assert loaded.template.display.name.en
        assert loaded.template.display.name.get("zh-CN")


def test_shipped_demo_and_jupyterlab_are_installed() -> None:
    catalog = load_dir(SHIPPED)
    demo = catalog.get("demo")
    assert demo is not None
    assert demo.installed
    assert demo.install_problem == ""
    assert not demo.template.resources.gpu.wanted
    # jupyterlab is a dev dependency of the gateway, hence importable here.
    jupyter = catalog.get("jupyterlab")
    assert jupyter is not None
    assert jupyter.installed, jupyter.install_problem


@pytest.mark.parametrize(("tid", "install_dir"), sorted(INSTALL_DIRS.items()))
def test_shipped_third_party_engines_report_missing_install(tid: str, install_dir: str) -> None:
    loaded = load_dir(SHIPPED).get(tid)
    assert loaded is not None
    assert loaded.template.launch.install_dir == install_dir
    assert loaded.template.resources.gpu.wanted
    # A host where the engine is installed cannot show this (skipped here, a failure under CI).
    absent = f"{install_dir} exists on this host" if Path(install_dir).exists() else None
    require(tool=f"a host without {tid} installed", missing=absent)
    assert not loaded.installed
    assert "not installed on this host" in loaded.install_problem
    assert install_dir in loaded.install_problem
    assert loaded.template.display.name.en in loaded.install_problem


def test_shipped_sd_webui_keeps_its_version_text() -> None:
    loaded = load_dir(SHIPPED).get("sd-webui")
    assert loaded is not None
    assert loaded.template.version == "1.10"


def shipped_invokeai(install_dir: Path) -> LoadedTemplate:
    """The shipped InvokeAI template, parsed with ``launch.install_dir`` set to ``install_dir``."""
    path = SHIPPED / "invokeai.yaml"
    text = path.read_text(encoding="utf-8").replace(
        "install_dir: /opt/invokeai", f"install_dir: {install_dir}"
    )
    assert str(install_dir) in text
    return parse_ok(text, name=str(path))


def test_shipped_invokeai_missing_install_dir_is_reported_as_not_installed(
    tmp_path: Path,
) -> None:
    loaded = shipped_invokeai(tmp_path / "nowhere")
    assert not loaded.installed
    assert loaded.install_problem == (
        f"InvokeAI is not installed on this host: {tmp_path / 'nowhere'} not found. "
        "Install it there, or change launch.install_dir in the template."
    )


def test_shipped_invokeai_without_its_venv_names_the_missing_program(tmp_path: Path) -> None:
    loaded = shipped_invokeai(tmp_path)  # the folder exists, the install in it does not
    assert not loaded.installed
    assert f"{tmp_path}/venv/bin/invokeai-web not found" in loaded.install_problem
    program = tmp_path / "venv" / "bin" / "invokeai-web"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    assert shipped_invokeai(tmp_path).installed


def test_shipped_invokeai_keeps_its_root_in_the_data_folder() -> None:
    launch = shipped_invokeai(Path("/opt/invokeai")).template.launch
    assert launch.command == ["{install_dir}/venv/bin/invokeai-web", "--root", "{data_dir}"]
    assert launch.port_env == "INVOKEAI_PORT"
    assert launch.env["INVOKEAI_HOST"] == "127.0.0.1"
    # Its gzip middleware breaks its socket.io long-polling under current Starlette.
    assert launch.env["INVOKEAI_HTTP_COMPRESSION_LEVEL"] == "0"


def test_catalog_get_unknown_is_none() -> None:
    assert load_dir(SHIPPED).get("nope") is None
    assert Catalog().get("demo") is None


# -- invalid files -----------------------------------------------------------------------------


INVALID: list[tuple[str, str, str]] = [
    # (case, file text, expected field path)
    ("missing command", minimal(launch="launch:\n  env: {A: b}"), "launch.command"),
    ("empty command", minimal(launch="launch:\n  command: []"), "launch.command"),
    ("missing launch", minimal(launch=""), "launch"),
    ("missing display", minimal(display=""), "display"),
    (
        "missing english name",
        minimal(display="display: {name: {zh-CN: 只有中文}}"),
        "display.name.en",
    ),
    ("wrong type cpu", minimal(resources="resources: {cpu: lots}"), "resources.cpu"),
    ("wrong type enabled", minimal(enabled="enabled: [1, 2]"), "enabled"),
    ("negative cpu", minimal(resources="resources: {cpu: -1}"), "resources.cpu"),
    ("port out of range", minimal(launch="launch: {command: [a], port: 70000}"), "launch.port"),
    ("unknown top-level field", minimal(colour="colour: blue"), "colour"),
    ("unknown nested field", minimal(launch="launch: {command: [a], cmd: [b]}"), "launch.cmd"),
    ("bad id pattern", minimal("Bad_Id"), "id"),
    ("id starting with dash", minimal("-x"), "id"),
    ("id too long", minimal("a" * 64), "id"),
    ("bad family", minimal(family="family: Has Spaces"), "family"),
    (
        "gpu count and memory",
        minimal(resources="resources: {gpu: {count: 1, memory_gib: 8}}"),
        "resources.gpu",
    ),
    (
        "gpu count too big",
        minimal(resources="resources: {gpu: {count: 17}}"),
        "resources.gpu.count",
    ),
    ("readiness http and tcp", minimal(readiness="readiness: {http: /x, tcp: true}"), "readiness"),
    ("readiness neither", minimal(readiness="readiness: {http: null}"), "readiness"),
    ("readiness relative path", minimal(readiness="readiness: {http: healthz}"), "readiness"),
    (
        "readiness timeout zero",
        minimal(readiness="readiness: {timeout_s: 0}"),
        "readiness.timeout_s",
    ),
    ("bad env name", minimal(launch="launch: {command: [a], env: {'1BAD': x}}"), "launch.env"),
    ("env value not text", minimal(launch="launch: {command: [a], env: {A: [1]}}"), "launch.env.A"),
    ("schema version 2", minimal(schema_version="schema_version: 2"), "schema_version"),
    (
        "misspelt placeholder in the command",
        minimal(launch="launch: {command: [a, '--port={prot}']}"),
        "launch.command",
    ),
    (
        "placeholder in env",
        minimal(launch="launch: {command: [a], env: {D: '{dir}'}}"),
        "launch.env",
    ),
    (
        "placeholder in working_dir",
        minimal(launch="launch: {command: [a], working_dir: '{data}'}"),
        "launch.working_dir",
    ),
    (
        "placeholder in requires",
        minimal(launch="launch: {command: [a], requires: ['{instal_dir}/x']}"),
        "launch.requires",
    ),
    ("placeholder in readiness", minimal(readiness="readiness: {http: '/{port}/'}"), "readiness"),
    ("install_dir unset", minimal(launch="launch: {command: ['{install_dir}/x']}"), "launch"),
    (
        "bad port_env",
        minimal(launch="launch: {command: [a], port_env: 'MY-PORT'}"),
        "launch.port_env",
    ),
    ("bad data_env", minimal(storage="storage: {data_env: '1DATA'}"), "storage.data_env"),
    ("empty version", minimal(version='version: ""'), "version"),
]


@pytest.mark.parametrize(("text", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_file_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    write(tmp_path, "a-good.yaml", minimal("good-a"))
    bad = write(tmp_path, "b-bad.yaml", text)
    write(tmp_path, "c-good.yml", minimal("good-c"))
    catalog = load_dir(tmp_path)
    # The valid files around it still load.
    assert set(catalog.templates) == {"good-a", "good-c"}
    assert catalog.problems
    assert all(p.file == str(bad) for p in catalog.problems)
    assert field in [p.field for p in catalog.problems], catalog.problems
    for p in catalog.problems:
        assert p.message
        assert str(p).startswith(f"{bad}: {p.field}: " if p.field else f"{bad}: ")


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "good.yaml", minimal("good"))
    bad = write(tmp_path, "broken.yaml", minimal() + "launch: [unclosed\n  x: : :\n")
    catalog = load_dir(tmp_path)
    assert set(catalog.templates) == {"good"}
    (problem,) = catalog.problems
    assert problem.file == str(bad)
    assert problem.field.startswith("line ")
    assert int(problem.field.removeprefix("line ")) >= 6
    assert "not valid YAML" in problem.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "", "42\n"])
def test_non_mapping_file_is_one_problem(text: str) -> None:
    (problem,) = parse_bad(text)
    assert problem.file == "t.yaml"
    assert problem.field == ""
    assert "mapping" in problem.message


def test_several_errors_in_one_file_are_all_reported() -> None:
    text = minimal("BAD", resources="resources: {cpu: lots}", colour="colour: red")
    fields = {p.field for p in parse_bad(text)}
    assert {"id", "resources.cpu", "colour"} <= fields


def test_gpu_both_message_is_helpful() -> None:
    (problem,) = parse_bad(minimal(resources="resources: {gpu: {count: 2, memory_gib: 4}}"))
    assert "count" in problem.message
    assert "memory_gib" in problem.message


def test_readiness_both_message_is_helpful() -> None:
    (problem,) = parse_bad(minimal(readiness="readiness: {http: /, tcp: true}"))
    assert "tcp" in problem.message
    assert "http" in problem.message


def test_duplicate_id_problem_on_second_file_naming_first(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", minimal("same"))
    second = write(tmp_path, "b.yaml", minimal("same", version='version: "2"'))
    catalog = load_dir(tmp_path)
    loaded = catalog.get("same")
    assert loaded is not None
    assert loaded.source == str(first)
    assert loaded.template.version == "1"
    (problem,) = catalog.problems
    assert problem.file == str(second)
    assert problem.field == "id"
    assert str(first) in problem.message
    assert "same" in problem.message


def test_missing_folder_is_one_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    catalog = load_dir(missing)
    assert catalog.templates == {}
    (problem,) = catalog.problems
    assert problem.file == str(missing)
    assert "not found" in problem.message


def test_a_file_instead_of_a_folder_is_one_problem(tmp_path: Path) -> None:
    file = write(tmp_path, "t.yaml", minimal())
    catalog = load_dir(file)
    assert catalog.templates == {}
    assert [p.file for p in catalog.problems] == [str(file)]


def test_only_yaml_files_directly_in_the_folder_are_read(tmp_path: Path) -> None:
    write(tmp_path, "one.yaml", minimal("one"))
    write(tmp_path, "two.yml", minimal("two"))
    write(tmp_path, "notes.txt", "not a template")
    write(tmp_path, "three.yaml.bak", minimal("three"))
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "four.yaml", minimal("four"))
    catalog = load_dir(tmp_path)
    assert set(catalog.templates) == {"one", "two"}
    assert catalog.problems == ()


def test_empty_folder_is_an_empty_catalog(tmp_path: Path) -> None:
    catalog = load_dir(tmp_path)
    assert catalog.templates == {}
    assert catalog.problems == ()


# -- digest, localisation, version -------------------------------------------------------------


def test_digest_follows_content(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", minimal())
    first = load_dir(tmp_path).get("tiny")
    again = load_dir(tmp_path).get("tiny")
    path.write_text(minimal() + "# a comment is a new revision\n", encoding="utf-8")
    changed = load_dir(tmp_path).get("tiny")
    assert first is not None
    assert again is not None
    assert changed is not None
    assert first.digest == again.digest
    assert first.digest != changed.digest
    assert changed.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(changed.digest) == 64


def test_localized_falls_back_to_english() -> None:
    both = Localized.model_validate({"en": "Hello", "zh-CN": "你好"})
    only_en = Localized.model_validate({"en": "Hello"})
    empty_zh = Localized.model_validate({"en": "Hello", "zh-CN": ""})
    assert both.get("zh-CN") == "你好"
    assert both.get("zh") == "你好"
    assert both.get("ZH-cn") == "你好"
    assert both.get("en") == "Hello"
    assert both.get("fr") == "Hello"
    assert only_en.get("zh-CN") == "Hello"
    assert empty_zh.get("zh-CN") == "Hello"


def test_localized_requires_english() -> None:
    with pytest.raises(ValidationError):
        Localized.model_validate({"zh-CN": "你好"})
    with pytest.raises(ValidationError):
        Localized.model_validate({"en": ""})


@pytest.mark.parametrize(
    ("yaml_version", "text"),
    [("2", "2"), ('"1.10"', "1.10"), ("v2-beta", "v2-beta"), ('"0.3"', "0.3")],
)
def test_version_is_text(yaml_version: str, text: str) -> None:
    loaded = parse_ok(minimal(version=f"version: {yaml_version}"))
    assert loaded.template.version == text
    assert isinstance(loaded.template.version, str)


@pytest.mark.parametrize("yaml_version", ["1.10", "0.3", "true"])
def test_unquoted_non_integer_version_is_refused_with_advice(yaml_version: str) -> None:
    # YAML reads 1.10 as the number 1.1: refuse rather than silently change what the admin wrote.
    result = parse_template(Path("t.yaml"), minimal(version=f"version: {yaml_version}").encode())
    assert isinstance(result, list)
    assert result[0].field == "version"
    assert "quotes" in result[0].message


def test_defaults() -> None:
    t = parse_ok(minimal()).template
    assert t.readiness.http == "/"
    assert not t.readiness.tcp
    assert t.launch.working_dir == "{data_dir}"
    assert t.launch.port is None
    assert t.launch.port_env == "PORT"
    assert t.launch.stop_grace_s is None  # the gateway's setting
    assert t.resources.gpu == GpuRequest()
    assert not t.resources.gpu.wanted
    assert t.enabled
    assert t.schema_version == 1


def test_tcp_readiness_is_accepted_with_http_null() -> None:
    r = Readiness.model_validate({"http": None, "tcp": True})
    assert r.tcp
    assert r.http is None
    t = parse_ok(minimal(readiness="readiness: {http: null, tcp: true, timeout_s: 5}")).template
    assert t.readiness.tcp
    assert t.readiness.timeout_s == 5


def test_gpu_share_is_wanted() -> None:
    assert GpuRequest(memory_gib=8).wanted
    assert GpuRequest(count=1).wanted
    assert not GpuRequest(count=0).wanted


def test_templates_are_frozen() -> None:
    t = parse_ok(minimal()).template
    with pytest.raises(ValidationError):
        t.id = "other"  # type: ignore[misc]
    assert isinstance(t, Template)


# -- installed checks --------------------------------------------------------------------------


def _with_requires(*requires: str, install_dir: str | None = None) -> str:
    reqs = ", ".join(f'"{r}"' for r in requires)
    extra = f"\n  install_dir: {install_dir}" if install_dir else ""
    return minimal(launch=f"launch:\n  command: [a]\n  requires: [{reqs}]{extra}")


def test_python_requirement_present_counts_as_installed() -> None:
    loaded = parse_ok(_with_requires("python:json"))
    assert loaded.installed
    assert loaded.install_problem == ""


def test_python_requirement_missing_is_explained() -> None:
    loaded = parse_ok(_with_requires("python:json", "python:no_such_module_xyz"))
    assert not loaded.installed
    problem = loaded.install_problem
    assert "Tiny is not installed on this host" in problem
    assert "'no_such_module_xyz'" in problem
    assert "Python module" in problem
    assert "Install it" in problem


def test_install_dir_and_required_paths(tmp_path: Path) -> None:
    install = tmp_path / "engine"
    text = _with_requires("{install_dir}/main.py", install_dir=str(install))
    missing_dir = parse_ok(text)
    assert not missing_dir.installed
    assert f"{install} not found" in missing_dir.install_problem
    assert "launch.install_dir" in missing_dir.install_problem

    install.mkdir()
    missing_file = parse_ok(text)
    assert not missing_file.installed
    assert f"{install}/main.py not found" in missing_file.install_problem

    (install / "main.py").write_text("print('hi')\n")
    assert parse_ok(text).installed


def test_check_installed_direct() -> None:
    t = parse_ok(_with_requires("/definitely/not/here/xyz")).template
    assert check_installed(t).startswith("Tiny is not installed on this host: /definitely/not")


def test_an_uninstalled_template_is_still_listed(tmp_path: Path) -> None:
    write(tmp_path, "t.yaml", _with_requires("python:no_such_module_xyz"))
    catalog = load_dir(tmp_path)
    assert catalog.problems == ()
    loaded = catalog.get("tiny")
    assert loaded is not None
    assert not loaded.installed


def test_dotted_python_requirement_with_missing_parent_is_not_installed(tmp_path: Path) -> None:
    write(tmp_path, "good.yaml", minimal("good"))
    write(tmp_path, "t.yaml", _with_requires("python:no_such_pkg_xyz.sub"))
    catalog = load_dir(tmp_path)
    assert "good" in catalog.templates
    loaded = catalog.get("tiny")
    assert loaded is not None
    assert not loaded.installed


def test_expand_fills_python_and_install_dir() -> None:
    import sys

    with_dir = parse_ok(_with_requires(install_dir="/opt/x")).template
    without = parse_ok(minimal()).template
    assert (
        expand("{python} {install_dir}/a {port}", with_dir) == f"{sys.executable} /opt/x/a {{port}}"
    )
    assert expand("{install_dir}/a", without) == "{install_dir}/a"


def test_a_misspelt_placeholder_is_named_with_the_close_match() -> None:
    [problem] = parse_bad(minimal(launch="launch: {command: [a, '--port', '{prot}']}"), "x.yaml")
    assert problem.file == "x.yaml" and problem.field == "launch.command"
    assert "unknown placeholder {prot}" in problem.message
    assert "did you mean {port}?" in problem.message
    [far] = parse_bad(minimal(launch="launch: {command: [a, '{model_path}']}"))
    assert "{model_path}" in far.message and "did you mean" not in far.message
    assert "{data_dir}" in far.message  # the known ones are listed


def test_known_placeholders_and_other_braces_are_accepted() -> None:
    text = minimal(
        launch="launch:\n  install_dir: /opt/x\n  command: ['{install_dir}/run', '--port={port}',"
        " '{data_dir}', '{instance_id}', '{python}', '{\"json\": 1}']\n  port_env: ENGINE_PORT"
    )
    launch = parse_ok(text).template.launch
    assert launch.port_env == "ENGINE_PORT" and launch.command[-1] == '{"json": 1}'


def test_port_env_must_be_a_variable_name() -> None:
    [problem] = parse_bad(minimal(launch="launch: {command: [a], port_env: 'PORT=1'}"))
    assert problem.field == "launch.port_env"
    assert "'PORT=1' is not a valid environment variable name" in problem.message


def test_icons_are_served_svgs_named_by_the_templates() -> None:
    from aigc_gateway.dashboard.ui import icons

    catalog = load_dir(SHIPPED)
    families = {t.template.family for t in catalog.templates.values()}
    assert families <= icons.shipped() and {"default", "invokeai"} <= icons.shipped()
    for loaded in catalog.templates.values():
        t = loaded.template
        assert t.display.icon == t.family  # a name, not an emoji
        assert (icons.ICONS_DIR / f"{t.family}.svg").read_text().startswith("<svg ")
    assert icons.icon_url(None, "demo") == "/static/icons/demo.svg"  # the family's by default
    assert icons.icon_url(None, "my-engine") == "/static/icons/default.svg"
    assert parse_ok(minimal()).template.display.icon is None


def test_an_emoji_or_unknown_icon_is_refused_with_the_names() -> None:
    [emoji] = parse_bad(minimal(display="display: {name: {en: T}, icon: '🧩'}"))
    assert emoji.field == "display.icon" and "empty boxes" in emoji.message
    assert "comfyui" in emoji.message and "default" in emoji.message
    [typo] = parse_bad(minimal(display="display: {name: {en: T}, icon: comfyiu}"))
    assert "did you mean 'comfyui'?" in typo.message
