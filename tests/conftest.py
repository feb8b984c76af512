"""Shared fixtures: every checkpoint is built here, offline; nothing is downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random Kosmos-2 written by the project's own builder."""
    from kosmos_demo.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    from kosmos_demo.engine import Kosmos2Engine

    return Kosmos2Engine.load(str(tiny_checkpoint), device="cpu")


# --- the web app (tests/test_app.py, tests/test_browser.py) ----------------


@pytest.fixture(scope="session")
def app_checkpoint(tiny_checkpoint):
    """The checkpoint the app tests serve; swap in a trained toy checkpoint here when there is one."""
    return tiny_checkpoint


def sharpen_attention(model, projection: float = 50.0, query_key: float = 10.0, decoder: float = 20.0) -> None:
    """Make a random checkpoint's attention peaky, in place.

    A freshly initialised tiny Kosmos-2 spreads every attention row evenly, so
    every token's heatmap is the same flat map. Scaling the image projection
    and the query/key weights gives distinct maps per token, as the real model
    has, so the tests can see a heatmap change when another token is clicked.
    """
    import torch

    with torch.no_grad():
        projection_layer = model.image_to_text_projection
        projection_layer.dense.weight.mul_(projection)
        projection_layer.x_attn.q_proj.weight.mul_(query_key)
        projection_layer.x_attn.k_proj.weight.mul_(query_key)
        for layer in model.text_model.model.layers:
            layer.self_attn.q_proj.weight.mul_(decoder)
            layer.self_attn.k_proj.weight.mul_(decoder)


@pytest.fixture(scope="session")
def app_engine(app_checkpoint):
    """The app's own engine instance (not the process-wide cache other tests share)."""
    from kosmos_demo.checkpoints import kind_of
    from kosmos_demo.cpu_linear import pack_linears, wanted
    from kosmos_demo.engine import Kosmos2Engine

    engine = Kosmos2Engine.load(str(app_checkpoint), device="cpu", pack=False)  # sharpened first, then packed
    if kind_of(engine.model.config).is_random:
        sharpen_attention(engine.model)
    if wanted(engine.device, engine.dtype):
        pack_linears(engine.model)  # as load does on CPU
    return engine


@dataclass(frozen=True)
class Served:
    """A running app: its Blocks, its address and the handlers behind it."""

    demo: object
    url: str
    app: object


def _serve(engine):
    """The full app over ``engine`` on a free loopback port: yields a :class:`Served`, then closes it."""
    import socket

    from kosmos_demo.ui import KosmosApp, build_demo, launch_options

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = KosmosApp(engine)
    demo = build_demo(engine, concurrency=1, max_queue=16, app=app)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options())
    try:
        yield Served(demo, f"http://127.0.0.1:{port}/", app)
    finally:
        demo.close()


@pytest.fixture(scope="session")
def app_server(app_engine):
    """The full app on the tiny checkpoint; closed at the end of the session."""
    yield from _serve(app_engine)


@pytest.fixture(scope="module")
def toy_server():
    """The full app on the committed shapes toy (skipped if it is missing)."""
    from kosmos_demo.checkpoints import SHORTCUTS
    from kosmos_demo.engine import Kosmos2Engine

    if not (SHORTCUTS["toy"] / "config.json").is_file():
        pytest.skip("kosmos_demo/assets/toy-model is missing: train it with python -m kosmos_demo train-toy")
    yield from _serve(Kosmos2Engine.load("toy", device="cpu"))
