"""Load a folder of template YAML files into a :class:`Catalog`.

An invalid file never takes the valid ones down: it becomes a :class:`TemplateProblem` naming the
file, the field and what is wrong, shown by the API and ``aigc-gateway template validate``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aigc_gateway.catalog.schema import Template

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    file: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class LoadedTemplate:
    template: Template
    source: str
    digest: str
    """sha256 of the file's bytes: a new digest is a new revision."""
    installed: bool = True
    install_problem: str = ""

    @property
    def id(self) -> str:
        return self.template.id


@dataclass(frozen=True, slots=True)
class Catalog:
    templates: dict[str, LoadedTemplate] = field(default_factory=dict)
    problems: tuple[TemplateProblem, ...] = ()

    def get(self, template_id: str) -> LoadedTemplate | None:
        return self.templates.get(template_id)


def expand(text: str, template: Template) -> str:
    """Fill the load-time placeholders ``{python}`` and ``{install_dir}``."""
    text = text.replace("{python}", sys.executable)
    if template.launch.install_dir is not None:
        text = text.replace("{install_dir}", template.launch.install_dir)
    return text


def _present(requirement: str) -> bool:
    if requirement.startswith("python:"):
        try:
            return importlib.util.find_spec(requirement.removeprefix("python:")) is not None
        except (ImportError, ValueError):  # a dotted name whose parent package is missing
            return False
    return Path(requirement).exists()


def check_installed(template: Template) -> str:
    """Return "" if the engine is installed on this host, else why not and what to do."""
    launch = template.launch
    wanted = ([launch.install_dir] if launch.install_dir else []) + [
        expand(r, template) for r in launch.requires
    ]
    missing = [r for r in wanted if not _present(r)]
    if not missing:
        return ""
    what = missing[0]
    if what.startswith("python:"):
        found = (
            f"the Python module {what.removeprefix('python:')!r} is not installed for the gateway"
        )
        fix = "Install it into the gateway's Python environment."
    else:
        found = f"{what} not found"
        fix = "Install it there, or change launch.install_dir in the template."
    return f"{template.display.name.en} is not installed on this host: {found}. {fix}"


def _field_path(loc: Iterable[int | str]) -> str:
    return ".".join(str(p) for p in loc)


def parse_template(path: Path, data: bytes) -> LoadedTemplate | list[TemplateProblem]:
    """Parse one file's bytes; pure apart from the installed check."""
    name = str(path)
    try:
        raw: Any = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        return [TemplateProblem(name, where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]
    if not isinstance(raw, dict):
        return [TemplateProblem(name, "", "a template must be a YAML mapping (key: value)")]
    try:
        template = Template.model_validate(raw)
    except ValidationError as exc:
        return [TemplateProblem(name, _field_path(e["loc"]), e["msg"]) for e in exc.errors()]
    problem = check_installed(template)
    return LoadedTemplate(
        template=template,
        source=name,
        digest=hashlib.sha256(data).hexdigest(),
        installed=not problem,
        install_problem=problem,
    )


def load_dir(directory: Path) -> Catalog:
    """Load every ``*.yaml``/``*.yml`` file in ``directory`` (not recursive), sorted by name."""
    if not directory.is_dir():
        return Catalog(
            problems=(TemplateProblem(str(directory), "", "templates folder not found"),)
        )
    templates: dict[str, LoadedTemplate] = {}
    problems: list[TemplateProblem] = []
    for path in sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and p.is_file()):
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(TemplateProblem(str(path), "", f"cannot read: {exc.strerror}"))
            continue
        result = parse_template(path, data)
        if isinstance(result, list):
            problems.extend(result)
        elif result.id in templates:
            first = templates[result.id].source
            problems.append(
                TemplateProblem(str(path), "id", f"{result.id!r} is already used by {first}")
            )
        else:
            templates[result.id] = result
    return Catalog(templates=templates, problems=tuple(problems))
