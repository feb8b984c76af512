"""What the app adds to Gradio's server: bounded scratch files and a guard in front of its routes.

- :class:`Scratch` owns the files the app writes (display copies, downloads)
  in its own folder inside Gradio's upload folder, and sweeps them by age,
  together with the partial uploads Gradio 6 leaves behind (a form field
  other than ``files``, or a client gone mid-upload, leaves a ``tmpXXXX``
  file in the upload folder each time).
- :class:`RouteGuard` is an ASGI middleware (``launch(app_kwargs=...)``):
  it refuses the routes the app has no use for (``process_recording``: the
  app has no recording input), answers a queue join for an event that does
  not exist with 404 instead of Gradio's 500, and drops the queued jobs of a
  session that joined but never opened its event stream within
  ``stream_grace_s``, so work done for nobody does not hold the queue.
  It also forgets API sessions: Gradio keeps a copy of every component's
  config (about 25 KB) and the session's values for each session hash, up
  to 10,000 of them, and every ``/describe`` call is a new session; a session
  that never opened the page's heartbeat and has been idle ``api_session_s``
  is dropped (measured: 0.14 MB kept per ``/describe`` call without this).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs

UNUSED_ROUTES = ("/process_recording",)

LARGE_IMAGE_PIXELS = 8_000_000
"""Images above this many pixels give their freed memory back to the system once handled."""


def _malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to trim
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> bool:
    """Hand freed heap pages back to the system (glibc ``malloc_trim``); False where there is none.

    A decoded 36-megapixel PNG is about 100 MB per copy. glibc keeps such
    blocks in its heap once freed, so after a burst of big uploads the
    server's memory stayed at its peak (measured: +855 MB, kept); trimming
    after each large image gives it back.
    """
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
"""Gradio routes the app refuses (404): it has no input that needs them."""


def upload_folder() -> Path:
    import gradio as gr

    return Path(gr.utils.get_upload_folder())


class Scratch:
    """Folders for the files one request writes; those older than ``keep_s`` go, checked at most once a minute.

    Stray partial uploads (``tmp*`` files directly in the upload folder) go
    after ``stray_s`` without a change: no upload in progress is that idle.
    """

    sweep_every_s = 60.0

    def __init__(self, keep_s: float = 1800.0, stray_s: float = 600.0, root: Path | None = None,
                 uploads: Path | None = None):
        self.uploads = uploads or upload_folder()
        self.root = root or self.uploads / "kosmos-demo"
        self.keep_s, self.stray_s = keep_s, stray_s
        self._lock = threading.Lock()
        self._swept = 0.0

    def new(self) -> Path:
        self.sweep_if_due()
        folder = self.root / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def sweep_if_due(self) -> None:
        with self._lock:
            if time.monotonic() - self._swept < self.sweep_every_s:
                return
            self._swept = time.monotonic()
        self.sweep()

    def sweep(self, now: float | None = None) -> int:
        """Remove what is past its age now; returns how many files and folders went."""
        now = time.time() if now is None else now
        removed = 0
        for folder in _children(self.root):
            if _older(folder, now, self.keep_s):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        for stray in _children(self.uploads):
            if stray.name.startswith("tmp") and stray.is_file() and _older(stray, now, self.stray_s):
                stray.unlink(missing_ok=True)
                removed += 1
        return removed


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _older(path: Path, now: float, age_s: float) -> bool:
    try:
        return now - path.stat().st_mtime > age_s
    except OSError:
        return False


API_SESSION_S = 10.0
"""How long an API session (no page heartbeat) is kept after its last use; checked every half of it.

``/describe`` is stateless: each call is a new session and nothing of it is
needed afterwards. The window bounds what a burst of calls keeps at once
(1000 calls in 50 s kept 125 MB with 60 s). A client of the page's own
events (upload, then Run, without the page) must not leave more than this
between them.
"""


class RouteGuard:
    """ASGI middleware in front of Gradio's routes (see the module docstring)."""

    max_join_body = 2**20
    """Largest queue-join body read to check its event; bigger ones are refused (413)."""

    def __init__(self, app, stream_grace_s: float = 5.0, api_session_s: float = API_SESSION_S):
        self.app = app
        self.stream_grace_s = stream_grace_s
        self.api_session_s = api_session_s
        self._joined: dict[str, float] = {}  # session -> when its first unstreamed join came
        self._streams: dict[str, int] = {}  # session -> event streams open now
        self._pages: dict[str, int] = {}  # session -> page heartbeats open now: a visitor's tab
        self._reaper: asyncio.Task | None = None
        self._forgetter: asyncio.Task | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].rstrip("/")
        if path.endswith(UNUSED_ROUTES):
            return await _reply(send, 404, "This app has no use for that route.")
        if path.endswith("/queue/join") and scope["method"] == "POST":
            return await self._join(scope, receive, send)
        if path.endswith("/queue/data") and scope["method"] == "GET":
            return await self._stream(scope, receive, send)
        if self._forgetter is None:
            self._forgetter = asyncio.get_running_loop().create_task(self._forget_api_sessions(scope["app"]))
        if "/heartbeat/" in path:
            return await self._held_open(self._pages, path.rsplit("/", 1)[-1], scope, receive, send)
        return await self.app(scope, receive, send)

    async def _held_open(self, counts: dict[str, int], session: str, scope, receive, send):
        """Pass a long-lived request through, counting it as open for ``session`` meanwhile."""
        counts[session] = counts.get(session, 0) + 1
        try:
            return await self.app(scope, receive, send)
        finally:
            counts[session] -= 1
            if not counts[session]:
                del counts[session]

    async def _forget_api_sessions(self, app) -> None:
        """Every ``api_session_s / 2``: drop the kept state of idle sessions that are not a page."""
        import datetime

        while True:
            await asyncio.sleep(self.api_session_s / 2)
            try:
                if self.forget_idle_api_sessions(app, datetime.datetime.now()):
                    release_freed_memory()  # what the forgotten sessions held sits in glibc's arenas
            except Exception as error:  # noqa: BLE001 - a Gradio internals change must not take the server down
                print(f"kosmos-demo: cannot forget idle API sessions with this gradio ({type(error).__name__}: "
                      f"{error}); their state is kept up to Gradio's session capacity", file=sys.stderr)
                return

    def forget_idle_api_sessions(self, app, now) -> int:
        """Remove API sessions idle for ``api_session_s`` from Gradio's state holder; returns how many."""
        holder, queue = app.state_holder, app.get_blocks()._queue
        busy = {event.session_hash for waiting in queue.event_queue_per_concurrency_id.values()
                for event in waiting.queue}
        busy |= {job.session_hash for jobs in queue.active_jobs if jobs for job in jobs}
        forgotten = 0
        with holder.lock:
            for session, last in list(holder.time_last_used.items()):
                if session in self._pages or session in self._streams or session in busy:
                    continue
                if (now - last).total_seconds() >= self.api_session_s:
                    holder.session_data.pop(session, None)
                    holder.time_last_used.pop(session, None)
                    queue.pending_event_ids_session.pop(session, None)  # gradio never drops these itself
                    queue.pending_messages_per_session.pop(session, None)  # else kept up to its LRU's 2000
                    forgotten += 1
        return forgotten

    async def _join(self, scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_join_body:
                return await _reply(send, 413, "The request is too large.")
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if isinstance(request, dict) and "fn_index" in request:
            fns = scope["app"].get_blocks().fns
            index = request["fn_index"]
            if isinstance(index, bool) or not isinstance(index, int) or index not in fns:
                return await _reply(send, 404, "No such event (fn_index).")
            session = request.get("session_hash")
            if isinstance(session, str) and not self._streams.get(session):
                self._joined.setdefault(session, time.monotonic())
                self._start_reaper(scope["app"])
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _stream(self, scope, receive, send):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        session = (query.get("session_hash") or [None])[0]
        if session is None:
            return await self.app(scope, receive, send)
        self._joined.pop(session, None)
        return await self._held_open(self._streams, session, scope, receive, send)

    def _start_reaper(self, app) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap(app))

    async def _reap(self, app) -> None:
        """Every second while joins wait: drop the jobs of sessions whose stream did not open in time."""
        while self._joined:
            await asyncio.sleep(min(1.0, self.stream_grace_s))
            now = time.monotonic()
            for session, since in list(self._joined.items()):
                if now - since >= self.stream_grace_s:
                    del self._joined[session]
                    await app.get_blocks()._queue.clean_events(session_hash=session)


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
