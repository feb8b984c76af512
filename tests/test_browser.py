"""The page in a real browser: Debian's chromium driven by Playwright (never a downloaded browser)."""

import os
import re
import time
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ROCKET = ROOT / "assets" / "examples" / "rocket.jpg"  # 640x427
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
FIRST_ENTITY_RGB = "31, 119, 180"  # render.entity_color(0) == "#1f77b4"


@pytest.fixture(scope="module")
def browser():
    """One Debian chromium for the module (Playwright's sync API allows one driver at a time)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _open(browser, url, timeout_ms=30_000):
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(url)
    page.wait_for_selector("#run-button")
    return page


@pytest.fixture(scope="module")
def page(browser, app_server):
    page = _open(browser, app_server[1])
    yield page
    page.context.close()


def _wait_done(page):
    page.wait_for_function("document.querySelector('#status')?.innerText.startsWith('Done')")


def _field(page, elem_id):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def _caption(page) -> str:
    return "".join(page.locator("#caption .token .text").all_inner_texts())


def _heatmap_bytes(page) -> bytes:
    image = page.locator("#heatmap img").first
    image.wait_for()
    return page.request.get(image.get_attribute("src")).body()


def test_region_run_shows_linked_boxes_caption_and_token_heatmaps(page, app_engine):
    assert "random weights" in page.inner_text("#preview-banner")
    page.set_input_files("#input-image input[type=file]", str(ROCKET))
    page.wait_for_selector("#input-image img")
    page.get_by_label("Describe a region").check()

    # two clicks on the image mark a box, shown in the box field and drawn on the image
    image = page.locator("#input-image img").first
    box = image.bounding_box()
    natural = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert natural == [640, 427]
    scale = min(box["width"] / natural[0], box["height"] / natural[1])  # object-fit: contain

    def at(x, y):  # where pixel (x, y) of the photo is drawn inside the <img> element
        return {"x": (box["width"] - natural[0] * scale) / 2 + x * scale,
                "y": (box["height"] - natural[1] * scale) / 2 + y * scale}

    image.click(position=at(480, 342))  # corners in either order
    page.wait_for_function("document.querySelector('#input-image img').src.includes('region-')")  # corner drawn
    page.wait_for_timeout(300)
    page.locator("#input-image img").first.click(position=at(160, 85))
    page.wait_for_function("document.querySelector('#box-input input, #box-input textarea').value !== ''")
    x1, y1, x2, y2 = map(int, _field(page, "box-input").input_value().split(","))
    assert max(abs(x1 - 160), abs(y1 - 85), abs(x2 - 480), abs(y2 - 342)) <= 3
    page.wait_for_function("document.querySelector('#prompt-preview textarea').value.includes('<patch_index_')")

    # typing the box instead keeps the prompt in sync
    _field(page, "box-input").fill("295,125,345,405")
    page.wait_for_function(
        "document.querySelector('#prompt-preview textarea').value.includes('<patch_index_0302><patch_index_0977>')")

    page.click("#run-button")
    _wait_done(page)

    # the annotated image: the prompt's entity "It", in the same colour as the phrase in the caption
    page.wait_for_selector("#annotated img.mask")
    legend = page.locator("#annotated .legend-item").first
    assert legend.inner_text().strip() == "It"
    phrase = page.locator("#caption .token.highlighted").first
    assert phrase.inner_text().strip() == "It"
    assert FIRST_ENTITY_RGB in legend.evaluate("e => getComputedStyle(e).backgroundColor")
    assert FIRST_ENTITY_RGB in phrase.evaluate("e => getComputedStyle(e).backgroundColor")
    assert _caption(page).startswith("It is")

    # clicking the phrase isolates its boxes; "Show all boxes" goes back
    phrase.click()
    page.wait_for_function("document.querySelector('#isolation').innerText.includes('Showing only')")
    page.click("#show-all")
    page.wait_for_function("document.querySelector('#isolation').innerText.trim() === ''")

    # every generated token is clickable and shows its own heatmap
    tokens = page.locator("#tokens .token")
    generated = [i for i in range(tokens.count()) if tokens.nth(i).get_attribute("style")]
    assert len(generated) >= 3
    before = _heatmap_bytes(page)
    shown_first = int(page.inner_text("#heatmap-info").split()[1])  # "Token K of N generated: ..."
    first, second = [i for k, i in enumerate(generated, start=1) if k != shown_first][:2]
    for token in (first, second):
        tokens.nth(token).click()
        k = generated.index(token) + 1
        page.wait_for_function(f"document.querySelector('#heatmap-info').innerText.startsWith('Token {k} of')")
        if token == first:
            after_first = _heatmap_bytes(page)
    after_second = _heatmap_bytes(page)
    assert len({before, after_first, after_second}) == 3

    assert page.locator("#downloads a, #downloads tr").count() >= 3
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)


def test_brief_caption_with_the_keyboard_shortcut(page):
    page.get_by_label("Brief caption").check()
    page.wait_for_function("document.querySelector('#prompt-preview textarea').value === '<grounding>An image of'")
    page.locator("#prompt-preview").click()
    page.keyboard.press("Control+Enter")
    _wait_done(page)
    assert _caption(page).startswith("An image of")
    assert page.locator("#heatmap img").count() == 1


def test_stop_ends_the_generation(page, app_engine):
    page.locator("#decoding").get_by_text("Decoding settings").click()
    _field(page, "decoding-max_new_tokens").fill("512")
    _field(page, "decoding-max_new_tokens").press("Enter")
    page.click("#run-button")
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('Generating')")
    page.click("#stop-button")
    deadline = time.time() + 15
    while time.time() < deadline and app_engine._lock.locked():
        time.sleep(0.1)
    assert not app_engine._lock.locked(), "the model kept generating after Stop"
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('Stopped')")
    page.wait_for_timeout(500)
    assert page.inner_text("#status").startswith("Stopped")


TOY_SHAPE = ROOT / "assets" / "toy-examples" / "red-circle.png"


def test_toy_draws_boxes_on_shapes_and_heatmaps_over_them(browser, toy_server):
    """On the shapes toy the page shows a real grounded caption, its box and a heatmap: the screenshot to look at."""
    page = _open(browser, toy_server[1], timeout_ms=60_000)
    assert "Toy model" in page.inner_text("#preview-banner")
    page.set_input_files("#input-image input[type=file]", str(TOY_SHAPE))
    page.wait_for_selector("#input-image img")
    page.click("#run-button")
    _wait_done(page)
    assert _caption(page).startswith("An image of")
    assert re.search(r"\b[1-9]\d* grounded phrase", page.inner_text("#status"))  # the toy drew a box
    before = _heatmap_bytes(page)
    tokens = page.locator("#tokens .token")
    tokens.nth(tokens.count() - 2).click()
    page.wait_for_function("document.querySelector('#heatmap-info')?.innerText.includes('Token')")
    page.wait_for_timeout(500)
    assert _heatmap_bytes(page) != before
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-toy.png"), full_page=True)
    page.context.close()
