"""The Gradio app: pure value conversions, the handlers, and the live server over HTTP (gradio_client)."""

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from kosmos_demo import ui_values as uv  # noqa: E402
from kosmos_demo.export import overview, token_label  # noqa: E402
from kosmos_demo.render import entity_color, entity_label  # noqa: E402
from kosmos_demo.results import Entity, Heatmaps, Result, Token  # noqa: E402
from kosmos_demo.settings import SettingsError  # noqa: E402
from kosmos_demo.tasks import PromptError, Task  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROCKET = ROOT / "kosmos_demo" / "assets" / "examples" / "rocket.jpg"  # 640x427
ROCKET_BOX = "295,125,345,405"
SHORT = {"max_new_tokens": 6}


def _entity(phrase, span, box, size=(200, 100)):
    w, h = size
    return Entity(phrase, span, (box,), ((box[0] / w, box[1] / h, box[2] / w, box[3] / h),))


@pytest.fixture
def fake_result():
    """'a dog and a dog near a cat': two entities share a phrase; one object has no phrase."""
    text = "a dog and a dog near a cat"
    entities = (
        _entity("a dog", (0, 5), (10, 10, 50, 60)),
        _entity("a dog", (10, 15), (100, 20, 150, 90)),
        _entity("a cat", (21, 26), (160, 0, 200, 100)),
        _entity("", (26, 26), (0, 0, 20, 20)),
    )
    tokens = (
        Token("<grounding>", "tag", None, False),
        Token("a", "text", (0, 1), False),
        Token(" dog", "text", (1, 5), True, 0),
        Token("<patch_index_0044>", "location", None, True, 1),
        Token(" and", "text", (5, 9), True, 2),
    )
    maps = np.zeros((3, 16, 16), dtype=np.float32)
    maps[0, 0, 0] = maps[1, 15, 15] = maps[2, 8, 8] = 1.0
    heatmaps = Heatmaps(maps, np.array([0.2, 0.4, 0.1], dtype=np.float32))
    return Result(image_size=(200, 100), task="brief", prompt="<grounding>An image of", text=text,
                  raw_text="...", entities=entities, tokens=tokens, heatmaps=heatmaps,
                  timings={"generate": 0.5, "total": 0.6})


# --------------------------------------------------------------------------- pure conversions


def test_caption_and_boxes_share_labels_and_colours(fake_result):
    colors = uv.color_map(fake_result)
    for i in range(len(fake_result.entities)):
        assert colors[entity_label(fake_result.entities, i)] == entity_color(i)
    segments = uv.caption_segments(fake_result)
    assert "".join(text for text, _ in segments) == fake_result.text
    highlighted = [(text, label) for text, label in segments if label is not None]
    assert highlighted == [("a dog", "a dog"), ("a dog", "a dog (2)"), ("a cat", "a cat")]  # duplicates differ
    _, boxes = uv.annotated_value(Image.new("RGB", (200, 100)), fake_result)
    assert {label for _, label in boxes} <= set(colors)
    assert {label for _, label in highlighted} <= {label for _, label in boxes}
    assert ("region 4" in colors) and ((0, 0, 20, 20), "region 4") in boxes  # unnamed object: box, no text


def test_annotated_value_scales_boxes_and_isolates(fake_result):
    half = Image.new("RGB", (100, 50))
    image, boxes = uv.annotated_value(half, fake_result)
    assert image is half
    assert boxes[0] == ((5, 5, 25, 30), "a dog")
    assert boxes[1] == ((50, 10, 75, 45), "a dog (2)")
    _, only = uv.annotated_value(half, fake_result, only=1)
    assert only == [((50, 10, 75, 45), "a dog (2)")]
    assert uv.entity_index(fake_result, "a dog (2)") == 1
    assert uv.entity_index(fake_result, "nothing") is None


def test_display_image_downscales_only():
    big, small = Image.new("RGB", (3000, 1500)), Image.new("RGB", (300, 200))
    assert uv.display_image(big).size == (1024, 512)
    assert uv.display_image(small).size == (512, 341)  # enlarged, so two clicks can mark a box on it


def test_token_segments_one_clickable_segment_per_generated_token(fake_result):
    segments = uv.token_segments(fake_result)
    assert len(segments) == len(fake_result.tokens)  # segment i is token i: a click's index needs no mapping
    # shaded over this caption's own range: its lowest share 0.15, its highest 1.0
    assert [score for _, score in segments] == [None, None, 0.433, 1.0, 0.15]
    assert uv.token_strip_label(fake_result).endswith("from 10% (lightest) to 40% (darkest) in this caption")
    assert segments[3][0] == "\u2039loc 44\u203a"
    assert uv.default_token(fake_result) == 2  # the first generated word
    overlay, info = uv.token_heatmap(Image.new("RGB", (200, 100), "white"), fake_result, 3)
    assert overlay.size == (200, 100) and "40%" in info and "loc 44" in info
    assert uv.token_heatmap(Image.new("RGB", (200, 100)), fake_result, 1) is None  # a prompt token
    a, _ = uv.token_heatmap(Image.new("RGB", (200, 100), "white"), fake_result, 2)
    assert a.tobytes() != overlay.tobytes()
    assert overview(Image.new("RGB", (200, 100)), fake_result).width > 200


def test_tokens_of_whitespace_alone_stay_visible():
    """A generated space would otherwise be an empty chip in the strip and an empty <code> in the heatmap line."""
    assert token_label(Token(" ", "text", (0, 1), True, 0)) == "\u00b7"
    assert token_label(Token("\n", "text", (0, 1), True, 0)) == "\u21b5"
    assert token_label(Token("", "text", None, True, 0)) == "\u2205"
    assert token_label(Token(" the", "text", (0, 4), True, 0)) == " the"  # a word reads as a word


def test_token_text_is_escaped_in_markdown():
    token = Token("<b>x</b>", "text", (0, 8), True, 0)
    result = Result((10, 10), "custom", "", "<b>x</b>", "", (), (token,),
                    Heatmaps(np.ones((1, 16, 16), np.float32), np.array([0.5], np.float32)))
    _, info = uv.token_heatmap(Image.new("RGB", (10, 10)), result, 0)
    assert "<b>" not in info and "&lt;b&gt;" in info


def test_build_request_rechecks_everything():
    request = uv.build_request("region", "", "10, 20 30,40", True, True, {"strategy": "sample", "temperature": "0.5"})
    assert request.box == (10.0, 20.0, 30.0, 40.0) and request.decoding.temperature == 0.5 and request.heatmaps
    with pytest.raises(SettingsError, match="temperature"):
        uv.build_request("brief", decoding={"temperature": float("nan")})
    with pytest.raises(SettingsError, match="num_beams"):
        uv.build_request("brief", decoding={"num_beams": 1000})
    with pytest.raises(SettingsError, match="not a decoding setting"):
        uv.build_request("brief", decoding={"evil": 1})
    with pytest.raises(PromptError, match="Unknown task"):
        uv.build_request("nope")
    with pytest.raises(PromptError, match="four numbers"):
        uv.build_request("region", box="1,2,3")
    with pytest.raises(PromptError):
        uv.build_request("brief", grounding="yes")


def test_prompt_preview_is_live_and_explains_problems():
    assert uv.prompt_preview("brief", "", "", True, None) == "<grounding>An image of"
    assert uv.prompt_preview("phrase", "a cat", "", True, None) == "<grounding><phrase> a cat</phrase>"
    assert uv.prompt_preview("region", "", "", True, None).startswith("Load an image")
    assert "<patch_index_" in uv.prompt_preview("region", "", "0,0,320,200", True, (640, 427))
    assert uv.prompt_preview("phrase", "", "", True, None).startswith("\u26a0 Phrase grounding needs text")
    assert "does not cover" in uv.prompt_preview("region", "", "900,900,999,999", True, (640, 427))
    assert uv.prompt_preview("custom", "Hi", "", False, None) == "Hi"


def test_region_marks_only_for_region_tasks_and_boxes_on_the_image():
    assert uv.region_marks("region", "20,20,60,50", None, (100, 80)) == ((20.0, 20.0, 60.0, 50.0), None)
    assert uv.region_marks("brief", "20,20,60,50", (1, 2), (100, 80)) == (None, None)
    assert uv.region_marks("region", "900,900,999,999", (5, 6), (100, 80)) == (None, (5, 6))  # misses the image
    assert uv.region_marks("region", "1,2,3", None, (100, 80)) == (None, None)
    assert uv.region_marks("nope", "", None, (100, 80)) == (None, None)
    assert uv.box_from_corners((60, 50), (20, 20), (100, 80)) == (20.0, 20.0, 60.0, 50.0)
    assert uv.box_from_corners((20, 20), (20, 70), (100, 80)) is None  # no area


def test_api_signature_covers_every_decoding_setting():
    from kosmos_demo.ui import DECODING_FIELDS, KosmosApp

    params = inspect.signature(KosmosApp.describe_image).parameters
    assert set(DECODING_FIELDS) <= set(params)
    assert all(params[name].default is None for name in DECODING_FIELDS)


# --------------------------------------------------------------------------- handlers, no server


@pytest.fixture(scope="module")
def handlers(app_engine):
    from kosmos_demo.ui import KosmosApp

    return KosmosApp(app_engine)


@pytest.fixture(scope="module")
def rocket(handlers):
    return handlers.receive(str(ROCKET))[1]


def _run(app, session, source, task="region", text="", box=ROCKET_BOX, max_new_tokens=8, **settings):
    """The Run handler as the page calls it (decoding widgets in DECODING_FIELDS order) -> RunOutputs per update."""
    from kosmos_demo.ui import DECODING_FIELDS, RunOutputs

    values = {"max_new_tokens": max_new_tokens, **settings}
    decoding = [values.get(name) for name in DECODING_FIELDS]
    return (RunOutputs(*update) for update in app.run(session, source, task, text, box, True, True, *decoding))


def test_an_upload_is_checked_once_and_shown_at_display_size(handlers, rocket, tmp_path):
    assert rocket.size == (640, 427) and rocket.name == "rocket.jpg" and rocket.path == str(ROCKET)
    assert Image.open(rocket.display).size == (640, 427) and rocket.scale == 1.0
    big = tmp_path / "big.png"
    Image.new("RGB", (2048, 1024), "white").save(big)
    shown, source, note, corner, status = handlers.receive(str(big))
    assert Image.open(shown).size == (1024, 512) and source.scale == 0.5 and note == "" and corner is None
    assert status == "Image ready (2048\u00d71024): press **Run**."
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all, just words " * 10)
    shown, source, note, _, status = handlers.receive(str(bad))
    assert shown is None and source is None and "This is not an image Pillow can read" in note


def test_run_streams_the_caption_then_everything(handlers, rocket):
    updates = list(_run(handlers, SimpleNamespace(session_hash="s1"), rocket))
    assert updates[0].status.startswith("Generating")
    partial = [u for u in updates[1:-1] if u.caption is not None and not isinstance(u.caption, dict)]
    assert partial and all(u.caption[0][1] is None for u in partial)  # plain text while streaming
    final = updates[-1]
    assert final.shown.result.entities[0].boxes == ((295, 125, 345, 405),)
    assert final.status.startswith("**Done**")
    assert len(final.downloads) == 4
    assert final.tokens.label.startswith("Tokens: click a generated token. Shade = ")


def test_beam_search_runs_from_the_page_without_streaming(handlers, rocket):
    updates = list(_run(handlers, SimpleNamespace(session_hash="s-beam"), rocket, strategy="beam", num_beams=3))
    assert updates[0].status.startswith("**Beam search** with 3 beams: the caption appears when the search ends")
    assert len(updates) == 2 and updates[-1].status.startswith("**Done**")
    assert updates[-1].shown.result.heatmaps is not None  # heatmaps from the teacher-forced pass


def test_stop_and_close_really_stop_generation(handlers, rocket, app_engine):
    from kosmos_demo.ui import STOPPED

    session = SimpleNamespace(session_hash="s2")
    for settings in ({}, {"strategy": "beam", "num_beams": 3}):
        # min_new_tokens: random weights may say EOS after 84 tokens, before Stop is pressed
        run = _run(handlers, session, rocket, task="brief", box="", max_new_tokens=400, min_new_tokens=400, **settings)
        next(run)
        said = []
        stopper = threading.Thread(target=lambda: (time.sleep(0.3), said.append(handlers.stop(session))))
        stopper.start()
        updates = list(run)
        stopper.join(10)
        assert said and said[0].startswith("**Stopped")  # returned only once the run had ended
        assert updates[-1].status == STOPPED, settings
        assert app_engine._lock.acquire(timeout=10), "generation kept running after Stop"
        app_engine._lock.release()
    run = _run(handlers, session, rocket, task="brief", box="", max_new_tokens=400, min_new_tokens=400)
    next(run)
    next(run)
    run.close()  # what Gradio does when the Stop button cancels the event
    assert app_engine._lock.acquire(timeout=10), "generation kept running after the handler was closed"
    app_engine._lock.release()


def test_run_refuses_bad_input_in_the_status_line_and_keeps_the_outputs(handlers, rocket, app_engine):
    import gradio as gr

    session = SimpleNamespace(session_hash="s3")
    for source, box, message in ((rocket, "", "needs a box"), (None, ROCKET_BOX, "Upload an image")):
        updates = list(_run(handlers, session, source, box=box))
        assert len(updates) == 1 and updates[0].status.startswith("\u26a0\ufe0f **Not run:**"), updates[0].status
        assert message in updates[0].status
        assert all(isinstance(v, dict) and v.get("__type__") == "update" for v in updates[0].values()[1:]), \
            "a refused run must leave the last run's outputs alone"
    assert isinstance(gr.skip(), dict)


def test_max_new_tokens_follows_the_models_positions():
    """The toy has 512 positions: 512 new tokens must fail, so the page's slider cannot offer them."""
    from kosmos_demo.engine import Kosmos2Engine
    from kosmos_demo.ui import KosmosApp, build_demo

    engine = Kosmos2Engine.load("toy", device="cpu")
    limit = engine.max_new_tokens_limit
    assert limit == engine.max_positions - 73  # the brief prompt: <s> <image> 64 slots </image> + 6 tokens
    demo = build_demo(engine)
    slider = next(c for c in demo.blocks.values() if getattr(c, "elem_id", None) == "decoding-max_new_tokens")
    assert slider.maximum == limit
    app = KosmosApp(engine)
    source = app.receive(str(ROCKET))[1]
    updates = list(_run(app, SimpleNamespace(session_hash="toy"), source, task="brief", box="", max_new_tokens=512))
    assert len(updates) == 1 and "exceeds the model's 512 positions" in updates[0].status
    assert updates[0].status.startswith("\u26a0\ufe0f **Not run:**")


def test_region_clicks_make_a_box_and_a_preview(handlers, rocket):
    first = SimpleNamespace(index=[100, 50])
    shown, box, corner = handlers.click(rocket, "region", "", None, first)
    assert corner == (100.0, 50.0) and box == "" and isinstance(shown, Image.Image)
    second = SimpleNamespace(index=[300, 200])
    shown, box, corner = handlers.click(rocket, "region", box, corner, second)
    assert box == "100,50,300,200" and corner is None and shown.size == (640, 427)
    assert "<patch_index_" in handlers.prompt(rocket, "region", "", box, True)
    assert handlers.view(rocket, "brief", box, None) == rocket.display  # other tasks show the image itself
    shown, box, corner = handlers.clear_box(rocket, "region")
    assert (shown, box, corner) == (rocket.display, "", None)


# --------------------------------------------------------------------------- the live server


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    url = app_server.url
    return Client(url, verbose=False, download_files=True)


def _describe(client, image=ROCKET, **kwargs):
    from gradio_client import handle_file

    return client.predict(image=handle_file(str(image)), api_name="/describe", **kwargs)


def test_api_lists_one_clean_endpoint(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert list(api["named_endpoints"]) == ["/describe"]
    names = [p["parameter_name"] for p in api["named_endpoints"]["/describe"]["parameters"]]
    assert names[:5] == ["image", "task", "text", "box", "grounding"]
    assert not api.get("unnamed_endpoints")


TASK_INPUTS = {
    Task.BRIEF: {},
    Task.DETAILED: {},
    Task.PHRASE: {"text": "a rocket"},
    Task.VQA: {"text": "What is this?"},
    Task.REGION: {"box": ROCKET_BOX},
    Task.REGION_VQA: {"text": "What is [this] made of?", "box": ROCKET_BOX},
    Task.CUSTOM: {"text": "An image of"},
}


@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_api_every_task(client, task):
    annotated, caption, record = _describe(client, task=task.value, **TASK_INPUTS[task], **SHORT)
    assert Image.open(annotated).size == (640, 427)  # full resolution
    assert isinstance(caption, str) and caption == record["text"]
    assert record["image"] == "rocket.jpg" and record["task"] == task.value
    assert record["prompt"].startswith("<grounding>")
    assert len([t for t in record["tokens"] if t["generated"]]) <= 6


def test_api_region_returns_the_users_box(client):
    _, caption, record = _describe(client, task="region", box=ROCKET_BOX, **SHORT)
    first = record["entities"][0]
    assert caption.startswith("It is")
    assert first["phrase"] == "It" and first["from_prompt"] and first["boxes"] == [[295, 125, 345, 405]]
    assert record["width"] == 640 and record["height"] == 427


def test_api_decoding_strategies(client):
    for settings in ({"strategy": "beam", "num_beams": 2}, {"strategy": "sample", "temperature": 0.7, "seed": 3}):
        _, caption, record = _describe(client, task="brief", **settings, **SHORT)
        assert record["text"] == caption


BAD_INPUTS = [
    ({"image": ROOT / "app.py"}, "not an image"),
    ({"task": "region", "box": "1000,1000,2000,2000"}, "does not cover"),
    ({"task": "region", "box": "1,2,3"}, "four numbers"),
    ({"task": "region"}, "needs a box"),
    ({"strategy": "sample", "temperature": "nan"}, "temperature: must be a finite number"),
    ({"strategy": "sample", "temperature": -1}, "temperature: must be in"),
    ({"strategy": "beam", "num_beams": 1000}, "num_beams: must be between 1 and 8"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"strategy": "nucleus"}, "strategy: must be one of"),
    ({"task": "phrase"}, "Phrase grounding needs text"),
    ({"task": "vqa", "text": "What is </image> here?"}, "control token '&lt;/image&gt;'"),
    ({"task": "vqa", "text": "x" * 1001}, "the limit is 1000"),
    ({"task": "region-vqa", "text": "What is this?", "box": ROCKET_BOX}, "[brackets]"),
    ({"task": "teleport"}, "Unknown task"),
]


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_api_bad_inputs_get_clear_errors_and_the_app_keeps_serving(client, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as raised:
        _describe(client, **kwargs)
    assert message in str(raised.value)
    assert "Traceback" not in str(raised.value)
    _, caption, _ = _describe(client, task="brief", max_new_tokens=2)
    assert caption.startswith("An image of")


def test_api_lone_surrogates_in_the_text_and_the_file_name(app_server):
    import reliability_support as rs

    url = app_server.url
    page = rs.Browser(url)  # gradio_client cannot send a lone surrogate; JSON's \\ud800 escape can
    try:
        image = page.upload("a.png", rs.good_png())
        event, payload = page.describe(image, task="vqa", text="what \ud800 is", max_new_tokens=2)
        assert event == "error" and "not valid Unicode (at position 5)" in payload["error"], payload
        event, payload = page.describe({**image, "orig_name": "a\ud800b.png"}, max_new_tokens=2)
    finally:
        page.close()
    assert event == "complete", payload
    _, caption, record = payload
    assert record["image"] == "a\\ud800b.png" and caption == record["text"]


def test_api_refuses_a_plain_path_instead_of_an_upload(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="handle_file"):
        client.predict(image="/etc/hostname", api_name="/describe")


def test_ui_events_are_not_callable_by_api_clients(client):
    from gradio_client.exceptions import AppError

    with pytest.raises((AppError, ValueError)):
        client.predict(api_name="/run")


def test_upload_size_is_limited(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(21 * 2**20))
    with pytest.raises(Exception, match="(?i)size|large|413"):
        _describe(client, image=big)


def test_concurrent_requests_are_queued(client):
    results, errors = [], []

    def call():
        try:
            results.append(_describe(client, task="brief", max_new_tokens=3))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 3


# --------------------------------------------------------------------------- app.py itself


def _app_env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}


def test_app_exits_with_a_clear_message_when_weights_cannot_load(capsys):
    from kosmos_demo.server import main  # what app.py runs (test_app_serves_a_tiny_checkpoint... runs app.py itself)

    assert main(["--model", "/nonexistent", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Could not load Kosmos-2" in err and "--model" in err and "Traceback" not in err


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_app_asked_to_quantize_without_bitsandbytes_says_so(app_checkpoint, capsys):
    from kosmos_demo.server import main

    assert main(["--model", str(app_checkpoint), "--quantize", "8bit"]) == 1
    err = capsys.readouterr().err
    assert "needs bitsandbytes" in err and "pip install bitsandbytes" in err and "Traceback" not in err


def test_app_serves_a_tiny_checkpoint_with_the_preview_banner(app_checkpoint, tmp_path):
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--model", str(app_checkpoint), "--device", "cpu",
         "--host", "127.0.0.1", "--port", str(port), "--concurrency", "2", "--max-queue", "4", "--mcp"],
        env=_app_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 120
        config = None
        while time.time() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as response:
                    config = json.load(response)
                break
            except OSError:
                time.sleep(0.5)
        assert config is not None, "app.py did not start serving"
        text = json.dumps(config)
        assert "random weights" in text and "preview-banner" in text
        assert "run-button" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/mcp/schema", timeout=10) as response:
            tools = json.load(response)  # --mcp: /describe as a tool for LLM agents
        assert [tool["name"] for tool in tools] == ["describe_image"]
        properties = tools[0]["inputSchema"]["properties"]
        from kosmos_demo.ui import KosmosApp

        documented = inspect.signature(KosmosApp.describe_image).parameters.keys() - {"self"}
        assert set(properties) == documented and tools[0]["inputSchema"]["required"] == ["image"]
        assert all(len(properties[name].get("description", "")) > 10 for name in documented)
        assert "region-vqa" in properties["task"]["description"] and "custom" in properties["task"]["description"]
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "Model loaded." in output


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:  # bound then closed: connecting to it is refused at once
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unreachable_hub_env(tmp_path) -> dict:
    env = {key: value for key, value in _app_env().items() if key not in ("HF_HUB_OFFLINE", "KOSMOS_MODEL")}
    return {**env, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_CACHE": str(tmp_path / "hub")}


def test_app_without_the_hub_says_so_at_once_instead_of_retrying(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--device", "cpu"], capture_output=True, text=True,
                          timeout=120, env=_unreachable_hub_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert "Retrying" not in done.stderr  # huggingface_hub's five retries took about 25 s
    assert "could not reach 127.0.0.1" in done.stderr and "not in the local cache" in done.stderr
    assert "--model toy" in done.stderr and "hf download" in done.stderr and "Traceback" not in done.stderr


def test_a_model_downloaded_before_loads_from_the_cache_when_the_hub_is_unreachable(tiny_checkpoint, tmp_path):
    import shutil

    repo = tmp_path / "hub" / "models--microsoft--kosmos-2-patch14-224"
    revision = "0" * 40
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    script = ("from kosmos_demo.engine import Kosmos2Engine; "
              "e = Kosmos2Engine.load('microsoft/kosmos-2-patch14-224', device='cpu', pack=False); "
              "print('served', e.model.config.kosmos_demo_tiny_random)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env=_unreachable_hub_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "served True" in done.stdout and "Retrying" not in done.stderr


def test_app_asked_for_mcp_without_the_extra_says_what_to_install(tmp_path):
    script = ("import importlib.util, sys; real = importlib.util.find_spec; "
              "importlib.util.find_spec = lambda name, *a: None if name == 'mcp' else real(name, *a); "
              "from kosmos_demo.server import main; sys.exit(main(['--mcp', '--model', '/nonexistent']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=_app_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert "pip install 'gradio[mcp]'" in done.stderr and "Traceback" not in done.stderr
