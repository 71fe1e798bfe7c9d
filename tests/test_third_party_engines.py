"""Real third-party engines, driven by their own official clients, through the gateway's proxy on
their instance hosts (``http://<slug>.localhost:<port>/``), with the instance cookie that a
signed-in browser gets when it opens the instance.

- Gradio (what Stable Diffusion WebUI and Fooocus are built on): ``gradio_client`` runs a
  queued generator over SSE and uploads a file.
- Jupyter Server (JupyterLab): the REST API with its ``_xsrf`` dance, then a kernel over its
  WebSocket, speaking the Jupyter messaging protocol.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import RunningGateway
from tests.support.gateway import Api
from tests.support.resolve import localhost_subdomains  # noqa: F401 - a fixture
from tests.test_proxy import cookie_for, open_through_gateway, signed_in_browser

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("localhost_subdomains")]

needs_gradio = pytest.mark.needs("gradio")
needs_jupyterlab = pytest.mark.needs("jupyterlab")


async def running(api: Api, template: str, timeout: float = 90) -> dict[str, Any]:
    inst = await api.wait_state(
        (await api.create(template))["id"], "running", "failed", timeout=timeout
    )
    assert inst["state"] == "running", inst["reason"]
    return inst


async def in_thread(fn: Callable[[], Any], timeout: float) -> Any:
    """Run a blocking client in a daemon thread and wait for it at most ``timeout`` seconds (a
    client stuck on a lost stream fails the test instead of keeping the process alive)."""
    result: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            result.set_result(fn())
        except BaseException as e:
            result.set_exception(e)

    threading.Thread(target=run, daemon=True).start()
    return await asyncio.wait_for(asyncio.wrap_future(result), timeout)


# --- Gradio ---------------------------------------------------------------------------------


@pytest.fixture
def quiet_gradio_client(monkeypatch: pytest.MonkeyPatch) -> None:
    # gradio_client reports each Client to Hugging Face unless this variable says False (its
    # `analytics_enabled=False` argument alone does not turn it off).
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def drive_gradio(url: str, cookie: str, tmp: Path) -> dict[str, Any]:
    """What a script using Gradio's official client does; returns what it saw."""
    from gradio_client import Client, handle_file

    # `headers` go with every request the client makes: config, API info, queue join, the SSE
    # stream of results, the heartbeat and file uploads.
    client = Client(
        url,
        headers={"Cookie": f"aigc_instance={cookie}"},
        verbose=False,
        download_files=str(tmp / "downloads"),
        analytics_enabled=False,
    )
    try:
        job = client.submit(5, True, api_name="/count")  # held after its first result
        progress = iter(job)
        first = next(progress)
        running_when_first_arrived = not job.done()
        released = client.predict(api_name="/release")
        rest = list(progress)
        final = job.result(timeout=30)

        payload = tmp / "weights.bin"
        payload.write_bytes(hashlib.sha256(b"gradio").digest() * 40_000)  # 1.25 MiB
        received = client.predict(handle_file(str(payload)), api_name="/fingerprint")
        return {
            "progress": [first, *rest],
            "running_when_first_arrived": running_when_first_arrived,
            "released": released,
            "final": final,
            "sent": {
                "size": payload.stat().st_size,
                "sha256": hashlib.sha256(payload.read_bytes()).hexdigest(),
            },
            "received": received,
        }
    finally:
        client.close()


def gradio_without_cookie(url: str, tmp: Path) -> tuple[str, int]:
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    try:
        Client(url, verbose=False, download_files=str(tmp / "downloads"), analytics_enabled=False)
    except AuthenticationError as e:
        refused = str(e)
    else:
        raise AssertionError("the gateway let a client without the instance cookie in")
    status = httpx.get(f"{url}gradio_api/info", timeout=30).status_code
    return refused, status


@needs_gradio
@pytest.mark.usefixtures("quiet_gradio_client")
async def test_gradio_client_streams_and_uploads_through_the_proxy(
    gateway: RunningGateway, alice: Api, tmp_path: Path
) -> None:
    inst = await running(alice, "gradio")
    url = inst["url"]
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        page = await open_through_gateway(browser, inst)
        assert page.status_code == 200 and "Gradio test engine" in page.text
        cookie = cookie_for(browser, httpx.URL(url).host)
    finally:
        await browser.aclose()

    seen = await in_thread(lambda: drive_gradio(url, cookie, tmp_path), timeout=90)

    # Every partial result, in order; the first one while the engine was still holding.
    assert seen["progress"] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert seen["running_when_first_arrived"]
    assert seen["released"] == "released"
    assert seen["final"] == "5/5"
    # The upload went through whole, and landed in alice's data folder.
    received = seen["received"]
    assert {"size": received["size"], "sha256": received["sha256"]} == seen["sent"]
    assert received["saved"] == "uploads/weights.bin"
    saved = list(gateway.settings.data_dir.rglob("uploads/weights.bin"))
    assert len(saved) == 1
    assert hashlib.sha256(saved[0].read_bytes()).hexdigest() == seen["sent"]["sha256"]

    # Without the instance cookie, the same client gets nowhere.
    refused, status = await in_thread(lambda: gradio_without_cookie(url, tmp_path), timeout=60)
    assert "credentials" in refused
    assert status == 401


# --- Jupyter Server -------------------------------------------------------------------------


def execute_request(code: str, session: str) -> dict[str, Any]:
    """A shell-channel ``execute_request`` (Jupyter messaging protocol 5.3)."""
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "session": session,
            "username": "alice",
            "date": datetime.now(UTC).isoformat(),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
        },
        "channel": "shell",
    }


@needs_jupyterlab
async def test_jupyter_kernel_runs_code_over_its_websocket_through_the_proxy(
    gateway: RunningGateway, alice: Api
) -> None:
    inst = await running(alice, "jupyterlab")
    url = inst["url"]
    origin = url.rstrip("/")
    netloc = httpx.URL(url).netloc.decode()
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        page = await open_through_gateway(browser, inst)
        assert page.status_code == 200 and "JupyterLab" in page.text
        host = httpx.URL(url).host
        cookie = cookie_for(browser, host)
        # The page set the _xsrf cookie on the instance host; writes echo it in a header.
        xsrf = browser.cookies.get("_xsrf", domain=host)
        assert xsrf
        r = await browser.post(
            f"{url}api/kernels", json={"name": "python3"}, headers={"X-XSRFToken": xsrf}
        )
        assert r.status_code == 201, r.text
        kernel = r.json()["id"]

        request = execute_request("print(6*7)", session=uuid.uuid4().hex)
        replies: dict[str, Any] = {}
        async with websockets.connect(
            f"ws://{netloc}/api/kernels/{kernel}/channels",
            origin=origin,  # as the browser sends it: the instance host's own origin
            additional_headers={"Cookie": f"aigc_instance={cookie}; _xsrf={xsrf}"},
            open_timeout=30,
        ) as ws:
            await ws.send(json.dumps(request))
            async with asyncio.timeout(60):
                while "stream" not in replies or "execute_reply" not in replies:
                    message = json.loads(await ws.recv())
                    if message["parent_header"].get("msg_id") != request["header"]["msg_id"]:
                        continue
                    kind = message["header"]["msg_type"]
                    if kind in ("stream", "execute_reply"):
                        replies[kind] = message
        assert replies["stream"]["channel"] == "iopub"
        assert replies["stream"]["content"] == {"name": "stdout", "text": "42\n"}
        assert replies["execute_reply"]["channel"] == "shell"
        assert replies["execute_reply"]["content"]["status"] == "ok"

        r = await browser.delete(f"{url}api/kernels/{kernel}", headers={"X-XSRFToken": xsrf})
        assert r.status_code == 204, r.text
        kernels = (await browser.get(f"{url}api/kernels")).json()
        assert kernel not in [k["id"] for k in kernels]
    finally:
        await browser.aclose()

    # Without the instance cookie the kernel WebSocket handshake is refused at the gateway.
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            f"ws://{netloc}/api/kernels/{kernel}/channels", origin=origin, open_timeout=30
        ):
            pass
    assert refused.value.response.status_code == 403
