"""The layout shows the architecture: every package and top-level module of the gateway is in
one layer of the import contract (``.importlinter``), so none can grow outside the picture of
``docs/architecture.md``, and every package the contract names exists."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import aigc_gateway

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(aigc_gateway.__file__).resolve().parent
ALWAYS_OUTSIDE = {"__init__", "__main__"}


def _layers() -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    raw = config["importlinter:contract:layers"]["layers"]
    return [name for line in raw.splitlines() for name in re.split(r"[|:]", line) if name.strip()]


def _in_a_layer(module: str, layers: list[str]) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in layers)


def test_every_package_and_module_is_in_a_layer() -> None:
    layers = [name.strip() for name in _layers()]
    outside = []
    for path in sorted(PACKAGE.iterdir()):
        name = path.stem
        if name in ALWAYS_OUTSIDE or name.startswith((".", "_")):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            module = f"aigc_gateway.{name}"
            # A package split across layers (core and services) lists its parts instead.
            parts = [p.stem for p in path.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
            split = [f"{module}.{part}" for part in parts if f"{module}.{part}" in layers]
            if split:
                for part in path.iterdir():
                    if part.suffix == ".py" and part.stem != "__init__":
                        outside.append(f"{module}.{part.stem}")
                    elif (part / "__init__.py").exists() and not _in_a_layer(
                        f"{module}.{part.name}", layers
                    ):
                        outside.append(f"{module}.{part.name}")
                continue
            if not _in_a_layer(module, layers):
                outside.append(module)
        elif path.suffix == ".py" and not _in_a_layer(f"aigc_gateway.{name}", layers):
            outside.append(f"aigc_gateway.{name}")
    assert not outside, f"not in any layer of .importlinter: {outside}"


def test_every_layer_names_a_module_that_exists() -> None:
    missing = []
    for layer in (name.strip() for name in _layers()):
        relative = Path(*layer.split(".")[1:])
        if not ((PACKAGE / relative).is_dir() or (PACKAGE / relative).with_suffix(".py").exists()):
            missing.append(layer)
    assert not missing, f".importlinter names layers that do not exist: {missing}"
