"""bench/proxy: the gateway's streaming reverse proxy against configurable-http-proxy and nginx.

One run, one workload, five targets (the first four in front of the same backend processes):

1. ``direct``: the backend itself;
2. ``chp``: configurable-http-proxy (JupyterHub's proxy; pinned in ``package.json``), with a
   route ``/`` to the HTTP backend and ``/ws`` to the WebSocket backend added through its API;
3. ``nginx``: a plain nginx reverse proxy (HTTP/1.1 upstream with keepalive, the WebSocket
   upgrade map, default buffering, one worker);
4. ``gateway``: the real gateway (``python -m aigc_gateway serve``) as its own process. The
   backends are its engines: two templates (``bench-http``, ``bench-ws``) that the gateway
   launches like any engine. The load signs in as a user, opens both instances (one-time
   hand-over → ``aigc_instance`` cookie) and goes to ``127.0.0.1:<port>`` with
   ``Host: <slug>.localhost:<port>`` and that cookie: the gateway's whole instance path
   (route table, access check, activity, header rewriting, relay) — the connection-level
   relay (``proxy/front.py``), as served by default;
5. ``gateway-unix``: the same gateway process and path to a third engine, ``bench-http-unix``:
   the same nginx backend listening on a Unix socket (the template names ``{socket}``), the
   way a sandboxed engine is reached. ``unix_vs_tcp_small_rps`` = its small req/s over the TCP
   engine's through that gateway, same run (goal >= 0.9);
6. ``gateway-asgi`` (skip with ``--no-asgi``): a second gateway, with engines of its own and
   ``AIGC_PROXY_FAST_PATH=false``, relaying through the ASGI proxy alone: the baseline the
   connection-level path is measured against in the same run;
7. ``gateway-sandboxed`` (skip with ``--no-sandboxed``; absent where the host cannot sandbox): a
   third gateway whose engines run in their sandboxes (``AIGC_SANDBOX=on``), reached through
   the socket that socat bridges into each engine's network namespace.
   ``sandboxed_vs_tcp_small_rps`` = its small req/s over the TCP engine's, same run. (The other
   gateways run their engines outside the sandbox: chp and nginx share them over TCP.) The
   forwarders are pinned with the backends (they belong to the engine and its cgroup).

The backends (see ``backend.py``) are the gateway's engines, reused by the other targets once the
gateway reports them running: nginx serving ``/small`` (``ok\\n``) and ``/big`` (10 MiB), and a
Python WebSocket echo server.

Measurements, per target and round (``--rounds``, default 2; round 2 goes in reverse order):

- small responses: ``wrk -t1 -c64 --latency`` on ``/small`` for ``--duration`` seconds (after a
  1 s warm-up): requests/s and latency p50/p99 (wrk's per-request latency, closed loop);
- 10 MiB download: ``wrk -t1 -c4`` on ``/big`` for ``--duration`` seconds; MB/s = bytes read /
  duration (MB = 10^6 bytes), from wrk's own byte count;
- WebSocket: one client (``websockets`` sync client, no compression, TCP_NODELAY) sends
  ``--ws-messages`` 32-byte text messages one after another, each waiting for its echo:
  round-trip p50/p99 in µs and round trips per second ("messages/s"); "added" = the target's
  p50 - direct's p50;
- the proxy's CPU time per request / per 10 MiB / per round trip: every thread of every process
  in the proxy's process group (``/proc/*/task/*/schedstat``), over the same load. It is less
  sensitive than throughput to other work on the machine.

CPU pinning (``taskset``; off with ``--no-pin``): the proxy under test gets a core of its own
(the gateway process, node, the nginx worker); the load generator (wrk, this script's WebSocket
client) gets another, shared with the backends on a 2-core machine (they pin themselves, so the
engines do not inherit the gateway's core). Every proxy runs one process / one event loop. Any non-2xx answer or socket error fails the run: numbers from error
pages would be meaningless. Everything it starts is stopped and its temp folder removed, also
on failure or Ctrl-C. All traffic stays on 127.0.0.1.

The tables show the mean of the rounds with the spread (min-max); the last line is one JSON
object with the ratios (gateway / chp, gateway / nginx) and the raw figures. ``--gateway-env
AIGC_...=...`` passes settings to the gateway process to try tunings.

    make bench-proxy        # or: npm ci --prefix bench/proxy && .venv/bin/python bench/proxy/run.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from backend import (  # noqa: E402
    BIG_NAME,
    BIG_SIZE,
    SMALL_BODY,
    main_context,
    nginx_argv,
    temp_paths,
    write_big_file,
)
from tests.support.gateway import Api, add_user, stop_engines_async  # noqa: E402
from tests.support.hosts import browser_for  # noqa: E402

from aigc_gateway.runtime.sandbox.detect import probe  # noqa: E402
from aigc_gateway.settings import Settings  # noqa: E402


def sandbox_missing() -> str | None:
    """Why this host cannot run engines sandboxed, or None when it can."""
    missing = probe().missing()
    return "; ".join(missing) if missing else None


CHP = HERE / "node_modules" / ".bin" / "configurable-http-proxy"
USER = "bench"
WS_MESSAGE_SIZE = 32
WRK_REPORT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "bytes": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"max_us": %d}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def bound_socket() -> socket.socket:
    """A socket bound to a free port of 127.0.0.1, handed to the gateway (``serve --fd``)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def unused_port() -> int:
    """A port free at this moment, for programs that bind it themselves (see
    :func:`start_on_a_free_port`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_on_a_free_port(procs: Processes, name: str, start: Callable[[int], Target]) -> Target:
    """``start(port)`` on a free port, again on another if the port was taken before the
    program bound it (it exits saying so)."""
    for attempt in range(1, 6):
        try:
            return start(unused_port())
        except SystemExit:
            tail = procs.log_tail(name).lower()
            if attempt == 5 or ("address already in use" not in tail and "eaddrinuse" not in tail):
                raise
    raise AssertionError("unreachable")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- tools and CPUs ------------------------------------------------------------------------------


def ensure_tools() -> None:
    if shutil.which("wrk") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print("wrk is missing: apt-get install -y wrk", flush=True)

            def apt(*argv: str) -> int:
                env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
                return subprocess.run(
                    ["apt-get", *argv], env=env, stdout=subprocess.DEVNULL
                ).returncode

            if apt("install", "-y", "wrk"):
                apt("update")
                apt("install", "-y", "wrk")
        if shutil.which("wrk") is None:
            raise SystemExit("bench/proxy needs wrk: apt-get install wrk (Debian/Ubuntu)")
    if not Path("/usr/sbin/nginx").exists():
        raise SystemExit("bench/proxy needs nginx at /usr/sbin/nginx: apt-get install nginx")
    if shutil.which("taskset") is None:
        raise SystemExit("bench/proxy needs taskset (util-linux)")
    if not CHP.exists():
        if shutil.which("npm") is None:
            raise SystemExit("bench/proxy needs Node.js and npm for configurable-http-proxy")
        print("installing configurable-http-proxy: npm ci --prefix bench/proxy", flush=True)
        subprocess.run(
            ["npm", "ci", "--prefix", str(HERE), "--no-audit", "--no-fund"],
            check=True,
            stdout=subprocess.DEVNULL,
        )


@dataclass(frozen=True)
class Cpus:
    proxy: str | None  # the proxy under test
    load: str | None  # wrk and this script's WebSocket client
    backend: str | None  # the engines

    def describe(self) -> str:
        if self.proxy is None:
            return "not pinned"
        return f"proxy on CPU {self.proxy}; load on {self.load}; backends on {self.backend}"


def pin_forwarders(cpus: Cpus) -> None:
    """Put the sandboxed engines' forwarders (socat, started inside each sandbox before the
    engine pins itself) on the backends' CPUs: they are part of the engine (its cgroup pays
    for them), and left on the gateway's CPU they would take the proxy's core. The connections'
    socat children inherit it."""
    if cpus.backend is None:
        return
    wanted = {int(c) for c in cpus.backend.split(",")}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "socat":
                os.sched_setaffinity(int(entry.name), wanted)


def plan_cpus(pin: bool) -> Cpus:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return Cpus(None, None, None)
    if len(cpus) == 2:
        return Cpus(str(cpus[1]), str(cpus[0]), str(cpus[0]))
    return Cpus(str(cpus[1]), str(cpus[0]), str(cpus[2]))


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


# --- processes -----------------------------------------------------------------------------------


class Processes:
    """Processes this bench started, each in its own process group; all stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> Any:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=pass_fds,
                start_new_session=True,
            )
        self.started.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def stop_all(self) -> None:
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.started):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            # Anything the process left in its group (nginx workers, node helpers).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.started.clear()


def group_cpu_s(pgid: int) -> float:
    """CPU time (s) of every thread of every process in group ``pgid`` (schedstat: ns)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            tasks = list((stat.parent / "task").iterdir())
        except (OSError, ValueError, IndexError):
            continue
        for task in tasks:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def kill_leftovers(root: Path) -> None:
    """Last resort: any process group still running a command under this run's temp folder
    (the engines, if the gateway's runtime could not stop them)."""
    groups = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(root).encode() in cmdline.read_bytes():
                groups.add(os.getpgid(int(cmdline.parent.name)))
    groups.discard(os.getpgrp())
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def wait_http(url: str, proc_check: Any, timeout: float = 60, **kwargs: Any) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=2) as client:
        while True:
            proc_check()
            try:
                if client.get(url, **kwargs).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer within {timeout:.0f} s")
            time.sleep(0.1)


# --- targets -------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    http_host: str | None = None  # Host header for HTTP (None: 127.0.0.1:port)
    ws_host: str | None = None
    http_cookie: str | None = None
    ws_cookie: str | None = None
    ws_path: str = "/ws"
    ws_port: int | None = None  # where the WebSocket client connects (None: port)
    pgid: int | None = None  # the proxy's process group, for its CPU time (None: direct)
    runs: list[dict[str, float]] = field(default_factory=list)

    def cpu_s(self) -> float:
        return group_cpu_s(self.pgid) if self.pgid is not None else 0.0

    def http_headers(self) -> dict[str, str]:
        headers = {}
        if self.http_host:
            headers["Host"] = self.http_host
        if self.http_cookie:
            headers["Cookie"] = f"aigc_instance={self.http_cookie}"
        return headers

    def ws_headers(self) -> dict[str, str]:
        return {"Cookie": f"aigc_instance={self.ws_cookie}"} if self.ws_cookie else {}

    def ws_uri(self) -> str:
        return f"ws://{self.ws_host or f'127.0.0.1:{self.port}'}{self.ws_path}"


def template_yaml(
    template_id: str, argv: list[str], readiness: dict[str, Any], resources: str
) -> str:
    return f"""
id: {template_id}
family: {template_id}
version: "1"
display: {{name: {{en: "bench/proxy {template_id}"}}}}
launch:
  command: {json.dumps(argv)}
  stop_grace_s: 3
readiness: {json.dumps({**readiness, "timeout_s": 30})}
resources: {resources}
idle: {{pause_after_minutes: null}}
"""


def write_templates(folder: Path, www: Path, cpus: Cpus, *, sandboxed: bool = False) -> Path:
    """The backends' templates. Outside a sandbox ``resources`` only inform placement; in one
    they are cgroup limits, so sandboxed backends get a whole core (the backends' own CPU is
    pinned anyway) and room for the 10 MiB file."""
    folder.mkdir(parents=True, exist_ok=True)
    resources = "{cpu: 1, memory_gib: 1}" if sandboxed else "{cpu: 0.1, memory_gib: 0.1}"
    pin = ["--cpus", cpus.backend] if cpus.backend else []
    script = str(HERE / "backend.py")
    http = [
        "{python}",
        script,
        "http",
        "--port",
        "{port}",
        "--dir",
        "{data_dir}",
        "--www",
        str(www),
    ]
    (folder / "bench-http.yaml").write_text(
        template_yaml("bench-http", [*http, *pin], {"http": "/small"}, resources)
    )
    ws = ["{python}", script, "ws", "--port", "{port}"]
    unix = [*http[:3], "--uds", "{socket}", *http[5:]]
    (folder / "bench-http-unix.yaml").write_text(
        template_yaml("bench-http-unix", [*unix, *pin], {"http": "/small"}, resources)
    )
    (folder / "bench-ws.yaml").write_text(
        template_yaml("bench-ws", [*ws, *pin], {"http": None, "tcp": True}, resources)
    )
    return folder


def start_gateway(
    procs: Processes, data: Path, templates: Path, cpus: Cpus, extra_env: dict[str, str]
) -> tuple[int, int]:
    listener = bound_socket()
    port = listener.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_")}
    # The backends are shared with chp and nginx, which reach them on loopback TCP: engines
    # outside the sandbox here (the Unix-socket target is an engine serving its own socket).
    env["AIGC_SANDBOX"] = "off"
    env.update(extra_env)
    argv = [
        sys.executable,
        "-m",
        "aigc_gateway",
        "serve",
        "--dev",
        "--fd",
        str(listener.fileno()),
        "--data-dir",
        str(data),
        "--templates-dir",
        str(templates),
        "--log-level",
        "warning",
    ]
    with listener:  # the gateway has its own copy
        proc = procs.start(
            "gateway", pinned(argv, cpus.proxy), env=env, pass_fds=(listener.fileno(),)
        )
    # At warning level uvicorn does not say "Application startup complete": ask /healthz.
    wait_http(
        f"http://127.0.0.1:{port}/healthz", lambda: procs.check_alive("gateway", proc), timeout=60
    )
    return port, proc.pid


async def open_instance(gw_url: str, browser: httpx.AsyncClient, inst: dict[str, Any]) -> str:
    """Open ``inst`` as a signed-in browser: instance-login → hand-over → instance cookie."""
    r = await browser.get(f"{gw_url}/auth/instance-login", params={"rd": inst["url"]})
    assert r.status_code == 303, (r.status_code, r.text[:300])
    handover = httpx.URL(r.headers["location"])
    assert handover.path == "/_aigc/handover", handover
    r = await browser.get(handover)
    assert r.status_code in (302, 303, 307), (r.status_code, r.text[:300])
    host = httpx.URL(inst["url"]).host
    cookie = next(
        c.value for c in browser.cookies.jar if c.name == "aigc_instance" and c.domain == host
    )
    assert cookie is not None
    return cookie


async def gateway_target(
    procs: Processes,
    settings: Settings,
    cpus: Cpus,
    extra_env: dict[str, str],
    *,
    unix: bool = False,
) -> tuple[Target, str, str, Target | None]:
    """Start the gateway, let it launch both backends (and, with ``unix``, the HTTP backend on
    a Unix socket too), sign in and open them."""
    data, templates = settings.data_dir, settings.templates_dir
    assert templates is not None
    token = await add_user(settings, USER)
    admin_token = await add_user(settings, f"{USER}-admin", admin=True)
    port, pgid = start_gateway(procs, data, templates, cpus, extra_env)
    gw_url = f"http://127.0.0.1:{port}"
    api = Api(gw_url, token)
    try:
        http_inst = await api.create("bench-http", name="http")
        ws_inst = await api.create("bench-ws", name="ws")
        unix_inst = await api.create("bench-http-unix", name="unix") if unix else None
        http_inst = await api.wait_state(http_inst["id"], "running", "failed")
        ws_inst = await api.wait_state(ws_inst["id"], "running", "failed")
        if unix_inst is not None:
            unix_inst = await api.wait_state(unix_inst["id"], "running", "failed")
        for inst in (http_inst, ws_inst, *([unix_inst] if unix_inst else [])):
            if inst["state"] != "running":
                r = await api.client.get(f"/api/instances/{inst['id']}/logs", params={"tail": 30})
                raise SystemExit(f"engine {inst['template']} failed: {inst['reason']}\n{r.text}")
    finally:
        await api.aclose()
    browser = browser_for(gw_url, follow_redirects=False, timeout=30, trust_env=False)
    try:
        r = await browser.post(
            f"{gw_url}/auth/login",
            data={"username": USER, "password": "pw-" + USER, "next": "/api/me"},
        )
        assert r.status_code == 303, (r.status_code, r.text[:300])
        http_cookie = await open_instance(gw_url, browser, http_inst)
        ws_cookie = await open_instance(gw_url, browser, ws_inst)
        unix_cookie = await open_instance(gw_url, browser, unix_inst) if unix_inst else None
    finally:
        await browser.aclose()
    target = Target(
        "gateway",
        port,
        http_host=httpx.URL(http_inst["url"]).netloc.decode(),
        ws_host=httpx.URL(ws_inst["url"]).netloc.decode(),
        http_cookie=http_cookie,
        ws_cookie=ws_cookie,
        pgid=pgid,
    )
    over_unix = None
    if unix_inst is not None:
        over_unix = Target(
            "gateway-unix",
            port,
            http_host=httpx.URL(unix_inst["url"]).netloc.decode(),
            ws_host=target.ws_host,  # WebSockets as for the TCP engine: HTTP is compared
            http_cookie=unix_cookie,
            ws_cookie=ws_cookie,
            pgid=pgid,
        )
    admin = Api(gw_url, admin_token)  # engine addresses are for administrators only
    try:
        engines = [(await admin.get(i["id"]))["engine_url"] for i in (http_inst, ws_inst)]
    finally:
        await admin.aclose()
    # A sandboxed gateway's engines have no TCP address (only their sockets): "".
    http_up, ws_up = ((e or "").removeprefix("http://") for e in engines)
    return target, http_up, ws_up, over_unix


def start_chp(procs: Processes, http_up: str, ws_up: str, cpus: Cpus) -> Target:
    return start_on_a_free_port(
        procs, "chp", lambda port: _start_chp(procs, port, http_up, ws_up, cpus)
    )


def _start_chp(procs: Processes, port: int, http_up: str, ws_up: str, cpus: Cpus) -> Target:
    api_port = unused_port()
    token = secrets.token_hex(16)
    argv = [
        "node",
        str(CHP),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-ip",
        "127.0.0.1",
        "--api-port",
        str(api_port),
        "--log-level",
        "warn",
    ]
    proc = procs.start(
        "chp", pinned(argv, cpus.proxy), env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token}
    )
    api = f"http://127.0.0.1:{api_port}/api/routes"
    auth = {"Authorization": f"token {token}"}
    wait_http(api, lambda: procs.check_alive("chp", proc), timeout=30, headers=auth)
    with httpx.Client(trust_env=False, timeout=10, headers=auth) as client:
        for path, upstream in (("/", http_up), ("/ws", ws_up)):
            r = client.post(f"{api}{path}", json={"target": f"http://{upstream}"})
            assert r.status_code == 201, (r.status_code, r.text)
        routes = client.get(api).json()
    assert set(routes) == {"/", "/ws"}, routes
    return Target("chp", port, pgid=proc.pid)


def nginx_proxy_conf(port: int, prefix: Path, http_up: str, ws_up: str) -> str:
    def location(path: str, upstream: str) -> str:
        return f"""
    location {path} {{
      proxy_pass http://{upstream};
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}"""

    return f"""{main_context(prefix)}
http {{
  access_log off;
{temp_paths(prefix)}
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  # Upgrade for WebSockets; otherwise an empty Connection header keeps upstreams alive.
  map $http_upgrade $connection_upgrade {{ default upgrade; "" ""; }}
  upstream engine {{ server {http_up}; keepalive 64; keepalive_requests 1000000; }}
  upstream ws_engine {{ server {ws_up}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port};{location("/", "engine")}{location("/ws", "ws_engine")}
  }}
}}
"""


def start_nginx_proxy(procs: Processes, root: Path, http_up: str, ws_up: str, cpus: Cpus) -> Target:
    return start_on_a_free_port(
        procs, "nginx", lambda port: _start_nginx_proxy(procs, port, root, http_up, ws_up, cpus)
    )


def _start_nginx_proxy(
    procs: Processes, port: int, root: Path, http_up: str, ws_up: str, cpus: Cpus
) -> Target:
    prefix = root / "nginx-proxy"
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_proxy_conf(port, prefix, http_up, ws_up))
    proc = procs.start("nginx", pinned(nginx_argv(conf, prefix), cpus.proxy))
    wait_http(
        f"http://127.0.0.1:{port}/small", lambda: procs.check_alive("nginx", proc), timeout=30
    )
    return Target("nginx", port, pgid=proc.pid)


# --- measurements --------------------------------------------------------------------------------


def verify(target: Target) -> None:
    """One request of each kind, checked, before any load: a proxy answering errors fast must
    not look good."""
    with httpx.Client(trust_env=False, timeout=30) as client:
        base = f"http://127.0.0.1:{target.port}"
        small = client.get(f"{base}/small", headers=target.http_headers())
        assert small.status_code == 200 and small.content == SMALL_BODY, (
            target.name,
            small.status_code,
            small.text[:300],
        )
        big = client.get(f"{base}/{BIG_NAME}", headers=target.http_headers())
        assert big.status_code == 200 and len(big.content) == BIG_SIZE, (
            target.name,
            big.status_code,
            len(big.content),
        )
    ws_rtt(target, messages=10, warmup=0)


def wrk(
    target: Target, path: str, *, connections: int, duration: float, script: Path, cpus: Cpus
) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "30s", "--latency"]
    argv += ["-s", str(script)]
    for name, value in target.http_headers().items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(f"http://127.0.0.1:{target.port}{path}")
    done = subprocess.run(pinned(argv, cpus.load), capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"wrk failed on {target.name}{path}:\n{done.stdout}\n{done.stderr}")
    result: dict[str, float] = json.loads(line[len("WRKJSON ") :])
    errors = {k: result[k] for k in ("connect", "read", "write", "status", "timeout") if result[k]}
    if errors or not result["requests"]:
        raise SystemExit(f"{target.name}{path}: errors under load {errors}:\n{done.stdout}")
    return result


def ws_rtt(target: Target, *, messages: int, warmup: int = 200) -> dict[str, float]:
    from websockets.sync.client import connect

    sock = socket.create_connection(("127.0.0.1", target.ws_port or target.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts: list[float] = []
    with connect(
        target.ws_uri(),
        sock=sock,
        additional_headers=target.ws_headers(),
        compression=None,
        proxy=None,
        ping_interval=None,
        max_size=None,
        open_timeout=30,
    ) as ws:
        pad = "x" * (WS_MESSAGE_SIZE - 8)
        for i in range(warmup):
            ws.send(f"{i:08d}{pad}")
            ws.recv(timeout=30)
        clock = time.perf_counter_ns
        cpu0, started = target.cpu_s(), clock()
        for i in range(messages):
            message = f"{i:08d}{pad}"
            t0 = clock()
            ws.send(message)
            reply = ws.recv(timeout=30)
            rtts.append((clock() - t0) / 1000)
            if reply != message:
                raise SystemExit(f"{target.name}: WebSocket echo mismatch")
        elapsed = (clock() - started) / 1e9
        cpu = target.cpu_s() - cpu0
    return {
        "ws_p50_us": pct(rtts, 0.5),
        "ws_p99_us": pct(rtts, 0.99),
        "ws_msgs_per_s": messages / elapsed,
        "ws_cpu_us": cpu * 1e6 / messages,
    }


def measure(target: Target, args: argparse.Namespace, script: Path, cpus: Cpus) -> None:
    def load(path: str, connections: int, duration: float) -> tuple[dict[str, float], float]:
        cpu0 = target.cpu_s()
        result = wrk(
            target, path, connections=connections, duration=duration, script=script, cpus=cpus
        )
        return result, target.cpu_s() - cpu0

    load("/small", args.connections, 1)  # warm-up
    small, small_cpu = load("/small", args.connections, args.duration)
    big, big_cpu = load(f"/{BIG_NAME}", args.large_connections, args.duration)
    run = {
        "small_rps": small["requests"] / (small["duration_us"] / 1e6),
        "small_p50_ms": small["p50_us"] / 1000,
        "small_p99_ms": small["p99_us"] / 1000,
        "small_cpu_us": small_cpu * 1e6 / small["requests"],
        "large_mbps": big["bytes"] / (big["duration_us"] / 1e6) / 1e6,
        "large_cpu_ms": big_cpu * 1e3 / (big["bytes"] / BIG_SIZE),
        **ws_rtt(target, messages=args.ws_messages),
    }
    target.runs.append(run)
    print(
        f"  {target.name:8} small {run['small_rps']:7.0f} req/s p99 {run['small_p99_ms']:6.2f} ms"
        f" | 10 MiB {run['large_mbps']:5.0f} MB/s | WS RTT p50 {run['ws_p50_us']:5.0f} µs",
        flush=True,
    )


# --- report --------------------------------------------------------------------------------------


def mean(target: Target, key: str) -> float:
    return statistics.mean(run[key] for run in target.runs)


def cell(target: Target, key: str, fmt: str) -> str:
    if target.pgid is None and "cpu" in key:
        return "-"
    values = [run[key] for run in target.runs]
    m = statistics.mean(values)
    if len(values) == 1:
        return format(m, fmt)
    return f"{m:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def table(targets: dict[str, Target], columns: list[tuple[str, str, str]]) -> None:
    rows = [["target", *[c[0] for c in columns]]]
    for t in targets.values():
        rows.append([t.name, *[cell(t, key, fmt) for _, key, fmt in columns]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print(
            "  ".join(
                v.ljust(widths[j]) if j == 0 else v.rjust(widths[j]) for j, v in enumerate(row)
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))


HTTP_COLUMNS = [
    ("small req/s", "small_rps", ".0f"),
    ("p50 ms", "small_p50_ms", ".2f"),
    ("p99 ms", "small_p99_ms", ".2f"),
    ("proxy CPU µs/req", "small_cpu_us", ".0f"),
    ("10 MiB MB/s", "large_mbps", ".0f"),
    ("proxy CPU ms/10 MiB", "large_cpu_ms", ".1f"),
]
WS_COLUMNS = [
    ("RTT p50 µs", "ws_p50_us", ".0f"),
    ("RTT p99 µs", "ws_p99_us", ".0f"),
    ("added p50 µs", "ws_added_us", ".0f"),
    ("round trips/s", "ws_msgs_per_s", ".0f"),
    ("proxy CPU µs/round trip", "ws_cpu_us", ".0f"),
]


def report(targets: dict[str, Target], args: argparse.Namespace, cpus: Cpus) -> dict[str, Any]:
    direct = targets["direct"]
    base = mean(direct, "ws_p50_us")
    for t in targets.values():
        for run in t.runs:
            run["ws_added_us"] = run["ws_p50_us"] - base
    print()
    print(
        f"bench/proxy: {len(direct.runs)} round(s) per target, mean (min-max); {cpus.describe()}; "
        f"load average (1 min) before {args.load_before:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    print(
        f"HTTP (wrk, 1 thread, {args.duration:g} s each): small = GET /small (3 bytes) over "
        f"{args.connections} connections; 10 MiB = GET /big over {args.large_connections} "
        "connections, MB = 10^6 bytes"
    )
    table(targets, HTTP_COLUMNS)
    print()
    print(
        f"WebSocket: one client, {args.ws_messages} sequential {WS_MESSAGE_SIZE}-byte text "
        "echoes; added = RTT p50 - direct's RTT p50"
    )
    table(targets, WS_COLUMNS)

    gw, chp, nginx = targets["gateway"], targets["chp"], targets["nginx"]
    figures: dict[str, Any] = {
        "small_rps_vs_chp": round(mean(gw, "small_rps") / mean(chp, "small_rps"), 3),
        "small_p99_vs_chp": round(mean(gw, "small_p99_ms") / mean(chp, "small_p99_ms"), 3),
        "large_mbps_vs_chp": round(mean(gw, "large_mbps") / mean(chp, "large_mbps"), 3),
        "ws_rtt_added_us_p50": round(mean(gw, "ws_added_us"), 1),
        "chp_ws_rtt_added_us_p50": round(mean(chp, "ws_added_us"), 1),
        "small_rps_vs_nginx": round(mean(gw, "small_rps") / mean(nginx, "small_rps"), 3),
        "large_mbps_vs_nginx": round(mean(gw, "large_mbps") / mean(nginx, "large_mbps"), 3),
        "nginx_ws_rtt_added_us_p50": round(mean(nginx, "ws_added_us"), 1),
    }
    over_unix = targets.get("gateway-unix")
    if over_unix is not None:  # the engine's endpoint a Unix socket vs loopback TCP, same run
        figures["unix_vs_tcp_small_rps"] = round(
            mean(over_unix, "small_rps") / mean(gw, "small_rps"), 3
        )
        figures["unix_vs_tcp_large_mbps"] = round(
            mean(over_unix, "large_mbps") / mean(gw, "large_mbps"), 3
        )
    boxed = targets.get("gateway-sandboxed")
    if boxed is not None:  # a sandboxed engine, through its socat bridge, vs loopback TCP
        figures["sandboxed_vs_tcp_small_rps"] = round(
            mean(boxed, "small_rps") / mean(gw, "small_rps"), 3
        )
        figures["sandboxed_vs_tcp_large_mbps"] = round(
            mean(boxed, "large_mbps") / mean(gw, "large_mbps"), 3
        )
    asgi = targets.get("gateway-asgi")
    if asgi is not None:  # the connection-level path against the ASGI one, same run
        figures["small_rps_vs_asgi"] = round(mean(gw, "small_rps") / mean(asgi, "small_rps"), 3)
        figures["small_cpu_vs_asgi"] = round(
            mean(gw, "small_cpu_us") / mean(asgi, "small_cpu_us"), 3
        )
    for t in targets.values():
        for _, key, _fmt in HTTP_COLUMNS + WS_COLUMNS:
            if (t.pgid is not None or "cpu" not in key) and key != "ws_added_us":
                figures[f"{t.name}_{key}"] = round(mean(t, key), 2)
    figures.update(
        rounds=len(direct.runs),
        duration_s=args.duration,
        connections=args.connections,
        large_connections=args.large_connections,
        ws_messages=args.ws_messages,
        pinned=cpus.proxy is not None,
        gateway_env=args.gateway_env,
        loadavg_before=round(args.load_before, 2),
        loadavg_after=round(os.getloadavg()[0], 2),
    )
    rps, p99, big = (
        figures["small_rps_vs_chp"],
        figures["small_p99_vs_chp"],
        figures["large_mbps_vs_chp"],
    )
    added, chp_added = figures["ws_rtt_added_us_p50"], figures["chp_ws_rtt_added_us_p50"]
    print()
    print(
        f"goals (gateway vs chp): small req/s >= 1.5x: {'met' if rps >= 1.5 else 'missed'} "
        f"({rps}x); p99 no worse: {'met' if p99 <= 1 else 'missed'} ({p99}x); "
        f"10 MiB >= 2x: {'met' if big >= 2 else 'missed'} ({big}x); "
        f"added WS RTT <= chp's: {'met' if added <= chp_added else 'missed'} "
        f"({added:.0f} vs {chp_added:.0f} µs)"
    )
    if "unix_vs_tcp_small_rps" in figures:
        ratio = figures["unix_vs_tcp_small_rps"]
        print(
            f"goal (Unix-socket engine vs loopback TCP, through the gateway): small req/s >= "
            f"0.9x: {'met' if ratio >= 0.9 else 'missed'} ({ratio}x)"
        )
    if "sandboxed_vs_tcp_small_rps" in figures:
        print(
            "sandboxed engine (its socket, bridged by socat in its namespace) vs loopback TCP: "
            f"small req/s {figures['sandboxed_vs_tcp_small_rps']}x, "
            f"10 MiB {figures['sandboxed_vs_tcp_large_mbps']}x"
        )
    return figures


# --- main ----------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk load")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64, help="small responses")
    parser.add_argument("--large-connections", type=int, default=4, help="10 MiB downloads")
    parser.add_argument("--ws-messages", type=int, default=2000)
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="no taskset")
    parser.add_argument(
        "--no-asgi",
        dest="asgi",
        action="store_false",
        help="skip the second gateway that relays through the ASGI proxy alone (the baseline "
        "of the connection-level path)",
    )
    parser.add_argument(
        "--no-sandboxed",
        dest="sandboxed",
        action="store_false",
        help="skip the third gateway whose engines run sandboxed (reached through socat)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the gateway process, e.g. AIGC_ACCESS_CACHE_TTL_S=60 (repeatable)",
    )
    args = parser.parse_args()
    gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    args.load_before = os.getloadavg()[0]  # others' work on this machine skews every figure
    # Stop at once, wherever it is (asyncio's own Ctrl-C handling would only cancel the task at
    # its next await, after the blocking measurements), and clean up on the way out.
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _terminate)
    ensure_tools()
    cpus = plan_cpus(args.pin)
    if cpus.load:
        os.sched_setaffinity(0, {int(cpus.load)})  # this script's WebSocket client
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        root = Path(tmp)
        procs = Processes(root / "logs")
        www = root / "www"
        write_big_file(www)
        script = root / "report.lua"
        script.write_text(WRK_REPORT)
        templates = write_templates(root / "templates", www, cpus)
        settings = Settings(dev=True, data_dir=root / "gateway-data", templates_dir=templates)
        asgi_settings = Settings(
            dev=True, data_dir=root / "gateway-asgi-data", templates_dir=templates
        )
        boxed_templates = write_templates(root / "templates-sandboxed", www, cpus, sandboxed=True)
        boxed_settings = Settings(
            dev=True, data_dir=root / "gateway-sandboxed-data", templates_dir=boxed_templates
        )
        sandboxed = args.sandboxed and not sandbox_missing()
        try:
            print("starting the gateway and its two engines (the backends) …", flush=True)
            gateway, http_up, ws_up, over_unix = await gateway_target(
                procs, settings, cpus, gateway_env, unix=True
            )
            assert over_unix is not None
            targets = {
                "direct": Target("direct", int(http_up.rsplit(":", 1)[1])),
                "chp": start_chp(procs, http_up, ws_up, cpus),
                "nginx": start_nginx_proxy(procs, root, http_up, ws_up, cpus),
                "gateway": gateway,
                "gateway-unix": over_unix,
            }
            if args.asgi:
                print("starting a second gateway with the ASGI proxy alone …", flush=True)
                asgi, _, _, _ = await gateway_target(
                    procs, asgi_settings, cpus, {**gateway_env, "AIGC_PROXY_FAST_PATH": "false"}
                )
                asgi.name = "gateway-asgi"
                targets["gateway-asgi"] = asgi
            if sandboxed:
                print("starting a third gateway, its engines sandboxed …", flush=True)
                boxed, _, _, _ = await gateway_target(
                    procs, boxed_settings, cpus, {**gateway_env, "AIGC_SANDBOX": "on"}
                )
                boxed.name = "gateway-sandboxed"
                targets["gateway-sandboxed"] = boxed
                pin_forwarders(cpus)
            elif args.sandboxed:
                print(f"no sandboxed target: {sandbox_missing()}", flush=True)
            direct = targets["direct"]
            direct.ws_host, direct.ws_port = ws_up, int(ws_up.rsplit(":", 1)[1])
            for target in targets.values():
                verify(target)
            order = list(targets.values())
            for n in range(args.rounds):
                print(f"round {n + 1}/{args.rounds}", flush=True)
                for target in order if n % 2 == 0 else reversed(order):
                    measure(target, args, script, cpus)
        finally:
            procs.stop_all()  # the gateway first: engines outlive it by design
            try:
                await stop_engines_async(settings)
                if args.asgi:
                    await stop_engines_async(asgi_settings)
                if sandboxed:
                    await stop_engines_async(boxed_settings)
            finally:
                kill_leftovers(root)
    figures = report(targets, args, cpus)
    print(json.dumps(figures))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
