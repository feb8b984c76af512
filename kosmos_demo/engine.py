"""The Kosmos-2 engine: load once, then preprocess -> forward -> postprocess.

Like a transformers pipeline, each stage hands plain data to the next
(:class:`Prepared`, :class:`Generated`, then :class:`~kosmos_demo.results.Result`),
and like segment-anything's ``SamPredictor`` it knows nothing of any UI.
"""

from __future__ import annotations

import contextvars
import functools
from contextlib import nullcontext
import gc
import importlib.util
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image

from . import DEFAULT_MODEL, checkpoints, cpu_linear
from .checkpoints import MODEL_ENV, resolve_source
from .compat import (TransformersAssumptionError, assumption_failed, classify_load_failure, load_kosmos2,
                     transformers_version)
from .attention import ATTENTION_IMPLEMENTATION, ImageAttentionRecorder, token_heatmaps
from .detokenize import PieceDecoder
from .geometry import normalize_box, to_pixels
from .grounding import TAG_TOKENS, parse_grounded
from .images import ImageLimits, load_image
from .messages import quote_value
from .results import Entity, Heatmaps, Result, Token
from .settings import QUANTIZATIONS
from .tasks import PromptError, Request, build_prompt, validate_box


class EngineError(RuntimeError):
    """A request failed in a way the user can act on; the message says how."""


class ModelLoadError(EngineError):
    """The weights could not be loaded; the message is one paragraph for a person."""


# --- device, dtype, loading ------------------------------------------------


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda, then mps, then cpu; anything else is checked and used as given."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise EngineError(f"Unknown device {quote_value(device)}; use auto, cpu, cuda, cuda:N or mps.") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"Device {quote_value(device)} was asked for, but CUDA is not available here; "
                          "use --device cpu.")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise EngineError(f"Device {quote_value(device)} was asked for, but MPS is not available here; "
                          "use --device cpu.")
    return chosen


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device = torch.device("cpu")) -> torch.dtype:
    """'auto' -> bf16 on CUDA where supported, else fp16 on CUDA/MPS; fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise EngineError(f"Unknown dtype {quote_value(dtype)}; use auto, float32, float16 or bfloat16.") from None


def quantization_config(quantize: str, dtype: torch.dtype):
    """bitsandbytes' ``BitsAndBytesConfig`` for ``8bit`` / ``4bit`` (nf4, computing in ``dtype``); None for ``none``."""
    if quantize in (None, "", "none"):
        return None
    if quantize not in QUANTIZATIONS:
        raise EngineError(f"Unknown quantization {quote_value(quantize)}; use none, 8bit or 4bit.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise EngineError(f"Quantizing to {quantize} needs bitsandbytes, which is not installed "
                          "(pip install bitsandbytes; it wants a CUDA GPU). Or leave quantization off.")
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")


def _load_failure(source: str, reason: BaseException | str) -> ModelLoadError:
    """One paragraph for a person: what failed (a package, a version, the network or the checkpoint) and the fix."""
    local = os.path.exists(os.path.expanduser(source)) or source.startswith(("/", ".", "~")) or source.count("/") != 1
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if local:
        tried = f"the local folder {source}"
    else:
        tried = f"the Hugging Face Hub model {quote_value(source, limit=120)}"
        tried += " (offline mode is on: HF_HUB_OFFLINE=1)" if offline else ""
    why = str(reason).strip().splitlines()[0].rstrip(".") if str(reason).strip() else type(reason).__name__
    if len(why) > 300:
        why = why[:300] + "..."
    kind, install = classify_load_failure(reason)
    if kind == "network" and local:
        kind = "checkpoint"
    preview = ("For an offline preview: --model toy, the small model this project trained on coloured shapes "
               "(it knows nothing else).")
    if kind == "package":
        advice = (f"A Python package is missing or of the wrong version, not the model: "
                  f"{'pip install ' + quote_value(install, limit=120) if install else 'install the package named above'}"
                  f" (with transformers {transformers_version()}), then start again.")
    elif kind == "version":
        advice = (f"The installed versions do not fit this checkpoint or each other (transformers "
                  f"{transformers_version()}): pip install {quote_value(install, limit=120)}, then start again.")
    elif kind == "network":
        advice = (f"The real weights (about 6.6 GB) come from the Hub on first run and need network access. "
                  f"To use a local checkpoint, pass --model /path/to/folder (or set {MODEL_ENV}=/path/to/folder): a "
                  f"folder written by save_pretrained with config.json, the weights and the processor files, for "
                  f"example `hf download {DEFAULT_MODEL} --local-dir DIR` run on a machine with network. {preview}")
    else:
        advice = (f"This is not a complete, readable Kosmos-2 checkpoint: --model (or {MODEL_ENV}) must name a "
                  f"folder written by save_pretrained, with config.json, the weights and the processor files; copy it "
                  f"again, or fetch it with `hf download {DEFAULT_MODEL} --local-dir DIR` on a machine with network. {preview}")
    return ModelLoadError(f"Could not load Kosmos-2 from {tried}: {why}. {advice}")


def _hub_fallback(source: str) -> dict:
    """``from_pretrained`` options for a hub id when the Hub is unreachable: the local cache, or fail now.

    Without this an offline start spends about 25 s in huggingface_hub's retries
    before the same error.
    """
    if not checkpoints.is_hub_id(source) or not (reason := checkpoints.hub_unreachable()):
        return {}
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return {"local_files_only": True}  # downloaded before: serve the cached copy
    raise _load_failure(source, f"{reason}, and it is not in the local cache")


# --- plain data between the stages ----------------------------------------


@dataclass
class Prepared:
    """Model inputs for one batch, and what postprocess needs to read the output."""

    requests: list[Request]
    images: list[Image.Image]
    prompts: list[str]
    inputs: dict[str, torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Generated:
    """Token ids out of ``generate`` (prompt included) and the recorded attention."""

    sequences: torch.Tensor
    slot_rows: torch.Tensor | None = None
    patch_weights: torch.Tensor | None = None
    cancelled: bool = False
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Partial:
    """What streaming yields before the :class:`Result`: the caption so far."""

    text: str
    raw_text: str
    num_generated: int


# Left-padded rows need their decoding positions shifted back by their padding.
_LEFT_PADDING: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("left_padding", default=None)


_CACHE_LENGTH_KEYWORD = "cache_length"  # past_key_values_length before 5.24


def _hook_position_embedding(embed_positions):
    """Shift left-padded rows' decoding positions; transformers has no public way to pass them to generate().

    The sinusoidal embedding counts positions from the cache length it is called
    with, the same for every row, so a row with p padding tokens would decode at
    positions p too far. The hook reads that keyword, whose name is checked here.
    """
    import inspect

    parameters = inspect.signature(embed_positions.forward).parameters
    keyword = _CACHE_LENGTH_KEYWORD
    missing = [name for name in ("input_ids", "position_ids", keyword) if name not in parameters]
    if missing or not isinstance(getattr(embed_positions, "padding_idx", None), int):
        raise assumption_failed(
            f"the text position embedding takes input_ids, position_ids and {keyword}, and has an int padding_idx",
            f"forward({', '.join(parameters)}), padding_idx={type(getattr(embed_positions, 'padding_idx', None)).__name__}",
        )

    def shift_positions_past_padding(module, args, kwargs):
        pads = _LEFT_PADDING.get()
        if pads is None:
            return None
        if keyword not in kwargs or "input_ids" not in kwargs:
            raise assumption_failed(f"the text position embedding is called with {keyword}= and input_ids= keywords",
                                    f"{len(args)} positional, keywords {', '.join(kwargs) or 'none'}")
        past, input_ids = kwargs[keyword], kwargs["input_ids"]
        if not past or input_ids is None or kwargs.get("position_ids") is not None:
            return None
        steps = torch.arange(input_ids.shape[1], device=input_ids.device)
        positions = past + 1 + module.padding_idx + steps[None, :] - pads.to(input_ids.device)[:, None]
        return args, {**kwargs, "position_ids": positions}

    return embed_positions.register_forward_pre_hook(shift_positions_past_padding, with_kwargs=True)


class _Cancelled(Exception):
    pass


class _TokenQueue:
    """A generate() streamer: hands new token ids to another thread, at most every ``interval_s`` seconds.

    Waking the consumer for every token makes the two threads trade the GIL per token, which slows a
    small model's decoding by up to half; batching by time costs one list append per token.
    """

    def __init__(self, interval_s: float = 0.0):
        self.queue: queue.Queue = queue.Queue()
        self.interval_s = interval_s
        self._prompt_seen = False
        self._pending: list[int] = []
        self._sent_at = float("-inf")  # the first token goes at once

    def put(self, value):
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self._pending.extend(value.reshape(-1).tolist())
        if time.perf_counter() - self._sent_at >= self.interval_s:
            self._send()

    def end(self):
        if self._pending:
            self._send()
        self.queue.put(None)

    def _send(self):
        self.queue.put(self._pending)
        self._pending = []
        self._sent_at = time.perf_counter()

    def take(self) -> list[int] | None:
        """Every id sent since the last call (waiting for one); None once generation has ended and all were taken."""
        ids = self.queue.get()
        if ids is None:
            return None
        while True:
            try:
                more = self.queue.get_nowait()
            except queue.Empty:
                return ids
            if more is None:
                self.queue.put(None)  # seen on the next call, after these ids
                return ids
            ids = ids + more


class _Worker:
    """One long-lived daemon thread that runs the streams' ``generate`` calls, one after another.

    A fresh thread per stream cost 13 ms of a 49 ms tiny-checkpoint run (torch sets up its
    intra-op thread pool again for each new calling thread). Daemon, so a generation that is
    still running never holds up the interpreter's exit.
    """

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def submit(self, job: Callable[[], None]) -> threading.Event:
        """Run ``job`` (which must not raise) on the thread; the event is set when it has returned."""
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="kosmos-generate", daemon=True)
                self._thread.start()
        done = threading.Event()
        self._jobs.put((job, done))
        return done

    def _serve(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                job()
            finally:
                done.set()


class _StopOnEvent:
    """A StoppingCriteria that ends generation when ``event`` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# --- the engine ------------------------------------------------------------


class Kosmos2Engine:
    """Kosmos-2 with grounded parsing, pixel boxes and optional per-token heatmaps."""

    def __init__(self, model, processor, source: str = "", image_limits: ImageLimits = ImageLimits()):
        self.model = model.eval()
        self.processor = processor
        self.source = source
        self.image_limits = image_limits
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.num_slots = model.config.latent_query_num
        self.max_positions = model.config.text_config.max_position_embeddings
        tokenizer = processor.tokenizer
        self._tag_ids = frozenset(tokenizer.convert_tokens_to_ids(list(TAG_TOKENS)))
        first = tokenizer.convert_tokens_to_ids("<patch_index_0000>")
        self._location_ids = range(first, first + processor.num_patch_index_tokens)
        self._eos_id = tokenizer.eos_token_id
        self._pad_id = tokenizer.pad_token_id
        model.set_attn_implementation(ATTENTION_IMPLEMENTATION)  # what it was loaded with or not: no private read
        self._position_hook = _hook_position_embedding(model.text_model.model.embed_positions)
        self._lock = threading.Lock()
        self._worker = _Worker()

    def close(self) -> None:
        """Take the engine's hook off the model (it stays usable as a plain transformers model); idempotent."""
        with self._lock:
            if self._position_hook is not None:
                self._position_hook.remove()
                self._position_hook = None
        with _ENGINES_LOCK:
            for key in [key for key, engine in _ENGINES.items() if engine is self]:
                del _ENGINES[key]

    @classmethod
    def load(cls, model: str | None = None, device: str = "auto", dtype: str = "auto",
             progress: Callable[[str], None] | None = None, pack: bool = True,
             quantize: str = "none") -> "Kosmos2Engine":
        """``from_pretrained`` for a hub id or a local folder, straight to the target device and dtype.

        ``quantize`` ``8bit`` / ``4bit`` loads the weights through bitsandbytes
        (:func:`quantization_config`): about a half / a third of the bf16 memory.

        On the CPU (fp32/bf16) the linear layers are then packed for oneDNN
        (:mod:`kosmos_demo.cpu_linear`): seconds more at load, much faster batches.
        ``pack=False`` or ``KOSMOS_DEMO_ONEDNN=0`` keeps the stock layers, and so
        does a CPU whose oneDNN cannot run the dtype (bf16 without AVX-512).
        """
        from transformers import AutoConfig, AutoProcessor

        source = resolve_source(model)
        target = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, target)
        quantization = quantization_config(quantize, torch_dtype)
        say = progress or (lambda message: None)
        say(f"Loading Kosmos-2 from {source} ({target.type}, {str(torch_dtype).replace('torch.', '')}"
            f"{'' if quantization is None else ', ' + quantize})...")
        offline = _hub_fallback(source)
        try:
            config = AutoConfig.from_pretrained(source, **offline)
            if config.model_type != "kosmos-2":
                raise ValueError(f"it holds a {quote_value(config.model_type)} model, not Kosmos-2")
            processor = AutoProcessor.from_pretrained(source, **offline)
            net = load_kosmos2(
                source, attn_implementation=ATTENTION_IMPLEMENTATION, dtype=torch_dtype, device_map=str(target),
                **({} if quantization is None else {"quantization_config": quantization}), **offline,
            )
        except Exception as error:  # OSError, ValueError, SafetensorError (truncated file), RuntimeError (shapes)...
            raise _load_failure(source, error) from error
        quantized = bool(getattr(net, "is_quantized", False))
        if pack and cpu_linear.wanted(target, torch_dtype, quantized):
            say(f"Packing the linear layers for oneDNN (CPU; set {cpu_linear.OPT_OUT}=0 to skip)...")
            cpu_linear.pack_linears(net)
        elif pack and target.type == "cpu" and (reason := cpu_linear.unavailable_reason(target, torch_dtype)):
            say(f"Keeping the stock linear layers: {reason}.")
        say("Model loaded.")
        try:
            return cls(net, processor, source=source)
        except TransformersAssumptionError as error:  # a release that broke a checked internal: say so at start-up
            raise ModelLoadError(str(error)) from error

    @functools.cached_property
    def max_new_tokens_limit(self) -> int:
        """The most new tokens any request can ask for: the model's positions less the shortest prompt's."""
        inputs = self.processor(text=build_prompt(Request(), (1, 1)), images=Image.new("RGB", (8, 8)),
                                return_tensors="pt", num_image_tokens=self.num_slots)
        return self.max_positions - inputs["input_ids"].shape[1]

    # -- public calls --

    def describe(self, image, request: Request = Request(), logits_processors: Sequence = ()) -> Result:
        """One image, one request -> one :class:`Result`."""
        return self.describe_batch([image], [request], logits_processors=logits_processors)[0]

    def describe_batch(self, images: Sequence, requests: Sequence[Request] | Request,
                       logits_processors: Sequence = ()) -> list[Result]:
        """Many images through ONE ``generate`` call (left padding, shared decoding settings)."""
        if isinstance(requests, Request):
            requests = [requests] * len(images)
        with self._lock:
            prepared = self.preprocess(images, requests)
            generated = self.forward(prepared, logits_processors=logits_processors)
            return self.postprocess(prepared, generated)

    def stream(self, image, request: Request = Request(), cancel: threading.Event | None = None,
               logits_processors: Sequence = (), interval_s: float = 0.0) -> Iterator[Partial | Result]:
        """Yield :class:`Partial` captions while generating, then the :class:`Result`.

        A :class:`Partial` comes at most every ``interval_s`` seconds (the first token at once), with
        every token generated since the last one.

        Settings that cannot stream (beam search: ``DecodingSettings.streams``)
        yield the :class:`Result` alone, when the search ends.

        Setting ``cancel`` or closing the iterator stops generation at the next
        step; the result then holds what was generated so far. The model lock is
        held by the generating thread only, so an abandoned iterator cannot keep
        other requests waiting for longer than its own ``max_new_tokens``.
        """
        cancel = cancel or threading.Event()
        prepared = self.preprocess([image], [request])
        streamer = _TokenQueue(interval_s)  # beam search keeps candidates to the end: nothing to show until then
        outcome: dict = {}

        def run():
            try:
                with self._lock:
                    outcome["generated"] = self.forward(prepared, streamer=streamer if request.decoding.streams else None,
                                                        cancel=cancel, logits_processors=logits_processors)
            except BaseException as error:  # re-raised in the consumer below
                outcome["error"] = error
            finally:
                streamer.end()

        finished = self._worker.submit(run)
        decoder = self._piece_decoder()
        prompt_tail = decoder.extend(_after_image(prepared.inputs["input_ids"][0].tolist(),
                                                  prepared.inputs["image_embeds_position_mask"][0]))
        raw = "".join(piece for piece, _ in prompt_tail)  # a "Question: ..." is part of the caption, as in the Result
        text = "".join(piece for piece, kind in prompt_tail if kind == "text")
        generated, ended = 0, False
        try:
            while (ids := streamer.take()) is not None:
                for piece, kind in decoder.extend(_until_eos(ids, self._eos_id)):  # only the new tokens are decoded
                    raw += piece
                    if kind == "text":
                        text += piece
                generated += len(ids)
                yield Partial(text.strip(), raw, generated)
            ended = True
        finally:
            if not ended:
                cancel.set()  # closed early: stop generating, do not wait for it
        finished.wait()
        if "error" in outcome:
            raise outcome.pop("error")  # popped: the error's traceback refers back to `outcome` (a cycle)
        yield self.postprocess(prepared, outcome["generated"])[0]

    # -- stages --

    def preprocess(self, images: Sequence, requests: Sequence[Request]) -> Prepared:
        """Load images safely, build prompts, run the processor (left padding for batches)."""
        start = time.perf_counter()
        if len(images) != len(requests):
            raise ValueError(f"{len(images)} images but {len(requests)} requests")
        if not images:
            raise ValueError("no images given")
        heatmaps = {r.heatmaps for r in requests}
        decodings = {r.decoding for r in requests}
        if len(decodings) > 1 or len(heatmaps) > 1:
            raise ValueError("one batch shares its decoding settings and heatmap choice")
        loaded = [load_image(image, self.image_limits) for image in images]
        prompts = [build_prompt(r, img.size) for r, img in zip(requests, loaded)]
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        inputs = self.processor(
            text=prompts, images=loaded, return_tensors="pt", padding=len(prompts) > 1,
            num_image_tokens=self.num_slots,
        )
        longest = inputs["input_ids"].shape[1] + requests[0].decoding.max_new_tokens
        if longest > self.max_positions:
            raise PromptError(
                f"The prompt ({inputs['input_ids'].shape[1]} tokens) plus max_new_tokens "
                f"({requests[0].decoding.max_new_tokens}) exceeds the model's {self.max_positions} positions; "
                "shorten the text or lower max_new_tokens."
            )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return Prepared(list(requests), loaded, prompts, inputs, {"preprocess": time.perf_counter() - start})

    @torch.inference_mode()
    def forward(self, prepared: Prepared, streamer=None, cancel: threading.Event | None = None,
                logits_processors: Sequence = ()) -> Generated:
        """Vision once, then ``generate`` with sdpa; image attention recorded only if heatmaps are on."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        inputs = prepared.inputs
        request = prepared.requests[0]
        settings = request.decoding
        mask = inputs["image_embeds_position_mask"]
        slots = mask.nonzero()[:, 1].view(mask.shape[0], -1)
        prompt_length = inputs["input_ids"].shape[1]
        beam = settings.strategy == "beam"
        recorder = ImageAttentionRecorder(self.model, slots, prompt_length - 1) if request.heatmaps else None
        pads = (inputs["attention_mask"] == 0).sum(dim=1)
        timings: dict[str, float] = {}
        token = _LEFT_PADDING.set(pads if bool(pads.any()) else None)
        out_of_memory = False
        try:
            start = time.perf_counter()
            with recorder.active() if recorder else nullcontext():
                image_embeds = self._image_embeds(inputs["pixel_values"])
            timings["vision"] = time.perf_counter() - start
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            stopping = StoppingCriteriaList([_StopOnEvent(cancel)]) if cancel is not None else None
            start = time.perf_counter()
            with recorder.active() if recorder and not beam else nullcontext():
                sequences = self.model.generate(
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    image_embeds=image_embeds,
                    image_embeds_position_mask=mask,
                    use_cache=True,
                    streamer=streamer,
                    stopping_criteria=stopping,
                    logits_processor=LogitsProcessorList(logits_processors) if logits_processors else None,
                    pad_token_id=self._pad_id,
                    **settings.generate_kwargs(),
                )
            timings["generate"] = time.perf_counter() - start
            if recorder and beam:
                start = time.perf_counter()
                self._teacher_forced(sequences, image_embeds, mask, recorder)
                timings["heatmaps"] = time.perf_counter() - start
        except torch.OutOfMemoryError:
            # Handled after the except block: until it ends, the exception's traceback keeps the
            # KV cache and activations of generate() alive, so nothing could be freed here.
            out_of_memory = True
        finally:
            _LEFT_PADDING.reset(token)
        if out_of_memory:
            image_embeds = recorder = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise EngineError(  # no __cause__: it would keep those tensors alive for as long as the error lives
                "The device ran out of memory while generating; try fewer new tokens, fewer beams, "
                "a smaller batch, or a lower precision (--dtype)."
            )
        generated = Generated(sequences=sequences.cpu(), cancelled=bool(cancel and cancel.is_set()), timings=timings)
        if recorder:
            start = time.perf_counter()
            generated.slot_rows = recorder.slot_rows()  # the decoding steps' rows are computed here, at once
            generated.patch_weights = recorder.patch_weights()
            timings["heatmaps"] = timings.get("heatmaps", 0.0) + time.perf_counter() - start
        return generated

    def postprocess(self, prepared: Prepared, generated: Generated) -> list[Result]:
        """Token ids -> clean caption, entities in pixels, clickable tokens, heatmaps."""
        start = time.perf_counter()
        results = []
        prompt_length = prepared.inputs["input_ids"].shape[1]
        for row, (request, image, prompt) in enumerate(zip(prepared.requests, prepared.images, prepared.prompts)):
            ids = generated.sequences[row].tolist()
            new_ids = _until_eos(ids[prompt_length:], self._eos_id)
            prompt_ids = [i for i, keep in zip(ids[:prompt_length], prepared.inputs["attention_mask"][row].tolist()) if keep]
            mask = prepared.inputs["image_embeds_position_mask"][row][-len(prompt_ids):] if prompt_ids else []
            pieces = self._pieces(prompt_ids + new_ids, mask)
            first_generated = len(pieces) - len(new_ids)
            parsed = parse_grounded([(kind, text) for text, kind in pieces])
            width, height = image.size
            entities = []
            for entity in parsed.entities:
                from_prompt = entity.piece_range[0] < first_generated
                normalized = entity.boxes
                pixels = tuple(to_pixels(b, width, height) for b in normalized)
                if from_prompt and request.box is not None and request.task.needs_box:
                    users_box = validate_box(request.box, image.size)  # the user's own box, not its grid cells
                    normalized = (normalize_box(users_box, width, height),)
                    pixels = (tuple(int(round(v)) for v in users_box),)
                entities.append(Entity(entity.phrase, entity.span, pixels, normalized, from_prompt, entity.complete))
            heatmaps = None
            if generated.slot_rows is not None:
                rows = generated.slot_rows[row, : len(new_ids)].float().numpy()
                maps, share = token_heatmaps(rows, generated.patch_weights[row].float().numpy())
                heatmaps = Heatmaps(maps, share)
            tokens = tuple(
                Token(text, kind, parsed.piece_spans[i], i >= first_generated,
                      (i - first_generated) if heatmaps is not None and i >= first_generated else None)
                for i, (text, kind) in enumerate(pieces)
            )
            timings = {**prepared.timings, **generated.timings}
            results.append(Result(
                image_size=(width, height), task=request.task.value, prompt=prompt, text=parsed.text,
                raw_text="".join(text for text, _ in pieces), entities=tuple(entities), tokens=tokens,
                heatmaps=heatmaps, timings=timings,
            ))
        spent = time.perf_counter() - start
        for result in results:
            result.timings["postprocess"] = spent / len(results)
            result.timings["total"] = sum(v for k, v in result.timings.items() if k != "total")
        return results

    # -- helpers --

    def _image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What ``Kosmos2ForConditionalGeneration.generate`` computes first, done here once."""
        return self.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output

    def _teacher_forced(self, sequences, image_embeds, mask, recorder) -> None:
        """Beam search reorders rows while decoding, so read attention in one pass over the result."""
        full_mask = torch.zeros_like(sequences, dtype=torch.bool)
        full_mask[:, : mask.shape[1]] = mask.bool()
        attention = (sequences != self._pad_id).long()
        attention[:, : mask.shape[1]] = 1
        with recorder.active():
            self.model(  # logits_to_keep=1: the attention is what is read, not the logits
                input_ids=sequences, attention_mask=attention, image_embeds=image_embeds,
                image_embeds_position_mask=full_mask, use_cache=False, logits_to_keep=1,
            )

    def _piece_decoder(self) -> PieceDecoder:
        return PieceDecoder(self.processor.tokenizer, self._location_ids, self._tag_ids)

    def _pieces(self, ids: list[int], slot_mask) -> list[tuple[str, str]]:
        """Token ids after ``</image>`` -> (decoded text, kind) per token."""
        return self._piece_decoder().extend(_after_image(ids, slot_mask))


def _after_image(ids: list[int], slot_mask) -> list[int]:
    """The ids after the image slots and ``</image>``."""
    slot_mask = [int(v) for v in (slot_mask.tolist() if hasattr(slot_mask, "tolist") else slot_mask)]
    last_slot = max((i for i, v in enumerate(slot_mask) if v), default=-1)
    return ids[last_slot + 2:]


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


_ENGINES: dict[tuple, Kosmos2Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(model: str | None = None, device: str = "auto", dtype: str = "auto",
               progress: Callable[[str], None] | None = None, quantize: str = "none") -> Kosmos2Engine:
    """The process-wide engine for these arguments: loaded on first use, then reused."""
    key = (resolve_source(model), device or "auto", dtype or "auto", quantize or "none")
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            source, device, dtype, quantize = key
            _ENGINES[key] = Kosmos2Engine.load(source, device, dtype, progress=progress, quantize=quantize)
        return _ENGINES[key]
