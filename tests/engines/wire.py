"""An engine that speaks HTTP/1.1 by hand, for the proxy's wire-level tests (standard library).

Real sockets, and answers a framework would not give on demand: chunked and close-delimited
bodies, an interim ``103``, a connection closed under the next request, a slow answer.

- ``GET /``: ``ok`` (readiness);
- ``/conn``: JSON ``{"connection": N, "request": K}``: which TCP connection (counted from 1 since
  start) carried this request, and its number on that connection;
- ``/echo``: JSON of the method, target, headers and the body's length and SHA-256;
- ``/chunked``: three chunks (``Transfer-Encoding: chunked``);
- ``/until-close``: no length; the body ends when the engine closes the connection;
- ``/early-hints``: ``103 Early Hints`` first, then ``200``;
- ``/close-next``: answers, then closes this connection when the next request arrives on it,
  without answering (an engine's keep-alive timeout racing the proxy's reuse);
- ``/sleep?s=S``: answers after S seconds;
- ``/answer-first``: a broken engine's ways: answers before it reads the request body, then
  takes the body for a request of its own, whose answer it sends before the answer to the next
  request on this connection (what an engine that loses a body's framing does);
- ``HEAD`` anything: the headers a ``GET`` would get (``Content-Length`` included), no body.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
from urllib.parse import parse_qs, urlsplit


class Counter:
    connections = 0


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                return body
            body += await reader.readexactly(size)
            await reader.readline()
    return await reader.readexactly(int(headers.get("content-length", "0")))


def answer(status: str, body: bytes, *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    Counter.connections += 1
    connection, requests, close_next = Counter.connections, 0, False
    from_body: str | None = None  # the target of a request /answer-first read from a body
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if close_next:
                return  # closed under the request, unanswered
            requests += 1
            line, *fields = head.decode("latin-1").split("\r\n")
            method, target, _ = line.split(" ", 2)
            headers: dict[str, str] = {}
            pairs: list[list[str]] = []
            for field in fields:
                if field:
                    name, _, value = field.partition(":")
                    headers[name.strip().lower()] = value.strip()
                    pairs.append([name.strip().lower(), value.strip()])
            url = urlsplit(target)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            path = url.path
            body = b"" if path == "/answer-first" else await read_body(reader, headers)
            if from_body is not None:
                writer.write(answer("200 OK", f"the answer to {from_body}".encode()))
                from_body = None
            if method == "HEAD":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
            elif path == "/conn":
                reply = {"connection": connection, "request": requests}
                writer.write(answer("200 OK", json.dumps(reply).encode()))
            elif path == "/echo":
                reply = {
                    "method": method,
                    "target": target,
                    "headers": pairs,
                    "length": len(body),
                    "sha256": hashlib.sha256(body).hexdigest(),
                }
                writer.write(answer("200 OK", json.dumps(reply).encode()))
            elif path == "/chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for part in (b"one,", b"two,", b"three"):
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            elif path == "/until-close":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                writer.write(b"all of it, until the end")
                await writer.drain()
                return
            elif path == "/early-hints":
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n")
                await writer.drain()
                writer.write(answer("200 OK", b"after the hints"))
            elif path == "/close-next":
                close_next = True
                writer.write(answer("200 OK", b"closing under the next one"))
            elif path == "/answer-first":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nanswered\r\n"
                )
                await writer.drain()
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                writer.write(b"0\r\n\r\n")
                from_body = raw.split(b" ")[1].decode("latin-1") if b" " in raw else "?"
            elif path == "/sleep":
                await asyncio.sleep(float(query.get("s", "1")))
                writer.write(answer("200 OK", b"slept"))
            else:
                writer.write(answer("200 OK", b"ok"))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    parser.add_argument("--data-dir")  # given to every test engine; this one keeps nothing
    args = parser.parse_args()
    server = await asyncio.start_server(serve, "127.0.0.1", args.port)
    print(f"wire engine on port {args.port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
