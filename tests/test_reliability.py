"""Bad input, through every surface: ONE table of cases x (engine, CLI, app HTTP API).

Each case gets a correct result or a clear message naming the problem; never
a crash, a stack trace or a server error, and the next good request works.
The outcomes are written to test-artifacts/reliability.json, the source of
the table in RELIABILITY.md.
"""

from __future__ import annotations

import html
import json
import math
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import reliability_support as rs

from kosmos_demo.messages import invalid_unicode_at

SURFACES = ("engine", "cli", "app")
SHORT = 3
"""max_new_tokens of every case that does not set its own."""

SETTINGS_OK = "ok"
LONG = 100_000
"""Characters of the 100 KB values: a message may quote a short prefix, never the value."""


@dataclass(frozen=True)
class Case:
    name: str
    image: Callable[[], bytes]
    suffix: str = ".png"
    fields: dict = field(default_factory=dict)
    """Request fields: task, text, box, grounding, and any decoding setting."""
    expected: str = SETTINGS_OK
    """"ok", or a regex the (HTML-unescaped) message must match."""
    size: tuple[int, int] | None = None
    """(width, height) an ok result must report (after EXIF orientation)."""
    first_box: list | None = None
    """The first entity's pixel boxes an ok result must report."""
    surfaces: tuple[str, ...] = SURFACES
    note: str = ""


G = rs.good_png
NOT_IMAGE = r"not an image Pillow can read"
CONTROL = r"model control token '</image>'"

CASES: list[Case] = [
    # -- files ---------------------------------------------------------------------------------
    Case("empty file", rs.empty, ".png", expected=r"empty \(0 bytes\)"),
    Case("zero bytes (4 KB of NUL)", rs.zero_bytes, ".jpg", expected=NOT_IMAGE),
    Case("truncated JPEG", rs.truncated_jpeg, ".jpg", expected=r"truncated or corrupt"),
    Case("truncated PNG", rs.truncated_png, ".png", expected=r"truncated or corrupt"),
    Case("text file named .png", rs.text_file, ".png", expected=NOT_IMAGE + r" \(it looks like text\)"),
    Case("SVG upload (with a script)", rs.svg, ".svg", expected=r"it looks like SVG"),
    Case("HTML upload (with a script)", rs.html_page, ".html", expected=r"it looks like HTML"),
    Case("decompression bomb (120 B, 100000x100000)", rs.decompression_bomb, ".png",
         expected=r"10000 megapixels, above the 40 megapixel limit"),
    Case("1x1 pixel", rs.one_pixel, size=(1, 1)),
    Case("1x1 pixel, region task on all of it", rs.one_pixel, fields={"task": "region", "box": "0,0,1,1"},
         size=(1, 1), first_box=[[0, 0, 1, 1]]),
    Case("20000x20 pixels", rs.wide_strip, size=(20000, 20)),
    Case("20000x20 pixels, region task", rs.wide_strip, fields={"task": "region", "box": "19000,0,20000,20"},
         size=(20000, 20), first_box=[[19000, 0, 20000, 20]]),
    Case("16-bit greyscale PNG", rs.png_16bit, size=(64, 48)),
    Case("CMYK JPEG", rs.cmyk_jpeg, ".jpg", size=(64, 48)),
    Case("palette PNG with transparency", rs.palette_png_transparent, size=(64, 48)),
    Case("animated GIF (3 frames)", rs.animated_gif, ".gif", size=(40, 30)),
    Case("animated WebP (3 frames)", rs.animated_webp, ".webp", size=(40, 30)),
    *[Case(f"EXIF orientation {n}", rs.exif_jpeg(n), ".jpg", size=(64, 32) if n < 5 else (32, 64))
      for n in range(1, 9)],
    Case("corrupt EXIF", rs.corrupt_exif, ".jpg", size=(64, 32)),
    # -- text ----------------------------------------------------------------------------------
    Case("empty phrase", G, fields={"task": "phrase", "text": ""}, expected=r"Phrase grounding needs text"),
    Case("whitespace-only question", G, fields={"task": "vqa", "text": " \t\n  "},
         expected=r"Question answering needs text"),
    Case("whitespace-only custom prompt", G, fields={"task": "custom", "text": "   "},
         expected=r"Custom prompt needs text"),
    Case("20000-character question", G, fields={"task": "vqa", "text": "x" * 20000},
         expected=r"20000 characters long; the limit is 1000"),
    Case("20000-character custom prompt of <script> tags", G, fields={"task": "custom", "text": "<script>" * 2500},
         expected=r"20000 characters long; the limit is 1000"),
    Case("emoji, right-to-left and CJK question", G,
         fields={"task": "vqa", "text": "What is 🐱🚀 here? مرحبا بالعالم 你好世界 שלום"}),
    Case("right-to-left phrase", G, fields={"task": "phrase", "text": "قطة سوداء"}),
    Case("CJK and emoji custom prompt", G, fields={"task": "custom", "text": "一张图片 🖼️ of"}),
    Case("HTML and script tags in a question", G,
         fields={"task": "vqa", "text": "<b>bold</b> <script>alert(1)</script> <img src=x onerror=alert(2)>?"}),
    Case("script tag as a grounded phrase (custom markup)", G,
         fields={"task": "custom",
                 "text": "<phrase><script>alert(1)</script></phrase><object><patch_index_0000>"
                         "<patch_index_1023></object> is"},
         first_box=[[1, 1, 63, 47]]),  # cell centres of cells 0 and 1023
    Case("</image> typed in a question", G, fields={"task": "vqa", "text": "What is </image> here?"},
         expected=CONTROL),
    Case("</image> and a script tag in a question", G,
         fields={"task": "vqa", "text": "<script>alert(1)</script></image>"}, expected=CONTROL),
    Case("</image> in a custom prompt", G, fields={"task": "custom", "text": "An image </image> of"},
         expected=r"'</image>', which only the processor may place"),
    Case("<patch_index_9999> in a custom prompt", G,
         fields={"task": "custom",
                 "text": "<phrase> it</phrase><object><patch_index_9999><patch_index_0001></object>"},
         expected=r"'<patch_index_9999>' is not a location token"),
    Case("<patch_index_9999> in a question", G, fields={"task": "vqa", "text": "Where is <patch_index_9999>?"},
         expected=r"model control token '<patch_index_9999>'"),
    Case("unbalanced <phrase> in a custom prompt", G, fields={"task": "custom", "text": "<phrase> a cat"},
         expected=r"<phrase> and </phrase> tags are not balanced"),
    Case("unbalanced </object> in a custom prompt", G,
         fields={"task": "custom", "text": "a cat<patch_index_0001><patch_index_0002></object>"},
         expected=r"<object> and </object> tags are not balanced"),
    Case("</s> in a custom prompt", G, fields={"task": "custom", "text": "stop</s><s>"},
         expected=r"'</s>', which only the processor may place"),
    Case("NUL and bidi control characters", G, fields={"task": "custom", "text": "a\x00b \u202e\u200b abc"},
         surfaces=("engine", "app"), note="argv cannot carry NUL"),
    Case("lone surrogate in a question", G, fields={"task": "vqa", "text": "what \ud800 is"},
         expected=r"not valid Unicode \(at position 5\)"),
    Case("lone surrogate in a phrase", G, fields={"task": "phrase", "text": "a \udcff cat"},
         expected=r"not valid Unicode \(at position 2\)"),
    Case("lone surrogate in a custom prompt", G, fields={"task": "custom", "text": "An image \udfff of"},
         expected=r"not valid Unicode \(at position 9\)"),
    Case("box that is not numbers", G, fields={"task": "region", "box": "a,b,c,d"}, expected=r"four numbers"),
    Case("100 KB box", G, fields={"task": "region", "box": "1,2,x" + "9" * LONG}, expected=r"four numbers"),
    Case("100 KB task", G, fields={"task": "x" * LONG}, expected=r"Unknown task|invalid choice"),
    Case("box outside the image", G, fields={"task": "region", "box": "1000,1000,2000,2000"},
         expected=r"does not cover any of the 64x48 image"),
    Case("region question without [brackets]", G,
         fields={"task": "region-vqa", "text": "What is this?", "box": "0,0,10,10"}, expected=r"\[brackets\]"),
    # -- decoding ------------------------------------------------------------------------------
    Case("temperature NaN", G, fields={"strategy": "sample", "temperature": math.nan},
         expected=r"temperature: must be a finite number"),
    Case("temperature infinite", G, fields={"strategy": "sample", "temperature": math.inf},
         expected=r"temperature: must be a finite number"),
    Case("temperature negative", G, fields={"strategy": "sample", "temperature": -1.0},
         expected=r"temperature: must be in \(0\.0, 5\.0\]"),
    Case("zero temperature with sampling", G, fields={"strategy": "sample", "temperature": 0},
         expected=r"temperature: must be in \(0\.0, 5\.0\]"),
    Case("1000 beams", G, fields={"strategy": "beam", "num_beams": 1000},
         expected=r"num_beams: must be between 1 and 8"),
    Case("a million new tokens", G, fields={"max_new_tokens": 1_000_000},
         expected=r"max_new_tokens: must be between 1 and 1024"),
    Case("negative max_new_tokens", G, fields={"max_new_tokens": -5},
         expected=r"max_new_tokens: must be between 1 and 1024"),
    Case("max_new_tokens not a number", G, fields={"max_new_tokens": "lots"},
         expected=r"max_new_tokens: must be a number"),
    Case("top_p not a number", G, fields={"strategy": "sample", "top_p": "abc"}, expected=r"top_p: must be a number"),
    Case("fractional top_k", G, fields={"strategy": "sample", "top_k": 2.5}, expected=r"top_k: must be a whole number"),
    Case("negative seed", G, fields={"seed": -1}, expected=r"seed: must be between 0 and 4294967295"),
    Case("unknown strategy", G, fields={"strategy": "nucleus"},
         expected=r"strategy: (must be one of greedy, beam, sample|invalid choice: 'nucleus')"),
    Case("100 KB strategy", G, fields={"strategy": "x" * LONG},
         expected=r"strategy: must be one of|--strategy: invalid choice"),
    Case("100 KB max_new_tokens", G, fields={"max_new_tokens": "9" * LONG}, expected=r"max_new_tokens: must be"),
    Case("4000-digit top_k", G, fields={"strategy": "sample", "top_k": "9" * 4000},
         expected=r"top_k: must be between 0 and 1000"),
    Case("min_new_tokens above max_new_tokens", G, fields={"min_new_tokens": 9, "max_new_tokens": 3},
         expected=r"min_new_tokens: must not exceed max_new_tokens"),
    Case("8 beams, the most allowed", G, fields={"strategy": "beam", "num_beams": 8}),
    Case("sampling at the edges (temperature 5, top_p 1e-9)", G,
         fields={"strategy": "sample", "temperature": 5.0, "top_p": 1e-9, "seed": 4294967295}),
]

NAMES = [case.name for case in CASES]
assert len(set(NAMES)) == len(NAMES), "case names must be unique"

RESULTS: dict[str, dict[str, dict]] = defaultdict(dict)


@dataclass
class Outcome:
    status: str  # "ok" | "error"
    message: str = ""
    size: tuple[int, int] | None = None
    first_box: list | None = None

    def record(self) -> dict:
        out = {"status": self.status}
        if self.message:
            out["message"] = self.message
        if self.size:
            out["size"] = list(self.size)
        if self.first_box:
            out["first_box"] = self.first_box
        return out


def _split(fields: dict) -> tuple[dict, dict]:
    request = {k: v for k, v in fields.items() if k in ("task", "text", "box", "grounding")}
    decoding = {k: v for k, v in fields.items() if k not in request}
    decoding.setdefault("max_new_tokens", SHORT)
    return request, decoding


def _from_record(record: dict) -> Outcome:
    if "error" in record:
        return Outcome("error", record["error"])
    first = record["entities"][0]["boxes"] if record.get("entities") else None
    return Outcome("ok", size=(record["width"], record["height"]), first_box=first)


def _check(case: Case, outcome: Outcome, surface: str) -> None:
    RESULTS[case.name][surface] = outcome.record()
    assert "Traceback" not in outcome.message and "Something went wrong" not in outcome.message, outcome.message
    if case.expected == SETTINGS_OK:
        assert outcome.status == "ok", f"{case.name} via {surface}: {outcome.message}"
        if case.size:
            assert outcome.size == case.size
        if case.first_box is not None:
            assert outcome.first_box == case.first_box
    else:
        assert outcome.status == "error", f"{case.name} via {surface} was accepted"
        assert re.search(case.expected, outcome.message), f"{case.name} via {surface}: {outcome.message!r}"
        assert len(outcome.message) < 600, "a message is a sentence, not a dump"
        assert "<script>" * 2 not in outcome.message, "the user's text must not be echoed back at length"
        for value in case.fields.values():
            assert not (isinstance(value, str) and len(value) > 100 and value[:100] in outcome.message), \
                "a long value must not be echoed back"


# --------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def engine_surface(tiny_engine):
    from kosmos_demo.engine import EngineError
    from kosmos_demo.images import ImageLoadError
    from kosmos_demo.settings import DecodingSettings, SettingsError
    from kosmos_demo.tasks import PromptError, Request, parse_box

    user_errors = (ImageLoadError, PromptError, SettingsError, EngineError)

    def run(case: Case) -> Outcome:
        fields, decoding = _split(case.fields)
        try:
            request = Request(
                task=fields.get("task", "brief"), text=fields.get("text", ""),
                box=parse_box(fields["box"]) if fields.get("box") else None,
                grounding=fields.get("grounding", True), decoding=DecodingSettings.from_mapping(decoding),
            )
            result = tiny_engine.describe(case.image(), request)
        except user_errors as error:
            return Outcome("error", str(error))
        return _from_record(result.to_json())

    def good() -> None:
        result = tiny_engine.describe(rs.good_png(), Request(decoding=DecodingSettings(max_new_tokens=2)))
        assert result.text.startswith("An image of") and tiny_engine._lock.acquire(timeout=5)
        tiny_engine._lock.release()

    return run, good


# --------------------------------------------------------------------------- CLI

_DRIVER = r"""
import contextlib, io, json, sys, traceback
from kosmos_demo.cli import main
results = []
for argv in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
        except BaseException:
            code, err = "crash", io.StringIO(traceback.format_exc())
    results.append({"argv": argv, "rc": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
sys.__stdout__.write(json.dumps(results))
"""


def _cli_args(fields: dict) -> list[str]:
    request, decoding = _split(fields)
    args = [f"--task={request.get('task', 'brief')}"]
    if "text" in request:
        args.append(f"--text={request['text']}")
    if request.get("box"):
        args.append(f"--box={request['box']}")
    if request.get("grounding") is False:
        args.append("--no-grounding")
    for name, value in decoding.items():
        args.append(f"--{name.replace('_', '-')}={value}")
    return args


def _valid_on_good_image(fields: dict) -> bool:
    """Whether these request fields are fine for the 64x48 good image (else it would be refused too)."""
    from kosmos_demo.settings import DecodingSettings
    from kosmos_demo.tasks import Request, build_prompt, parse_box

    request, decoding = _split(fields)
    try:
        build_prompt(Request(task=request.get("task", "brief"), text=request.get("text", ""),
                             box=parse_box(request["box"]) if request.get("box") else None,
                             decoding=DecodingSettings.from_mapping(decoding)), (64, 48))
    except ValueError:
        return False
    return True


def _cli_outcomes(invocation: dict, paths: list[Path]) -> list[Outcome]:
    """One Outcome per image path of an invocation (a settings error answers for all of them)."""
    assert invocation["rc"] in (0, 1, 2), f"the CLI crashed: {invocation['stderr'][-3000:]}"
    assert "Traceback" not in invocation["stderr"], invocation["stderr"][-3000:]
    if invocation["rc"] == 2:
        # "error: ..." from the CLI, or argparse's usage line then "prog: error: ..."
        lines = [line for line in invocation["stderr"].splitlines() if "error: " in line]
        assert len(lines) == 1 and not invocation["stdout"].strip(), invocation
        return [Outcome("error", lines[0].split("error: ", 1)[1])] * len(paths)
    records = [json.loads(line) for line in invocation["stdout"].splitlines()]
    # error lines come out while a batch loads, results after it: match lines to paths by name
    assert sorted(r["image"] for r in records) == sorted(str(p) for p in paths)
    assert invocation["rc"] == (1 if any("error" in r for r in records) else 0)
    by_image = defaultdict(list)
    for record in records:
        by_image[record["image"]].append(record)
    return [_from_record(by_image[str(path)].pop(0)) for path in paths]


@pytest.fixture(scope="module")
def cli_surface(tiny_checkpoint, tmp_path_factory):
    """Every CLI case, batched: the cases that share a request go to one invocation as many images.

    The largest group (every image case) runs as a real ``python -m kosmos_demo`` process; the
    other groups (one request each) run through the CLI's own ``main(argv)`` in one more
    process, so the model loads twice, not once per case. A good image follows every case's
    image, and a last all-good invocation follows them all.
    """
    folder = tmp_path_factory.mktemp("cli-cases")
    good = folder / "good.png"
    good.write_bytes(rs.good_png())
    groups: dict[str, list[tuple[Case, Path]]] = defaultdict(list)
    for index, case in enumerate(CASES):
        if "cli" not in case.surfaces:
            continue
        path = folder / f"case{index:02d}{case.suffix}"
        path.write_bytes(case.image())
        groups[json.dumps(case.fields, sort_keys=True, default=str)].append((case, path))
    common = ["describe", "--model", str(tiny_checkpoint), "--device", "cpu", "--batch-size", "4"]
    invocations = []
    for key, members in groups.items():
        after = [good] if _valid_on_good_image(json.loads(key)) else []
        paths = [p for _, path in members for p in (path, *after)]
        invocations.append((members, paths, [*common, *map(str, paths), *_cli_args(json.loads(key))]))
    invocations.sort(key=lambda item: -len(item[0]))
    biggest, rest = invocations[0], invocations[1:]
    sanity = [*common, str(good), f"--max-new-tokens={SHORT}"]

    env = rs.subprocess_env()
    real = subprocess.Popen([sys.executable, "-m", "kosmos_demo", *biggest[2]], cwd=rs.ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driven = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps([argv for *_, argv in rest] + [sanity]),
                            capture_output=True, text=True, timeout=240, cwd=rs.ROOT, env=env)
    stdout, stderr = real.communicate(timeout=240)
    assert driven.returncode == 0, driven.stderr[-3000:]
    results = [{"rc": real.returncode, "stdout": stdout, "stderr": stderr}] + json.loads(driven.stdout)

    outcomes: dict[str, Outcome] = {}
    for (members, paths, _), invocation in zip([biggest, *rest], results):
        per_path = _cli_outcomes(invocation, paths)
        for case, path in members:
            outcomes[case.name] = per_path[paths.index(path)]
        refused = [o.message for p, o in zip(paths, per_path) if p == good and o.status != "ok"]
        assert not refused, f"a good image after {[c.name for c, _ in members]}: {refused}"
    assert _cli_outcomes(results[-1], [good])[0].status == "ok", "the CLI failed a good image after the bad ones"

    def run(case: Case) -> Outcome:
        return outcomes[case.name]

    return run, lambda: None


# --------------------------------------------------------------------------- app HTTP API


@pytest.fixture(scope="module")
def app_surface(app_server, tmp_path_factory):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url = app_server.url
    client = Client(url, verbose=False, download_files=False)
    folder = tmp_path_factory.mktemp("app-cases")
    good = folder / "good.png"
    good.write_bytes(rs.good_png())

    def run(case: Case) -> Outcome:
        fields, decoding = _split(case.fields)
        # JSON has no NaN or Infinity: a JSON client can only send them as text
        decoding = {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in decoding.items()}
        if any(isinstance(v, str) and invalid_unicode_at(v) is not None for v in case.fields.values()):
            return _raw_app_outcome(url, case, {**fields, **decoding})  # gradio_client cannot encode them
        path = folder / f"{NAMES.index(case.name):02d}-upload{case.suffix}"
        path.write_bytes(case.image())
        try:
            _, caption, record = client.predict(image=handle_file(str(path)), **fields, **decoding,
                                                api_name="/describe")
        except AppError as error:
            raw = str(error)
            assert "<" not in raw and ">" not in raw, f"unescaped text in an HTML-rendered message: {raw!r}"
            return Outcome("error", html.unescape(raw))
        assert caption == record["text"]
        return _from_record(record)

    def good_request() -> None:
        _, caption, _ = client.predict(image=handle_file(str(good)), max_new_tokens=2, api_name="/describe")
        assert caption.startswith("An image of")

    yield run, good_request
    client.close()


def _raw_app_outcome(url: str, case: Case, fields: dict) -> Outcome:
    """A case through the raw HTTP API, its JSON in ASCII escapes (for lone surrogates)."""
    page = rs.Browser(url)
    try:
        event, payload = page.describe(page.upload(f"upload{case.suffix}", case.image()), **fields)
    finally:
        page.close()
    if event == "error":
        raw = payload["error"]
        assert "<" not in raw and ">" not in raw, f"unescaped text in an HTML-rendered message: {raw!r}"
        return Outcome("error", html.unescape(raw))
    assert event == "complete", payload
    return _from_record(payload[2])


# --------------------------------------------------------------------------- the table x surfaces


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    yield from rs.one_torch_thread()


@pytest.fixture(scope="module", autouse=True)
def write_results():
    yield
    if RESULTS:
        table = {name: RESULTS[name] for name in NAMES if name in RESULTS}
        cases = {case.name: {"expected": case.expected, "surfaces": list(case.surfaces), "note": case.note}
                 for case in CASES}
        rs.update_artifact("reliability", {"outcomes": table, "cases": cases})


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("case", CASES, ids=NAMES)
def test_bad_input(case: Case, surface: str, request):
    if surface not in case.surfaces:
        pytest.skip(case.note or f"not applicable to the {surface}")
    run, good = request.getfixturevalue(f"{surface}_surface")
    _check(case, run(case), surface)
    good()  # and the next good request succeeds


def test_the_table_covers_the_issue():
    """The issue's list, at least 30 cases, each named in RELIABILITY.md's table."""
    assert len(CASES) >= 30
    for needle in ("empty file", "zero bytes", "truncated JPEG", "truncated PNG", ".png", "SVG", "HTML upload",
                   "decompression bomb", "1x1", "20000x20", "16-bit", "CMYK", "palette PNG", "animated GIF",
                   "animated WebP", "corrupt EXIF", "empty phrase", "whitespace-only", "20000-character",
                   "emoji", "right-to-left", "CJK", "script", "</image>", "<patch_index_9999>", "unbalanced <phrase>",
                   "NaN", "negative", "zero temperature", "1000 beams", "a million new tokens", "not a number"):
        assert any(needle in name for name in NAMES), needle
    assert {f"EXIF orientation {n}" for n in range(1, 9)} <= set(NAMES)
    doc = (rs.ROOT / "RELIABILITY.md").read_text(encoding="utf-8")
    missing = [name for name in NAMES if f"`{name}`" not in doc]
    assert not missing, f"cases missing from RELIABILITY.md: {missing}"
