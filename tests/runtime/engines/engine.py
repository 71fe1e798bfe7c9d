"""A tiny engine for the local runtime tests (run as a script, standard library only).

It records how it was started in ``<data-dir>/engine.json`` (argv, environment, pid, cwd), then
behaves as the flags say: serve HTTP on ``$PORT`` (default) or a Unix socket (``--uds PATH``;
``GET /env`` answers its environment, ``GET /info`` what ``engine.json`` holds), exit with a code, never become ready,
ignore SIGTERM, take a while to stop (``--slow-stop S``, then ``ended.json`` says when it ended),
start a grandchild, or print a lot.
"""

import argparse
import http.server
import json
import os
import pathlib
import signal
import socketserver
import subprocess
import sys
import time

INFO: dict[str, object] = {}


class Handler(http.server.BaseHTTPRequestHandler):
    def address_string(self) -> str:
        return "unix" if not self.client_address else str(self.client_address[0])

    def do_GET(self) -> None:
        if self.path in ("/env", "/info"):
            data = dict(os.environ) if self.path == "/env" else INFO
            self._answer(json.dumps(data).encode())
            return
        if self.path.startswith("/spew/"):
            _spew(int(self.path.rsplit("/", 1)[1]), "late")
        self._answer(f"engine {os.environ.get('ENGINE_ID', '?')} ok\n".encode())

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _spew(lines: int, tag: str) -> None:
    for i in range(lines):
        sys.stdout.write(f"{tag} line {i:06d} " + "x" * 100 + "\n")
    sys.stdout.write(f"{tag} spew done\n")
    sys.stdout.flush()


def _slow_stop(data_dir: pathlib.Path, seconds: float) -> object:
    """A SIGTERM handler that takes ``seconds`` to stop, then writes ``ended.json`` (when the
    engine ended, by its own clock) and exits with 0."""

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(seconds)
        (data_dir / "ended.json").write_text(json.dumps({"t": time.time()}))
        print("engine stopped politely", flush=True)
        os._exit(0)

    return handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--exit-code", type=int, default=None)
    parser.add_argument("--wait-for", default=None)
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--slow-stop", type=float, default=None)
    parser.add_argument("--grandchild", action="store_true")
    parser.add_argument("--spew", type=int, default=0)
    parser.add_argument("--uds", default=None)
    args, _ = parser.parse_known_args()

    data_dir = pathlib.Path(args.data_dir)
    info: dict[str, object] = {
        "argv": sys.argv,
        "env": dict(os.environ),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
    }
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.slow_stop is not None:
        signal.signal(signal.SIGTERM, _slow_stop(data_dir, args.slow_stop))
    if args.grandchild:
        child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        info["grandchild"] = child.pid
    INFO.update(info)
    (data_dir / "engine.json.tmp").write_text(json.dumps(info))
    os.replace(data_dir / "engine.json.tmp", data_dir / "engine.json")
    print(f"engine {os.getpid()} starting", flush=True)

    if args.exit_code is not None:
        print("boom: the engine cannot start", flush=True)
        if args.wait_for:
            while not os.path.exists(args.wait_for):
                time.sleep(0.005)
        sys.exit(args.exit_code)
    if args.never_ready:
        while True:
            signal.pause()
    if args.spew:
        _spew(args.spew, "early")

    if args.uds is not None:
        unix = UnixHTTPServer(args.uds, Handler)
        print(f"listening on {args.uds}", flush=True)
        unix.serve_forever()
    port = args.port if args.port is not None else int(os.environ["PORT"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on {port}", flush=True)
    server.serve_forever()


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if __name__ == "__main__":
    main()
