"""bench/proxy backends: what every target of ``run.py`` sits in front of.

- ``http``: nginx serving ``/small`` (``ok\\n``, answered from memory) and ``/big`` (a 10 MiB
  static file, sendfile), one worker, no access log. This script writes the final config for the
  port it is given and then becomes nginx (``exec``), so the gateway can launch it as an engine
  template with ``{port}`` and stop it like any engine.
- ``ws``: a WebSocket echo server (``websockets`` asyncio server, no compression).

Both pin themselves to ``--cpus`` first: an engine inherits the gateway's CPU affinity, and the
backend must not run on the proxy's core.

    python bench/proxy/backend.py http --port P --dir D --www W [--cpus 0]
    python bench/proxy/backend.py http --uds PATH --dir D --www W [--cpus 0]   # a Unix socket
    python bench/proxy/backend.py ws --port P [--cpus 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

NGINX = "/usr/sbin/nginx"
SMALL_BODY = b"ok\n"
BIG_NAME = "big"
BIG_SIZE = 10 * 2**20


def temp_paths(prefix: Path) -> str:
    """nginx's temp folders inside ``prefix`` (the packaged defaults are under /var/lib/nginx)."""
    return "\n".join(
        f"  {name}_temp_path {prefix / ('tmp-' + name)};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def main_context(prefix: Path) -> str:
    """The top of an nginx config: one worker, pid and errors in ``prefix``; root workers when
    run as root (the temp folders are private to root)."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        "error_log stderr warn;\n"
        "events { worker_connections 4096; }\n"
    )


def http_backend_conf(listen: str, prefix: Path, www: Path) -> str:
    """``listen``: ``127.0.0.1:PORT`` or ``unix:/path``."""
    return f"""{main_context(prefix)}
http {{
  access_log off;
{temp_paths(prefix)}
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server {{
    listen {listen};
    root {www};
    location = /small {{ default_type text/plain; return 200 "ok\\n"; }}
    location / {{ }}
  }}
}}
"""


def nginx_argv(conf: Path, prefix: Path) -> list[str]:
    return [NGINX, "-e", "stderr", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]


def write_big_file(www: Path) -> Path:
    www.mkdir(parents=True, exist_ok=True)
    path = www / BIG_NAME
    if not path.exists() or path.stat().st_size != BIG_SIZE:
        path.write_bytes(os.urandom(BIG_SIZE))  # incompressible, in case anything tried
    return path


def pin(cpus: str | None) -> None:
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def run_http(listen: str, folder: Path, www: Path) -> None:
    prefix = folder / f"nginx-{listen.rsplit(':', 1)[1] if listen.startswith('127.') else 'uds'}"
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(http_backend_conf(listen, prefix, www))
    argv = nginx_argv(conf, prefix)
    os.execv(argv[0], argv)


async def run_ws(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", port, compression=None, max_size=None) as server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("http", "ws"))
    parser.add_argument("--port", type=int)
    parser.add_argument("--uds", help="http: listen on this Unix socket instead of a port")
    parser.add_argument("--dir", type=Path, help="http: where nginx's config and pid go")
    parser.add_argument("--www", type=Path, help="http: the folder with the 10 MiB file")
    parser.add_argument("--cpus", help="comma-separated CPUs to run on")
    args = parser.parse_args()
    pin(args.cpus)
    if args.kind == "http":
        if args.dir is None or args.www is None or (args.port is None) == (args.uds is None):
            parser.error("http needs --dir, --www and one of --port and --uds")
        listen = f"unix:{args.uds}" if args.uds else f"127.0.0.1:{args.port}"
        run_http(listen, args.dir.resolve(), args.www.resolve())
    else:
        if args.port is None:
            parser.error("ws needs --port")
        asyncio.run(run_ws(args.port))


if __name__ == "__main__":
    main()
