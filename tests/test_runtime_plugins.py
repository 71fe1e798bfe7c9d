"""Runtimes are chosen by name from the ``aigc_gateway.runtimes`` entry-point group: a package
installed beside the gateway (here: a distribution's metadata written into a folder on
``sys.path``, as pip would install it) adds one that the gateway then runs engines with,
without any edit to the gateway."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from aigc_gateway.gateway import make_runtime
from aigc_gateway.runtime import plugins
from aigc_gateway.runtime.local import LocalRuntime
from aigc_gateway.settings import Settings
from tests.conftest import RunningGateway
from tests.support.gateway import Api, make_settings

THIRD_PARTY = '''
"""A third party's runtime: the local one, recording each start it is asked for."""
from pathlib import Path

from aigc_gateway.runtime.local import LocalRuntime


class RecordingRuntime(LocalRuntime):
    name = "recording"

    def __init__(self, *, state_dir: Path, record: Path) -> None:
        super().__init__(state_dir=state_dir)
        self.record = record

    async def start(self, spec):
        with open(self.record, "a") as f:
            f.write(spec.instance_id + "\\n")
        return await super().start(spec)


def make_runtime(settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return RecordingRuntime(
        state_dir=settings.runtime_dir, record=settings.data_dir / "recording.log"
    )
'''


def install_third_party(site: Path) -> None:
    """What ``pip install recording-runtime`` leaves: the module and its dist-info."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "recording_runtime.py").write_text(THIRD_PARTY)
    info = site / "recording_runtime-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: recording-runtime\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [aigc_gateway.runtimes]
            recording = recording_runtime:make_runtime
            """
        )
    )


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_third_party(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()


@pytest.fixture
def gateway_settings(third_party: None, tmp_path: Path) -> Settings:
    return make_settings(tmp_path, runtime="recording")


def test_the_local_runtime_is_shipped(tmp_path: Path) -> None:
    assert {"local", "ray"} <= set(plugins.available())
    assert isinstance(make_runtime(Settings(dev=True, data_dir=tmp_path)), LocalRuntime)


def test_an_unknown_runtime_is_refused_naming_the_installed_ones(third_party: None) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(dev=True, runtime="kubernetes")
    message = str(refused.value)
    assert "unknown runtime 'kubernetes'" in message
    assert "local, ray, recording" in message  # the shipped ones and the installed one


def test_an_installed_runtime_is_found_by_name(third_party: None, tmp_path: Path) -> None:
    assert {"local", "recording"} <= set(plugins.available())
    runtime = make_runtime(Settings(dev=True, data_dir=tmp_path, runtime="recording"))
    assert runtime.name == "recording"


def test_a_factory_that_returns_no_runtime_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    install_third_party(site)
    (site / "not_a_runtime.py").write_text("def make_runtime(settings):\n    return 42\n")
    entry_points = site / "recording_runtime-1.0.dist-info" / "entry_points.txt"
    entry_points.write_text(
        entry_points.read_text().replace("recording_runtime:", "not_a_runtime:")
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    with pytest.raises(Exception, match="does not implement the Runtime interface"):
        make_runtime(Settings(dev=True, data_dir=tmp_path, runtime="recording"))


async def test_the_gateway_runs_engines_with_the_runtime_the_settings_name(
    gateway: RunningGateway, alice: Api
) -> None:
    inst = await alice.wait_state((await alice.create("tiny"))["id"], "running", "failed")
    assert inst["state"] == "running", inst["reason"]
    record = gateway.settings.data_dir / "recording.log"
    assert record.read_text().split() == [inst["id"]]
    assert (gateway.settings.data_dir / "runtime" / "recording" / inst["id"]).is_dir()
