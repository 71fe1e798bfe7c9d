"""A small real Gradio app for tests: the framework Stable Diffusion WebUI and Fooocus are built
on, with no model and no GPU.

Listens on 127.0.0.1 and $PORT (or --port); keeps what it is given in --data-dir (default: the
working directory). Its API, as Gradio's own client sees it:

``/count (n, hold) -> text``
    A queued generator: yields ``"1/n"``, ``"2/n"``, ... ``"n/n"``. With ``hold`` it stops after
    the first result until ``/release`` is called, so a test can tell that partial results reach
    it while the function is still running (nothing on the way buffers them).
``/release () -> text``
    Lets a held ``/count`` go on.
``/fingerprint (file) -> {name, size, sha256, saved}``
    Takes an uploaded file, copies it into ``<data>/uploads/`` and says what it received.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HOLD_LIMIT_S = 60


def build(data: Path) -> Any:
    import gradio as gr

    released = threading.Event()

    def count(n: float, hold: bool) -> Iterator[str]:
        total = int(n)
        released.clear()
        for i in range(1, total + 1):
            yield f"{i}/{total}"
            if hold and i == 1 and not released.wait(HOLD_LIMIT_S):
                raise gr.Error("nobody called /release")

    def release() -> str:
        released.set()
        return "released"

    def fingerprint(path: str) -> dict[str, Any]:
        source = Path(path)
        digest = hashlib.sha256()
        size = 0
        with source.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        uploads = data / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        saved = uploads / source.name
        shutil.copyfile(source, saved)
        return {
            "name": source.name,
            "size": size,
            "sha256": digest.hexdigest(),
            "saved": str(saved.relative_to(data)),
        }

    with gr.Blocks(title="Gradio test engine") as app:
        gr.Markdown("# Gradio test engine")
        with gr.Row():
            n = gr.Number(value=5, precision=0, label="Count to")
            hold = gr.Checkbox(value=False, label="Hold after the first step")
            counted = gr.Textbox(label="Progress")
        gr.Button("Count").click(count, [n, hold], counted, api_name="count")
        gr.Button("Release").click(release, None, counted, api_name="release")
        upload = gr.File(type="filepath", label="A file")
        received = gr.JSON(label="Received")
        gr.Button("Fingerprint").click(fingerprint, upload, received, api_name="fingerprint")
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7860")))
    parser.add_argument("--data-dir", default=os.getcwd())
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    app = build(data)
    app.queue().launch(
        server_name="127.0.0.1",
        server_port=args.port,
        share=False,
        ssr_mode=False,
        inbrowser=False,
        show_error=True,
    )


if __name__ == "__main__":
    main()
