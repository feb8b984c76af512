"""Serve the web app: ``kosmos-demo serve`` / ``python app.py`` (the Spaces entry point).

Only wiring lives here: parse the options, load the model once, build the page
with :func:`kosmos_demo.ui.build_demo` and serve it. Never a share tunnel.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

try:  # on ZeroGPU Spaces `spaces` must be imported before torch touches CUDA
    import spaces  # noqa: F401
except ImportError:
    spaces = None

import argparse
import sys
from typing import Sequence

from .cli import add_model_options, number


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Serve the Kosmos-2 demo web app (Gradio).")
    add_model_options(parser)
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=number(int), default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--concurrency", type=number(int), default=1,
                        help="model runs at the same time (default 1: one GPU, one generation)")
    parser.add_argument("--max-queue", type=number(int), default=32, help="requests allowed to wait (default 32)")
    parser.add_argument("--mcp", action="store_true",
                        help="also serve /describe as an MCP tool for LLM agents (needs: pip install 'gradio[mcp]')")
    return parser


def _on_zero_gpu() -> bool:
    return spaces is not None and os.environ.get("SPACES_ZERO_GPU", "") not in ("", "0", "false", "False")


def mcp_unavailable() -> str | None:
    """Why the MCP server cannot start (gradio's ``mcp`` extra missing), or None."""
    import importlib.util

    if importlib.util.find_spec("mcp") is None:
        return "needs the MCP extra: pip install 'gradio[mcp]' (or pip install 'kosmos-demo[mcp]')"
    return None


def create_demo(args: argparse.Namespace):
    """Load the engine (progress on stderr) and build the queued Blocks; raises EngineError."""
    from .engine import get_engine

    device, dtype = args.device, args.dtype
    if _on_zero_gpu():  # ZeroGPU wants the weights on cuda at start-up; it attaches the GPU per call
        device = "cuda" if device == "auto" else device
        dtype = "bfloat16" if dtype == "auto" else dtype
    engine = get_engine(args.model, device, dtype, progress=lambda message: print(message, file=sys.stderr, flush=True),
                        quantize=args.quantize)
    from .ui import build_demo  # gradio is imported only once there is a model to serve

    return build_demo(engine, concurrency=args.concurrency, max_queue=args.max_queue)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.concurrency < 1:
        print("error: --concurrency must be at least 1", file=sys.stderr)
        return 2
    if args.max_queue < 1:
        print("error: --max-queue must be at least 1", file=sys.stderr)
        return 2
    if args.mcp and (missing := mcp_unavailable()):
        print(f"error: --mcp {missing}", file=sys.stderr)
        return 2
    from .engine import EngineError

    try:
        demo = create_demo(args)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    from .ui import launch_options

    demo.launch(server_name=args.host, server_port=args.port, mcp_server=args.mcp, **launch_options())
    return 0
