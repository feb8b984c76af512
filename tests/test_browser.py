"""The page in a real browser: Debian's chromium driven by Playwright (never a downloaded browser).

Everything is clicked, typed and uploaded as a person would, on the shapes toy
(its captions, boxes and heatmaps mean something) and, for the random-weights
banner, on the tiny checkpoint. One chromium and one app serve the module.
"""

import os
import re
import time
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402
import reliability_support as rs  # noqa: E402
from PIL import Image  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "kosmos_demo" / "assets"
ROCKET = ASSETS / "examples" / "rocket.jpg"  # 640x427
RED_CIRCLE = ASSETS / "toy-examples" / "red-circle.png"  # 320x240, shown at 512x384
THREE_SHAPES = ASSETS / "toy-examples" / "purple-triangle-and-black-circle-and-white-square.png"
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]  # a test-pattern webcam
FIRST_ENTITY_RGB = "31, 119, 180"  # render.entity_color(0) == "#1f77b4"
DESKTOP, PHONE = {"width": 1440, "height": 1000}, {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser():
    """One Debian chromium for the module (Playwright's sync API allows one driver at a time)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _open(browser, url, viewport=DESKTOP, timeout_ms=60_000):
    context = browser.new_context(viewport=viewport, permissions=["camera", "clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(url)
    page.wait_for_selector("#run-button")
    return page


@pytest.fixture(scope="module")
def page(browser, toy_server):
    page = _open(browser, toy_server.url)
    page.locator("#decoding").get_by_text("Decoding settings").click()
    yield page
    page.context.close()


# --------------------------------------------------------------------------- what a person does


def _field(page, elem_id):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def _status(page) -> str:
    return page.inner_text("#status").strip()


def _caption(page) -> str:
    return "".join(page.locator("#caption .token .text").all_inner_texts())


def _upload(page, path: Path) -> None:
    page.set_input_files("#input-image input[type=file]", str(path))
    page.wait_for_function("document.querySelector('#input-image img')?.src.includes('display-')")


def _set(page, elem_id: str, value) -> None:
    field = _field(page, elem_id)
    field.fill(str(value))
    field.press("Enter" if field.evaluate("e => e.tagName") == "INPUT" else "Tab")


_WATCH_STATUS = """() => {
  if (window.__status) { window.__status.length = 0; return; }
  window.__status = [];
  const el = document.querySelector('#status');
  new MutationObserver(() => window.__status.push(el.innerText.trim()))
    .observe(el, {subtree: true, childList: true, characterData: true});
}"""


_RUN_ENDED = """(before) => {
  let started = false;
  for (const text of window.__status) {
    if (/^(Generating|Beam search)/.test(text)) started = true;
    else if (/^(Done|Stopped|\u26a0)/.test(text) && (started || text !== before)) return true;
  }
  return false;
}"""


def _run(page, press=None) -> str:
    """Press Run (or ``press()``) and wait until the run is over; returns the status line it ended with.

    Every text the status line shows is logged as it changes, so a run that is
    over in a blink is still seen starting and ending.
    """
    page.evaluate(_WATCH_STATUS)
    before = _status(page)
    (press or (lambda: page.click("#run-button")))()
    page.wait_for_function(_RUN_ENDED, arg=before)
    return _status(page)


def _no_error_badges(page) -> None:
    badges = page.locator(".error:visible, [data-testid='error']:visible")
    assert badges.count() == 0, [badges.nth(i).inner_text() for i in range(badges.count())]


def _download_names(page) -> list[str]:
    cells = page.locator("#downloads td.filename")
    return [cells.nth(i).get_attribute("aria-label") for i in range(cells.count())]


def _heatmap_bytes(page) -> bytes:
    image = page.locator("#heatmap img").first
    image.wait_for()
    return page.request.get(image.get_attribute("src")).body()


# --------------------------------------------------------------------------- the region flow, end to end


def test_region_run_shows_linked_boxes_caption_and_token_heatmaps(page, toy_server):
    assert "Toy model" in page.inner_text("#preview-banner")
    _upload(page, RED_CIRCLE)
    page.get_by_label("Describe a region").check()

    image = page.locator("#input-image img").first
    natural = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert natural == [512, 384]  # the 320x240 photo, enlarged for clicking
    box = image.bounding_box()
    scale = min(box["width"] / natural[0], box["height"] / natural[1], 1)  # Gradio: object-fit contain, never up

    def at(x, y):  # where pixel (x, y) of the ORIGINAL photo is drawn inside the <img> element
        return {"x": (box["width"] - natural[0] * scale) / 2 + x * 1.6 * scale,
                "y": (box["height"] - natural[1] * scale) / 2 + y * 1.6 * scale}

    before = image.get_attribute("src")
    image.click(position=at(130, 170))  # corners in either order, around the circle at (64, 103, 129, 168)
    page.wait_for_function(f"document.querySelector('#input-image img').src !== {before!r}")  # corner drawn
    page.wait_for_timeout(300)
    page.locator("#input-image img").first.click(position=at(62, 101))
    page.wait_for_function("document.querySelector('#box-input input, #box-input textarea').value !== ''")
    x1, y1, x2, y2 = map(int, _field(page, "box-input").input_value().split(","))
    assert max(abs(x1 - 62), abs(y1 - 101), abs(x2 - 130), abs(y2 - 170)) <= 2
    page.wait_for_function("document.querySelector('#prompt-preview textarea').value.includes('<patch_index_')")

    # typing the box instead keeps the prompt in sync
    _field(page, "box-input").fill("64,103,129,168")
    page.wait_for_function(
        "document.querySelector('#prompt-preview textarea').value.includes('<patch_index_0422><patch_index_0716>')")

    assert _run(page).startswith("Done")
    _no_error_badges(page)
    # the annotated image: the prompt's entity "It", in the same colour as the phrase in the caption
    page.wait_for_selector("#annotated img.mask")
    legend = page.locator("#annotated .legend-item").first
    assert legend.inner_text().strip() == "It"
    phrase = page.locator("#caption .token.highlighted").first
    assert phrase.inner_text().strip() == "It"
    assert FIRST_ENTITY_RGB in legend.evaluate("e => getComputedStyle(e).backgroundColor")
    assert FIRST_ENTITY_RGB in phrase.evaluate("e => getComputedStyle(e).backgroundColor")
    assert re.match(r"It is an? red circle", _caption(page)), _caption(page)  # the toy names the boxed shape

    # clicking the phrase isolates its boxes; "Show all boxes" goes back
    phrase.click()
    page.wait_for_function("document.querySelector('#isolation').innerText.includes('Showing only')")
    page.click("#show-all")
    page.wait_for_function("document.querySelector('#isolation').innerText.trim() === ''")

    # every generated token is clickable and shows its own heatmap
    tokens = page.locator("#tokens .token")
    generated = [i for i in range(tokens.count()) if tokens.nth(i).get_attribute("style")]
    assert len(generated) >= 3
    assert "Shade = its share of attention on the image, from" in page.inner_text("#tokens")
    shown_first = int(page.inner_text("#heatmap-info").split()[1])  # "Token K of N generated: ..."
    before = _heatmap_bytes(page)
    others = [i for k, i in enumerate(generated, start=1) if k != shown_first][:2]
    seen = [before]
    for token in others:
        tokens.nth(token).click()
        k = generated.index(token) + 1
        page.wait_for_function(f"document.querySelector('#heatmap-info').innerText.startsWith('Token {k} of')")
        seen.append(_heatmap_bytes(page))
    assert len(set(seen)) == 3
    names = _download_names(page)
    assert [n.split("-")[0] for n in names] == ["annotated", "entities", "heatmaps", "heatmaps"], names


def test_a_click_on_the_margin_says_to_click_the_photo(page):
    _upload(page, THREE_SHAPES)  # square: a margin beside it in the wide image box
    page.get_by_label("Describe a region").check()
    page.click("#clear-box")
    page.wait_for_function("document.querySelector('#box-input input, #box-input textarea').value === ''")
    image = page.locator("#input-image img").first
    image.scroll_into_view_if_needed()
    photo = image.bounding_box()
    frame = page.locator("#input-image .image-container").first.bounding_box()
    assert photo["x"] - frame["x"] > 20, "the test needs a margin beside the photo"
    page.mouse.click((frame["x"] + photo["x"]) / 2, photo["y"] + photo["height"] / 2)
    page.wait_for_selector("#click-hint")
    assert "Click on the photo itself" in page.inner_text("#click-hint")
    page.wait_for_timeout(500)
    assert _field(page, "box-input").input_value() == "" and page.locator("#click-hint").count() == 1


# --------------------------------------------------------------------------- every task x every strategy


TASK_INPUTS = {  # label: (task text, box)
    "Brief caption": ("", ""),
    "Detailed caption": ("", ""),
    "Phrase grounding": ("the red circle", ""),
    "Question answering": ("What is in the image?", ""),
    "Describe a region": ("", "64,103,129,168"),
    "Question about a region": ("What is [this shape]?", "64,103,129,168"),
    "Custom prompt": ("<grounding>An image of", ""),
}
STRATEGIES = {  # label: settings to type after choosing it
    "greedy": {},
    "beam": {"decoding-num_beams": 3},
    "sample": {"decoding-seed": 7, "decoding-temperature": 0.7},
}


def test_every_task_with_every_strategy_finishes_through_the_page(page):
    _upload(page, RED_CIRCLE)
    _set(page, "decoding-max_new_tokens", 24)
    runs = []
    for strategy, settings in STRATEGIES.items():
        page.locator("#decoding-strategy").get_by_label(strategy, exact=True).check()
        for elem_id, value in settings.items():
            page.wait_for_selector(f"#{elem_id}")
            _set(page, elem_id, value)
        for label, (text, box) in TASK_INPUTS.items():
            page.get_by_label(label, exact=True).check()
            if text:
                _set(page, "task-text", text)
            if box:
                _set(page, "box-input", box)
            status = _run(page)
            runs.append((strategy, label, status))
            assert status.startswith("Done"), (strategy, label, status)
            assert _caption(page).strip(), (strategy, label)
            _no_error_badges(page)
            if strategy == "beam" and label == "Brief caption":  # beam with heatmaps on: tokens are clickable
                assert page.locator("#heatmap img").count() == 1
                assert "of its attention went to the image" in page.inner_text("#heatmap-info")
    assert len(runs) == len(STRATEGIES) * len(TASK_INPUTS)
    page.locator("#decoding-strategy").get_by_label("greedy", exact=True).check()


def test_switching_task_never_sends_a_leftover_text(page):
    text_is = "document.querySelector('#task-text textarea, #task-text input')?.value === {!r}".format
    page.get_by_label("Question answering", exact=True).check()
    _field(page, "task-text").fill("What colour is it?")
    page.get_by_label("Phrase grounding", exact=True).check()
    _field(page, "task-text").fill("the purple triangle")
    page.get_by_label("Question answering", exact=True).check()  # each task gets back its own text
    page.wait_for_function(text_is("What colour is it?"))
    page.wait_for_function("document.querySelector('#prompt-preview textarea').value.includes('What colour')")
    assert "purple" not in page.locator("#prompt-preview textarea").input_value()
    page.get_by_label("Describe a region", exact=True).check()  # no text: nothing is carried over
    page.wait_for_selector("#task-text", state="hidden")
    page.get_by_label("Phrase grounding", exact=True).check()
    page.wait_for_function(text_is("the purple triangle"))


# --------------------------------------------------------------------------- bad files, every source


BAD_FILES = {  # name: (bytes, the app's own words)
    "notes.png": (rs.text_file(), "This is not an image Pillow can read (it looks like text)"),
    "huge.png": (rs.decompression_bomb(40_000), "above the 40 megapixel limit"),
    "empty.png": (b"", "The file is empty (0 bytes)"),
    "photo.heic": (rs.heic(), "HEIC files are not supported here"),
}


def test_a_bad_file_gets_the_apps_message_and_the_page_keeps_serving(page, tmp_path):
    for name, (data, words) in BAD_FILES.items():
        path = tmp_path / name
        path.write_bytes(data)
        page.set_input_files("#input-image input[type=file]", str(path))
        page.wait_for_function(f"document.querySelector('#image-note').innerText.includes({words!r})")
        assert name in page.inner_text("#image-note")
        _no_error_badges(page)
        status = _run(page)  # Run with the refused file: no model run, one message
        assert status.startswith("\u26a0") and "Upload an image first" in status, status
        _no_error_badges(page)
    # pasted from the clipboard (the browser puts only images it can decode there): 48 megapixels
    big = tmp_path / "big.png"
    Image.new("RGB", (8000, 6000), (90, 140, 200)).save(big)
    page.evaluate("async (bytes) => { const blob = new Blob([new Uint8Array(bytes)], {type: 'image/png'});"
                  " await navigator.clipboard.write([new ClipboardItem({'image/png': blob})]); }",
                  list(big.read_bytes()))
    page.locator("#input-image button[aria-label='Paste from clipboard']").click()
    page.wait_for_function("document.querySelector('#image-note').innerText.includes('above the 40 megapixel limit')")
    page.locator("#input-image button[aria-label='Upload file']").click()
    _upload(page, RED_CIRCLE)  # a good file clears the note and runs
    page.wait_for_function("document.querySelector('#image-note').innerText.trim() === ''")
    page.get_by_label("Brief caption", exact=True).check()
    assert _run(page).startswith("Done")


def test_webcam_and_examples_feed_the_same_checks(page):
    _upload(page, RED_CIRCLE)  # on its own or after any other test: an image to remove
    page.locator("#input-image button[aria-label='Remove Image']").click()
    page.wait_for_function("!document.querySelector('#input-image img')")  # the camera view opens only when empty
    page.locator("#input-image button[aria-label='Capture from camera']").click()
    access = page.get_by_text("Click to Access Webcam")
    access.or_(page.locator("#input-image video:visible")).first.wait_for()
    # Gradio ignores a capture before the stream has a frame size, as a person sees nothing to capture yet;
    # its access button drops a failed camera request silently, and a person clicks it again
    streaming = "document.querySelector('#input-image video')?.videoWidth > 0"
    for attempt in range(3):
        if access.is_visible():
            access.click()
        try:
            page.wait_for_function(streaming, timeout=20_000)
            break
        except Exception as error:  # playwright.sync_api.TimeoutError (imported by the fixture only)
            if type(error).__name__ != "TimeoutError":
                raise
            if attempt == 2:
                raise
    page.locator("#input-image button[aria-label='capture photo']").click()
    page.wait_for_function("document.querySelector('#input-image img')?.src.includes('display-')")
    page.get_by_label("Brief caption", exact=True).check()
    assert _run(page).startswith("Done")  # chromium's fake camera: a test pattern, described
    page.locator("#input-image button[aria-label='Upload file']").click()
    page.get_by_text("the red circle", exact=True).first.click()  # the toy's phrase-grounding example
    page.wait_for_function("document.querySelector('#input-image img')?.src.includes('display-')")
    page.wait_for_function("document.querySelector('#prompt-preview textarea').value.includes('the red circle')")
    assert _run(page).startswith("Done")
    assert "red circle" in _caption(page)


# --------------------------------------------------------------------------- errors, Stop, screenshots


def test_stop_ends_a_long_greedy_and_a_long_beam_run(page, toy_server):
    engine = toy_server.app.engine
    _upload(page, RED_CIRCLE)
    page.get_by_label("Brief caption", exact=True).check()
    _set(page, "decoding-max_new_tokens", 400)
    _set(page, "decoding-min_new_tokens", 400)  # the toy would stop after one sentence
    for strategy in ("greedy", "beam"):
        page.locator("#decoding-strategy").get_by_label(strategy, exact=True).check()
        page.click("#run-button")
        page.wait_for_function("/^(Generating|Beam search)/.test(document.querySelector('#status').innerText)")
        time.sleep(1.0)
        assert engine._lock.locked(), f"{strategy}: the model should still be running"
        page.click("#stop-button")
        deadline = time.time() + 15
        while time.time() < deadline and engine._lock.locked():
            time.sleep(0.1)
        assert not engine._lock.locked(), f"{strategy}: the model kept generating after Stop"
        page.wait_for_function("document.querySelector('#status').innerText.startsWith('Stopped')")
        _no_error_badges(page)
    _set(page, "decoding-min_new_tokens", 0)
    _set(page, "decoding-max_new_tokens", 24)
    page.locator("#decoding-strategy").get_by_label("greedy", exact=True).check()


def test_max_new_tokens_cannot_go_past_the_models_positions(page, toy_server):
    limit = toy_server.app.engine.max_new_tokens_limit
    slider = page.locator("#decoding-max_new_tokens input[type=number]").first
    assert int(slider.get_attribute("max")) == limit < 512


def test_screenshots_at_desktop_and_phone_size(browser, toy_server, page):
    _upload(page, THREE_SHAPES)
    page.get_by_label("Brief caption", exact=True).check()
    assert _run(page).startswith("Done")
    caption = _caption(page)
    assert "Z" not in caption and "," in caption, caption  # the toy's comma, not its old "Z"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-desktop.png"), full_page=True)
    phone = _open(browser, toy_server.url, viewport=PHONE)
    try:
        _upload(phone, THREE_SHAPES)
        assert _run(phone).startswith("Done")
        names = _download_names(phone)  # a phone shows their first letters and extension: those must differ
        assert len({(name[:8], Path(name).suffix) for name in names}) == len(names) == 4, names
        phone.screenshot(path=str(ARTIFACTS / "browser-phone.png"), full_page=True)
    finally:
        phone.context.close()


MULTILINGUAL = ("红色的圆形在哪里？", "أين الدائرة الحمراء؟", "Wo ist der grüne Kreis?")


def test_the_tiny_checkpoint_says_its_output_is_noise_and_takes_other_scripts(browser, app_server):
    tiny = _open(browser, app_server.url)
    try:
        assert "random weights" in tiny.inner_text("#preview-banner")
        _upload(tiny, ROCKET)
        tiny.locator("#prompt-preview").click()
        assert _run(tiny, lambda: tiny.keyboard.press("Control+Enter")).startswith("Done")  # the shortcut runs
        assert _caption(tiny).startswith("An image of")
        tiny.locator("#decoding").get_by_text("Decoding settings").click()
        _set(tiny, "decoding-max_new_tokens", 3)
        tiny.get_by_label("Question answering", exact=True).check()
        for question in MULTILINGUAL:  # the tiny tokenizer spells these scripts; the toy's does not
            _set(tiny, "task-text", question)
            tiny.wait_for_function(f"document.querySelector('#prompt-preview textarea').value.includes({question!r})")
            assert _run(tiny).startswith("Done")
            assert _caption(tiny).startswith(f"Question: {question} Answer:")
            _no_error_badges(tiny)
    finally:
        tiny.context.close()
