"""A test-only hostile engine: it tries every escape from its sandbox and reports what it got.

``--mode probe`` (default) makes each attempt named in ``--targets`` (a JSON object: paths of the
gateway's database and secret, the gateway's pid, another user's volume and a file in it, TCP
ports on the host's loopback, another engine's socket; ``outbound``: ``{name: [host, port]}``
to connect to, reported as ``out_<name>``; ``resolve``: a name to ask the DNS about), writes ``<data>/report.json``
(``{attempt: {"ok": bool, "detail": str}}``, ``ok`` meaning the escape *worked*), then serves
HTTP on $PORT so that readiness says the report is there.

Other modes misbehave, then serve: ``oom`` allocates past any memory limit; ``GET /forkbomb`` (any
mode) forks until refused and answers how many processes it reached; ``GET /fill/<MiB>``
writes that much into the volume until refused and answers how much it wrote; ``cpu`` spins two threads; ``daemon``
leaves a double-forked, ``setsid`` grandchild that writes its pid to ``<data>/daemon.pid``.
Standard library only.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def attempt(report: dict[str, dict[str, object]], name: str, action: Callable[[], object]) -> None:
    try:
        detail = action()
    except Exception as exc:
        report[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    else:
        report[name] = {"ok": True, "detail": str(detail)[:300]}


def read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(64).hex()


def connect_tcp(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=1) as sock:
        return f"connected to {sock.getpeername()}"


def connect_unix(path: str) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        sock.connect(path)
        return "connected"


def other_processes() -> str:
    mine = {os.getpid(), os.getppid()}
    seen = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in mine:
            try:
                status = Path(f"/proc/{name}/status").read_text().splitlines()[0].split()[-1]
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            seen.append(f"{name}:{status}:{cmdline}")
    own = ("hostile", "socat", "bwrap")
    foreign = [c for c in seen if not any(o in c.split(":", 2)[1] + c for o in own)]
    if foreign:
        return "; ".join(foreign)
    raise PermissionError(f"only the sandbox's own processes are visible ({len(seen)})")


def dns_query(name: str) -> str:
    """One DNS question (type A) to the first nameserver of ``/etc/resolv.conf``: any answer
    (even "no such name") means the resolver was reached."""
    servers = [
        line.split()[1]
        for line in Path("/etc/resolv.conf").read_text().splitlines()
        if line.startswith("nameserver") and len(line.split()) > 1
    ]
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = b"\x4a\x11\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + b"\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(query, (servers[0], 53))
        answer = sock.recv(512)
    if answer[:2] != query[:2]:
        raise ValueError("an answer to another question")
    return f"{servers[0]} answered (rcode {answer[3] & 15})"


def setuid_root() -> str:
    path = "/data/suid"
    shutil.copy("/usr/bin/id", path)
    os.chown(path, 0, 0)
    os.chmod(path, 0o4755)
    return "setuid-root file made"


def gateway(report: dict[str, dict[str, object]], targets: dict[str, object]) -> None:
    """The gateway's files and process, another user's volume, the host's processes."""
    pid = int(str(targets["gateway_pid"]))
    db, secret = str(targets["database"]), str(targets["secret"])
    attempt(report, "read_database", lambda: read(db))
    attempt(report, "read_secret", lambda: read(secret))
    attempt(report, "proc_root_database", lambda: read(f"/proc/{pid}/root{db}"))
    attempt(report, "proc_environ", lambda: read(f"/proc/{pid}/environ"))
    attempt(report, "proc_fd", lambda: os.listdir(f"/proc/{pid}/fd"))
    attempt(report, "list_other_volume", lambda: os.listdir(str(targets["other_volume"])))
    attempt(report, "read_other_file", lambda: read(str(targets["other_file"])))
    attempt(report, "see_processes", other_processes)
    attempt(report, "signal_gateway", lambda: os.kill(pid, 0))


def probe(data: Path, targets: dict[str, object]) -> None:
    report: dict[str, dict[str, object]] = {}
    if "gateway_pid" in targets:
        gateway(report, targets)
    for name, port in dict(targets.get("tcp_ports", {})).items():  # type: ignore[call-overload]
        attempt(report, f"connect_{name}", lambda p=port: connect_tcp("127.0.0.1", int(p)))
    attempt(report, "connect_metadata", lambda: connect_tcp("169.254.169.254", 80))
    for name, (host, port) in dict(targets.get("outbound", {})).items():  # type: ignore[call-overload]
        attempt(report, f"out_{name}", lambda h=host, p=port: connect_tcp(str(h), int(p)))
    if targets.get("resolve"):
        attempt(report, "dns", lambda: dns_query(str(targets["resolve"])))
    if targets.get("other_socket"):
        attempt(report, "connect_other_socket", lambda: connect_unix(str(targets["other_socket"])))
    attempt(report, "setuid_root_file", setuid_root)
    attempt(report, "become_root", lambda: os.setuid(0))
    status = Path("/proc/self/status").read_text()
    report["no_new_privs"] = {"ok": "NoNewPrivs:\t1" not in status, "detail": "NoNewPrivs"}
    report["whoami"] = {"ok": os.getuid() == 0, "detail": f"{os.getuid()}:{os.getgid()}"}
    tmp = data / ".report.json"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, data / "report.json")


def oom() -> None:
    hog = []
    while True:
        hog.append(bytearray(16 << 20))


def forkbomb() -> dict[str, object]:
    children: list[int] = []
    try:
        while True:
            pid = os.fork()
            if pid == 0:
                time.sleep(3600)
                os._exit(0)
            children.append(pid)
    except OSError as exc:
        return {"children": len(children), "error": str(exc)}


def cpu() -> None:
    def spin() -> None:
        while True:
            pass

    for _ in range(2):
        threading.Thread(target=spin, daemon=True).start()


def daemon(data: Path) -> None:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            (data / "daemon.pid").write_text(str(os.getpid()))
            while True:
                time.sleep(0.05)
        os._exit(0)
    os.wait()


def fill(mib: int) -> dict[str, object]:
    """Write ``mib`` MiB into the volume (synced, 1 MiB at a time) until refused."""
    written, error = 0, ""
    with open("/data/fill.bin", "ab") as f:
        try:
            for _ in range(mib):
                f.write(b"f" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
                written += 1
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
    return {"written_mib": written, "error": error}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/fill/"):
            body = json.dumps(fill(int(self.path.rsplit("/", 1)[1]))).encode()
        elif self.path == "/forkbomb":
            body = json.dumps(forkbomb()).encode()
        else:
            body = b"hostile ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--mode", default="probe")
    parser.add_argument("--targets", default="{}")
    args = parser.parse_args()
    data = Path(args.data_dir)
    if args.mode == "probe":
        probe(data, json.loads(args.targets))
    elif args.mode == "oom":
        oom()
    elif args.mode == "cpu":
        cpu()
    elif args.mode == "daemon":
        daemon(data)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print(f"hostile engine ({args.mode}) listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
