"""Security of the served app: gradio's floor, the files it serves, upload and prompt limits, escaping, SSRF.

Everything runs against the in-process app (``app_server``) on 127.0.0.1; the
SSRF checks aim at a canary server on 127.0.0.1 too, and count its hits.
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, urlsplit

import pytest
import reliability_support as rs

ROOT = rs.ROOT
ASSETS = ROOT / "kosmos_demo" / "assets"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    yield from rs.one_torch_thread()


def _get(url: str, raw_path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """GET a path exactly as written (no client-side normalisation of '..' or '%2e')."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", raw_path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


# --------------------------------------------------------------------------- versions and launch options


def test_gradio_is_at_or_above_the_release_that_fixes_the_file_and_ssrf_advisories():
    import gradio
    from packaging.version import Version

    text = (ROOT / "requirements.txt").read_text()
    floor = re.search(r"^gradio>=([\d.]+)", text, re.MULTILINE)
    assert floor, "requirements.txt must pin a floor for gradio"
    assert Version(floor.group(1)) >= Version("6.16.0"), "do not lower the floor below the advisory fixes"
    assert Version(gradio.__version__) >= Version(floor.group(1)), f"installed gradio {gradio.__version__}"
    comment = text[: floor.start()].rsplit("\n\n", 1)[-1]
    assert "path traversal" in comment and "SSRF" in comment, "the floor needs its reason next to it"


def test_launch_options_allow_only_the_assets_and_no_share_link(app_server):
    from kosmos_demo.ui import ASSETS as UI_ASSETS
    from kosmos_demo.ui import MAX_FILE_SIZE, launch_options

    options = launch_options()
    assert options["allowed_paths"] == [str(ASSETS)] and UI_ASSETS == ASSETS
    assert options["share"] is False and options["max_file_size"] == MAX_FILE_SIZE == "20mb"
    assert not {"blocked_paths", "auth", "root_path", "ssl_verify"} & set(options)
    demo = app_server.demo
    assert [str(Path(p).resolve()) for p in demo.allowed_paths] == [str(ASSETS)]
    assert "**launch_options()" in (ROOT / "kosmos_demo" / "server.py").read_text()  # the one launch call
    links = [p for p in ASSETS.rglob("*") if p.is_symlink()]
    assert not links, f"a symlink in assets/ would serve what it points at: {links}"


# --------------------------------------------------------------------------- the file routes

SECRETS = {  # file -> a piece of its content that must never come back
    "/etc/passwd": b"root:",
    str(ROOT / "app.py"): b"Kosmos-2 web demo",
    str(ROOT / "kosmos_demo" / "engine.py"): b"The Kosmos-2 engine",
    str(ROOT / "tests" / "conftest.py"): b"Shared fixtures",
    "/proc/self/environ": b"HF_HUB_OFFLINE",
}


def _attempts() -> list[tuple[str, bytes]]:
    """(raw request path, secret) for every way of naming a file outside the allowed folders."""
    import gradio as gr

    upload = Path(gr.utils.get_upload_folder())
    engine = str(ROOT / "kosmos_demo" / "engine.py")
    app = str(ROOT / "app.py")
    out = []
    for path, secret in SECRETS.items():
        out += [(f"/gradio_api/file={path}", secret), (f"/gradio_api/file={quote(path, safe='')}", secret),
                (f"/gradio_api/file/{path.lstrip('/')}", secret)]
    traversals = [
        (f"{ASSETS}/../app.py", app), (f"{ASSETS}/examples/../../kosmos_demo/engine.py", engine),
        (f"{ASSETS}/%2e%2e/app.py", app), (f"{ASSETS}/%2E%2E%2Fapp.py", app),
        (f"{ASSETS}/%252e%252e/app.py", app), (f"{ASSETS}/..%5capp.py", app), (f"{ASSETS}/.../app.py", app),
        (f"{upload}/../../etc/passwd", "/etc/passwd"), (f"{upload}/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd"),
        ("app.py", app), ("kosmos_demo/engine.py", engine), ("./app.py", app),
        ("../../../../../../etc/passwd", "/etc/passwd"), ("..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/etc/passwd"),
        (f"{ASSETS}%00/../app.py", app), (f"file://{app}", app), (f"{ASSETS}/examples/rocket.jpg/../../../app.py", app),
    ]
    out += [(f"/gradio_api/file={target}", SECRETS[secret]) for target, secret in traversals]
    out += [(f"/file={app}", SECRETS[app]), ("/file=/etc/passwd", b"root:")]
    for prefix in ("/static", "/assets", "/gradio_api/static", "/svelte"):
        out += [(f"{prefix}/../../../../../../etc/passwd", b"root:"),
                (f"{prefix}/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", b"root:"),
                (f"{prefix}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", b"root:")]
    return out


ATTEMPTS = _attempts()


@pytest.mark.parametrize("raw_path,secret", ATTEMPTS, ids=[a[0][:90] for a in ATTEMPTS])
def test_files_outside_the_app_folders_cannot_be_fetched(app_server, raw_path, secret):
    url = app_server.url
    status, _, body = _get(url, raw_path)
    assert status in (400, 403, 404), f"{raw_path} -> {status}"
    assert secret not in body, f"{raw_path} leaked the file"


def test_the_file_route_does_serve_an_asset(app_server):
    url = app_server.url
    rocket = ASSETS / "examples" / "rocket.jpg"
    status, headers, body = _get(url, f"/gradio_api/file={rocket}")
    assert status == 200 and body == rocket.read_bytes() and headers["content-type"] == "image/jpeg"


def test_uploads_come_back_as_downloads_not_as_pages(app_server):
    """An uploaded SVG or HTML page must not run in the app's origin (stored XSS)."""
    url = app_server.url
    page = rs.Browser(url)
    try:
        for name, data in (("x.svg", rs.svg()), ("x.html", rs.html_page())):
            path = page.upload(name, data)["path"]
            status, headers, body = _get(url, f"/gradio_api/file={path}")
            assert status == 200 and body == data
            assert headers["content-type"].split(";")[0] not in ("text/html", "image/svg+xml", "application/xml")
            assert headers.get("content-disposition", "").startswith("attachment")
    finally:
        page.close()


def test_cross_origin_pages_are_not_allowed_to_read_the_api(app_server):
    url = app_server.url
    _, headers, _ = _get(url, "/config", {"Origin": "http://evil.example"})
    assert headers.get("access-control-allow-origin") not in ("*", "http://evil.example")


# --------------------------------------------------------------------------- limits enforced on the server


def test_an_upload_over_20_mb_is_refused_by_the_server(app_server):
    import gradio as gr
    import httpx

    url = app_server.url
    upload = Path(gr.utils.get_upload_folder())
    before = set(upload.rglob("big.png"))
    body = b"\x89PNG\r\n\x1a\n" + b"\x00" * (21 * 2**20)
    response = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", body, "image/png")}, timeout=60)
    assert response.status_code == 413, response.text[:200]
    assert "20" in response.text and set(upload.rglob("big.png")) == before
    small = httpx.post(url + "gradio_api/upload", files={"files": ("small.png", rs.good_png(), "image/png")})
    assert small.status_code == 200


def test_prompt_length_is_enforced_on_the_server_for_the_page_too(app_server):
    """The text box's max_length is only the browser's; a hand-made request must still be refused."""
    url = app_server.url
    page = rs.Browser(url)
    try:
        page.join(page.fn_index("run-button"), page.run_page(rs.good_png(), task="vqa", text="<b>x</b>" * 2500))
        final = rs.final_message(page.messages())
    finally:
        page.close()
    message = rs.run_status(final)
    assert message.startswith("\u26a0\ufe0f **Not run:**") and "20000 characters long; the limit is 1000" in message
    assert "<b>" not in message


def _call_describe(url: str, body: str) -> str:
    """The raw HTTP API (/call/describe), the way curl uses it; returns the event stream's text."""
    import httpx

    with httpx.Client(timeout=60) as http:
        posted = http.post(url + "gradio_api/call/describe", content=body, headers={"content-type": "application/json"})
        assert posted.status_code == 200, posted.text
        return http.get(url + f"gradio_api/call/describe/{posted.json()['event_id']}").text


def _describe_body(image: dict, *, temperature: str = "null", task: str = "brief") -> str:
    # the 16 inputs of /describe: image, task, text, box, grounding, then the 11 decoding settings
    return ('{"data": [%s, "%s", "", "", true, "sample", null, null, %s, null, null, 3, null, null, null, null]}'
            % (json.dumps(image), task, temperature))


def test_raw_json_nan_and_infinity_are_refused_by_name(app_server):
    url = app_server.url
    page = rs.Browser(url)
    try:
        image = page.upload("a.png", rs.good_png())
    finally:
        page.close()
    for literal in ("NaN", "Infinity", "-Infinity"):
        events = _call_describe(url, _describe_body(image, temperature=literal))
        assert "event: error" in events and "temperature: must be a finite number" in events, events[:300]


@pytest.fixture
def canary():
    """An HTTP server on 127.0.0.1 that counts every request: the app must never call it."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(rs.good_png())

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_the_server_does_not_fetch_loopback_urls_for_anyone(app_server, canary):
    """SSRF: the file and proxy routes and a FileData url must not make the server call 127.0.0.1."""
    url = app_server.url
    target, hits = canary
    for raw_path in (f"/gradio_api/file={target}/secret.png", f"/gradio_api/proxy={target}/secret.png",
                     f"/gradio_api/file={quote(target + '/secret.png', safe='')}"):
        status, _, _ = _get(url, raw_path)
        assert status in (400, 403, 404), f"{raw_path} -> {status}"
    for image in ({"path": f"{target}/a.png", "url": f"{target}/a.png", "meta": {"_type": "gradio.FileData"}},
                  {"path": "a.png", "url": f"{target}/a.png", "meta": {"_type": "gradio.FileData"}}):
        events = _call_describe(url, _describe_body(image))
        assert "event: error" in events
    assert hits == [], f"the server fetched {hits}"


def test_api_file_data_pointing_at_server_files_is_refused(app_server):
    url = app_server.url
    for path, secret in SECRETS.items():
        events = _call_describe(url, _describe_body({"path": path, "meta": {"_type": "gradio.FileData"}}))
        assert "event: error" in events and secret.decode() not in events


# --------------------------------------------------------------------------- escaping


SCRIPT_PHRASE = ("<phrase><script>alert(1)</script><img src=x onerror=alert(2)></phrase><object><patch_index_0000>"
                 "<patch_index_1023></object> is")


def test_user_text_is_escaped_wherever_the_page_renders_html(app_server, tmp_path):
    """Markdown outputs, status lines and the upload note: the user's text comes back inert."""
    from kosmos_demo import ui
    from kosmos_demo.settings import DecodingSettings
    from kosmos_demo.tasks import PromptError

    app = app_server.app
    image = tmp_path / "a.png"
    image.write_bytes(rs.good_png())
    source = app.receive(str(image))[1]
    decoding = [4 if name == "max_new_tokens" else getattr(DecodingSettings(), name) for name in ui.DECODING_FIELDS]
    session = SimpleNamespace(session_hash="security")
    final = ui.RunOutputs(*list(app.run(session, source, "custom", SCRIPT_PHRASE, "", True, True, *decoding))[-1])
    shown = final.shown
    assert shown.result.entities[0].phrase == "<script>alert(1)</script><img src=x onerror=alert(2)>"
    label = ui.uv.labels(shown.result)[0]
    _, _, note, _ = app.isolate(shown, None, label)
    rendered = [str(value) for value in (final.status, final.heatmap_info, final.timings, final.isolation, note)]
    for text in rendered:
        assert "<script" not in text and "<img" not in text, text
    assert "&lt;script&gt;" in note

    refused = ui.RunOutputs(*next(app.run(session, source, "vqa", "<img src=x onerror=alert(1)></image>", "",
                                          True, True, *decoding)))  # a status line quoting the user's text
    assert "<" not in refused.status and "&lt;/image&gt;" in refused.status
    assert "<" not in ui.user_error(PromptError("<b>bold</b>")).message

    hostile = tmp_path / "<img src=x onerror=alert(1)>.png"  # the note on a bad upload names the file
    hostile.write_bytes(rs.text_file())
    shown_image, source, note, _, _ = app.receive(str(hostile))
    assert shown_image is None and source is None
    assert "<" not in note and "onerror" in note and "not an image" in note


def test_an_uploaded_file_name_with_markup_comes_back_inert(app_server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url = app_server.url
    hostile = tmp_path / "<svg onload=alert(1)>.png"
    hostile.write_bytes(rs.text_file())
    client = Client(url, verbose=False, download_files=False)
    try:
        with pytest.raises(AppError) as raised:
            client.predict(image=handle_file(str(hostile)), api_name="/describe")
    finally:
        client.close()
    assert "not an image" in str(raised.value) and "<" not in str(raised.value)
