"""The sandbox's pure parts: the bwrap command line, GPU device nodes, cgroup plans (v1 and a
v2 tree faked in a folder), the uid map under concurrent starts, and the sandbox decision.
On today's main none of these modules exist."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from aigc_gateway.runtime.local_sandbox import SandboxMode, choose, oom_message
from aigc_gateway.runtime.sandbox import cgroups
from aigc_gateway.runtime.sandbox.detect import NOT_ISOLATED, SandboxSupport
from aigc_gateway.runtime.sandbox.gpu import device_minors
from aigc_gateway.runtime.sandbox.policy import (
    DATA_DIR,
    SandboxPolicy,
    gpu_device_nodes,
    rewrite_path,
    sandbox_argv,
)
from aigc_gateway.runtime.sandbox.uids import UidMap, UidRange, parse_range


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_the_command_line_isolates_everything() -> None:
    policy = SandboxPolicy(
        uid=200001, gid=200001, volume="/srv/gw/volumes/u1/comfyui", socket_dir="/run/aigc/x/y",
        read_only=("/opt/venvs/comfy", "/srv/gw", "/srv/gw/app"),
        hidden=("/srv/gw",), devices=("/dev/nvidia1", "/dev/nvidiactl"), tmp_bytes=1 << 20,
    )  # fmt: skip
    argv = sandbox_argv(policy, ["/opt/venvs/comfy/bin/python", "main.py"])
    head = argv[: argv.index("--")]
    for flag in ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                 "--die-with-parent", "--new-session"):  # fmt: skip
        assert flag in head
    assert "--unshare-all" not in head and "--unshare-user" not in head
    assert ("/srv/gw/volumes/u1/comfyui", DATA_DIR) in pairs(head, "--bind")
    assert ("/run/aigc/x/y", "/run/aigc") in pairs(head, "--bind")
    # Only the engine's own install under /opt: another engine's (its code, its shared
    # models) is not in the sandbox.
    assert pairs(head, "--ro-bind") == [
        ("/opt/venvs/comfy", "/opt/venvs/comfy"),
        ("/srv/gw", "/srv/gw"),
    ]
    assert {p for p, _ in pairs(head, "--ro-bind-try")} == {"/usr", "/etc"}
    covered = [head[i + 1] for i, a in enumerate(head) if a == "--tmpfs"]
    assert covered == ["/tmp", "/dev/shm", "/srv/gw"]  # the data dir covered inside /srv/gw
    assert head.index("/tmp") < head.index("--ro-bind")  # host paths under /tmp stay visible
    assert head[head.index("/tmp") - 2 : head.index("/tmp")] == [str(1 << 20), "--tmpfs"]
    assert pairs(head, "--dev-bind") == [
        ("/dev/nvidia1", "/dev/nvidia1"),
        ("/dev/nvidiactl", "/dev/nvidiactl"),
    ]
    drop = argv[argv.index("--") + 1 :]
    assert drop[:8] == ["setpriv", "--reuid=200001", "--regid=200001", "--clear-groups",
                        "--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]  # fmt: skip
    assert argv[-2:] == ["/opt/venvs/comfy/bin/python", "main.py"]
    assert 'TCP:127.0.0.1:"$port"' in argv[argv.index("-c") + 1]


def test_an_engine_on_its_own_socket_gets_no_forwarder() -> None:
    policy = SandboxPolicy(uid=1000, gid=1000, volume="/v", socket_dir="/s", port=None)
    argv = sandbox_argv(policy, ["engine"])
    assert "socat" not in " ".join(argv)


def test_only_granted_gpu_nodes_that_exist() -> None:
    present = ["nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "null"]
    assert gpu_device_nodes([1], present) == ("/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm")
    assert gpu_device_nodes([], present) == ()
    assert gpu_device_nodes([7], present) == ("/dev/nvidiactl", "/dev/nvidia-uvm")
    assert device_minors(["2", "GPU-abc"], lookup=lambda d: 5 if d == "GPU-abc" else None) == [2, 5]


def test_paths_are_rewritten_to_the_sandbox_view() -> None:
    assert rewrite_path("/srv/v/u1", "/srv/v/u1") == DATA_DIR
    assert rewrite_path("--root=/srv/v/u1/models", "/srv/v/u1") == "--root=/data/models"
    assert rewrite_path("/srv/v/u10", "/srv/v/u1") == "/srv/v/u10"


def test_v1_plan() -> None:
    layout = cgroups.CgroupLayout(
        cgroups.CgroupVersion.V1, "/sys/fs/cgroup",
        {"memory": "/cg/memory", "cpu": "/cg/cpu,cpuacct", "cpuacct": "/cg/cpu,cpuacct",
         "pids": "/cg/pids", "freezer": "/cg/freezer"},
    )  # fmt: skip
    cg, writes = cgroups.plan(layout, "i1", cgroups.Limits(16 << 30, 1.5, 100))
    assert cg.dirs == (
        "/cg/memory/aigc/i1",
        "/cg/cpu,cpuacct/aigc/i1",
        "/cg/pids/aigc/i1",
        "/cg/freezer/aigc/i1",
    )
    values = {w.path: w.value for w in writes}
    assert values["/cg/memory/aigc/i1/memory.limit_in_bytes"] == str(16 << 30)
    assert values["/cg/cpu,cpuacct/aigc/i1/cpu.cfs_quota_us"] == "150000"
    assert values["/cg/pids/aigc/i1/pids.max"] == "100"
    assert cgroups.join_argv(cg)[-1] == "--"


def test_v2_over_a_fake_tree(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    layout = cgroups.detect(tmp_path)
    assert layout is not None and layout.version is cgroups.CgroupVersion.V2
    cg, writes = cgroups.plan(layout, "i1", cgroups.Limits(1 << 30, 0.5, 64))
    cgroups.create(cg, writes)
    folder = tmp_path / "aigc" / "i1"
    assert (folder / "memory.max").read_text() == str(1 << 30)
    assert (folder / "memory.swap.max").read_text() == "0"
    assert (folder / "cpu.max").read_text() == "50000 100000"
    assert (folder / "pids.max").read_text() == "64"
    assert (tmp_path / "aigc" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (folder / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 1\n")
    assert cgroups.oom_kills(cg) == 1
    assert cgroups.cpu_usage_s(cg) == 2.5
    assert oom_message(cg, 16 << 30) == "out of memory (limit 16 GiB)"
    assert cgroups.leftovers(layout) == ["i1"]
    (folder / "cgroup.procs").write_text("")
    cgroups.kill_all(cg)  # a real v2 kernel empties it; here cgroup.kill is just written
    assert (folder / "cgroup.kill").read_text() == "1"


def test_hybrid_hosts_count_as_v1(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "cgroup.procs").write_text("")
    layout = cgroups.detect(tmp_path)
    assert layout is not None and layout.version is cgroups.CgroupVersion.V1
    assert layout.missing() == ["cpu", "cpuacct", "pids", "freezer"]


def _take(args: tuple[str, str]) -> int:
    path, owner = args
    return UidMap(Path(path), UidRange(300000, 300100)).uid_for(owner)


def test_uids_are_unique_under_concurrent_starts_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "uids.json"
    owners = [f"user-{n % 12}" for n in range(48)]
    with multiprocessing.get_context("fork").Pool(6) as pool:
        uids = pool.map(_take, [(str(path), o) for o in owners])
    given = dict(zip(owners, uids, strict=True))
    assert len(set(given.values())) == 12
    assert all(given[o] == u for o, u in zip(owners, uids, strict=True))
    assert json.loads(path.read_text())["uids"] == given
    assert UidMap(path, UidRange(300000, 300100)).uid_for("user-3") == given["user-3"]
    with pytest.raises(ValueError, match="uid range"):
        parse_range("10-5")


def test_the_sandbox_decision() -> None:
    good = SandboxSupport(
        bwrap="/usr/bin/bwrap", bwrap_works=True, setpriv="/usr/bin/setpriv", socat="/usr/bin/socat",
        root=True, capabilities=frozenset({"CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL"}),
        cgroup=cgroups.CgroupLayout(cgroups.CgroupVersion.V2, "/x", {c: "/x" for c in ("memory", "cpu", "pids")}),
        cgroup_writable=True,
    )  # fmt: skip
    bare = SandboxSupport()
    assert choose(SandboxMode.AUTO, good, dev=False).sandboxed
    dev = choose(SandboxMode.AUTO, bare, dev=True)
    assert not dev.sandboxed and dev.refusal is None and NOT_ISOLATED in (dev.warning or "")
    prod = choose(SandboxMode.AUTO, bare, dev=False)
    assert prod.refusal is not None and "bubblewrap is not installed" in prod.refusal
    assert "sandbox: off" in prod.refusal
    assert choose(SandboxMode.ON, bare, dev=True).refusal is not None
    off = choose(SandboxMode.OFF, good, dev=False)
    assert not off.sandboxed and off.refusal is None and NOT_ISOLATED in (off.warning or "")
