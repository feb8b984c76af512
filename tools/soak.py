"""Memory under long runs and bursts: ``python tools/soak.py [--requests 1000] [--sessions 300]``.

Serves ``python app.py`` on a tiny random checkpoint (built here, offline) in
its own process and measures its resident memory (issue 12.5, 12.6):

- soak: after a warm-up, N ``/describe`` calls from 4 clients; RSS every quarter, and once the
  server has been idle for ``--idle`` seconds, so that the API sessions it keeps
  (``serving.API_SESSION_S``) are forgotten (the baseline is taken the same way, after the warm-up and an idle wait);
- sessions: M page sessions, each uploading an image and running it, as a browser does;
- burst: 8 simultaneous uploads of a 6000x6000 PNG (about 100 KB) through the
  page's upload event, which decodes a display copy; the peak is the server's
  VmHWM (resident high-water mark) above its RSS before the burst.

Prints one JSON object; RELIABILITY.md quotes a run. Loopback only.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import reliability_support as rs  # noqa: E402

from kosmos_demo.serving import API_SESSION_S  # noqa: E402

MB = 2**20


def high_water(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def reset_high_water(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)


def describe_many(url: str, count: int, image: bytes) -> int:
    failures = 0
    lock = threading.Lock()

    def one(_):
        nonlocal failures
        browser = rs.Browser(url)
        try:
            status, _ = browser.describe(browser.upload("a.png", image), max_new_tokens=4)
        finally:
            browser.close()
        if status != "complete":
            with lock:
                failures += 1

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))
    return failures


def page_sessions(url: str, count: int, image: bytes) -> int:
    failures = 0

    def one(_):
        nonlocal failures
        browser = rs.Browser(url)
        try:
            data = browser.run_page(image, max_new_tokens=4)
            browser.join(browser.fn_index("run-button"), data)
            messages = browser.messages()
            try:
                done = rs.final_message(messages)
            finally:
                messages.close()
            failures += not done.get("success", False)
        finally:
            browser.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))
    return failures


def big_png(side: int = 6000) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (30, 120, 200)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def burst(url: str, pid: int, image: bytes, count: int = 8) -> dict:
    before = rs.rss_bytes(pid)
    reset_high_water(pid)

    def one(_):
        browser = rs.Browser(url)
        try:
            return browser.give_image(image, "big.png").get("success", False)
        finally:
            browser.close()

    with ThreadPoolExecutor(count) as pool:
        answered = list(pool.map(one, range(count)))
    return {"uploads": count, "png_kb": round(len(image) / 1024), "all_answered": all(answered),
            "rss_before_mb": round(before / MB), "peak_above_mb": round((high_water(pid) - before) / MB)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--idle", type=float, default=API_SESSION_S * 1.5 + 5,
                        help="seconds to wait idle before the baseline and the settled reading "
                             "(API sessions are forgotten API_SESSION_S after their last use, checked every half)")
    args = parser.parse_args()
    from kosmos_demo.tiny import build_tiny_checkpoint

    with tempfile.TemporaryDirectory() as work:
        checkpoint = build_tiny_checkpoint(Path(work) / "tiny")
        port = rs.free_port()
        process = rs.start_app(checkpoint, port, "--concurrency", "1", "--max-queue", "64", cwd=work)
        try:
            rs.wait_until_serving(process, port)
            url, pid, image = f"http://127.0.0.1:{port}/", process.pid, rs.good_png()
            report = {}
            describe_many(url, args.warmup, image)
            page_sessions(url, args.warmup // 4, image)
            time.sleep(args.idle)
            baseline = rs.rss_bytes(pid)
            marks, failures, began = [], 0, time.monotonic()
            for quarter in range(4):
                failures += describe_many(url, args.requests // 4, image)
                marks.append(round(rs.rss_bytes(pid) / MB))
            loaded, seconds = rs.rss_bytes(pid), time.monotonic() - began
            time.sleep(args.idle)
            settled = rs.rss_bytes(pid)
            report["describe"] = {"requests": args.requests, "failures": failures, "seconds": round(seconds),
                                  "baseline_mb": round(baseline / MB), "rss_mb_each_quarter": marks,
                                  "end_over_baseline": round(loaded / baseline, 3),
                                  "settled_mb": round(settled / MB),
                                  "settled_over_baseline": round(settled / baseline, 3)}
            start = rs.rss_bytes(pid)
            failures = page_sessions(url, args.sessions, image)
            report["sessions"] = {"sessions": args.sessions, "failures": failures, "start_mb": round(start / MB),
                                  "end_mb": round(rs.rss_bytes(pid) / MB),
                                  "end_over_start": round(rs.rss_bytes(pid) / start, 3)}
            report["burst"] = burst(url, pid, big_png())
            report["burst"]["after_mb"] = round(rs.rss_bytes(pid) / MB)
        finally:
            process.terminate()
            process.communicate(timeout=30)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
