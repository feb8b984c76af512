"""Load: ``python app.py`` on the tiny checkpoint, 16 gradio_client clients x 10 requests, good and bad mixed.

Bounded in count (160 requests) and time (60 s per request, about a minute in
all), loopback only. Every request must end in a result or a clear error (a
full queue counts as one); none may be lost or hang; the server's memory after
the run must be within 10 % of its memory after a warm-up batch. The figures
are printed and written to test-artifacts/load.json (RELIABILITY.md quotes a run).
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
import reliability_support as rs

CLIENTS = 16
REQUESTS_PER_CLIENT = 10
REQUEST_TIMEOUT_S = 60
MAX_NEW_TOKENS = 4

# (kind, request fields, expected error regex or None); a client sends them in order, shifted by its number
MIX = [
    ("good", {"task": "brief"}, None),
    ("good", {"task": "phrase", "text": "a red square"}, None),
    ("bad", {"image": "text", "task": "brief"}, r"not an image Pillow can read"),
    ("good", {"task": "region", "box": "4,4,40,30"}, None),
    ("bad", {"task": "brief", "strategy": "sample", "temperature": -1}, r"temperature: must be in"),
    ("good", {"task": "vqa", "text": "What colour is it?"}, None),
    ("bad", {"task": "vqa", "text": "What is </image>?"}, r"control token"),
    ("good", {"task": "custom", "text": "An image of", "strategy": "sample", "seed": 7}, None),
    ("bad", {"task": "vqa", "text": "y" * 20000}, r"the limit is 1000"),
    ("good", {"task": "detailed", "strategy": "beam", "num_beams": 2}, None),
]
assert len(MIX) == REQUESTS_PER_CLIENT


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    yield from rs.one_torch_thread()


@pytest.fixture(scope="module")
def served_app(tiny_checkpoint, tmp_path_factory):
    """app.py on the tiny random checkpoint as its own process (its memory is then its own), default queue."""
    port = rs.free_port()
    process = rs.start_app(tiny_checkpoint, port, "--concurrency", "1", "--max-queue", "32",
                           cwd=tmp_path_factory.mktemp("app-cwd"))
    try:
        rs.wait_until_serving(process, port)
        yield process, f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.communicate(timeout=30)
        except Exception:  # pragma: no cover - a stuck server is killed
            process.kill()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def _classify(error: BaseException) -> tuple[str, str]:
    from gradio_client.exceptions import AppError

    text = str(error)
    if "Queue is full" in text:
        return "queue_full", text
    if isinstance(error, (FutureTimeout, TimeoutError)):
        return "timeout", text
    if isinstance(error, AppError):
        return "app_error", text
    return f"other:{type(error).__name__}", text


def _one_client(url: str, number: int, files: dict, count: int, records: list, lock: threading.Lock) -> None:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    try:
        for i in range(count):
            kind, fields, expected = MIX[(number + i) % len(MIX)]
            fields = dict(fields)
            image = files[fields.pop("image", "good")]
            started = time.perf_counter()
            record = {"client": number, "kind": kind, "expected": expected}
            try:
                job = client.submit(image=handle_file(str(image)), max_new_tokens=MAX_NEW_TOKENS, **fields,
                                    api_name="/describe")
                _, caption, _ = job.result(timeout=REQUEST_TIMEOUT_S)
                record.update(outcome="ok", message=caption[:40])
            except BaseException as error:  # every way a request can end is recorded, then judged
                outcome, message = _classify(error)
                record.update(outcome=outcome, message=message[:200])
            record["seconds"] = time.perf_counter() - started
            with lock:
                records.append(record)
    finally:
        client.close()


def _run_clients(url: str, files: dict, count: int) -> tuple[list[dict], float]:
    records: list[dict] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=_one_client, args=(url, n, files, count, records, lock), daemon=True)
               for n in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S * count + 60)
    assert not any(thread.is_alive() for thread in threads), "a client never finished"
    return records, time.perf_counter() - started


def test_sixteen_clients_ten_requests_each(served_app, tmp_path, capsys):
    process, url = served_app
    files = {"good": tmp_path / "good.png", "text": tmp_path / "notes.png"}
    files["good"].write_bytes(rs.good_png())
    files["text"].write_bytes(rs.text_file())

    warmup, _ = _run_clients(url, files, 2)  # twice per client, all ten kinds: the model's buffers, gradio's caches
    assert all(r["outcome"] in ("ok", "app_error") for r in warmup), warmup
    time.sleep(1.0)
    rss_warm = rs.rss_bytes(process.pid)

    records, wall = _run_clients(url, files, REQUESTS_PER_CLIENT)
    time.sleep(1.0)
    rss_after = rs.rss_bytes(process.pid)

    assert len(records) == CLIENTS * REQUESTS_PER_CLIENT, "a request was lost"
    by_outcome: dict[str, int] = {}
    for record in records:
        by_outcome[record["outcome"]] = by_outcome.get(record["outcome"], 0) + 1
    unclear = [r for r in records if r["outcome"] not in ("ok", "app_error", "queue_full")]
    assert not unclear, f"requests that hung or failed unclearly: {unclear[:5]}"
    for record in records:
        if record["kind"] == "good":
            assert record["outcome"] in ("ok", "queue_full"), record
        else:
            assert record["outcome"] in ("app_error", "queue_full"), record
            if record["outcome"] == "app_error":
                assert re.search(record["expected"], record["message"]), record
                assert "Traceback" not in record["message"]

    latencies = [r["seconds"] for r in records]
    good = [r["seconds"] for r in records if r["outcome"] == "ok"]
    growth = (rss_after - rss_warm) / rss_warm
    figures = {
        "clients": CLIENTS, "requests per client": REQUESTS_PER_CLIENT, "requests": len(records),
        "max_new_tokens": MAX_NEW_TOKENS, "server": "python app.py --concurrency 1 --max-queue 32 (tiny checkpoint, "
        "CPU, OMP_NUM_THREADS=1)",
        "outcomes": dict(sorted(by_outcome.items())),
        "bad requests refused with their message": sum(r["kind"] == "bad" and r["outcome"] == "app_error"
                                                       for r in records),
        "p50 s (all)": round(_percentile(latencies, 0.50), 3), "p95 s (all)": round(_percentile(latencies, 0.95), 3),
        "p50 s (results)": round(_percentile(good, 0.50), 3), "p95 s (results)": round(_percentile(good, 0.95), 3),
        "max s": round(max(latencies), 3), "mean s": round(statistics.fmean(latencies), 3),
        "wall s": round(wall, 1), "requests per s": round(len(records) / wall, 2),
        "server RSS after warm-up MB": round(rss_warm / 2**20, 1), "server RSS after load MB": round(rss_after / 2**20, 1),
        "RSS change %": round(100 * growth, 2),
    }
    rs.update_artifact("load", figures)
    with capsys.disabled():
        print("\nload test:", figures)
    assert abs(growth) <= 0.10, f"server memory moved {100 * growth:.1f} % under load"


def test_a_full_queue_is_a_clear_error_and_drains(app_server, app_engine, monkeypatch):
    """24 requests at once where the queue holds 16 (the test app's max_queue), each 0.3 s in the model.

    Sent the way a page sends them (queue/join), so they really arrive together; the ones
    refused get HTTP 503 with gradio's "Queue is full" sentence (gradio_client raises its
    QueueError "Queue is full! Please try again." for the same answer). The rest complete.
    """
    url = app_server.url
    describe = app_engine.describe

    def slow(image, request, *args, **kwargs):
        time.sleep(0.3)
        return describe(image, request, *args, **kwargs)

    monkeypatch.setattr(app_engine, "describe", slow)
    page = rs.Browser(url)
    refused, joined = [], []
    try:
        index = page.api_index("describe")
        image = page.upload("good.png", rs.good_png())
        for _ in range(24):
            try:
                joined.append(page.join(index, [image, "brief", "", "", True, None, None, None, None, None, None,
                                                 2, None, None, None, None]))
            except rs.QueueFull as full:
                refused.append(str(full))
        completed = [m for m in page.messages() if m.get("msg") == "process_completed"]
    finally:
        page.close()
        monkeypatch.undo()
    assert refused and all(message.startswith("Queue is full.") for message in refused), refused
    assert len(joined) + len(refused) == 24 and len(joined) >= 16
    assert len(completed) == len(joined) and all(m["success"] for m in completed)
    rs.update_artifact("load", {"queue burst": {"requests": 24, "completed": len(completed),
                                                "refused (queue full)": len(refused), "message": refused[0]}})
