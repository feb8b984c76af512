"""Kosmos-2 web demo: ``python app.py [--model DIR] [--port N]``; also the Hugging Face Spaces entry point.

Only wiring lives here: parse the options, load the model once, build the page
with :func:`kosmos_demo.ui.build_demo` and serve it. Never a share tunnel.
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported, here and in every test

try:  # on ZeroGPU Spaces `spaces` must be imported before torch touches CUDA
    import spaces  # noqa: F401
except ImportError:
    spaces = None

import argparse  # noqa: E402
import sys  # noqa: E402
from typing import Sequence  # noqa: E402

from kosmos_demo.cli import add_model_options  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve the Kosmos-2 demo web app (Gradio).")
    add_model_options(parser)
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="model runs at the same time (default 1: one GPU, one generation)")
    parser.add_argument("--max-queue", type=int, default=32, help="requests allowed to wait (default 32)")
    return parser


def _on_zero_gpu() -> bool:
    return spaces is not None and os.environ.get("SPACES_ZERO_GPU", "") not in ("", "0", "false", "False")


def create_demo(args: argparse.Namespace):
    """Load the engine (progress on stderr) and build the queued Blocks; raises EngineError."""
    from kosmos_demo.engine import get_engine

    device, dtype = args.device, args.dtype
    if _on_zero_gpu():  # ZeroGPU wants the weights on cuda at start-up; it attaches the GPU per call
        device = "cuda" if device == "auto" else device
        dtype = "bfloat16" if dtype == "auto" else dtype
    engine = get_engine(args.model, device, dtype, progress=lambda message: print(message, file=sys.stderr, flush=True),
                        quantize=args.quantize)
    from kosmos_demo.ui import build_demo  # gradio is imported only once there is a model to serve

    return build_demo(engine, concurrency=args.concurrency, max_queue=args.max_queue)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency < 1:
        print("error: --concurrency must be at least 1", file=sys.stderr)
        return 2
    if args.max_queue < 1:
        print("error: --max-queue must be at least 1", file=sys.stderr)
        return 2
    from kosmos_demo.engine import EngineError

    try:
        demo = create_demo(args)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    from kosmos_demo.ui import launch_options

    demo.launch(server_name=args.host, server_port=args.port, **launch_options())
    return 0


if __name__ == "__main__":
    sys.exit(main())
