"""Part f: the page's streaming Run against ``/describe``, both over HTTP on one server launched in this process.

The Run button's event is private (gradio_client refuses it), so both are
called the way a browser calls them, through the queue protocol spoken by
``tests/reliability_support.Browser``: the page's run is timed from
``/queue/join`` to its ``process_completed`` message, so it includes every
streamed update and the page's final rendering; ``/describe`` from its POST to
its last event. The image is uploaded once, outside the timer, for both.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def page_works(setup, image_path: Path) -> tuple[Callable[[int], tuple[Callable, Callable]], Callable[[], None]]:
    """(works, close): ``works(tokens)`` -> (page run, ``/describe`` call), each ``work(clock)``; close stops the server."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path[:0] = [str(ROOT / "tests")]
    try:
        import reliability_support as rs
    finally:
        sys.path.remove(str(ROOT / "tests"))
    from kosmos_demo.ui import build_demo

    demo = build_demo(setup.engine)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, show_error=True)
    browser = rs.Browser(demo.local_url)
    data = image_path.read_bytes()
    try:
        image = browser.upload(image_path.name, data)
        browser.give_image(data, image_path.name)  # the session's image, as after an upload in the page
        run_index = browser.fn_index("run-button")
    except Exception:
        browser.close()
        demo.close()
        raise

    def works(tokens: int) -> tuple[Callable, Callable]:
        decoding = {"strategy": setup.strategy, "max_new_tokens": tokens, "min_new_tokens": tokens}

        def page(clock) -> int:
            browser.join(run_index, browser.run_page(None, task="brief", heatmaps=False, **decoding))
            messages = browser.messages()
            try:
                status = rs.run_status(rs.final_message(messages))
            finally:
                messages.close()
            generated = re.search(r"(\d+) tokens? generated", status)
            if not generated or int(generated.group(1)) != tokens:
                raise AssertionError(f"the page's run ended with {status!r}, expected {tokens} tokens")
            return tokens

        def describe(clock) -> int:
            event, outputs = browser.describe(image, **decoding)
            if event != "complete":
                raise AssertionError(f"/describe ended with {event}: {str(outputs)[:200]}")
            generated = sum(1 for token in outputs[2]["tokens"] if token["generated"])
            if generated != tokens:
                raise AssertionError(f"/describe generated {generated} tokens, expected {tokens}")
            return tokens

        return page, describe

    def close() -> None:
        browser.close()
        demo.close()

    return works, close
