"""GPU check on a real NVIDIA card: whole GPU, two MPS memory shares, release, through the gateway.

Run by ``bench/gpu/check.sh`` on the lent GPU machine. It starts the gateway there (NVML
discovery, the real ``nvidia-cuda-mps-control``), and through its API launches real PyTorch engine
processes (``torch_engine.py``):

1. baseline: the same engine started directly (``CUDA_VISIBLE_DEVICES`` set by hand) and killed;
2. one whole-GPU instance: it sees exactly its card by UUID, allocates 8 GiB, is paused, and NVML
   must show the memory freed;
3. two 16 GiB memory-share instances under MPS: the gateway starts one MPS control daemon for the
   card; share A allocates 8 GiB (within its limit); share B asking for 20 GiB must be refused by
   the driver, 8 GiB must succeed; both are paused, NVML must show the memory freed and the MPS
   daemon must be gone.

It prints what it sees and ends with one JSON line of figures. ``--rehearse`` runs the same flow
on a host without a GPU (declared card, a stand-in MPS program, the engine's arithmetic
rehearsal) to try the script before device time is spent; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "bench" / "gpu" / "torch_engine.py"
SHARE_GIB = 16
USAGE_CACHE_S = 2.5


def log(*parts: object) -> None:
    print(*parts, flush=True)


def template(tid: str, gpu: str, rehearse: bool) -> str:
    extra = ', "--rehearse"' if rehearse else ""
    return f"""
id: {tid}
family: torch
version: "1"
display: {{name: {{en: "PyTorch {tid}"}}}}
launch:
  command: ["{{python}}", "{ENGINE}"{extra}]
  stop_grace_s: 10
readiness: {{http: /, timeout_s: 300}}
resources: {{gpu: {gpu}}}
"""


class Nvml:
    """Used memory of the card (MiB), or nothing in a rehearsal."""

    def __init__(self, rehearse: bool) -> None:
        self.handle: Any = None
        self.name = "rehearsal (no GPU)"
        if rehearse:
            return
        import pynvml

        pynvml.nvmlInit()
        self.pynvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.name = str(pynvml.nvmlDeviceGetName(self.handle))
        self.uuid = str(pynvml.nvmlDeviceGetUUID(self.handle))

    def used_mib(self) -> int:
        if self.handle is None:
            return 0
        return int(self.pynvml.nvmlDeviceGetMemoryInfo(self.handle).used // 2**20)

    def wait_freed(self, baseline: int, started: float, limit_s: float = 60) -> float | None:
        """Seconds from ``started`` until used memory is back within 256 MiB of ``baseline``."""
        while time.perf_counter() - started < limit_s:
            if self.used_mib() <= baseline + 256:
                return time.perf_counter() - started
            time.sleep(0.02)
        return None


def mps_daemons() -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"nvidia-cuda-mps-control" in cmd:
                n += 1
    return n


def wait_http(url: str, limit_s: float = 300) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer in {limit_s} s")


class Gateway:
    def __init__(self, base: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def create(self, tid: str, name: str) -> dict[str, Any]:
        r = self.http.post("/api/instances", json={"template": tid, "name": name})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def get(self, iid: str) -> dict[str, Any]:
        return dict(self.http.get(f"/api/instances/{iid}").json())

    def act(self, iid: str, action: str) -> None:
        r = self.http.post(f"/api/instances/{iid}/{action}")
        assert r.status_code == 202, r.text

    def wait(self, iid: str, *states: str, limit_s: float = 120) -> tuple[dict[str, Any], float]:
        """Poll until the instance is in one of ``states`` (a benchmark script, not a test)."""
        started = time.perf_counter()
        while time.perf_counter() - started < limit_s:
            inst = self.get(iid)
            if inst["state"] in states:
                return inst, time.perf_counter() - started
            if inst["state"] == "failed":
                logs = self.http.get(f"/api/instances/{iid}/logs").text[-2000:]
                raise SystemExit(f"instance {iid} failed: {inst['reason']}\n{logs}")
            time.sleep(0.02)
        raise SystemExit(f"instance {iid} not {states} after {limit_s} s")

    def engine(self, inst: dict[str, Any], path: str) -> dict[str, Any]:
        return dict(httpx.get(f"{inst['engine_url']}{path}", timeout=120).json())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rehearse", action="store_true")
    args = parser.parse_args()
    rehearse: bool = args.rehearse
    work = Path(tempfile.mkdtemp(prefix="aigc-gpu-check-"))
    data, templates = work / "data", work / "templates"
    templates.mkdir(parents=True)
    (templates / "torch-whole.yaml").write_text(template("torch-whole", "{count: 1}", rehearse))
    (templates / "torch-share.yaml").write_text(
        template("torch-share", f"{{memory_gib: {SHARE_GIB}}}", rehearse)
    )
    nvml = Nvml(rehearse)
    log(f"card: {nvml.name}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src"), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.update(AIGC_RECONCILE_INTERVAL_S="0.5", AIGC_MAX_INSTANCES_PER_USER="10")
    if rehearse:
        fake = work / "mps-bin"
        sys.path.insert(0, str(REPO))
        from tests.support.fake_mps import install_fake_mps

        program, _ = install_fake_mps(fake)
        env["AIGC_MPS_CONTROL"] = str(program)
        env["AIGC_GPUS"] = json.dumps(
            [{"id": "GPU-rehearsal", "type": "rehearsal", "memory_gib": 80}]
        )
        card_uuid = "GPU-rehearsal"
    else:
        env["AIGC_MPS_CONTROL"] = os.environ.get("MPS_CONTROL", "nvidia-cuda-mps-control")
        card_uuid = nvml.uuid
    cli = [sys.executable, "-m", "aigc_gateway"]
    common = ["--dev", "--data-dir", str(data)]
    subprocess.run(
        [*cli, "user", "add", "gpucheck", "--admin", "--password-stdin", *common],
        input="gpu-check-password\n",
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    token = subprocess.run(
        [*cli, "token", "create", "--user", "gpucheck", *common],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = 18080
    gateway_log = open(work / "gateway.log", "w")  # noqa: SIM115 - lives as long as the run
    server = subprocess.Popen(
        [*cli, "serve", *common, "--port", str(port), "--templates-dir", str(templates)],
        env=env,
        stdout=gateway_log,
        stderr=subprocess.STDOUT,
    )
    figures: dict[str, Any] = {"card": nvml.name, "rehearsal": rehearse}
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        gw = Gateway(f"http://127.0.0.1:{port}", token)
        inventory = gw.http.get("/api/gpus").json()
        log("inventory:", inventory["source"], "| MPS enforced:", inventory["mps"])
        figures["mps_available"] = inventory["mps"]

        # 1. Baseline: the engine started by hand.
        baseline_mib = nvml.used_mib()
        bare_env = {**env, "CUDA_VISIBLE_DEVICES": card_uuid, "PORT": "18099"}
        started = time.perf_counter()
        bare = subprocess.Popen(
            [sys.executable, str(ENGINE), *(["--rehearse"] if rehearse else [])],
            env=bare_env,
            cwd=work,
        )
        figures["baseline_start_s"] = round(wait_http("http://127.0.0.1:18099/", 300) + 0.0, 3)
        released = time.perf_counter()
        bare.terminate()
        bare.wait()
        freed = nvml.wait_freed(baseline_mib, released)
        figures["baseline_release_s"] = None if freed is None else round(freed, 3)
        log(f"baseline: start {figures['baseline_start_s']} s, release {freed}")
        _ = started

        # 2. A whole GPU.
        started = time.perf_counter()
        whole = gw.create("torch-whole", "whole")
        whole, _ = gw.wait(whole["id"], "running")
        figures["whole_start_s"] = round(time.perf_counter() - started, 3)
        info = gw.engine(whole, "/info")
        log("whole:", whole["gpu"]["placement"], "|", info)
        figures["whole_sees_its_card"] = info["visible"] == card_uuid and info["devices"] == 1
        figures["whole_alloc_8g"] = gw.engine(whole, "/alloc?gib=8")["ok"]
        time.sleep(USAGE_CACHE_S)  # the gateway reads NVML at most every 2 s
        figures["whole_memory_used_mib"] = gw.get(whole["id"])["gpu"]["memory_used_mib"]
        before = nvml.used_mib()
        released = time.perf_counter()
        gw.act(whole["id"], "pause")
        gw.wait(whole["id"], "paused")
        figures["whole_release_s"] = round(time.perf_counter() - released, 3)
        freed = nvml.wait_freed(baseline_mib, released)
        figures["whole_nvml_freed_s"] = None if freed is None else round(freed, 3)
        log(f"whole: used {before} MiB before pause; freed after {freed} s")

        # 3. Two memory shares under MPS.
        started = time.perf_counter()
        a = gw.create("torch-share", "share-a")
        b = gw.create("torch-share", "share-b")
        a, _ = gw.wait(a["id"], "running")
        b, _ = gw.wait(b["id"], "running")
        figures["shares_start_s"] = round(time.perf_counter() - started, 3)
        figures["mps_daemons_running"] = mps_daemons() if not rehearse else 1
        info_a, info_b = gw.engine(a, "/info"), gw.engine(b, "/info")
        log("share A:", a["gpu"]["placement"], "|", info_a)
        log("share B:", b["gpu"]["placement"], "|", info_b)
        pipe = Path(info_a["mps_pipe"] or ".")
        log("MPS pipe folder:", sorted(p.name for p in pipe.iterdir()) if pipe.is_dir() else None)
        if not rehearse:
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False)
            log(smi.stdout[-3000:])
        figures["shares_on_one_card"] = a["gpu"]["gpu_ids"] == b["gpu"]["gpu_ids"]
        figures["share_limit"] = info_a["mps_limit"]
        figures["share_a_alloc_8g"] = gw.engine(a, "/alloc?gib=8")["ok"]
        past = gw.engine(b, f"/alloc?gib={SHARE_GIB + 4}")
        figures["share_b_past_limit_refused"] = past["ok"] is False
        log("share B asking past its limit:", past)
        figures["share_b_alloc_8g"] = gw.engine(b, "/alloc?gib=8")["ok"]
        time.sleep(USAGE_CACHE_S)
        figures["share_memory_used_mib"] = [
            gw.get(i["id"])["gpu"]["memory_used_mib"] for i in (a, b)
        ]
        released = time.perf_counter()
        gw.act(a["id"], "pause")
        gw.act(b["id"], "pause")
        gw.wait(a["id"], "paused")
        gw.wait(b["id"], "paused")
        figures["shares_release_s"] = round(time.perf_counter() - released, 3)
        freed = nvml.wait_freed(baseline_mib, released)
        figures["shares_nvml_freed_s"] = None if freed is None else round(freed, 3)
        figures["mps_daemons_after"] = mps_daemons() if not rehearse else 0
        view = gw.http.get("/api/gpus").json()
        figures["gpu_free_after"] = all(g["mode"] == "free" for g in view["gpus"])
        figures["start_overhead_ratio"] = round(
            figures["whole_start_s"] / figures["baseline_start_s"], 2
        )
    finally:
        server.terminate()
        server.wait(30)
        gateway_log.close()
        if os.environ.get("OUT"):
            shutil.copy(work / "gateway.log", Path(os.environ["OUT"]) / "gateway.log")
    ok = all(
        figures.get(k)
        for k in (
            "whole_sees_its_card",
            "whole_alloc_8g",
            "shares_on_one_card",
            "share_a_alloc_8g",
            "share_b_past_limit_refused",
            "share_b_alloc_8g",
            "gpu_free_after",
        )
    )
    figures["ok"] = ok
    log(json.dumps(figures))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
