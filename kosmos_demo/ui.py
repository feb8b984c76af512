"""The Gradio app: :func:`build_demo` lays out the Blocks, :class:`KosmosApp` holds the handlers.

Handlers are methods of :class:`KosmosApp` so tests can call them without a
browser; the conversions from results to component values are the pure
functions of :mod:`kosmos_demo.ui_values`. Internal UI events are private
(``api_visibility="private"``); the public API is one endpoint, ``/describe``.
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import html  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field, fields, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

import gradio as gr  # noqa: E402
from gradio.data_classes import FileData  # noqa: E402
from PIL import Image  # noqa: E402

from . import ui_values as uv  # noqa: E402
from .engine import EngineError, Partial  # noqa: E402
from .images import ImageLoadError, load_image  # noqa: E402
from .results import Result  # noqa: E402
from .settings import RANGES, STRATEGIES, DecodingSettings, SettingsError  # noqa: E402
from .toy import TOY_MARKER  # noqa: E402
from .tasks import MAX_TEXT_CHARS, PromptError, Task, build_prompt, validate_box  # noqa: E402

try:  # ZeroGPU on Hugging Face Spaces: a GPU is attached only while a decorated function runs
    import spaces

    gpu = spaces.GPU
except ImportError:  # everywhere else the decorator does nothing

    def gpu(fn):
        return fn


log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXAMPLES = ASSETS / "examples"
TOY_EXAMPLES = ASSETS / "toy-examples"
MAX_FILE_SIZE = "20mb"
"""Largest upload the server accepts (Gradio refuses bigger ones before they reach a handler)."""

DECODING_FIELDS = tuple(f.name for f in fields(DecodingSettings))
STOPPED = "**Stopped.** Press Run to start again."
USER_ERRORS = (PromptError, SettingsError, ImageLoadError, EngineError)
"""Exceptions whose message is written for the person using the app."""

EXAMPLE_ROWS = [
    # image, task, text, box
    ["rocket.jpg", Task.REGION.value, "", "295,125,345,405"],
    ["astronaut.jpg", Task.BRIEF.value, "", ""],
    ["chelsea.jpg", Task.PHRASE.value, "a cat", ""],
    ["coffee.jpg", Task.VQA.value, "What is in the cup?", ""],
    ["astronaut.jpg", Task.REGION_VQA.value, "What is [this object] next to her?", "350,0,470,285"],
    ["coffee.jpg", Task.DETAILED.value, "", ""],
]

_TEXT_FIELD = {
    Task.PHRASE: ("Phrase to find", "a red car"),
    Task.VQA: ("Question", "What is special about this image?"),
    Task.REGION_VQA: ("Question about the box: put the words that refer to it in [brackets]",
                      "What is [this object] made of?"),
    Task.CUSTOM: ("Prompt (grounding markup such as <phrase>...</phrase> is allowed)", "An image of"),
}

_SHORTCUT_JS = """
() => {
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      const run = document.getElementById("run-button");
      if (run && !run.disabled) {
        event.preventDefault();
        run.click();
      }
    }
  });
}
"""

_CSS = """
#preview-banner { background: #fff4e0; border: 1px solid #f0a030; border-radius: 8px; padding: 10px 16px;
                  color: #5a3800; }
#preview-banner p { margin: 0; }
#app-header h1 { margin-bottom: 0.2em; }
#status { min-height: 1.6em; }
#caption .textfield { display: block; word-break: normal; line-height: 1.9; font-size: 1.05em; }
#caption .token-container { display: inline; }
#caption .token.highlighted { margin: 0 1px; padding: 1px 4px; }
#tokens .textfield { max-height: 220px; overflow-y: auto; gap: 2px; }
#prompt-preview textarea { font-family: var(--font-mono); font-size: 0.85em; }
.hint { opacity: 0.8; font-size: 0.9em; }
"""


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``demo.launch`` that belong to the app (theme, limits, files it may serve)."""
    theme = gr.themes.Soft(
        primary_hue="blue",
        font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )
    return dict(
        theme=theme,
        css=_CSS,
        js=_SHORTCUT_JS,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(ASSETS)],
        share=False,
    )


def user_error(error: BaseException) -> gr.Error:
    """A gr.Error with the exception's own message, escaped (Gradio renders it as HTML)."""
    return gr.Error(html.escape(str(error), quote=False), print_exception=False)


def unexpected_error(error: BaseException) -> gr.Error:
    log.exception("unexpected error in a request")
    return gr.Error(
        f"Something went wrong on the server ({html.escape(type(error).__name__)}); the details are in its log. "
        "Please try again, perhaps with another image or settings.",
        print_exception=False,
    )


# --------------------------------------------------------------------------- per-session state


@dataclass(frozen=True)
class Source:
    """The user's image (never the previews drawn over it) and what the image component shows now."""

    path: str
    size: tuple[int, int]
    digest: str
    shown: tuple | None = None
    """None while the original is shown, else the (box, corner) drawn on the preview (either may be None)."""
    shown_digest: str | None = None
    scale: float = 1.0
    """Displayed pixels per original pixel (previews are downscaled for the browser)."""
    seen: frozenset = field(default_factory=frozenset)
    """Paths already known to show this source (skips hashing them again)."""


@dataclass(frozen=True)
class Shown:
    """A finished run, kept so clicks re-render from it without running the model again."""

    result: Result
    display: Image.Image
    name: str


class _Stops:
    """Per browser session, the event that Stop sets; the engine stops generating when it is set."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, key: str) -> threading.Event:
        with self._lock:
            event = self._events[key] = threading.Event()
            return event

    def event(self, key: str) -> threading.Event | None:
        with self._lock:
            return self._events.get(key)

    def stop(self, key: str, wait_s: float = 3.0) -> bool:
        """Set the session's event and wait (briefly) until its run has ended, so nothing it yields comes later."""
        event = self.event(key)
        if event is None:
            return False
        event.set()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and self.event(key) is event:
            time.sleep(0.02)
        return True

    def finish(self, key: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(key) is event:
                del self._events[key]


class _Scratch:
    """Per-run temporary folders for previews and downloads; folders older than ``keep_s`` are removed."""

    def __init__(self, keep_s: float = 3600.0):
        self.root = Path(gr.utils.get_upload_folder()) / "kosmos-demo"  # Gradio serves its own cache
        self.keep_s = keep_s

    def new(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in self.root.iterdir():
            try:
                if now - old.stat().st_mtime > self.keep_s:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        return folder


# --------------------------------------------------------------------------- handlers


class KosmosApp:
    """Everything the page does, as plain methods over one engine."""

    def __init__(self, engine):
        self.engine = engine
        self.stops = _Stops()
        self.scratch = _Scratch()
        self._displays: dict[str, Image.Image] = {}
        self._displays_lock = threading.Lock()

        @gpu
        def generate(image: Image.Image, request, key: str) -> Iterator[Partial | Result]:
            # The session's Stop flag when this runs in the app's process; under ZeroGPU (another
            # process) only closing the iterator stops it, which Gradio does when it cancels the event.
            cancel = self.stops.event(key) or threading.Event()
            yield from self.engine.stream(image, request, cancel=cancel)

        @gpu
        def describe_once(image: Image.Image, request) -> Result:
            return self.engine.describe(image, request)

        self._generate = generate
        self._describe_once = describe_once

    # -- the image and the region ------------------------------------------

    def identify(self, image: str | None, source: Source | None) -> Source | None:
        """The Source behind the image component's value: the known one, or a new upload (validated)."""
        if not image:
            return None
        if source is not None and image in source.seen:
            return source
        digest = uv.file_digest(image)
        if source is not None and digest in (source.digest, source.shown_digest):
            return replace(source, seen=source.seen | {image})
        loaded = load_image(image, self.engine.image_limits)
        return Source(path=image, size=loaded.size, digest=digest, seen=frozenset({image}))

    def refresh(self, image, source, task, text, box, grounding, corner=None):
        """-> (image component, source, prompt preview, pending corner), all from the current inputs.

        The image component shows the user's original, or for the region tasks
        a downscaled copy with the box (or the first clicked corner) drawn on it.
        """
        try:
            known = self.identify(image, source)
        except ImageLoadError as error:
            gr.Warning(html.escape(str(error), quote=False))
            known = None
        if known is None or source is None or known.digest != source.digest:
            corner = None  # a new image: a corner clicked on the old one means nothing
        prompt = uv.prompt_preview(task, text, box, grounding, known.size if known else None)
        if known is None:
            return gr.skip(), None, prompt, None
        wanted = self._wanted_view(known, task, box, corner)
        if wanted == known.shown:
            return gr.skip(), known, prompt, corner
        if wanted is None:
            return known.path, replace(known, shown=None, shown_digest=None, scale=1.0), prompt, corner
        drawn_box, drawn_corner = wanted
        shown = self._display_of(known)
        scale = shown.width / known.size[0]
        box_px = uv.scale_box(drawn_box, known.size, shown.size) if drawn_box else None
        corner_px = (drawn_corner[0] * scale, drawn_corner[1] * scale) if drawn_corner else None
        path = self.scratch.new() / f"region-{Path(known.path).stem[:40]}.png"
        uv.region_preview(shown, box_px, corner_px).save(path)
        updated = replace(known, shown=wanted, shown_digest=uv.file_digest(path), scale=scale,
                          seen=known.seen | {str(path)})
        return str(path), updated, prompt, corner

    def _display_of(self, source: Source) -> Image.Image:
        """The display-sized copy of a source, decoded once per image (a few are kept)."""
        with self._displays_lock:
            cached = self._displays.get(source.digest)
        if cached is None:
            cached = uv.display_image(load_image(source.path, self.engine.image_limits))
            with self._displays_lock:
                self._displays[source.digest] = cached
                while len(self._displays) > 8:
                    self._displays.pop(next(iter(self._displays)))
        return cached

    @staticmethod
    def _wanted_view(source: Source, task, box, corner) -> tuple | None:
        try:
            if not Task(task).needs_box:
                return None
        except ValueError:
            return None
        try:
            parsed = uv.parse_box_text(box)
            clean = validate_box(parsed, source.size) if parsed is not None else None
        except PromptError:
            clean = None
        if clean is None and corner is None:
            return None
        return (tuple(round(v, 1) for v in clean) if clean else None,
                tuple(corner) if corner is not None else None)

    def click(self, image, source, task, text, box, grounding, corner, evt: gr.SelectData):
        """A click on the image: first corner, then second corner -> box (both in original pixels)."""
        try:
            source = self.identify(image, source)
        except ImageLoadError:
            source = None
        if source is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if task not in {t.value for t in Task if t.needs_box}:
            gr.Info("To mark a region, first choose 'Describe a region' or 'Question about a region'.")
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        x, y = evt.index[0] / source.scale, evt.index[1] / source.scale
        point = uv.clamp_point(x, y, source.size)
        if corner is None:
            corner, new_box = point, box
        else:
            made = uv.box_from_corners(corner, point, source.size)
            corner, new_box = (point, box) if made is None else (None, uv.format_box(made))
        shown, source, prompt, corner = self.refresh(image, source, task, text, new_box, grounding, corner)
        return shown, source, prompt, new_box, corner

    def clear_box(self, image, source, task, text, grounding):
        shown, source, prompt, corner = self.refresh(image, source, task, text, "", grounding, None)
        return shown, source, prompt, "", corner

    # -- running the model -----------------------------------------------------

    def prepare(self, image, source, task, text, box, grounding, heatmaps, decoding: dict):
        """Validate everything the browser sent; -> (image path, PIL image, Request). Raises gr.Error."""
        try:
            source = self.identify(image, source)
            if source is None:
                raise gr.Error("Upload an image first (or pick one of the examples).", print_exception=False)
            request = uv.build_request(task, text, box, grounding, heatmaps, decoding)
            loaded = load_image(source.path, self.engine.image_limits)
            build_prompt(request, loaded.size)  # refuse a bad box or text before queueing for the GPU
        except USER_ERRORS as error:
            raise user_error(error) from None
        return source.path, loaded, request

    def run(self, session: gr.Request, image, source, task, text, box, grounding, heatmaps, *decoding):
        """The Run button: stream the caption while it is generated, then everything else."""
        path, loaded, request = self.prepare(image, source, task, text, box, grounding, bool(heatmaps),
                                             dict(zip(DECODING_FIELDS, decoding, strict=True)))
        prompt = build_prompt(request, loaded.size)
        yield self._cleared(prompt)
        key = getattr(session, "session_hash", None) or ""
        stopped = self.stops.start(key)
        stream = self._generate(loaded, request, key)
        result = None
        started = time.perf_counter()
        try:
            for item in stream:
                if stopped.is_set():
                    yield {self.c["status"]: STOPPED}
                    return
                if isinstance(item, Partial):
                    yield {
                        self.c["caption"]: [(item.text, None)],
                        self.c["status"]: f"Generating\u2026 {item.num_generated} tokens "
                                          f"({time.perf_counter() - started:.1f} s)",
                    }
                else:
                    result = item
        except USER_ERRORS as error:
            raise user_error(error) from None
        except gr.Error:
            raise
        except Exception as error:  # never a traceback in the browser
            raise unexpected_error(error) from None
        finally:
            stream.close()
            self.stops.finish(key, stopped)
        if result is None:
            return
        try:
            yield self._finished(loaded, result, Path(path).name)
        except Exception as error:
            raise unexpected_error(error) from None

    def stop(self, session: gr.Request):
        """The Stop button: end this session's generation at the next step."""
        if self.stops.stop(getattr(session, "session_hash", None) or ""):
            return STOPPED
        return gr.skip()

    def _cleared(self, prompt: str) -> dict:
        c = self.c
        return {
            c["status"]: "Starting\u2026",
            c["caption"]: None,
            c["annotated"]: None,
            c["tokens"]: None,
            c["heatmap"]: None,
            c["heatmap_info"]: "",
            c["grid"]: None,
            c["downloads"]: None,
            c["prompt_sent"]: prompt,
            c["raw"]: "",
            c["timings"]: "",
            c["shown"]: None,
            c["isolated"]: None,
            c["isolation"]: "",
            c["show_all"]: gr.Button(visible=False),
        }

    def _finished(self, image: Image.Image, result: Result, name: str) -> dict:
        c = self.c
        display = uv.display_image(image)
        colors = uv.color_map(result)
        first = uv.default_token(result)
        heat = uv.token_heatmap(display, result, first) if first is not None else None
        grid = uv.heatmap_overview(display, result)
        downloads = uv.write_downloads(self.scratch.new(), image, result, name)
        if result.heatmaps is None:
            info = "Heatmaps were off for this run: tick *Per-token attention heatmaps* under Decoding settings."
        elif heat is None:
            info = "No token was generated."
        else:
            info = heat[1] + " Click any generated token below to see its map."
        return {
            c["status"]: uv.status_line(result),
            c["caption"]: gr.HighlightedText(value=uv.caption_segments(result), color_map=colors),
            c["annotated"]: gr.AnnotatedImage(value=uv.annotated_value(display, result), color_map=colors),
            c["tokens"]: uv.token_segments(result),
            c["heatmap"]: heat[0] if heat else None,
            c["heatmap_info"]: info,
            c["grid"]: grid,
            c["downloads"]: downloads,
            c["prompt_sent"]: result.prompt,
            c["raw"]: result.raw_text,
            c["timings"]: uv.timings_markdown(result),
            c["shown"]: Shown(result, display, name),
            c["isolated"]: None,
            c["isolation"]: "",
            c["show_all"]: gr.Button(visible=False),
        }

    # -- re-rendering from a kept result ---------------------------------------

    def show_token(self, shown: Shown | None, evt: gr.SelectData):
        """A click on a token: its heatmap over the image and how much it looked at the image."""
        if shown is None:
            return gr.skip(), gr.skip()
        index = evt.index if isinstance(evt.index, int) else (evt.index or [None])[0]
        if not isinstance(index, int):
            return gr.skip(), gr.skip()
        heat = uv.token_heatmap(shown.display, shown.result, index)
        if heat is None:
            if shown.result.heatmaps is None:
                return gr.skip(), "Heatmaps were off for this run."
            return gr.skip(), "That token is part of the prompt; click a generated (shaded) token."
        return heat

    def isolate(self, shown: Shown | None, isolated: int | None, label):
        """Show only the entity under ``label`` (again: all of them)."""
        if shown is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        index = uv.entity_index(shown.result, label)
        if index is None or index == isolated:
            return self.show_all(shown)
        value = uv.annotated_value(shown.display, shown.result, only=index)
        name = uv.labels(shown.result)[index]
        note = (f"Showing only <b>{html.escape(name)}</b> ({len(shown.result.entities[index].boxes)} box"
                f"{'es' * (len(shown.result.entities[index].boxes) != 1)}).")
        return (gr.AnnotatedImage(value=value, color_map=uv.color_map(shown.result)), index, note,
                gr.Button(visible=True))

    def isolate_phrase(self, shown, isolated, evt: gr.SelectData):
        value = evt.value
        label = value[1] if isinstance(value, (list, tuple)) and len(value) == 2 else None
        if label is None:
            return self.show_all(shown)
        return self.isolate(shown, isolated, label)

    def isolate_box(self, shown, isolated, evt: gr.SelectData):
        return self.isolate(shown, isolated, evt.value)

    def show_all(self, shown: Shown | None):
        if shown is None:
            return gr.skip(), None, "", gr.Button(visible=False)
        value = uv.annotated_value(shown.display, shown.result)
        return (gr.AnnotatedImage(value=value, color_map=uv.color_map(shown.result)), None, "",
                gr.Button(visible=False))

    # -- the public API ----------------------------------------------------------

    def api_describe(
        self,
        image: FileData,
        task: str = Task.BRIEF.value,
        text: str = "",
        box: str = "",
        grounding: bool = True,
        strategy: str | None = None,
        num_beams: int | None = None,
        length_penalty: float | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        max_new_tokens: int | None = None,
        min_new_tokens: int | None = None,
        repetition_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        seed: int | None = None,
    ) -> tuple[FileData, str, dict]:
        """Caption and ground one image with Kosmos-2.

        Args:
            image: the image, sent with gradio_client.handle_file(path_or_url).
            task: brief, detailed, phrase, vqa, region, region-vqa or custom.
            text: the phrase, question or custom prompt the task needs
                (region-vqa: the words for the box in [brackets]).
            box: "x1,y1,x2,y2" in pixels of the image, for the region tasks; empty otherwise.
            grounding: custom prompts only: prepend <grounding> so the model emits boxes.
            strategy: greedy, beam or sample (default greedy).
            num_beams: beams for beam search (2-8).
            length_penalty: beam search length penalty.
            temperature: sampling temperature (0-5].
            top_p: nucleus sampling mass (0-1].
            top_k: sampling top-k (0 = off).
            max_new_tokens: most tokens to generate (default 128).
            min_new_tokens: fewest tokens to generate.
            repetition_penalty: 1.0 = off.
            no_repeat_ngram_size: forbid repeating n-grams of this size (default 3, 0 = off).
            seed: random seed for sampling.

        Returns:
            The full-resolution image with the boxes drawn, the caption, and the entities JSON
            (the CLI's schema: image name, text, entities with pixel boxes, tokens, timings).
        """
        decoding = {name: value for name, value in locals().items() if name in DECODING_FIELDS}
        try:
            path = self._uploaded_path(image)
            request = uv.build_request(task, text, box, grounding, False, decoding)
            loaded = load_image(path, self.engine.image_limits)
            build_prompt(request, loaded.size)
            result = self._describe_once(loaded, request)
            name = (image.get("orig_name") if isinstance(image, dict) else None) or Path(path).name
            files = uv.write_downloads(self.scratch.new(), loaded, result, name)
        except USER_ERRORS as error:
            raise user_error(error) from None
        except gr.Error:
            raise
        except Exception as error:
            raise unexpected_error(error) from None
        return FileData(path=files[0], orig_name=Path(files[0]).name), result.text, uv.entities_json(result, name)

    @staticmethod
    def _uploaded_path(image) -> str:
        """The server-side path of an uploaded file; refuses anything that did not come through Gradio's upload."""
        hint = "pass the image with gradio_client.handle_file(path_or_url)"
        if isinstance(image, FileData):
            image = image.model_dump()
        if not isinstance(image, dict) or (image.get("meta") or {}).get("_type") != "gradio.FileData":
            raise PromptError(f"image: {hint}.")
        path = image.get("path")
        if not isinstance(path, str) or not path:
            raise PromptError(f"image: no file was received; {hint}.")
        cache = Path(gr.utils.get_upload_folder()).resolve()
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(cache):
            raise PromptError(f"image: the file did not come through the upload; {hint}.")
        return str(resolved)


# --------------------------------------------------------------------------- layout


def _decoding_widgets() -> dict[str, gr.components.Component]:
    """One input per DecodingSettings field, ranges from settings; the server re-checks every value."""
    defaults = DecodingSettings()
    spec = {  # field: (label, step, slider?, info)
        "num_beams": ("Beams", 1, True, "beam search only"),
        "length_penalty": ("Length penalty", 0.1, True, "beam search: > 0 favours longer text"),
        "temperature": ("Temperature", 0.05, True, "sampling: lower is more conservative"),
        "top_p": ("Top-p", 0.05, True, "sampling: nucleus mass"),
        "top_k": ("Top-k", 1, False, "sampling: 0 turns it off"),
        "max_new_tokens": ("Max new tokens", 1, True, None),
        "min_new_tokens": ("Min new tokens", 1, False, None),
        "repetition_penalty": ("Repetition penalty", 0.05, True, "1.0 = off"),
        "no_repeat_ngram_size": ("No-repeat n-gram size", 1, True, "0 = off; the official demo uses 3"),
        "seed": ("Seed", 1, False, "for sampling"),
    }
    widgets: dict[str, gr.components.Component] = {}
    widgets["strategy"] = gr.Radio(list(STRATEGIES), value=defaults.strategy, label="Strategy",
                                   info="greedy = the official demo's default", elem_id="decoding-strategy")
    for name in DECODING_FIELDS:
        if name == "strategy":
            continue
        label, step, slider, info = spec[name]
        kind, low, high, low_in, high_in = RANGES[name]
        low = low if low_in else low + step
        high = high if high_in else high - step
        value = getattr(defaults, name)
        visible = not (name in ("num_beams", "length_penalty") and defaults.strategy != "beam"
                       or name in ("temperature", "top_p", "top_k") and defaults.strategy != "sample")
        common = dict(label=label, info=info, value=value, visible=visible, elem_id=f"decoding-{name}")
        if slider:
            if name == "max_new_tokens":
                high = min(high, 512)
            widgets[name] = gr.Slider(minimum=low, maximum=high, step=step, **common)
        else:
            widgets[name] = gr.Number(minimum=low, maximum=high, precision=0 if kind is int else None, **common)
    return widgets


def _banner(engine) -> str | None:
    note = getattr(engine, "preview_note", None)
    if not note:
        return None
    return f"\u26a0\ufe0f **{html.escape(note, quote=False)}**  \nModel: `{html.escape(str(engine.source))}`"


def default_examples(engine) -> list[list[str]]:
    """The photo examples, or for the shapes toy its own generated shape images (it knows nothing else)."""
    if getattr(engine.model.config, TOY_MARKER, False):
        shapes = sorted(TOY_EXAMPLES.glob("*.png"))
        rows = [[str(path), Task.BRIEF.value, "", ""] for path in shapes]
        red_circle = TOY_EXAMPLES / "red-circle.png"
        if red_circle.exists():
            rows.append([str(red_circle), Task.PHRASE.value, "the red circle", ""])
        return rows
    return [[str(EXAMPLES / r[0]), *r[1:]] for r in EXAMPLE_ROWS]


def build_demo(engine, concurrency: int = 1, max_queue: int | None = 32,
               examples: list[list[str]] | None = None) -> gr.Blocks:
    """The whole page over ``engine``, queued (``concurrency`` runs of the model at once)."""
    app = KosmosApp(engine)
    rows = examples if examples is not None else default_examples(engine)
    c: dict[str, Any] = {}
    app.c = c
    ui = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden", queue=True)

    with gr.Blocks(title="Kosmos-2: grounded captions, boxes and attention", delete_cache=(3600, 7200)) as demo:
        banner = _banner(engine)
        if banner:
            gr.Markdown(banner, elem_id="preview-banner")
        gr.Markdown(
            "# Kosmos-2 \u00b7 grounded image understanding\n"
            "Microsoft's [Kosmos-2](https://huggingface.co/microsoft/kosmos-2-patch14-224) writes about an image "
            "and ties its phrases to boxes in it. Pick a task, run, then click a phrase to isolate its boxes "
            "or a generated token to see where the model looked.",
            elem_id="app-header",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=360):
                image = gr.Image(
                    label="Image", type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                    height=400, elem_id="input-image",
                    placeholder="Drop an image here, paste one (Ctrl+V) or use the webcam",
                )
                task = gr.Radio([(t.label, t.value) for t in Task], value=Task.BRIEF.value, label="Task",
                                elem_id="task")
                text = gr.Textbox(label="Text", visible=False, max_lines=4, max_length=MAX_TEXT_CHARS,
                                  elem_id="task-text")
                with gr.Row(visible=False, equal_height=True) as box_row:
                    box = gr.Textbox(label="Box: x1,y1,x2,y2 in pixels", placeholder="click two corners on the image",
                                     scale=4, elem_id="box-input",
                                     info="Click two opposite corners on the image, or type them.")
                    clear_box = gr.Button("Clear box", size="sm", scale=1, min_width=90, elem_id="clear-box")
                grounding = gr.Checkbox(value=True, label="Add <grounding> at the start (ask for boxes)",
                                        visible=False, elem_id="grounding")
                prompt = gr.Textbox(label="Prompt sent to the model", interactive=False, max_lines=3,
                                    value="<grounding>An image of", elem_id="prompt-preview", buttons=["copy"])
                with gr.Accordion("Decoding settings", open=False, elem_id="decoding"):
                    decoding = _decoding_widgets()
                    heatmaps = gr.Checkbox(value=True, label="Per-token attention heatmaps", elem_id="heatmaps",
                                           info="costs next to nothing; needed to click tokens")
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", elem_id="run-button", scale=3)
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop-button", scale=1)
                gr.Markdown("Ctrl+Enter (\u2318+Enter on a Mac) runs.", elem_classes=["hint"])

            with gr.Column(scale=7, min_width=420):
                c["status"] = gr.Markdown("Upload an image and press **Run**.", elem_id="status")
                c["caption"] = gr.HighlightedText(
                    label="Caption: click a highlighted phrase to show only its boxes", elem_id="caption",
                    combine_adjacent=False, show_legend=False, show_inline_category=False, interactive=False,
                )
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=240):
                        c["annotated"] = gr.AnnotatedImage(label="Boxes (click a label to isolate it)",
                                                           elem_id="annotated", show_legend=True)
                        with gr.Row():
                            c["isolation"] = gr.Markdown(elem_id="isolation")
                            c["show_all"] = gr.Button("Show all boxes", size="sm", visible=False,
                                                      elem_id="show-all")
                    with gr.Column(min_width=240):
                        c["heatmap"] = gr.Image(label="Attention of the clicked token", interactive=False,
                                                elem_id="heatmap", format="png")
                        c["heatmap_info"] = gr.Markdown(elem_id="heatmap-info")
                c["tokens"] = gr.HighlightedText(
                    label="Tokens: click a generated token (shaded by its attention on the image)",
                    elem_id="tokens", combine_adjacent=False, show_legend=False, show_inline_category=False,
                    interactive=False,
                )
                with gr.Accordion("All token heatmaps", open=False, elem_id="grid-accordion"):
                    c["grid"] = gr.Image(show_label=False, interactive=False, elem_id="heatmap-grid")
                c["downloads"] = gr.File(label="Downloads: annotated PNG (full size), entities JSON, heatmaps",
                                         file_count="multiple", interactive=False, elem_id="downloads")
                with gr.Accordion("Raw output, exact prompt and timings (for experts)", open=False,
                                  elem_id="raw-accordion"):
                    c["prompt_sent"] = gr.Textbox(label="Exact prompt", interactive=False, buttons=["copy"],
                                                  elem_id="prompt-sent")
                    c["raw"] = gr.Textbox(label="Raw output with location tokens", interactive=False, lines=3,
                                          buttons=["copy"], elem_id="raw-output")
                    c["timings"] = gr.Markdown(elem_id="timings")

        gr.Examples(rows, inputs=[image, task, text, box], cache_examples=False, examples_per_page=8,
                    label="Examples (nothing runs until you press Run)",
                    api_visibility="private")

        source = gr.State(None)
        corner = gr.State(None)
        c["shown"] = gr.State(None, time_to_live=3600)
        c["isolated"] = gr.State(None)

        # the region box and the live prompt
        view_inputs = [image, source, task, text, box, grounding, corner]
        gr.on([image.change, task.change, text.change, box.change, grounding.change], app.refresh,
              inputs=view_inputs, outputs=[image, source, prompt, corner], trigger_mode="always_last", **ui)
        image.select(app.click, inputs=view_inputs, outputs=[image, source, prompt, box, corner], **ui)
        clear_box.click(app.clear_box, inputs=[image, source, task, text, grounding],
                        outputs=[image, source, prompt, box, corner], **ui)
        task.change(_task_fields, inputs=task, outputs=[text, box_row, grounding], **ui)
        decoding["strategy"].change(_strategy_fields, inputs=decoding["strategy"],
                                    outputs=[decoding[n] for n in _STRATEGY_FIELDS], **ui)

        # running
        outputs = [c[k] for k in ("status", "caption", "annotated", "tokens", "heatmap", "heatmap_info", "grid",
                                  "downloads", "prompt_sent", "raw", "timings", "shown", "isolated", "isolation",
                                  "show_all")]
        run_inputs = [image, source, task, text, box, grounding, heatmaps, *[decoding[n] for n in DECODING_FIELDS]]
        running = run_button.click(app.run, inputs=run_inputs, outputs=outputs, api_visibility="private",
                                   concurrency_id="gpu", concurrency_limit="default", show_progress="minimal")
        stop_button.click(app.stop, inputs=None, outputs=c["status"], cancels=[running], api_visibility="private",
                          queue=False, show_progress="hidden")

        # re-rendering from the kept result
        c["tokens"].select(app.show_token, inputs=c["shown"], outputs=[c["heatmap"], c["heatmap_info"]], **ui)
        isolation = [c["annotated"], c["isolated"], c["isolation"], c["show_all"]]
        c["caption"].select(app.isolate_phrase, inputs=[c["shown"], c["isolated"]], outputs=isolation, **ui)
        c["annotated"].select(app.isolate_box, inputs=[c["shown"], c["isolated"]], outputs=isolation, **ui)
        c["show_all"].click(app.show_all, inputs=c["shown"], outputs=isolation, **ui)

        gr.api(app.api_describe, api_name="describe", concurrency_id="gpu", concurrency_limit="default")

    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    demo.kosmos_app = app  # for tests and embedding
    return demo


_STRATEGY_FIELDS = ("num_beams", "length_penalty", "temperature", "top_p", "top_k")


def _strategy_fields(strategy: str):
    beam, sample = strategy == "beam", strategy == "sample"
    return (gr.update(visible=beam), gr.update(visible=beam), gr.update(visible=sample), gr.update(visible=sample),
            gr.update(visible=sample))


def _task_fields(task: str):
    try:
        chosen = Task(task)
    except ValueError:
        return gr.skip(), gr.skip(), gr.skip()
    label, placeholder = _TEXT_FIELD.get(chosen, ("Text", ""))
    return (gr.update(visible=chosen.needs_text, label=label, placeholder=placeholder),
            gr.update(visible=chosen.needs_box), gr.update(visible=chosen is Task.CUSTOM))
