"""Part e: the Gradio app end to end over HTTP, launched in this process on loopback.

``kosmos_demo.ui.build_demo(engine, ...)`` builds the Blocks around the very
engine the other parts time; ``gradio_client`` calls its ``/describe`` API with
the image as ``handle_file(path)``, exactly as an API user would.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class AppUnavailable(RuntimeError):
    """The app cannot be measured in this checkout; the message says why."""


@dataclass
class AppReply:
    """What one ``/describe`` call returned; ``timings`` are the engine's own, measured in the server."""

    annotated: dict
    caption: str
    record: dict

    @property
    def timings(self) -> dict[str, float]:
        return self.record.get("timings", {})


def app_work(setup, image_path: Path) -> tuple[Callable, Callable[[], None]]:
    """(work, close): ``work(clock)`` makes one ``/describe`` call; ``close()`` stops the server."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from kosmos_demo.ui import build_demo
    except ImportError as error:
        raise AppUnavailable(f"kosmos_demo.ui.build_demo cannot be imported ({error})") from error
    from gradio_client import Client, handle_file

    demo = build_demo(setup.engine)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, show_error=True)
    downloads = tempfile.TemporaryDirectory(prefix="kosmos-bench-app-")
    try:  # the client downloads the annotated PNG, as an API user's would by default
        client = Client(demo.local_url, verbose=False, download_files=downloads.name)
        arguments = describe_arguments(client, setup)
    except Exception:
        demo.close()
        downloads.cleanup()
        raise

    def work(clock) -> AppReply:
        reply = AppReply(*client.predict(handle_file(str(image_path)), **arguments, api_name="/describe"))
        generated = sum(1 for token in reply.record["tokens"] if token["generated"])
        if generated != setup.tokens:
            raise AssertionError(f"the app generated {generated} tokens, expected {setup.tokens}")
        return reply

    def close() -> None:
        try:
            client.close()
        except Exception:  # pragma: no cover - older gradio_client
            pass
        demo.close()
        downloads.cleanup()

    return work, close


def describe_arguments(client, setup) -> dict:
    """Keyword arguments for ``/describe`` beyond the image: the brief task and the run's decoding."""
    api = client.view_api(print_info=False, return_format="dict")
    endpoint = api["named_endpoints"].get("/describe")
    if endpoint is None:
        raise AppUnavailable(f"the app has no /describe endpoint (it has {sorted(api['named_endpoints'])})")
    wanted = {
        "task": "brief", "strategy": setup.strategy, "max_new_tokens": setup.tokens,
        "min_new_tokens": setup.tokens, "heatmaps": False, "text": "", "box": "",
    }
    names = [p.get("parameter_name") for p in endpoint["parameters"]]
    return {name: value for name, value in wanted.items() if name in names}
