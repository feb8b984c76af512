"""The Gradio app: :class:`KosmosApp` holds the handlers, :func:`build_demo` lays out the page and wires them.

Handlers are plain methods over one engine, so tests call them without a
browser; what they send back to the page is built by the pure functions of
:mod:`kosmos_demo.ui_values`. The page never edits the user's image: uploads
are validated and copied once at display size (:class:`Source`), and the
region being marked is drawn on that copy, so only the user's own events
(upload, clear, an example) ever change which image is being described.
Internal events are private; the public API is one endpoint, ``/describe``.
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import html  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field, fields  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

import gradio as gr  # noqa: E402
from gradio.data_classes import FileData  # noqa: E402
from PIL import Image  # noqa: E402

from . import ui_values as uv  # noqa: E402
from .checkpoints import ASSETS, kind_of  # noqa: E402
from .engine import EngineError, Partial  # noqa: E402
from .export import export, overview, record  # noqa: E402
from .geometry import clamp_point, scale_box  # noqa: E402
from .images import ImageLoadError, load_image  # noqa: E402
from .render import RegionAnnotator  # noqa: E402
from .results import Result  # noqa: E402
from .serving import LARGE_IMAGE_PIXELS, RouteGuard, Scratch, release_freed_memory  # noqa: E402
from .settings import RANGES, STRATEGIES, STRATEGY_FIELDS, DecodingSettings, SettingsError  # noqa: E402
from .tasks import MAX_TEXT_CHARS, PromptError, Task, build_prompt  # noqa: E402

try:  # ZeroGPU on Hugging Face Spaces: a GPU is attached only while a decorated function runs
    import spaces

    gpu = spaces.GPU
except ImportError:  # everywhere else the decorator does nothing

    def gpu(fn):
        return fn


log = logging.getLogger(__name__)

MAX_FILE_SIZE = "20mb"
"""Largest upload the server accepts (Gradio refuses bigger ones before they reach a handler)."""

DECODING_FIELDS = tuple(f.name for f in fields(DecodingSettings))
STOPPED = "**Stopped.** Press Run to start again."
STREAM_INTERVAL_S = 0.25
"""The page's growing caption is updated at most this often (the first token at once). Each update costs
the server about 10 ms of Gradio's own work (outputs, diff, event stream) that competes with the model
for the CPU and the GIL: one per token made the tiny checkpoint's page run 5.5 times slower than
``/describe`` (``python -m bench``, part f)."""
WAITING = "Upload an image and press **Run**."
USER_ERRORS = (PromptError, SettingsError, ImageLoadError, EngineError)
"""Exceptions whose message is written for the person using the app."""

_TEXT_FIELD = {
    Task.PHRASE: ("Phrase to find", "a red car"),
    Task.VQA: ("Question", "What is special about this image?"),
    Task.REGION_VQA: ("Question about the box: put the words that refer to it in [brackets]",
                      "What is [this object] made of?"),
    Task.CUSTOM: ("Prompt (grounding markup such as <phrase>...</phrase> is allowed)", "An image of"),
}

_SWITCH_TASK_JS = """
(task, text, texts, previous) => {
  const saved = Object.assign({}, texts || {});
  if (previous) saved[previous] = text || "";
  return [saved[task] || "", saved, task];
}
"""
"""A task picked by the user: keep the text typed for the last task, bring back this task's own (in the
browser, at once: a round trip could land after the user typed on and wipe what they typed)."""

_PAGE_JS = """
() => {
  // A click on the margin around the photo gives Gradio no position (no select event): say so.
  document.addEventListener("click", (event) => {
    const frame = event.target.closest && event.target.closest("#input-image .image-container");
    const img = frame && frame.querySelector("img");
    if (!img || !img.naturalWidth) return;
    const r = img.getBoundingClientRect();
    const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight, 1);
    const x = (event.clientX - r.left - (r.width - img.naturalWidth * scale) / 2) / scale;
    const y = (event.clientY - r.top - (r.height - img.naturalHeight * scale) / 2) / scale;
    if (x >= 0 && x < img.naturalWidth && y >= 0 && y < img.naturalHeight) return;
    let hint = document.getElementById("click-hint");
    if (!hint) {
      hint = document.createElement("div");
      hint.id = "click-hint";
      frame.style.position = "relative";
      frame.appendChild(hint);
    }
    hint.textContent = "Click on the photo itself: the margin around it is not part of the image.";
    clearTimeout(hint.timer);
    hint.timer = setTimeout(() => hint.remove(), 3000);
  }, true);
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
#image-note:empty { display: none; }
#image-note p { color: var(--error-text-color, #b91c1c); margin: 0; }
#caption .textfield { display: block; word-break: normal; line-height: 1.9; font-size: 1.05em; }
#caption .token-container { display: inline; }
#caption .token.highlighted { margin: 0 1px; padding: 1px 4px; }
#tokens .textfield { max-height: 220px; overflow-y: auto; gap: 2px; }
#prompt-preview textarea { font-family: var(--font-mono); font-size: 0.85em; }
#box-row { align-items: end; }
#clear-box { flex-grow: 0; align-self: end; margin-bottom: 6px; }
#click-hint { position: absolute; left: 50%; bottom: 12px; transform: translateX(-50%); z-index: 20;
              background: rgba(20, 20, 20, 0.85); color: white; padding: 4px 10px; border-radius: 6px;
              font-size: 0.9em; pointer-events: none; }
.hint { opacity: 0.8; font-size: 0.9em; }
"""


STATE_SESSIONS = 1000
"""Sessions whose state Gradio keeps (its default, 10,000, is about 0.5 GB of config copies alone)."""


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``demo.launch`` that belong to the app (theme, limits, files it may serve)."""
    theme = gr.themes.Soft(
        primary_hue="blue",
        font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )
    from starlette.middleware import Middleware

    return dict(
        theme=theme,
        css=_CSS,
        js=_PAGE_JS,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(ASSETS)],
        share=False,
        app_kwargs={"middleware": [Middleware(RouteGuard)]},
        state_session_capacity=STATE_SESSIONS,
    )


def user_error(error: BaseException) -> gr.Error:
    """A gr.Error with the exception's own message, escaped (Gradio renders it as HTML)."""
    return gr.Error(html.escape(str(error), quote=False), print_exception=False)


def unexpected_message(error: BaseException) -> str:
    log.exception("unexpected error in a request")
    return (f"Something went wrong on the server ({html.escape(type(error).__name__)}); the details are in its log. "
            "Please try again, perhaps with another image or settings.")


def failed(what: str, error: BaseException) -> str:
    """The status line after a failed run: what failed and the message, escaped."""
    message = html.escape(str(error), quote=False) if isinstance(error, USER_ERRORS) else unexpected_message(error)
    return f"\u26a0\ufe0f **{what}** {message}"


# --------------------------------------------------------------------------- per-session state


@dataclass(frozen=True)
class Source:
    """The user's image: the file, its size (after EXIF orientation), the copy the page shows, and its name."""

    path: str
    size: tuple[int, int]
    display: str
    """A display-sized copy (:func:`ui_values.display_size`), written once when the image arrived."""
    name: str

    @property
    def scale(self) -> float:
        """Displayed pixels per original pixel."""
        return uv.display_size(self.size)[0] / self.size[0]


@dataclass(frozen=True)
class Shown:
    """A finished run, so clicks re-render from it without running the model again."""

    result: Result
    display: str
    """The display-sized copy of the image it describes."""
    name: str

    def image(self) -> Image.Image:
        with Image.open(self.display) as opened:
            return opened.convert("RGB")


@dataclass
class RunOutputs:
    """What a run sends to the page, one field per output component, in the event's output order."""

    status: Any = field(default_factory=gr.skip)
    caption: Any = field(default_factory=gr.skip)
    annotated: Any = field(default_factory=gr.skip)
    tokens: Any = field(default_factory=gr.skip)
    heatmap: Any = field(default_factory=gr.skip)
    heatmap_info: Any = field(default_factory=gr.skip)
    grid: Any = field(default_factory=gr.skip)
    downloads: Any = field(default_factory=gr.skip)
    prompt_sent: Any = field(default_factory=gr.skip)
    raw: Any = field(default_factory=gr.skip)
    timings: Any = field(default_factory=gr.skip)
    shown: Any = field(default_factory=gr.skip)
    isolated: Any = field(default_factory=gr.skip)
    isolation: Any = field(default_factory=gr.skip)
    show_all: Any = field(default_factory=gr.skip)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.names())

    @classmethod
    def cleared(cls, status: str, prompt: str) -> "RunOutputs":
        """Every output emptied, for a run that starts now."""
        return cls(status=status, caption=None, annotated=None, tokens=None, heatmap=None, heatmap_info="",
                   grid=None, downloads=None, prompt_sent=prompt, raw="", timings="", shown=None, isolated=None,
                   isolation="", show_all=gr.Button(visible=False))


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


# --------------------------------------------------------------------------- handlers


class KosmosApp:
    """Everything the page does, as plain methods over one engine."""

    def __init__(self, engine, scratch: Scratch | None = None):
        self.engine = engine
        self.kind = kind_of(engine.model.config)
        self.stops = _Stops()
        self.scratch = scratch or Scratch()
        self.region = RegionAnnotator()

        @gpu
        def generate(image: Image.Image, request, key: str) -> Iterator[Partial | Result]:
            # The session's Stop flag when this runs in the app's process; under ZeroGPU (another
            # process) only closing the iterator stops it, which Gradio does when it cancels the event.
            cancel = self.stops.event(key) or threading.Event()
            yield from self.engine.stream(image, request, cancel=cancel, interval_s=STREAM_INTERVAL_S)

        @gpu
        def describe_once(image: Image.Image, request) -> Result:
            return self.engine.describe(image, request)

        self._generate = generate
        self._describe_once = describe_once

    # -- the image ----------------------------------------------------------

    def receive(self, upload: dict | str | None = None):
        """A new image from the user (upload, paste, webcam, example) -> (image shown, Source, note, corner, status).

        The file is checked once here; a bad one is refused with the app's own
        message under the image and the image is cleared, so nothing later ever reads it.
        The events that call this skip Gradio's own image preprocessing
        (``preprocess=False``: it opens the file with Pillow first, and a bad file
        failed there, before the app could say what is wrong with it), so
        ``upload`` is the file's data (its ``path``) or a path.
        """
        path = upload.get("path") if isinstance(upload, dict) else upload
        if not path:
            return None, None, "", None, WAITING
        try:
            image = load_image(path, self.engine.image_limits)
        except ImageLoadError as error:
            return None, None, f"\u26a0\ufe0f {html.escape(str(error), quote=False)}", None, WAITING
        display = self.scratch.new() / f"display-{uv.safe_name(path)}.png"
        uv.display_image(image).save(display)
        width, height = size = image.size
        if width * height > LARGE_IMAGE_PIXELS:
            del image
            release_freed_memory()
        return (str(display), Source(path, size, str(display), Path(path).name), "", None,
                f"Image ready ({width}\u00d7{height}): press **Run**.")

    def view(self, source: Source | None, task, box, corner):
        """What the image shows: the display copy, with the region being marked drawn on it for region tasks."""
        if source is None:
            return gr.skip()
        drawn_box, drawn_corner = uv.region_marks(task, box, corner, source.size)
        if drawn_box is None and drawn_corner is None:
            return source.display
        with Image.open(source.display) as opened:
            shown = opened.convert("RGB")
        display_size = shown.size
        box_px = scale_box(drawn_box, source.size, display_size) if drawn_box else None
        corner_px = (drawn_corner[0] * source.scale, drawn_corner[1] * source.scale) if drawn_corner else None
        return self.region.annotate(shown, box_px, corner_px)

    def prompt(self, source: Source | None, task, text, box, grounding) -> str:
        """The live prompt preview."""
        return uv.prompt_preview(task, text, box, grounding, source.size if source else None)

    def click(self, source: Source | None, task, box, corner, evt: gr.SelectData):
        """A click on the image: first corner, then second corner -> box (both in original pixels)."""
        if source is None:
            return gr.skip(), gr.skip(), gr.skip()
        if task not in {t.value for t in Task if t.needs_box}:
            gr.Info("To mark a region, first choose 'Describe a region' or 'Question about a region'.")
            return gr.skip(), gr.skip(), gr.skip()
        point = clamp_point(evt.index[0] / source.scale, evt.index[1] / source.scale, source.size)
        if corner is None:
            corner = point
        else:
            made = uv.box_from_corners(corner, point, source.size)
            corner, box = (point, box) if made is None else (None, uv.format_box(made))
        return self.view(source, task, box, corner), box, corner

    def clear_box(self, source: Source | None, task):
        return self.view(source, task, "", None), "", None

    # -- running the model -----------------------------------------------------

    def prepare(self, source: Source | None, task, text, box, grounding, heatmaps, decoding: dict):
        """Validate everything the browser sent -> (PIL image, Request, prompt); raises a user error."""
        if source is None:
            raise PromptError("Upload an image first (or pick one of the examples).")
        request = uv.build_request(task, text, box, grounding, heatmaps, decoding)
        image = load_image(source.path, self.engine.image_limits)
        self.engine.preprocess([image], [request])  # every check the model run makes, before the GPU queue
        return image, request, build_prompt(request, image.size)

    def run(self, session: gr.Request, source, task, text, box, grounding, heatmaps, *decoding):
        """The Run button: stream the caption while it is generated (beam search: wait), then everything else."""
        try:
            image, request, prompt = self.prepare(source, task, text, box, grounding, bool(heatmaps),
                                                  dict(zip(DECODING_FIELDS, decoding, strict=True)))
        except Exception as error:  # nothing ran: the outputs keep the last run
            yield RunOutputs(status=failed("Not run:", error)).values()
            return
        settings = request.decoding
        starting = ("Generating\u2026" if settings.streams else
                    f"**Beam search** with {settings.num_beams} beams: the caption appears when the search ends\u2026")
        yield RunOutputs.cleared(starting, prompt).values()
        key = getattr(session, "session_hash", None) or ""
        stopped = self.stops.start(key)
        stream = self._generate(image, request, key)
        result = None
        started = time.perf_counter()
        try:
            for item in stream:
                if stopped.is_set():
                    yield RunOutputs(status=STOPPED).values()
                    return
                if isinstance(item, Partial):
                    yield RunOutputs(caption=[(item.text, None)],
                                     status=f"Generating\u2026 {item.num_generated} tokens "
                                            f"({time.perf_counter() - started:.1f} s)").values()
                else:
                    result = item
            if stopped.is_set():
                yield RunOutputs(status=STOPPED).values()
                return
            yield self._finished(source, image, result).values()
        except Exception as error:  # never a traceback in the browser: one message, in the status line
            yield RunOutputs(status=failed("Generation failed:", error)).values()
        finally:
            stream.close()
            self.stops.finish(key, stopped)
            if source.size[0] * source.size[1] > LARGE_IMAGE_PIXELS:
                del image
                release_freed_memory()

    def stop(self, session: gr.Request):
        """The Stop button: end this session's generation at the next step."""
        if self.stops.stop(getattr(session, "session_hash", None) or ""):
            return STOPPED
        return gr.skip()

    def _finished(self, source: Source, image: Image.Image, result: Result) -> RunOutputs:
        shown = Shown(result, source.display, source.name)
        display = shown.image()
        colors = uv.color_map(result)
        first = uv.default_token(result)
        heat = uv.token_heatmap(display, result, first) if first is not None else None
        exported = export(self.scratch.new(), image, result, source.name)
        if result.heatmaps is None:
            info = "Heatmaps were off for this run: tick *Per-token attention heatmaps* under Decoding settings."
        elif heat is None:
            info = "No token was generated."
        else:
            info = heat[1] + " Click any generated token below to see its map."
        return RunOutputs(
            status=uv.status_line(result),
            caption=gr.HighlightedText(value=uv.caption_segments(result), color_map=colors),
            annotated=gr.AnnotatedImage(value=uv.annotated_value(display, result), color_map=colors),
            tokens=gr.HighlightedText(value=uv.token_segments(result), label=uv.token_strip_label(result)),
            heatmap=heat[0] if heat else None,
            heatmap_info=info,
            grid=overview(display, result),
            downloads=exported.files(),
            prompt_sent=result.prompt,
            raw=result.raw_text,
            timings=uv.timings_markdown(result),
            shown=shown,
            isolated=None,
            isolation="",
            show_all=gr.Button(visible=False),
        )

    # -- re-rendering from a kept result ---------------------------------------

    def show_token(self, shown: Shown | None, evt: gr.SelectData):
        """A click on a token: its heatmap over the image and how much it looked at the image."""
        if shown is None:
            return gr.skip(), gr.skip()
        index = evt.index if isinstance(evt.index, int) else (evt.index or [None])[0]
        if not isinstance(index, int):
            return gr.skip(), gr.skip()
        heat = uv.token_heatmap(shown.image(), shown.result, index)
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
        value = uv.annotated_value(shown.image(), shown.result, only=index)
        name = uv.labels(shown.result)[index]
        count = len(shown.result.entities[index].boxes)
        note = f"Showing only <b>{html.escape(name)}</b> ({count} box{'es' * (count != 1)})."
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
        value = uv.annotated_value(shown.image(), shown.result)
        return (gr.AnnotatedImage(value=value, color_map=uv.color_map(shown.result)), None, "",
                gr.Button(visible=False))

    # -- the public API ----------------------------------------------------------

    def describe_image(
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
        """Caption and ground one image with Kosmos-2: a caption whose phrases are tied to boxes in the image.

        Args:
            image: the image (JPEG, PNG, WebP, GIF, BMP or TIFF), sent with gradio_client.handle_file(path_or_url).
            task: brief (short caption), detailed (long caption), phrase (boxes of `text`), vqa (answer the question in `text`), region (describe `box`), region-vqa (answer `text` about `box`) or custom (`text` is the prompt).
            text: the phrase, question or custom prompt the task needs; region-vqa puts the words for the box in [brackets], e.g. "What is [this] made of?".
            box: "x1,y1,x2,y2" in pixels of the image, for the region tasks; empty otherwise.
            grounding: custom prompts only: prepend <grounding> so the model emits boxes.
            strategy: greedy (default, as the official demo), beam (beam search) or sample.
            num_beams: beams for beam search (2-8, default 3).
            length_penalty: beam search length penalty (-5 to 5; > 0 favours longer text).
            temperature: sampling temperature (0-5], default 0.7.
            top_p: nucleus sampling mass (0-1], default 0.9.
            top_k: sampling top-k (0 = off), default 50.
            max_new_tokens: most tokens to generate (default 128).
            min_new_tokens: fewest tokens to generate (default 0).
            repetition_penalty: 1.0 = off, up to 3.
            no_repeat_ngram_size: forbid repeating n-grams of this size (default 3, 0 = off).
            seed: random seed for sampling (default 0).

        Returns:
            The full-resolution image with the boxes drawn, the caption, and the entities JSON (the CLI's schema: image name, text, entities with pixel boxes, tokens, timings).
        """  # noqa: E501  (one line per argument: Gradio's API page and MCP schema read only an argument's first line)
        decoding = {name: value for name, value in locals().items() if name in DECODING_FIELDS}
        try:
            path = self._uploaded_path(image)
            name = (image.get("orig_name") if isinstance(image, dict) else None) or Path(path).name
            request = uv.build_request(task, text, box, grounding, False, decoding)
            loaded = load_image(path, self.engine.image_limits)
            self.engine.preprocess([loaded], [request])
            result = self._describe_once(loaded, request)
            exported = export(self.scratch.new(), loaded, result, name)
        except USER_ERRORS as error:
            raise user_error(error) from None
        except gr.Error:
            raise
        except Exception as error:
            raise gr.Error(unexpected_message(error), print_exception=False) from None
        return (FileData(path=str(exported.annotated), orig_name=exported.annotated.name), result.text,
                record(result, name))

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


def _decoding_widgets(max_new_tokens: int) -> dict[str, gr.components.Component]:
    """One input per DecodingSettings field, ranges from settings; the server re-checks every value."""
    defaults = DecodingSettings()
    spec = {  # field: (label, step, slider?, info)
        "num_beams": ("Beams", 1, True, "beam search only"),
        "length_penalty": ("Length penalty", 0.1, True, "beam search: > 0 favours longer text"),
        "temperature": ("Temperature", 0.05, True, "sampling: lower is more conservative"),
        "top_p": ("Top-p", 0.05, True, "sampling: nucleus mass"),
        "top_k": ("Top-k", 1, False, "sampling: 0 turns it off"),
        "max_new_tokens": ("Max new tokens", 1, True, "what the model's positions leave after the shortest prompt"),
        "min_new_tokens": ("Min new tokens", 1, False, None),
        "repetition_penalty": ("Repetition penalty", 0.05, True, "1.0 = off"),
        "no_repeat_ngram_size": ("No-repeat n-gram size", 1, True, "0 = off; the official demo uses 3"),
        "seed": ("Seed", 1, False, "for sampling"),
    }
    widgets: dict[str, gr.components.Component] = {}
    widgets["strategy"] = gr.Radio(list(STRATEGIES), value=defaults.strategy, label="Strategy",
                                   info="greedy = the official demo's default", elem_id="decoding-strategy")
    shown = set(STRATEGY_FIELDS[defaults.strategy])
    hidden = {name for names in STRATEGY_FIELDS.values() for name in names} - shown
    for name in DECODING_FIELDS:
        if name == "strategy":
            continue
        label, step, slider, info = spec[name]
        kind, low, high, low_in, high_in = RANGES[name]
        low = low if low_in else low + step
        high = high if high_in else high - step
        if name in ("max_new_tokens", "min_new_tokens"):
            high = min(high, max_new_tokens)
        value = min(getattr(defaults, name), high)
        common = dict(label=label, info=info, value=value, visible=name not in hidden, elem_id=f"decoding-{name}")
        if slider:
            widgets[name] = gr.Slider(minimum=low, maximum=high, step=step, **common)
        else:
            widgets[name] = gr.Number(minimum=low, maximum=high, precision=0 if kind is int else None, **common)
    return widgets


def _strategy_fields(strategy: str):
    used = set(STRATEGY_FIELDS.get(strategy, ()))
    return tuple(gr.update(visible=name in used) for name in _STRATEGY_WIDGETS)


_STRATEGY_WIDGETS = tuple(name for names in STRATEGY_FIELDS.values() for name in names)


def _task_fields(task: str):
    try:
        chosen = Task(task)
    except ValueError:
        return gr.skip(), gr.skip(), gr.skip()
    label, placeholder = _TEXT_FIELD.get(chosen, ("Text", ""))
    return (gr.update(visible=chosen.needs_text, label=label, placeholder=placeholder),
            gr.update(visible=chosen.needs_box), gr.update(visible=chosen is Task.CUSTOM))


def _banner(app: KosmosApp) -> str | None:
    if not app.kind.note:
        return None
    return (f"\u26a0\ufe0f **{html.escape(app.kind.note, quote=False)}**  \n"
            f"Model: `{html.escape(str(app.engine.source))}`")


def build_demo(engine, concurrency: int = 1, max_queue: int | None = 32,
               examples: list[list[str]] | None = None, app: KosmosApp | None = None) -> gr.Blocks:
    """The whole page over ``engine``, queued (``concurrency`` runs of the model at once)."""
    app = app or KosmosApp(engine)
    rows = examples if examples is not None else [list(row) for row in app.kind.examples]
    ui = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden", queue=True)
    drawing = dict(api_visibility="private", concurrency_id="preview", concurrency_limit=2, show_progress="hidden",
                   trigger_mode="always_last")

    with gr.Blocks(title="Kosmos-2: grounded captions, boxes and attention", delete_cache=(600, 1800)) as demo:
        banner = _banner(app)
        if banner:
            gr.Markdown(banner, elem_id="preview-banner")
        gr.Markdown(
            "# Kosmos-2 \u00b7 grounded image understanding\n"
            "Microsoft's [Kosmos-2](https://huggingface.co/microsoft/kosmos-2-patch14-224) writes about an image "
            "and ties its phrases to boxes in it. Pick a task, run, then click a phrase to isolate its boxes "
            "or a generated token to see where the model looked.",
            elem_id="app-header",
        )
        out: dict[str, Any] = {}
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=360):
                image = gr.Image(
                    label="Image", type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                    height=400, elem_id="input-image", format="png",
                    placeholder="Drop an image here, paste one (Ctrl+V) or use the webcam",
                )
                image_note = gr.Markdown(elem_id="image-note")
                task = gr.Radio([(t.label, t.value) for t in Task], value=Task.BRIEF.value, label="Task",
                                elem_id="task")
                text = gr.Textbox(label="Text", visible=False, max_lines=4, max_length=MAX_TEXT_CHARS,
                                  elem_id="task-text")
                with gr.Row(visible=False, equal_height=False, elem_id="box-row") as box_row:
                    box = gr.Textbox(label="Box: x1,y1,x2,y2 in pixels", placeholder="click two corners on the image",
                                     scale=4, elem_id="box-input",
                                     info="Click two opposite corners on the photo itself, or type them.")
                    clear_box = gr.Button("Clear box", size="sm", scale=0, min_width=90, elem_id="clear-box")
                grounding = gr.Checkbox(value=True, label="Add <grounding> at the start (ask for boxes)",
                                        visible=False, elem_id="grounding")
                prompt = gr.Textbox(label="Prompt sent to the model", interactive=False, max_lines=3,
                                    value="<grounding>An image of", elem_id="prompt-preview", buttons=["copy"])
                with gr.Accordion("Decoding settings", open=False, elem_id="decoding"):
                    decoding = _decoding_widgets(engine.max_new_tokens_limit)
                    heatmaps = gr.Checkbox(value=True, label="Per-token attention heatmaps", elem_id="heatmaps",
                                           info="costs next to nothing; needed to click tokens")
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", elem_id="run-button", scale=3)
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop-button", scale=1)
                gr.Markdown("Ctrl+Enter (\u2318+Enter on a Mac) runs.", elem_classes=["hint"])

            with gr.Column(scale=7, min_width=420):
                out["status"] = gr.Markdown(WAITING, elem_id="status")
                out["caption"] = gr.HighlightedText(
                    label="Caption: click a highlighted phrase to show only its boxes", elem_id="caption",
                    combine_adjacent=False, show_legend=False, show_inline_category=False, interactive=False,
                )
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=240):
                        out["annotated"] = gr.AnnotatedImage(label="Boxes (click a label to isolate it)",
                                                             elem_id="annotated", show_legend=True)
                        with gr.Row():
                            out["isolation"] = gr.Markdown(elem_id="isolation")
                            out["show_all"] = gr.Button("Show all boxes", size="sm", visible=False,
                                                        elem_id="show-all")
                    with gr.Column(min_width=240):
                        gr.Markdown("**Attention of the clicked token**", elem_id="heatmap-title")
                        out["heatmap"] = gr.Image(show_label=False, interactive=False, elem_id="heatmap",
                                                  format="png", buttons=["fullscreen"])
                        out["heatmap_info"] = gr.Markdown(elem_id="heatmap-info")
                out["tokens"] = gr.HighlightedText(
                    label="Tokens: click a generated token", elem_id="tokens", combine_adjacent=False,
                    show_legend=False, show_inline_category=False, interactive=False,
                )
                with gr.Accordion("All token heatmaps", open=False, elem_id="grid-accordion"):
                    out["grid"] = gr.Image(show_label=False, interactive=False, elem_id="heatmap-grid")
                out["downloads"] = gr.File(label="Downloads: annotated PNG (full size), entities JSON, heatmaps",
                                           file_count="multiple", interactive=False, elem_id="downloads")
                with gr.Accordion("Raw output, exact prompt and timings (for experts)", open=False,
                                  elem_id="raw-accordion"):
                    out["prompt_sent"] = gr.Textbox(label="Exact prompt", interactive=False, buttons=["copy"],
                                                    elem_id="prompt-sent")
                    out["raw"] = gr.Textbox(label="Raw output with location tokens", interactive=False, lines=3,
                                            buttons=["copy"], elem_id="raw-output")
                    out["timings"] = gr.Markdown(elem_id="timings")

        examples_block = gr.Examples(rows, inputs=[image, task, text, box], cache_examples=False,
                                     examples_per_page=8, label="Examples (nothing runs until you press Run)",
                                     api_visibility="private")

        source = gr.State(None)
        corner = gr.State(None)
        texts = gr.JSON({}, visible=False)  # the browser's own: the task switch runs there
        previous_task = gr.Textbox(Task.BRIEF.value, visible=False)
        out["shown"] = gr.State(None, time_to_live=1800)
        out["isolated"] = gr.State(None)

        # the image: only the user's own events change it
        received = [image, source, image_note, corner, out["status"]]
        shown_after = dict(fn=app.view, inputs=[source, task, box, corner], outputs=image, **drawing)
        prompt_after = dict(fn=app.prompt, inputs=[source, task, text, box, grounding], outputs=prompt, **ui)
        receiving = dict(fn=app.receive, inputs=image, outputs=received, preprocess=False, concurrency_id="receive",
                         concurrency_limit=2, api_visibility="private")
        image.upload(**receiving, show_progress="minimal").then(**shown_after).then(**prompt_after)
        image.clear(app.receive, inputs=None, outputs=received, **ui).then(**prompt_after)
        examples_block.load_input_event.then(**receiving, show_progress="hidden").then(None, js="(task) => task", inputs=task, outputs=previous_task, **ui).then(**shown_after).then(
            **prompt_after)

        # the task, its text and the region
        task.change(_task_fields, inputs=task, outputs=[text, box_row, grounding], **ui)
        task.input(None, js=_SWITCH_TASK_JS, inputs=[task, text, texts, previous_task],
                   outputs=[text, texts, previous_task], **ui)
        task.change(**shown_after)
        gr.on([task.change, text.change, box.change, grounding.change], **prompt_after)
        box.input(**shown_after)
        image.select(app.click, inputs=[source, task, box, corner], outputs=[image, box, corner], **ui)
        clear_box.click(app.clear_box, inputs=[source, task], outputs=[image, box, corner], **ui)
        decoding["strategy"].change(_strategy_fields, inputs=decoding["strategy"],
                                    outputs=[decoding[n] for n in _STRATEGY_WIDGETS], **ui)

        # running
        outputs = [out[name] for name in RunOutputs.names()]
        run_inputs = [source, task, text, box, grounding, heatmaps, *[decoding[n] for n in DECODING_FIELDS]]
        running = run_button.click(app.run, inputs=run_inputs, outputs=outputs, api_visibility="private",
                                   concurrency_id="gpu", concurrency_limit="default", show_progress="minimal")
        stop_button.click(app.stop, inputs=None, outputs=out["status"], cancels=[running], api_visibility="private",
                          queue=False, show_progress="hidden")

        # re-rendering from the kept result
        out["tokens"].select(app.show_token, inputs=out["shown"], outputs=[out["heatmap"], out["heatmap_info"]],
                             **ui)
        isolation = [out["annotated"], out["isolated"], out["isolation"], out["show_all"]]
        out["caption"].select(app.isolate_phrase, inputs=[out["shown"], out["isolated"]], outputs=isolation, **ui)
        out["annotated"].select(app.isolate_box, inputs=[out["shown"], out["isolated"]], outputs=isolation, **ui)
        out["show_all"].click(app.show_all, inputs=out["shown"], outputs=isolation, **ui)

        gr.api(app.describe_image, api_name="describe", concurrency_id="gpu", concurrency_limit="default")

    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    return demo
