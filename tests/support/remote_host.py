"""A second host on this machine, standing for "the internet" and for the site's own network.

The host is a network namespace joined to this one by a veth pair, with three addresses on its
side of the link: a public-looking one (TEST-NET-2, which no rule refuses), a private one
(``10.213.x.1``) and a link-local one (``169.254.77.x``), and a real HTTP server on all of them.
This host routes to all three, so each is reachable from the host itself: an engine that cannot
reach the private or link-local one is stopped by its sandbox, not by the network. The host's
own end of the link (``host_side``) is an address of this host, as a second interface is.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SERVER = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = b'remote host\\n'\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "server = http.server.ThreadingHTTPServer(('0.0.0.0', int(sys.argv[1])), H)\n"
    "print('listening', flush=True)\n"
    "server.serve_forever()\n"
)


@dataclass(frozen=True)
class RemoteHost:
    public: str
    private: str
    link_local: str
    host_side: str
    """This host's own address on the link."""
    port: int


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def remote_host(port: int = 8080) -> Iterator[RemoteHost]:
    """Make the second host (root only); everything is removed on the way out."""
    k = os.getpid() % 60 + 1
    ns, here, there = f"aigc-test-remote-{k}", f"aigct{k}h", f"aigct{k}r"
    host = RemoteHost(
        public=f"198.51.100.{4 * k + 1}",
        private=f"10.213.{k}.1",
        link_local=f"169.254.77.{k}",
        host_side=f"198.51.100.{4 * k + 2}",
        port=port,
    )
    subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
    subprocess.run(["ip", "link", "delete", here], capture_output=True, check=False)
    server = None
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", there, "netns", ns)
        _ip("addr", "add", f"{host.host_side}/30", "dev", here)
        _ip("link", "set", here, "up")
        for address in (f"{host.public}/30", f"{host.private}/32", f"{host.link_local}/32"):
            _ip("-n", ns, "addr", "add", address, "dev", there)
        _ip("-n", ns, "link", "set", there, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", host.host_side)
        for address in (host.private, host.link_local):
            _ip("route", "add", f"{address}/32", "dev", here)
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert server.stdout is not None
        if server.stdout.readline() != b"listening\n":  # said once it has bound
            raise RuntimeError(f"the remote host's server did not start ({server.wait()})")
        yield host
    finally:
        if server is not None:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        subprocess.run(["ip", "link", "delete", here], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


def reachable(address: str, port: int) -> bool:
    """Whether this host reaches ``address:port`` (a precondition the tests check)."""
    try:
        socket.create_connection((address, port), timeout=2).close()
    except OSError:
        return False
    return True
