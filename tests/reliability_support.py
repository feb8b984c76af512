"""Shared helpers of the reliability, security, fault and load tests (not a test module).

Image factories for hostile uploads, a browser-like client for the page's
private events (gradio_client refuses them, a browser does not), the app as
a subprocess, process memory, and the JSON artifacts RELIABILITY.md is built
from. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


# --------------------------------------------------------------------------- images (bytes)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(width: int = 64, height: int = 48) -> Image.Image:
    """Two colours, so orientation and cropping bugs would show."""
    image = Image.new("RGB", (width, height), (200, 30, 30))
    image.paste((20, 20, 220), (0, 0, width // 2, height // 3))
    return image


def good_png() -> bytes:
    return _save(photo(), "PNG")


def empty() -> bytes:
    return b""


def zero_bytes() -> bytes:
    return b"\x00" * 4096


def truncated_jpeg() -> bytes:
    return _save(photo(256, 256), "JPEG")[:600]


def truncated_png() -> bytes:
    data = _save(Image.effect_noise((256, 256), 64).convert("RGB"), "PNG")
    return data[: len(data) // 2]


def text_file() -> bytes:
    return b"hello, this is a note and not an image at all\n" * 20


def svg() -> bytes:
    return (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b'<script>alert(document.cookie)</script><rect width="10" height="10"/></svg>')


def html_page() -> bytes:
    return b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb(side: int = 100_000) -> bytes:
    """A 120-byte PNG whose header claims ``side`` x ``side`` pixels."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + _png_chunk(b"IEND", b""))


def heic() -> bytes:
    """The start of an iPhone HEIC file: an ISO-BMFF ``ftyp`` box with the ``heic`` brand."""
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200


def one_pixel() -> bytes:
    return _save(Image.new("RGB", (1, 1), "red"), "PNG")


def wide_strip() -> bytes:
    return _save(Image.new("RGB", (20000, 20), "green"), "PNG")


def png_16bit() -> bytes:
    import numpy as np

    values = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    return _save(Image.fromarray(values, mode="I;16"), "PNG")


def cmyk_jpeg() -> bytes:
    return _save(photo().convert("CMYK"), "JPEG")


def palette_png_transparent() -> bytes:
    image = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    return _save(image, "PNG", transparency=0)


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]


def animated_gif() -> bytes:
    frames = _frames()
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def animated_webp() -> bytes:
    frames = _frames()
    return _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_jpeg(orientation: int):
    """A 64x32 JPEG tagged with EXIF ``orientation``; 5 to 8 turn it into 32x64."""

    def make() -> bytes:
        exif = Image.Exif()
        exif[0x0112] = orientation
        return _save(photo(64, 32), "JPEG", exif=exif.tobytes())

    make.__name__ = f"exif_orientation_{orientation}"
    return make


def corrupt_exif() -> bytes:
    """A JPEG whose APP1 EXIF segment announces an IFD that runs past its end."""
    data = _save(photo(64, 32), "JPEG")
    payload = b"Exif\x00\x00" + b"MM\x00*\x00\x00\x00\x08" + b"\xff\xff" + b"\x01" * 40
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + app1 + data[2:]


# --------------------------------------------------------------------------- processes and ports


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict:
    """Offline, no analytics, one intra-op thread (see :func:`one_torch_thread`)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1"}


def one_torch_thread():
    """Generator for a module fixture: torch on one intra-op thread while the module runs.

    On a small shared machine a second OpenMP thread spin-waits for a core that other
    processes hold: a tiny-model request then takes 0.7 s instead of 0.02 s.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def start_app(checkpoint, port: int, *extra: str, cwd=None) -> subprocess.Popen:
    """``python app.py`` on 127.0.0.1:port; its output goes to a pipe (read it after terminating)."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--model", str(checkpoint), "--device", "cpu",
         "--host", "127.0.0.1", "--port", str(port), *extra],
        env=subprocess_env(), cwd=cwd or ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_until_serving(process: subprocess.Popen, port: int, timeout: float = 180.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}: {process.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"app.py did not serve on port {port} within {timeout:.0f} s")


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default), from /proc (psutil when present)."""
    try:
        import psutil

        return psutil.Process(pid or os.getpid()).memory_info().rss
    except ImportError:  # pragma: no cover - psutil is in the test environment
        status = Path(f"/proc/{pid or 'self'}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024


# --------------------------------------------------------------------------- a browser, for the private events


class QueueFull(Exception):
    """queue/join answered 503: the queue is full."""


class Browser:
    """Speaks the page's own protocol (upload, queue/join by fn_index, the SSE stream) over loopback.

    gradio_client refuses the UI's private events; a browser calls them by
    index, so an attacker or a flaky network can too.
    """

    def __init__(self, url: str):
        import httpx

        self.url = url.rstrip("/")
        self.api = self.url + "/gradio_api"
        self.http = httpx.Client(timeout=60)
        self.session = uuid.uuid4().hex[:12]
        self.config = self.http.get(self.url + "/config").json()

    def close(self) -> None:
        self.http.close()

    def fn_index(self, elem_id: str, trigger: str = "click") -> int:
        ids = {c["id"]: c.get("props", {}).get("elem_id") for c in self.config["components"]}
        for index, dependency in enumerate(self.config["dependencies"]):
            if any(ids.get(target) == elem_id and event == trigger for target, event in dependency["targets"]):
                return dependency.get("id", index)
        raise LookupError(f"no {trigger} event on #{elem_id}")

    def api_index(self, api_name: str) -> int:
        for index, dependency in enumerate(self.config["dependencies"]):
            if dependency.get("api_name") == api_name:
                return dependency.get("id", index)
        raise LookupError(f"no /{api_name} endpoint")

    def upload(self, name: str, data: bytes) -> dict:
        response = self.http.post(self.api + "/upload", files={"files": (name, data, "application/octet-stream")})
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def describe(self, image: dict, **fields) -> tuple[str | None, object]:
        """/describe through the raw HTTP API, its JSON in ASCII escapes so that lone surrogates get through
        (gradio_client cannot encode them): -> ("complete", outputs) or ("error", message)."""
        from kosmos_demo.settings import DecodingSettings

        defaults = {"task": "brief", "text": "", "box": "", "grounding": True, **DecodingSettings().to_dict()}
        data = [image, *(fields.get(name, default if name in ("task", "text", "box", "grounding") else None)
                         for name, default in defaults.items())]
        posted = self.http.post(self.api + "/call/describe", content=json.dumps({"data": data}),
                                headers={"content-type": "application/json"})
        posted.raise_for_status()
        events = self.http.get(self.api + f"/call/describe/{posted.json()['event_id']}").text
        event = payload = None
        for line in events.splitlines():
            if line.startswith("event:"):
                event = line[len("event:"):].strip()
            elif line.startswith("data:"):
                payload = json.loads(line[len("data:"):])
        return event, payload

    def join(self, fn_index: int, data: list) -> str:
        body = {"data": data, "fn_index": fn_index, "trigger_id": None, "session_hash": self.session,
                "event_data": None}
        response = self.http.post(self.api + "/queue/join", json=body)
        if response.status_code == 503:  # what a browser shows: the server's own sentence
            raise QueueFull(response.json().get("detail", response.text))
        response.raise_for_status()
        return response.json()["event_id"]

    def messages(self):
        """The session's SSE messages as dicts; leaving the loop closes the connection (a disconnect)."""
        with self.http.stream("GET", self.api + "/queue/data", params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    yield message
                    if message.get("msg") == "close_stream":
                        return

    def give_image(self, image: bytes, name: str = "image.png") -> dict:
        """Upload ``image`` and run the image's upload event, as the page does; -> its process_completed message.

        The session's state then holds the image that Run describes.
        """
        self.join(self.fn_index("input-image", "upload"), [self.upload(name, image)])
        messages = self.messages()
        try:
            return final_message(messages)
        finally:
            messages.close()

    def run_page(self, image: bytes | None, name: str = "image.png", *, task: str = "brief", text: str = "",
                 box: str = "", grounding: bool = True, heatmaps: bool = False, **decoding) -> list:
        """Give the image (if any), then the data list of the Run button's event, as the page sends it.

        Run reads the image from the session's state (None stands for a state value); decoding
        settings follow DecodingSettings' field order.
        """
        from kosmos_demo.settings import DecodingSettings

        if image is not None:
            self.give_image(image, name)
        defaults = DecodingSettings().to_dict()
        values = [decoding.get(name, default) for name, default in defaults.items()]
        return [None, task, text, box, grounding, heatmaps, *values]


def run_status(final: dict) -> str:
    """The status line a run ended with (Run's first output), from its process_completed message."""
    assert final.get("success"), final
    return final["output"]["data"][0]


def final_message(messages) -> dict:
    """The process_completed message of a run (after reading every message before it)."""
    for message in messages:
        if message.get("msg") == "process_completed":
            return message
    raise AssertionError("the stream ended without process_completed")


# --------------------------------------------------------------------------- artifacts


def update_artifact(name: str, data: dict) -> Path:
    """Merge ``data`` into test-artifacts/<name>.json (tests may run in any subset)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.json"
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {}
    _merge(current, data)
    path.write_text(json.dumps(current, indent=2, ensure_ascii=False, default=str))
    return path


def _merge(into: dict, data: dict) -> None:
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict) and "status" not in value:
            _merge(into[key], value)
        else:
            into[key] = value
