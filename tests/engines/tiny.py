"""A tiny real engine for tests and benchmarks (standard library only, starts fast).

Listens on $PORT (or --port; 0: a free one); records the moment it started listening and its port
in ``<data>/listen.json``;
``GET /`` answers ok; ``GET /write?name=N&content=C`` writes a file in the data folder;
``GET /read?name=N`` reads it back; ``GET /setcookie`` tries to set the gateway's cookie; ``GET /stream`` streams until the reader goes away and then writes ``stream-closed``;
``GET /crash?code=K`` prints a line and exits with code K; ``GET /env`` answers the GPU-related
environment it was started with (``CUDA_*``, ``NVIDIA_*``, ``AIGC_GPU_*``) as JSON.
``--exit-before-ready K`` exits at once with code K; ``--no-listen`` never opens its port.
``--slow-stop S`` takes S seconds to stop after ``SIGTERM`` (like an engine saving its state) and
records its life in ``<data>/life.jsonl``: a ``start`` line first thing, an ``end`` line as the
last thing before it exits (its own record of when it ran, for the ledger tests).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse


def _life(data: Path, event: str) -> None:
    with open(data / "life.jsonl", "a") as f:
        f.write(json.dumps({"event": event, "pid": os.getpid(), "t": time.time()}) + "\n")


def _record_life(data: Path, stop_s: float) -> None:
    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second stop does not start over
        time.sleep(stop_s)
        _life(data, "end")
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    _life(data, "start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    parser.add_argument("--data-dir", default=os.getcwd())
    parser.add_argument("--exit-before-ready", type=int)
    parser.add_argument("--no-listen", action="store_true")
    parser.add_argument("--slow-stop", type=float)
    args = parser.parse_args()
    data = Path(args.data_dir)
    if args.slow_stop is not None:
        _record_life(data, args.slow_stop)
    print(f"tiny engine starting, pid {os.getpid()}", flush=True)
    if args.exit_before_ready is not None:
        print("tiny engine: cannot load model weights, giving up", file=sys.stderr, flush=True)
        sys.exit(args.exit_before_ready)
    if args.no_listen:
        while True:
            time.sleep(3600)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            url = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            body = b"ok"
            extra: list[tuple[str, str]] = []
            if url.path == "/setcookie":
                extra = [
                    ("Set-Cookie", "aigc_session=from-engine; Path=/"),
                    ("Set-Cookie", "theme=dark; Path=/"),
                ]
            elif url.path == "/write":
                (data / q["name"]).write_text(q["content"])
            elif url.path == "/read":
                body = (data / q["name"]).read_bytes()
            elif url.path == "/stream":
                # Streams until the client (or the proxy in front) goes away, then says so.
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"tick\n" * 64)
                        self.wfile.flush()
                        time.sleep(0.02)
                except OSError:
                    (data / "stream-closed").write_text("closed")
                return
            elif url.path.endswith("/prefix"):  # path mode keeps the /i/<slug> prefix
                body = (self.headers.get("X-Forwarded-Prefix") or "none").encode()
            elif url.path == "/env":
                prefixes = ("CUDA_", "NVIDIA_", "AIGC_GPU_")
                body = json.dumps(
                    {k: v for k, v in os.environ.items() if k.startswith(prefixes)}
                ).encode()
            elif url.path == "/crash":
                print("tiny engine: out of memory (simulated crash)", flush=True)
                os._exit(int(q.get("code", "1")))
            self.send_response(200)
            for name, value in extra:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    listening = {"t": time.time(), "pid": os.getpid(), "port": server.server_address[1]}
    (data / "listen.json").write_text(json.dumps(listening))
    server.serve_forever()


if __name__ == "__main__":
    main()
