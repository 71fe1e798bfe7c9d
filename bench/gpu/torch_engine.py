"""A real PyTorch engine for the GPU check: it opens a CUDA context at start (as Stable
Diffusion or ComfyUI do when they load), then answers on $PORT.

``GET /`` ok; ``GET /info`` what CUDA shows it (visible devices, device name, memory, the MPS
limit it was given); ``GET /alloc?gib=N`` allocates and touches N GiB on the GPU and keeps it,
answering ``{"ok": false, "error": ...}`` when the driver refuses; ``GET /free`` drops it all.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

if "--rehearse" in sys.argv:
    # Rehearsal on a host without a GPU (check.py --rehearse): the same answers, with the MPS
    # limit applied by arithmetic, so the script's own logic is tried before device time is spent.
    from bench.gpu import rehearsal as torch  # type: ignore[no-redef]
else:
    import torch

torch.zeros(1, device="cuda")  # the CUDA context, before the port opens
torch.cuda.synchronize()
held: list[Any] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        answer: Any = "ok"
        if url.path == "/info":
            free, total = torch.cuda.mem_get_info()
            answer = {
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "mps_limit": os.environ.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"),
                "mps_pipe": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
                "devices": torch.cuda.device_count(),
                "name": torch.cuda.get_device_name(0),
                "free_mib": free // 2**20,
                "total_mib": total // 2**20,
            }
        elif url.path == "/alloc":
            n = int(float(q["gib"]) * 2**30)
            try:
                block = torch.empty(n, dtype=torch.uint8, device="cuda")
                block.fill_(1)  # touch it: the memory is really committed
                torch.cuda.synchronize()
                held.append(block)
                answer = {"ok": True, "held_gib": sum(t.numel() for t in held) / 2**30}
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                answer = {"ok": False, "error": str(exc).splitlines()[0][:300]}
        elif url.path == "/free":
            held.clear()
            torch.cuda.empty_cache()
            answer = {"ok": True}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Handler).serve_forever()
