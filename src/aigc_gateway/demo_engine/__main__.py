"""Command line entry point: ``python -m aigc_gateway.demo_engine --port P --data-dir D``.

``--port`` defaults to ``$PORT`` and ``--data-dir`` to ``$AIGC_DEMO_DATA_DIR`` (or the
current folder), so the gateway can start it like any other engine process.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aigc_gateway.demo_engine",
        description="Demo AI engine: fake image generation with real progress streaming.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: $PORT)")
    parser.add_argument("--uds", help="listen on this Unix socket instead of a port")
    parser.add_argument(
        "--data-dir",
        help="folder for outputs, inputs and state.json (default: $AIGC_DEMO_DATA_DIR or cwd)",
    )
    parser.add_argument("--steps", type=int, default=8, help="simulated steps per image")
    parser.add_argument("--step-delay", type=float, default=0.05, help="seconds per simulated step")
    return parser


def _exit_after_shutdown(signum: int, frame: FrameType | None) -> None:
    """Uvicorn re-raises the signal that stopped it once it has shut down gracefully.

    Turn that into a plain exit (0 for SIGTERM, 130 for Ctrl-C) instead of a
    death-by-signal or a ``KeyboardInterrupt`` traceback.
    """
    raise SystemExit(130 if signum == signal.SIGINT else 0)


def parse_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parsed arguments with the environment defaults applied (``port``, ``data_dir``, ...)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.uds is not None:
        args.port = args.port or 0
    elif args.port is None:
        env_port = os.environ.get("PORT", "")
        if not env_port.isdigit():
            parser.error("--port is required (or set $PORT)")
        args.port = int(env_port)
    if args.uds is None and not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.step_delay < 0:
        parser.error("--step-delay must not be negative")
    args.data_dir = args.data_dir or os.environ.get("AIGC_DEMO_DATA_DIR") or os.getcwd()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and serve the demo engine until interrupted."""
    args = parse_options(argv)
    port: int = args.port
    data_dir: str = args.data_dir

    import uvicorn

    from . import create_app

    app = create_app(data_dir, steps=args.steps, step_delay=args.step_delay)
    print(
        f"demo engine starting on http://{args.host}:{port}/ (data: {os.path.abspath(data_dir)})",
        file=sys.stderr,
        flush=True,
    )
    # Installed before uvicorn.run, which restores them on exit and then re-raises the signal.
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    signal.signal(signal.SIGINT, _exit_after_shutdown)
    where = {"uds": args.uds} if args.uds else {"host": args.host, "port": port}
    uvicorn.run(app, **where, log_level="warning", timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
