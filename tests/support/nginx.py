"""A real nginx in front of the gateway, configured from the example in deploy/nginx/.

``nginx_in_front(gateway_url=...)`` renders ``deploy/nginx/aigc-gateway.conf`` (its
``__PLACEHOLDERS__`` filled with test values: a free port on 127.0.0.1, any ``<slug>.localhost``
host, the given gateway), wraps it in a minimal main config whose pid, logs and temp files live
in a temporary folder, and runs ``nginx`` (Debian's package plus ``libnginx-mod-http-js``, see
scripts/system-deps.sh) in the foreground until the block ends.

Instance hosts such as ``i1.localhost`` do not resolve here, so ``NginxFront.transport()``
gives httpx a transport that sends requests for the apps domain to nginx's port (the ``Host``
header and cookies stay those of the real URL) and everything else where it points; for
``websockets``, connect a socket to ``("127.0.0.1", front.port)`` and pass it as ``sock``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.tools import require_tool

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
EXAMPLE_CONF = DEPLOY_DIR / "aigc-gateway.conf"
EXAMPLE_JS = DEPLOY_DIR / "aigc-gateway.js"
PLACEHOLDERS = ("__GATEWAY__", "__LISTEN__", "__SERVER_NAME__", "__SIGNIN__")
_JS_MODULE = "ngx_http_js_module.so"

# The main config around the example (which belongs in `http { }`). `user root;` only when the
# tests run as root: nginx's workers would otherwise drop to `nobody` and could not reach the
# private temporary folder.
_MAIN_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{user}pid {root}/nginx.pid;
error_log {root}/error.log notice;
load_module {js_module};
# Open WebSockets and event streams must not hold up the end of a test.
worker_shutdown_timeout 5s;

events {{
    worker_connections 512;
}}

http {{
    default_type application/octet-stream;
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/client_body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;

    include {root}/aigc-gateway.conf;
}}
"""


@cache
def _nginx_info() -> tuple[str | None, str | None, str]:
    """(nginx binary, njs module path, why nginx cannot be used here or "")."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        return None, None, "nginx is not installed: run scripts/system-deps.sh"
    build = subprocess.run(
        [binary, "-V"], capture_output=True, text=True, timeout=30, check=False
    ).stderr
    if "--with-http_auth_request_module" not in build:
        return binary, None, f"{binary} lacks the auth_request module"
    found = re.search(r"--modules-path=(\S+)", build)
    modules = Path(found.group(1) if found else "/usr/lib/nginx/modules")
    if not (modules / _JS_MODULE).is_file():
        return (
            binary,
            None,
            (
                f"the njs module ({modules / _JS_MODULE}) is missing: "
                "run scripts/system-deps.sh (Debian: libnginx-mod-http-js)"
            ),
        )
    return binary, str(modules / _JS_MODULE), ""


def nginx_problem() -> str | None:
    """Why nginx (with auth_request and njs) cannot be run here, or None when it can."""
    return _nginx_info()[2] or None


def nginx_available() -> bool:
    """Whether nginx (with auth_request and njs) can be run here."""
    return nginx_problem() is None


def require_nginx() -> None:
    """Skip the calling test (fail it under CI) when nginx cannot be run here, saying why."""
    require_tool("nginx")


def _nginx_regex_literal(text: str) -> str:
    return re.sub(r"([.\\+*?()\[\]{}|^$])", r"\\\1", text)


def render_example(*, gateway: str, listen: str, server_name: str, signin: str) -> str:
    """deploy/nginx/aigc-gateway.conf with its placeholders filled in."""
    text = EXAMPLE_CONF.read_text()
    for name, value in zip(PLACEHOLDERS, (gateway, listen, server_name, signin), strict=True):
        if name not in text:
            raise AssertionError(f"{EXAMPLE_CONF} no longer contains the placeholder {name}")
        text = text.replace(name, value)
    return text


START_ATTEMPTS = 5
"""nginx binds its port itself: one picked free may be taken before it starts (another program,
another test process), then it is started again on another."""


def _unused_port() -> int:
    """A port free at this moment (nginx binds it itself: see :data:`START_ATTEMPTS`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _PortTaken(Exception):
    pass


class _ToNginx(httpx.BaseTransport):
    def __init__(self, front: NginxFront, **kwargs: Any) -> None:
        self._front = front
        self._inner = httpx.HTTPTransport(**kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(self._front.reroute(request))

    def close(self) -> None:
        self._inner.close()


class _AsyncToNginx(httpx.AsyncBaseTransport):
    def __init__(self, front: NginxFront, **kwargs: Any) -> None:
        self._front = front
        self._inner = httpx.AsyncHTTPTransport(**kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(self._front.reroute(request))

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class NginxFront:
    """A running nginx: ``port`` on 127.0.0.1, serving ``<slug>.<apps_domain>``."""

    port: int
    apps_domain: str
    root: Path

    def url_for_host(self, host: str) -> str:
        """The URL a browser uses for ``host`` (e.g. ``http://i1.localhost:PORT``)."""
        return f"http://{host}:{self.port}"

    def is_instance_host(self, host: str) -> bool:
        return host.endswith("." + self.apps_domain)

    def reroute(self, request: httpx.Request) -> httpx.Request:
        """``request`` sent to nginx's socket when its host is in the apps domain."""
        if not self.is_instance_host(request.url.host):
            return request
        return httpx.Request(
            request.method,
            request.url.copy_with(host="127.0.0.1", port=self.port),
            headers=request.headers,  # Host: keeps the instance host and port
            stream=request.stream,
            extensions=request.extensions,
        )

    def transport(self, **kwargs: Any) -> httpx.BaseTransport:
        """For ``httpx.Client(transport=...)``: instance hosts go to nginx, others as usual."""
        return _ToNginx(self, **kwargs)

    def async_transport(self, **kwargs: Any) -> httpx.AsyncBaseTransport:
        return _AsyncToNginx(self, **kwargs)

    def connect(self, timeout: float = 10) -> socket.socket:
        """A connected socket to nginx (e.g. ``websockets.sync.client.connect(url, sock=...)``)."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    @property
    def error_log_path(self) -> Path:
        return self.root / "error.log"

    def error_log(self) -> str:
        """nginx's error log (or, before it had one, what it wrote to stderr)."""
        for name in ("error.log", "stderr.log"):
            path = self.root / name
            if path.is_file() and (text := path.read_text(errors="replace").strip()):
                return text
        return ""


def print_error_log(front: NginxFront, *, file: Any = None) -> None:
    print(f"--- nginx error log ({front.root}) ---", file=file or sys.stdout)
    print(front.error_log() or "(empty)", file=file or sys.stdout)


@contextmanager
def error_log_on_failure(request: pytest.FixtureRequest, front: NginxFront) -> Iterator[None]:
    """Around one test (an autouse fixture): show nginx's error log on the terminal if it fails.

    Output from a fixture's teardown is not shown with the failure, hence the terminal."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        if capture is None:
            print_error_log(front)
            return
        with capture.global_and_fixture_disabled():
            print_error_log(front, file=sys.stderr)


def _wait_until_listening(proc: subprocess.Popen[bytes], port: int, front: NginxFront) -> None:
    """Until nginx has bound its port (it writes its pid file after) and answers there."""
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            log = front.error_log()
            if "Address already in use" in log:
                raise _PortTaken(log)
            raise RuntimeError(f"nginx exited with {proc.returncode}:\n{log}")
        if (front.root / "nginx.pid").is_file():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not listen on {port} in 10 s:\n{front.error_log()}")
        time.sleep(0.05)  # polling the port: the one bounded wait


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGQUIT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _start(
    binary: str, conf: Path, front: NginxFront, site: dict[str, str]
) -> subprocess.Popen[bytes]:
    """nginx on a free port (``front.port`` set to it), retrying on a port taken meanwhile."""
    for attempt in range(1, START_ATTEMPTS + 1):
        front.port = _unused_port()
        (front.root / "aigc-gateway.conf").write_text(
            render_example(listen=f"127.0.0.1:{front.port}", **site)
        )
        for name in ("error.log", "stderr.log"):
            (front.root / name).unlink(missing_ok=True)  # their text tells this attempt's failure
        with open(front.root / "stderr.log", "wb") as stderr:
            proc = subprocess.Popen(
                [binary, "-c", str(conf), "-p", str(front.root), "-e", str(front.error_log_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        try:
            _wait_until_listening(proc, front.port, front)
            return proc
        except _PortTaken:
            if attempt == START_ATTEMPTS:
                raise RuntimeError(f"nginx found no free port:\n{front.error_log()}") from None
        except BaseException:
            _stop(proc)
            raise
    raise AssertionError("unreachable")


@contextmanager
def nginx_in_front(
    *, gateway_url: str, public_gateway_url: str | None = None, apps_domain: str = "localhost"
) -> Iterator[NginxFront]:
    """Run nginx with the example config in front of the gateway at ``gateway_url``.

    ``gateway_url`` is where nginx reaches the gateway (``http://127.0.0.1:PORT``);
    ``public_gateway_url`` is where browsers are sent to sign in (defaults to ``gateway_url``);
    instance hosts are ``<slug>.<apps_domain>`` on ``front.port``."""
    binary, js_module, why = _nginx_info()
    if why or binary is None or js_module is None:
        raise RuntimeError(why)
    gateway = urlsplit(gateway_url)
    if gateway.scheme != "http" or not gateway.netloc or gateway.path not in ("", "/"):
        raise ValueError(f"gateway_url must be http://host:port, not {gateway_url!r}")
    signin = (public_gateway_url or gateway_url).rstrip("/") + "/auth/instance-login"

    root = Path(tempfile.mkdtemp(prefix="aigc-nginx-"))
    (root / "tmp").mkdir()
    # js_import paths are relative to the main config's folder, as in /etc/nginx/.
    shutil.copyfile(EXAMPLE_JS, root / EXAMPLE_JS.name)
    conf = root / "nginx.conf"
    conf.write_text(
        _MAIN_CONF.format(
            root=root, js_module=js_module, user="user root;\n" if os.geteuid() == 0 else ""
        )
    )
    site = {
        "gateway": gateway.netloc,
        "server_name": f"~^[^.]+\\.{_nginx_regex_literal(apps_domain)}$",
        "signin": signin,
    }
    front = NginxFront(port=0, apps_domain=apps_domain, root=root)
    proc = None
    try:
        proc = _start(binary, conf, front, site)
        yield front
        _stop(proc)
    except BaseException:
        if proc is not None:
            _stop(proc)
        print_error_log(front)
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
