"""The app's own temp folder and route guard, over real HTTP against the running app (issue 12.7, 12.8)."""

import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import reliability_support as rs

from kosmos_demo.serving import Scratch


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_scratch_sweeps_old_request_folders_and_stray_partial_uploads(tmp_path):
    uploads = tmp_path / "uploads"
    scratch = Scratch(keep_s=100, stray_s=50, root=uploads / "kosmos-demo", uploads=uploads)
    old, young = scratch.new(), scratch.new()
    (old / "annotated-a.png").write_bytes(b"x")
    _age(old, 200)
    stray_old, stray_young, gradio_file = uploads / "tmpabc123", uploads / "tmpdef456", uploads / "kept.png"
    for path in (stray_old, stray_young, gradio_file):
        path.write_bytes(b"partial")
    _age(stray_old, 60)
    _age(gradio_file, 10_000)  # not a partial upload: not the app's to remove
    assert scratch.sweep() == 2
    assert not old.exists() and young.exists()
    assert not stray_old.exists() and stray_young.exists() and gradio_file.exists()


def test_scratch_sweeps_at_most_once_a_minute(tmp_path):
    scratch = Scratch(keep_s=0, root=tmp_path / "scratch", uploads=tmp_path)
    first = scratch.new()
    _age(first, 10)
    second = scratch.new()  # the first new() swept (nothing was old yet); this one is within the minute
    assert first.exists() and second.exists()
    scratch._swept -= scratch.sweep_every_s  # a minute later
    scratch.new()
    assert not first.exists()


@pytest.fixture()
def browser(app_server):
    browser = rs.Browser(app_server.url)
    yield browser
    browser.close()


def _partials(app_server) -> set[Path]:
    return {p for p in app_server.app.scratch.uploads.iterdir() if p.name.startswith("tmp") and p.is_file()}


def test_routes_the_app_does_not_use_are_refused(browser):
    for _ in range(3):
        response = browser.http.post(browser.api + "/process_recording",
                                     files={"files": ("a.wav", b"\0" * 2**20, "audio/wav")})
        assert response.status_code == 404 and "no use" in response.json()["detail"]


@pytest.mark.parametrize("fn_index", [99, 10**6, -1, "0", True, None])
def test_a_join_for_an_event_that_does_not_exist_is_a_404_not_a_500(browser, fn_index):
    body = {"data": [], "fn_index": fn_index, "session_hash": browser.session, "trigger_id": None}
    response = browser.http.post(browser.api + "/queue/join", json=body)
    assert response.status_code == 404 and response.json()["detail"] == "No such event (fn_index)."


def test_an_oversized_join_body_is_refused(browser):
    response = browser.http.post(browser.api + "/queue/join", content=b"{" + b" " * (2**20 + 10) + b"}",
                                 headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_uploads_under_another_field_or_dropped_midway_leave_nothing_after_a_sweep(app_server, browser):
    before = _partials(app_server)
    for _ in range(3):  # gradio 6.31 keeps the file of any field name but `files`
        browser.http.post(browser.api + "/upload", files={"other": ("a.png", b"\0" * 2**20, "image/png")})
    url = urlparse(app_server.url)
    for _ in range(2):  # a client that sends half its body and goes
        with socket.create_connection((url.hostname, url.port)) as raw:
            boundary = "b0undary"
            head = (f"POST /gradio_api/upload HTTP/1.1\r\nHost: {url.netloc}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {4 * 2**20}\r\n\r\n"
                    f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
                    "Content-Type: image/png\r\n\r\n")
            raw.sendall(head.encode() + b"\0" * 2**20)
        time.sleep(0.3)
    left = _partials(app_server) - before
    assert left, "gradio no longer leaves partial uploads: this mitigation may go"
    app_server.app.scratch.sweep(now=time.time() + app_server.app.scratch.stray_s + 1)
    assert not (_partials(app_server) & left)


def test_joins_whose_stream_never_opens_are_dropped_and_do_not_hold_the_queue(app_server):
    queue = app_server.demo._queue
    idle = [rs.Browser(app_server.url) for _ in range(6)]
    try:
        run = idle[0].fn_index("run-button")
        for browser in idle:  # joined, then never listened to
            browser.join(run, browser.run_page(None, max_new_tokens=40, min_new_tokens=40))

        def waiting() -> set[str]:
            return {e.session_hash for q in queue.event_queue_per_concurrency_id.values() for e in q.queue}

        deadline = time.time() + 30
        while time.time() < deadline and {b.session for b in idle} & waiting():
            time.sleep(0.5)
        assert not ({b.session for b in idle} & waiting()), "jobs of sessions without a stream still queued"
        live = rs.Browser(app_server.url)
        try:
            status, payload = live.describe(live.upload("a.png", rs.good_png()), max_new_tokens=4)
            assert status == "complete", payload
        finally:
            live.close()
    finally:
        for browser in idle:
            browser.close()


def test_memory_freed_after_a_large_image_goes_back_to_the_system():
    """Decoded in worker threads (as Gradio runs handlers), a big image's freed blocks stay in glibc's arenas."""
    import io
    import threading

    from PIL import Image

    from kosmos_demo.serving import release_freed_memory

    if not Path("/proc/self/statm").exists():
        pytest.skip("needs Linux /proc")

    def resident() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (30, 120, 200)).save(buffer, "PNG")
    data = buffer.getvalue()

    def decode():
        with Image.open(io.BytesIO(data)) as image:
            image.convert("RGB").resize((1024, 1024))

    before = resident()
    workers = [threading.Thread(target=decode) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    kept = resident() - before
    if not release_freed_memory():
        pytest.skip("not glibc: nothing to trim")
    assert resident() - before < 50 * 2**20, f"{kept / 2**20:.0f} MB kept, not given back"


def test_api_sessions_are_forgotten_once_idle_but_an_open_page_keeps_its_state(app_engine):
    import threading

    import httpx
    from starlette.middleware import Middleware

    from kosmos_demo.serving import RouteGuard
    from kosmos_demo.ui import KosmosApp, build_demo, launch_options

    port = rs.free_port()
    app = KosmosApp(app_engine)
    demo = build_demo(app_engine, concurrency=1, max_queue=16, app=app)
    options = {**launch_options(), "app_kwargs": {"middleware": [Middleware(RouteGuard, api_session_s=1.0)]}}
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **options)
    url = f"http://127.0.0.1:{port}/"
    page, client = rs.Browser(url), rs.Browser(url)
    stop = threading.Event()

    def heartbeat():  # what the page's tab holds open while it is shown
        with httpx.stream("GET", f"{page.api}/heartbeat/{page.session}", timeout=None) as stream:
            for _ in stream.iter_raw():
                if stop.is_set():
                    return

    tab = threading.Thread(target=heartbeat, daemon=True)
    try:
        tab.start()
        assert page.give_image(rs.good_png()).get("success")
        for _ in range(12):
            status, _ = client.describe(client.upload("a.png", rs.good_png()), max_new_tokens=2)
            assert status == "complete"
        holder = demo.server_app.state_holder
        assert len(holder.session_data) >= 12
        deadline = time.time() + 20
        while time.time() < deadline and len(holder.session_data) > 1:
            time.sleep(0.25)
        assert list(holder.session_data) == [page.session]  # the API calls' sessions went; the tab's stayed
        assert set(demo._queue.pending_messages_per_session) <= {page.session}  # and their message queues
        page.join(page.fn_index("run-button"), page.run_page(None, max_new_tokens=2))
        messages = page.messages()
        try:
            assert rs.final_message(messages)["success"]  # its image is still there to run on
        finally:
            messages.close()
    finally:
        stop.set()
        page.close()
        client.close()
        demo.close()
