"""Tasks and their prompts, exactly as the Kosmos-2 model card writes them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from .geometry import GRID, clip_box, normalize_box
from .grounding import GROUNDING, PHRASE_CLOSE, PHRASE_OPEN, location_tokens
from .messages import invalid_unicode_at, quote_value
from .settings import DecodingSettings

MAX_TEXT_CHARS = 1000
"""Longest user text accepted; the model's context is 2048 tokens, 70 of them the image."""


class Task(str, Enum):
    BRIEF = "brief"
    DETAILED = "detailed"
    PHRASE = "phrase"
    VQA = "vqa"
    REGION = "region"
    REGION_VQA = "region-vqa"
    CUSTOM = "custom"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def needs_text(self) -> bool:
        return self in (Task.PHRASE, Task.VQA, Task.REGION_VQA, Task.CUSTOM)

    @property
    def needs_box(self) -> bool:
        return self in (Task.REGION, Task.REGION_VQA)


_LABELS = {
    Task.BRIEF: "Brief caption",
    Task.DETAILED: "Detailed caption",
    Task.PHRASE: "Phrase grounding",
    Task.VQA: "Question answering",
    Task.REGION: "Describe a region",
    Task.REGION_VQA: "Question about a region",
    Task.CUSTOM: "Custom prompt",
}


class PromptError(ValueError):
    """The request cannot become a prompt; the message says why and how to fix it."""


@dataclass(frozen=True)
class Request:
    """What to ask about one image. ``box`` is in pixels of the original image."""

    task: Task = Task.BRIEF
    text: str = ""
    box: tuple[float, float, float, float] | None = None
    grounding: bool = True
    """Custom prompts only: prepend ``<grounding>`` (other tasks always ground)."""
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    heatmaps: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "task", Task(self.task))
        except ValueError:
            choices = ", ".join(t.value for t in Task)
            raise PromptError(f"Unknown task {quote_value(self.task)}; choose one of {choices}.") from None


# Markup a user may write in a custom prompt; everything else that the tokenizer
# would turn into a control token is refused rather than silently obeyed.
_ALLOWED_CUSTOM = re.compile(r"</?phrase>|</?object>|</delimiter_of_multi_objects/>|<grounding>|<patch_index_(\d+)>")
_CONTROL = re.compile(
    r"<grounding>|</?phrase>|</?object>|</delimiter_of_multi_objects/>|</?image>|</doc>|</chunk>|</line>"
    r"|<patch_index_\d+>|</?s>|<pad>|<unk>|<mask>"
)


def build_prompt(request: Request, image_size: tuple[int, int]) -> str:
    """The exact prompt for a request on an image of ``image_size`` (width, height).

    >>> build_prompt(Request(Task.BRIEF), (640, 480))
    '<grounding>An image of'
    >>> build_prompt(Request(Task.PHRASE, text="a snowman next to a fire"), (640, 480))
    '<grounding><phrase> a snowman next to a fire</phrase>'
    >>> build_prompt(Request(Task.REGION, box=(250, 22, 630, 398)), (640, 480))
    '<grounding><phrase> It</phrase><object><patch_index_0044><patch_index_0863></object> is'
    >>> build_prompt(Request(Task.REGION_VQA, text="Where is [the fire] next to?", box=(110, 7, 310, 427)), (640, 480))
    '<grounding> Question: Where is<phrase> the fire</phrase><object><patch_index_0005><patch_index_0911></object> next to? Answer:'
    """
    task = request.task
    text = _clean_text(request.text) if task.needs_text else ""
    if task.needs_text and not text:
        raise PromptError(f"{task.label} needs text: {_TEXT_HINTS[task]}")
    if task is not Task.CUSTOM:
        _refuse_markup(text)
    region = _region(request, image_size) if task.needs_box else ""

    if task is Task.BRIEF:
        return f"{GROUNDING}An image of"
    if task is Task.DETAILED:
        return f"{GROUNDING}Describe this image in detail:"
    if task is Task.PHRASE:
        return f"{GROUNDING}{PHRASE_OPEN} {text}{PHRASE_CLOSE}"
    if task is Task.VQA:
        return f"{GROUNDING} Question: {text} Answer:"
    if task is Task.REGION:
        return f"{GROUNDING}{PHRASE_OPEN} It{PHRASE_CLOSE}{region} is"
    if task is Task.REGION_VQA:
        match = re.search(r"\[([^\[\]]+)\]", text)
        if match is None or not match.group(1).strip():
            raise PromptError(
                "Question about a region: mark the words that refer to the box with [brackets], "
                "e.g. 'What is [this object] made of?'."
            )
        before, phrase, after = text[: match.start()].rstrip(), match.group(1).strip(), text[match.end() :]
        return f"{GROUNDING} Question: {before}{PHRASE_OPEN} {phrase}{PHRASE_CLOSE}{region}{after} Answer:"
    _check_custom_markup(text)
    if request.grounding and not text.startswith(GROUNDING):
        return f"{GROUNDING}{text}"
    return text


_TEXT_HINTS = {
    Task.PHRASE: "type the phrase to find, e.g. 'a red car'.",
    Task.VQA: "type a question, e.g. 'What is special about this image?'.",
    Task.REGION_VQA: "type a question with the region's words in [brackets], e.g. 'What is [this] made of?'.",
    Task.CUSTOM: "type a prompt, e.g. 'An image of'.",
}


def _clean_text(text: str) -> str:
    if not isinstance(text, str):
        raise PromptError(f"The text must be a string, not {type(text).__name__}.")
    bad = invalid_unicode_at(text)
    if bad is not None:  # a lone surrogate: the tokenizer cannot take it
        raise PromptError(
            f"The text contains characters that are not valid Unicode (at position {bad}); "
            "retype that part or paste it again from its source."
        )
    text = " ".join(text.split())  # newlines and tabs would only confuse the model
    if len(text) > MAX_TEXT_CHARS:
        raise PromptError(f"The text is {len(text)} characters long; the limit is {MAX_TEXT_CHARS}.")
    return text


def _refuse_markup(text: str) -> None:
    match = _CONTROL.search(text)
    if match:
        raise PromptError(
            f"The text contains the model control token {quote_value(match.group())}; remove it "
            "(grounding markup is only accepted in the custom prompt task)."
        )


def _check_custom_markup(text: str) -> None:
    for match in _CONTROL.finditer(text):
        allowed = _ALLOWED_CUSTOM.fullmatch(match.group())
        if not allowed:
            raise PromptError(f"The prompt contains {quote_value(match.group())}, which only the processor may place.")
        if allowed.group(1) is not None and int(allowed.group(1)) >= GRID * GRID:
            raise PromptError(
                f"{quote_value(match.group())} is not a location token: they run from 0000 to {GRID * GRID - 1}."
            )
    for open_tag, close_tag in ((PHRASE_OPEN, PHRASE_CLOSE), ("<object>", "</object>")):
        depth = 0
        for tag in re.findall(re.escape(open_tag) + "|" + re.escape(close_tag), text):
            depth += 1 if tag == open_tag else -1
            if depth not in (0, 1):
                break
        if depth != 0:
            raise PromptError(f"The prompt's {open_tag} and {close_tag} tags are not balanced.")


def _region(request: Request, image_size: tuple[int, int]) -> str:
    if request.box is None:
        raise PromptError(f"{request.task.label} needs a box: mark one on the image or type x1,y1,x2,y2 in pixels.")
    box = validate_box(request.box, image_size)
    return f"<object>{location_tokens(normalize_box(box, *image_size))}</object>"


def validate_box(box, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A user's pixel box, corners sorted; refused if it is not 4 numbers or misses the image."""
    import math

    width, height = image_size
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise PromptError(f"The box must be four numbers x1,y1,x2,y2 (got {quote_value(box)}).") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise PromptError(f"The box must be four finite numbers x1,y1,x2,y2 (got {quote_value(box)}).")
    clipped = clip_box(values, image_size)
    if clipped is None:
        raise PromptError(
            f"The box {tuple(round(v) for v in values)} does not cover any of the {width}x{height} image; "
            "give x1,y1,x2,y2 in pixels of the original image."
        )
    return clipped


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x1,y1,x2,y2' (commas or spaces) -> four floats.

    >>> parse_box("10, 20 300,400")
    (10.0, 20.0, 300.0, 400.0)
    """
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise PromptError(f"The box must be four numbers x1,y1,x2,y2 (got {quote_value(text)}).") from None
    if len(values) != 4:
        raise PromptError(f"The box must be four numbers x1,y1,x2,y2 (got {len(values)}).")
    return values
