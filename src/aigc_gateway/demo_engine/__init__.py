"""Demo engine: a tiny stand-in for an AI engine (ComfyUI, SD WebUI, ...) without any ML.

It lets a newcomer without a GPU walk through the whole gateway flow: start an
engine, open its page, generate an "image" while watching progress (SSE or
WebSocket), pause/resume it and find the output again in its data folder.

Run it with ``python -m aigc_gateway.demo_engine --port 8188 --data-dir ./demo``;
build the ASGI app in code with :func:`create_app`.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
