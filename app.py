"""Kosmos-2 web demo: ``python app.py [--model DIR] [--port N]``; also the Hugging Face Spaces entry point.

Same as ``kosmos-demo serve``: :mod:`kosmos_demo.server` holds the wiring.
"""

import os
import sys

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported, here and in every test

from kosmos_demo.server import main  # noqa: E402  (imports `spaces` before torch, as ZeroGPU needs)

if __name__ == "__main__":
    sys.exit(main())
