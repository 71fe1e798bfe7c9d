"""GPU enforcement in the sandbox, on a real card (run by bench/gpu/check.sh after check.py).

Proves, with engines started by the sandboxed local runtime (needs root, bubblewrap, setpriv,
socat, cgroups; reports "skipped" with what is missing otherwise):

1. an engine granted card A, with ``CUDA_VISIBLE_DEVICES`` unset, sees only card A (on a
   one-card host: an engine granted no GPU sees none at all);
2. an MPS client of a share that unsets the pipe directory cannot allocate past its share (the
   card is in EXCLUSIVE_PROCESS while its daemon runs, so it cannot create a context at all).

Last line: one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from aigc_gateway.runtime.base import GpuGrant, LaunchSpec, ReadinessCheck, ReadinessKind  # noqa: E402
from aigc_gateway.runtime.local import LocalRuntime  # noqa: E402
from aigc_gateway.runtime.mps import MpsControl, mps_root_for  # noqa: E402
from aigc_gateway.runtime.sandbox import detect  # noqa: E402
from aigc_gateway.runtime.sandbox.launch import Sandbox, SandboxConfig  # noqa: E402

PROBE = r"""
import json, os, sys
for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", *(["CUDA_MPS_PIPE_DIRECTORY"] if "--bypass" in sys.argv else [])):
    os.environ.pop(k, None)
out = {"dev_nodes": sorted(n for n in os.listdir("/dev") if n.startswith("nvidia"))}
try:
    import torch
    out["count"] = torch.cuda.device_count()
    if "--alloc" in sys.argv:
        mib = int(sys.argv[sys.argv.index("--alloc") + 1])
        try:
            x = torch.empty(mib << 20, dtype=torch.uint8, device="cuda:0"); out["allocated_mib"] = mib
        except Exception as e:
            out["alloc_error"] = f"{type(e).__name__}: {e}"[:300]
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"[:300]
open("/data/gpu.json", "w").write(json.dumps(out))
"""


def uuids() -> list[str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        found = [
            str(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(pynvml.nvmlDeviceGetCount())
        ]
        pynvml.nvmlShutdown()
        return found
    except Exception:
        return []


async def run(
    rt: LocalRuntime, tmp: Path, name: str, gpu: GpuGrant | None, *args: str
) -> dict[str, object]:
    script = tmp / "probe.py"
    script.write_text(PROBE)
    spec = LaunchSpec(
        instance_id=name,
        command=(sys.executable, str(script), *args),
        data_dir=str(tmp / "vol" / name),
        readiness=ReadinessCheck(kind=ReadinessKind.TCP, timeout_s=120),
        labels={"owner": "gpu-check"},
        gpu=gpu,
    )
    await rt.start(spec)
    done = await rt.wait_ready(name, timeout=180)
    await rt.stop(name, grace=5)
    await rt.forget(name)
    try:
        result: dict[str, object] = json.loads((tmp / "vol" / name / "gpu.json").read_text())
    except OSError:
        result = {"error": done.message, "log": done.log_tail[-500:]}
    print(name, result, flush=True)
    return result


async def main() -> None:
    support = detect.probe()
    if not support.supported:
        print(json.dumps({"sandbox_gpu": "skipped", "missing": support.missing()}))
        return
    cards = uuids()
    tmp = Path(tempfile.mkdtemp(prefix="aigc-gpu-sandbox-"))
    tmp.chmod(0o755)  # the engines (other uids) read the probe script in it
    state = tmp / "state"
    mps = MpsControl(
        mps_root_for(state), command=os.environ.get("MPS_CONTROL", "nvidia-cuda-mps-control")
    )
    sandbox = Sandbox(SandboxConfig(hidden=(str(state),)), support, state_dir=state)
    rt = LocalRuntime(state_dir=state, sandbox=sandbox, mps=mps)
    figures: dict[str, object] = {"cards": len(cards)}
    try:
        none = await run(rt, tmp, "no-gpu", None)
        figures["no_grant_sees"] = none.get("count")
        if cards:
            one = await run(rt, tmp, "card-a", GpuGrant((cards[0],)))
            figures["card_a_sees"] = one.get("count")
            figures["card_a_nodes"] = one.get("dev_nodes")
            share = await run(
                rt, tmp, "share", GpuGrant((cards[0],), memory_mib=2048), "--alloc", "4096"
            )
            figures["share_over_limit_refused"] = "alloc_error" in share
            bypass = await run(
                rt,
                tmp,
                "bypass",
                GpuGrant((cards[0],), memory_mib=2048),
                "--bypass",
                "--alloc",
                "4096",
            )
            figures["bypass_refused"] = (
                "alloc_error" in bypass or "error" in bypass or bypass.get("count") == 0
            )
        ok = figures.get("no_grant_sees") in (0, None) and (
            not cards
            or (
                figures["card_a_sees"] == 1
                and figures["share_over_limit_refused"]
                and figures["bypass_refused"]
            )
        )
        figures["ok"] = ok
    finally:
        await rt.close()
    print(json.dumps({"sandbox_gpu": figures}))


if __name__ == "__main__":
    asyncio.run(main())
