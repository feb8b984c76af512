"""``python -m bench``: what the engine, the batch path and the app cost over plain transformers.

One process, one device, one randomly initialised Kosmos-2 (built offline and
saved once), a fixed number of generated tokens (``min_new_tokens ==
max_new_tokens``) and the engine's own decoding keywords for every variant:

  a  reference: the model card's processor -> generate -> batch_decode -> post_process_generation
  b  engine.describe + annotate_entities
  c  engine.describe(heatmaps=True) + annotate_entities + one heatmap overlay
  d  N images in one describe_batch call against N describe calls
  e  the Gradio app over HTTP (gradio_client, /describe) against b
  f  the page's streaming Run against /describe, both over HTTP, at each of --page-tokens
  load    Kosmos2Engine.load against a bare from_pretrained, each in a fresh process
  leak    RSS across many heatmap runs on the small model

Figures are medians over ``--runs`` rounds after ``--warmup`` rounds; the
variants of one comparison run in rotation (a, b, c, a, b, c, ...).
"""

from __future__ import annotations

import argparse
import gc
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kosmos_demo.settings import QUANTIZATIONS

from .models import SIZES
from .timing import Series, TokenClock, Variant, alternate, current_rss, machine_load, peak_rss, synchronize

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "kosmos_demo" / "assets" / "examples"
PROMPT = "<grounding>An image of"
PARTS = ("a", "b", "c", "d", "e", "f", "load", "leak")

def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- options ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="full",
                        help="full = Kosmos2Config() (1.66 B), small = narrow/shallow, same grid and slots; "
                             "tiny = smoke tests only")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--dtype", default="auto", help="auto (bf16, else fp16, on CUDA; fp32 on CPU), "
                                                        "float32, float16, bfloat16")
    parser.add_argument("--tokens", type=int, default=32, help="generated tokens per image (min = max)")
    parser.add_argument("--page-tokens", default="32,256",
                        help="generated tokens of the page-against-/describe runs in part f, comma separated")
    parser.add_argument("--batch", type=int, default=4, help="images per describe_batch call in part d")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds per comparison (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    parser.add_argument("--strategy", choices=["greedy", "beam"], default="greedy",
                        help="decoding for every variant (beam: heatmaps take one teacher-forced pass)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the vision and text forwards (GPU mainly)")
    parser.add_argument("--no-onednn", dest="onednn", action="store_false",
                        help="keep stock nn.Linear on CPU (the engine packs them for oneDNN, kosmos_demo/cpu_linear.py)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="load through bitsandbytes BitsAndBytesConfig (needs bitsandbytes)")
    parser.add_argument("--skip", action="append", default=[], metavar="PARTS",
                        help=f"parts to skip, comma separated or repeated: {', '.join(PARTS)}")
    parser.add_argument("--leak-runs", type=int, default=100, help="heatmap runs in the leak check (small model)")
    parser.add_argument("--load-runs", type=int, default=2, help="fresh-process loads per loader")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="folder for the saved random checkpoint (kept and reused); default: a temp dir, removed")
    parser.add_argument("--out", type=Path, default=None,
                        help="Markdown report whose section this run rewrites (e.g. BENCHMARKS.md); "
                             "default: print the section, change no report")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the JSON summary goes (default: bench-SECTION.json in the current folder)")
    parser.add_argument("--section", default=None,
                        help="name of the report section this run rewrites (default: the size, e.g. 'full')")
    return parser


def parse_skip(values: list[str]) -> set[str]:
    skip = {part.strip() for value in values for part in value.split(",") if part.strip()}
    unknown = skip - set(PARTS)
    if unknown:
        print(f"error: --skip {', '.join(sorted(unknown))}: parts are {', '.join(PARTS)}", file=sys.stderr)
        raise SystemExit(2)
    return skip


# --- what is measured ------------------------------------------------------


@dataclass
class Setup:
    """Everything the workloads share: one model, two front ends over it."""

    size: str
    device: torch.device
    dtype: torch.dtype
    model: object
    processor: object
    engine: object
    checkpoint: Path
    tokens: int
    strategy: str
    image_paths: list[Path]
    images: list  # PIL images, decoded once

    @property
    def settings(self):
        from kosmos_demo.settings import DecodingSettings

        return DecodingSettings(strategy=self.strategy, max_new_tokens=self.tokens, min_new_tokens=self.tokens)

    def request(self, heatmaps: bool = False):
        from kosmos_demo.tasks import Request, Task

        return Request(task=Task.BRIEF, decoding=self.settings, heatmaps=heatmaps)


@dataclass
class BatchResult:
    size: int
    batch: Series
    singles: Series

    @property
    def gain(self) -> float:
        return self.singles.seconds / self.batch.seconds


@dataclass
class AppResult:
    available: bool
    reason: str = ""
    app: Series | None = None
    engine: Series | None = None

    @property
    def added(self) -> float | None:
        """Median app run minus median engine run (b), from the same rotation."""
        return self.app.seconds - self.engine.seconds if self.app and self.engine else None

    @property
    def paired_added(self) -> float | None:
        """Per request: wall time minus the engine's own ``timings.total`` of that very request, app minus b.

        The model's run-to-run noise (seconds on a busy machine) cancels out within
        each request, leaving what the app adds: upload, queue, image decoding from
        the file, the download files, HTTP and the client's download.
        """
        if not (self.app and self.engine):
            return None
        return _median_outside_engine(self.app) - _median_outside_engine(self.engine)


def _median_outside_engine(series: Series) -> float:
    return statistics.median(s.seconds - s.stages.get("total", 0.0) for s in series.samples)


@dataclass
class PageResult:
    """Part f at one length: the page's streaming Run and ``/describe`` in the same rotation."""

    tokens: int
    page: Series
    describe: Series

    @property
    def ratio(self) -> float:
        return self.page.seconds / self.describe.seconds


@dataclass
class LoadResult:
    checkpoint_bytes: int
    samples: list = field(default_factory=list)  # LoadSample

    def of(self, kind: str) -> list:
        return [s for s in self.samples if s.kind == kind]


@dataclass
class MemoryResult:
    kept_bytes: int  # Generated.slot_rows + patch_weights for one request
    kept_shapes: str
    result_bytes: int  # Heatmaps.maps + image_share in the Result
    tokens: int
    recorder_seconds: float  # time inside ImageAttentionRecorder.observe and slot_rows for that request
    recorder_calls: int
    forward_seconds: float  # the whole engine.forward of that request


@dataclass
class LeakResult:
    runs: int
    model: str
    warmup: int
    rss_after_warmup: int
    rss_end: int
    trace: list[tuple[int, int]]  # (runs done, RSS bytes)
    gpu_growth_bytes: int | None = None

    @property
    def growth(self) -> int:
        return self.rss_end - self.rss_after_warmup


@dataclass
class Report:
    argv: list[str]
    size: str
    device: str
    dtype: str
    tokens: int
    runs: int
    strategy: str
    compile: bool
    quantize: str
    load_before: str
    onednn: bool = False
    section: str = ""
    load_after: str = ""
    model_params: int = 0
    model_load_seconds: float = 0.0
    rss_after_model: int = 0
    peak_rss: int = 0
    gpu_peak: int | None = None
    single: dict[str, Series] = field(default_factory=dict)
    batch: BatchResult | None = None
    app: AppResult | None = None
    page: list[PageResult] = field(default_factory=list)
    loading: LoadResult | None = None
    memory: MemoryResult | None = None
    leak: LeakResult | None = None
    notes: list[str] = field(default_factory=list)


# --- setup -----------------------------------------------------------------


def check_quantization(choice: str) -> None:
    from kosmos_demo.engine import EngineError, quantization_config

    try:
        quantization_config(choice, torch.bfloat16)
    except EngineError as error:
        print(f"error: {error} Nothing was measured.", file=sys.stderr)
        raise SystemExit(2) from None


def write_checkpoint(size: str, directory: Path) -> None:
    """In a child process, so building the fp32 model leaves no trace in this one's RSS."""
    subprocess.run([sys.executable, "-m", "bench.models", size, str(directory)], cwd=ROOT, check=True)


REFERENCE_ATTENTION = "sdpa"
"""What the model card's reference path runs with (transformers' default, stated rather than inherited)."""


def load_model(directory: Path, device: torch.device, dtype: torch.dtype, quantize: str):
    """The model as the model card loads it (sdpa by default), straight to device and dtype."""
    from transformers import AutoProcessor

    from kosmos_demo.compat import load_kosmos2
    from kosmos_demo.engine import quantization_config

    extra = {}
    if device.type != "cpu" or quantize != "none":
        extra["device_map"] = str(device)
    config = quantization_config(quantize, dtype)
    if config is not None:
        extra["quantization_config"] = config
    model = load_kosmos2(directory, attn_implementation=REFERENCE_ATTENTION, dtype=dtype, **extra).eval()
    return model, AutoProcessor.from_pretrained(directory)


def compile_model(model) -> None:
    """torch.compile the vision tower and the text decoder, the two forwards both front ends call.

    ``Kosmos2ForConditionalGeneration.generate`` runs the vision model, then
    ``text_model.generate``, which calls ``text_model`` at every step; the engine
    calls ``vision_model`` itself. Shapes grow by one key per step: dynamic.
    """
    for part in (model.vision_model, model.text_model):
        part.forward = torch.compile(part.forward, dynamic=True)


def use_attention(model, implementation: str) -> Callable[[], None]:
    def switch() -> None:
        model.set_attn_implementation(implementation)  # public, and cheap when already set

    return switch


# --- workloads -------------------------------------------------------------


def reference_work(setup: Setup, image) -> Callable[[TokenClock], object]:
    """What the model card does, with the engine's decoding keywords."""
    model, processor, device, dtype = setup.model, setup.processor, setup.device, setup.dtype
    kwargs = setup.settings.generate_kwargs()

    def work(clock: TokenClock):
        inputs = processor(text=PROMPT, images=image, return_tensors="pt").to(device)
        probe = {"logits_processor": [clock]} if kwargs["num_beams"] > 1 else {"streamer": clock}  # no beam streamer
        ids = model.generate(
            pixel_values=inputs["pixel_values"].to(dtype), input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"], image_embeds=None,
            image_embeds_position_mask=inputs["image_embeds_position_mask"], use_cache=True, **probe, **kwargs,
        )
        text = processor.batch_decode(ids, skip_special_tokens=True)[0]
        return processor.post_process_generation(text)

    return work


def engine_work(setup: Setup, image, heatmaps: bool) -> Callable[[TokenClock], object]:
    """engine.describe and what the app draws from it."""
    from kosmos_demo.render import HeatmapAnnotator, annotate_entities

    engine, request = setup.engine, setup.request(heatmaps)

    def work(clock: TokenClock):
        result = engine.describe(image, request, logits_processors=[clock])
        annotate_entities(image, result.entities)
        if heatmaps:
            HeatmapAnnotator().annotate(image, result.heatmaps.maps[0])
        return result

    return work


def batch_work(setup: Setup, images) -> Callable[[TokenClock], object]:
    from kosmos_demo.render import annotate_entities

    engine, request = setup.engine, setup.request()

    def work(clock: TokenClock):
        results = engine.describe_batch(images, request, logits_processors=[clock])
        for image, result in zip(images, results):
            annotate_entities(image, result.entities)
        return results

    return work


def singles_work(setup: Setup, images) -> Callable[[TokenClock], object]:
    from kosmos_demo.render import annotate_entities

    engine, request = setup.engine, setup.request()

    def work(clock: TokenClock):
        results = []
        for i, image in enumerate(images):
            probe = [clock] if i == 0 else []  # first token of the first image
            results.append(engine.describe(image, request, logits_processors=probe))
            annotate_entities(image, results[-1].entities)
        return results

    return work


def expect_steps(series: Series, steps: int) -> None:
    wrong = [s.steps for s in series.samples if s.steps != steps]
    if wrong:
        raise AssertionError(f"{series.name}: generated {wrong} tokens, expected {steps} in every run")


# --- parts -----------------------------------------------------------------


def measure_single(setup: Setup, parts: set[str], runs: int, warmup: int) -> dict[str, Series]:
    """a, b, c in rotation on one image."""
    image = setup.images[0]
    ours = use_attention(setup.model, _engine_attention())
    candidates = [
        Variant("a", reference_work(setup, image), use_attention(setup.model, REFERENCE_ATTENTION)),
        Variant("b", engine_work(setup, image, heatmaps=False), ours),
        Variant("c", engine_work(setup, image, heatmaps=True), ours),
    ]
    variants = [v for v in candidates if v.name in parts]
    if not variants:
        return {}
    say(f"a/b/c: {', '.join(v.name for v in variants)} on {setup.image_paths[0].name}, {setup.tokens} tokens")
    series = alternate(variants, runs, warmup, setup.device, say)
    for s in series.values():
        expect_steps(s, setup.tokens)
    return series


def measure_batch(setup: Setup, batch: int, runs: int, warmup: int) -> BatchResult:
    images = [setup.images[i % len(setup.images)] for i in range(batch)]
    ours = use_attention(setup.model, _engine_attention())
    say(f"d: {batch} images in one describe_batch call against {batch} describe calls")
    series = alternate([Variant("batch", batch_work(setup, images), ours),
                        Variant("singles", singles_work(setup, images), ours)], runs, warmup, setup.device, say)
    expect_steps(series["batch"], setup.tokens)
    return BatchResult(batch, series["batch"], series["singles"])


def measure_app(setup: Setup, runs: int, warmup: int) -> AppResult:
    from .app import AppUnavailable, app_work

    try:
        work, close = app_work(setup, setup.image_paths[0])
    except AppUnavailable as why:
        say(f"e: unavailable: {why}")
        return AppResult(False, str(why))
    ours = use_attention(setup.model, _engine_attention())
    say("e: the app over HTTP against b")
    try:
        series = alternate([Variant("app", work, ours),
                            Variant("b (engine)", engine_work(setup, setup.images[0], heatmaps=False), ours)],
                           runs, warmup, setup.device, say)
    finally:
        close()
    return AppResult(True, "", series["app"], series["b (engine)"])


def measure_page(setup: Setup, lengths: list[int], runs: int, warmup: int) -> list[PageResult]:
    from .page import page_works

    works, close = page_works(setup, setup.image_paths[0])
    results = []
    try:
        for tokens in lengths:
            say(f"f: the page's streaming Run against /describe, {tokens} tokens")
            page, describe = works(tokens)
            series = alternate([Variant("page", page), Variant("/describe", describe)], runs, warmup, setup.device, say)
            results.append(PageResult(tokens, series["page"], series["/describe"]))
    finally:
        close()
    return results


def measure_loading(directory: Path, device: torch.device, dtype: torch.dtype, runs: int) -> LoadResult:
    """bare, engine, bare, engine, ... each in a fresh process; one untimed load first warms the page cache."""
    from .loading import measure_in_child

    dtype_name = str(dtype).replace("torch.", "")
    result = LoadResult(sum(f.stat().st_size for f in directory.glob("*.safetensors")))
    say(f"load: {result.checkpoint_bytes / 1e9:.2f} GB checkpoint, fresh process per load")
    measure_in_child("bare", directory, str(device), dtype_name)  # page cache warm-up, not reported
    for round_ in range(runs):
        for kind in ("bare", "engine"):
            sample = measure_in_child(kind, directory, str(device), dtype_name)
            say(f"  {kind} {round_ + 1}/{runs}: {sample.seconds:.2f} s, "
                f"peak RSS {sample.peak_rss_bytes / 2**30:.2f} GiB")
            result.samples.append(sample)
    return result


def measure_memory(setup: Setup) -> MemoryResult:
    """One heatmap request, instrumented: what it keeps, and the time spent recording attention.

    Wall-time ratios (c/a) carry the machine's noise; this counts the recorder's
    own seconds inside the very run, which no other load can blur much.
    """
    from kosmos_demo.attention import ImageAttentionRecorder

    engine = setup.engine
    use_attention(setup.model, _engine_attention())()
    spent = {"seconds": 0.0, "calls": 0}
    methods = {name: getattr(ImageAttentionRecorder, name) for name in ("observe", "slot_rows")}

    def timed(method):
        def run(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                spent["seconds"] += time.perf_counter() - start
                spent["calls"] += 1
        return run

    prepared = engine.preprocess([setup.images[0]], [setup.request(heatmaps=True)])
    for name, method in methods.items():
        setattr(ImageAttentionRecorder, name, timed(method))
    try:
        start = time.perf_counter()
        generated = engine.forward(prepared)
        forward_seconds = time.perf_counter() - start
    finally:
        for name, method in methods.items():
            setattr(ImageAttentionRecorder, name, method)
    kept = [generated.slot_rows, generated.patch_weights]
    result = engine.postprocess(prepared, generated)[0]
    return MemoryResult(
        kept_bytes=sum(t.numel() * t.element_size() for t in kept),
        kept_shapes=", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in kept),
        result_bytes=result.heatmaps.maps.nbytes + result.heatmaps.image_share.nbytes,
        tokens=len(result.heatmaps),
        recorder_seconds=spent["seconds"], recorder_calls=spent["calls"], forward_seconds=forward_seconds,
    )


def measure_leak(setup: Setup, runs: int) -> LeakResult:
    """``runs`` heatmap requests (describe + rendering) on the small model; RSS after warm-up and at the end."""
    from kosmos_demo.engine import Kosmos2Engine
    from kosmos_demo.render import HeatmapAnnotator, annotate_entities

    from .models import build_model

    if setup.size in ("small", "tiny"):
        engine, name = setup.engine, setup.size
        use_attention(setup.model, _engine_attention())()
    else:
        model = build_model("small").to(setup.device, setup.dtype)  # same vocabulary: same processor
        engine, name = Kosmos2Engine(model, setup.processor), "small"
    request, image = setup.request(heatmaps=True), setup.images[0]
    warmup = max(1, min(10, runs // 10))
    say(f"leak: {runs} heatmap runs on the {name} model after {warmup} warm-up runs")

    def once() -> None:
        result = engine.describe(image, request)
        annotate_entities(image, result.entities)
        HeatmapAnnotator().annotate(image, result.heatmaps.maps[0])

    def settled_rss() -> int:
        gc.collect()
        return current_rss()

    for _ in range(warmup):
        once()
    start, gpu_start = settled_rss(), _gpu_allocated(setup.device)
    trace = [(0, start)]
    for i in range(1, runs + 1):
        once()
        if i % max(1, runs // 10) == 0 or i == runs:
            trace.append((i, settled_rss()))
    gpu_end = _gpu_allocated(setup.device)
    return LeakResult(runs, name, warmup, start, trace[-1][1], trace,
                      None if gpu_start is None else gpu_end - gpu_start)


def _gpu_allocated(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    synchronize(device)
    return torch.cuda.memory_allocated(device)


def _engine_attention() -> str:
    from kosmos_demo.attention import ATTENTION_IMPLEMENTATION

    return ATTENTION_IMPLEMENTATION


# --- the run ---------------------------------------------------------------


def prepare(args, device: torch.device, dtype: torch.dtype, checkpoint: Path, report: Report) -> Setup:
    """Load the saved checkpoint once; the reference and the engine share this one model."""
    from PIL import Image

    from kosmos_demo.engine import Kosmos2Engine

    start = time.perf_counter()
    model, processor = load_model(checkpoint, device, dtype, args.quantize)
    synchronize(device)
    report.model_load_seconds = time.perf_counter() - start
    report.model_params = sum(p.numel() for p in model.parameters())
    report.rss_after_model = current_rss()
    say(f"model: {report.model_params / 1e9:.3f} B parameters loaded in {report.model_load_seconds:.1f} s, "
        f"RSS {report.rss_after_model / 2**30:.2f} GiB; attention {REFERENCE_ATTENTION}")
    if report.onednn:  # what Kosmos2Engine.load does on this device; applied to the shared model, so a and b alike
        from kosmos_demo.cpu_linear import pack_linears

        start = time.perf_counter()
        count = pack_linears(model)
        say(f"oneDNN: packed {count} linear layers in {time.perf_counter() - start:.1f} s, "
            f"RSS {current_rss() / 2**30:.2f} GiB")
        report.notes.append(f"oneDNN: {count} nn.Linear layers run on packed weights, as Kosmos2Engine.load does on "
                            "CPU, for the reference and the engine alike (--no-onednn: stock nn.Linear).")
    if args.compile:
        compile_model(model)
    engine = Kosmos2Engine(model, processor, source=str(checkpoint))  # switches to its sdpa variant
    paths = sorted(EXAMPLES.glob("*.jpg")) or sorted(EXAMPLES.iterdir())
    images = [Image.open(path).convert("RGB") for path in paths]
    return Setup(args.size, device, dtype, model, processor, engine, checkpoint, args.tokens, args.strategy,
                 paths, images)


def run(args, argv: list[str]) -> Report:
    from kosmos_demo.engine import resolve_device, resolve_dtype

    skip = parse_skip(args.skip)
    check_quantization(args.quantize)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    from kosmos_demo.cpu_linear import wanted

    onednn = args.onednn and wanted(device, dtype, quantized=args.quantize != "none")
    report = Report(argv, args.size, str(device), str(dtype).replace("torch.", ""), args.tokens, args.runs,
                    args.strategy, args.compile, args.quantize, load_before=machine_load(), onednn=onednn,
                    section=args.section or args.size)
    say(f"bench: {args.size} Kosmos-2 on {device} in {report.dtype}; {machine_load()}")
    with tempfile.TemporaryDirectory(prefix="kosmos-bench-") as scratch:
        checkpoint = args.checkpoint or Path(scratch) / f"kosmos2-{args.size}"
        write_checkpoint(args.size, checkpoint)
        if "load" not in skip:  # before this process holds a model: less memory pressure on the children
            report.loading = measure_loading(checkpoint, device, dtype, args.load_runs)
        setup = prepare(args, device, dtype, checkpoint, report)
        report.single = measure_single(setup, {"a", "b", "c"} - skip, args.runs, args.warmup)
        if "d" not in skip:
            report.batch = measure_batch(setup, args.batch, args.runs, args.warmup)
        if "e" not in skip:
            report.app = measure_app(setup, args.runs, args.warmup)
        if "f" not in skip:
            report.page = measure_page(setup, args.page_tokens, args.runs, args.warmup)
        report.memory = measure_memory(setup)
        if "leak" not in skip:
            report.leak = measure_leak(setup, args.leak_runs)
    report.peak_rss = peak_rss()
    report.gpu_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    report.load_after = machine_load()
    return report


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    from kosmos_demo.engine import EngineError

    from .report import print_summary, render_markdown, write_json_summary, write_report

    hf_logging.disable_progress_bar()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        args.page_tokens = [int(v) for v in args.page_tokens.split(",") if v.strip()]
    except ValueError:
        args.page_tokens = []
    if not args.page_tokens or min(args.page_tokens) < 1:
        print("error: --page-tokens takes whole numbers >= 1, comma separated, e.g. 32,256", file=sys.stderr)
        return 2
    if args.tokens < 1 or args.batch < 1 or args.runs < 1 or args.warmup < 0 or args.leak_runs < 1:
        print("error: --tokens, --batch, --runs and --leak-runs must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    try:
        report = run(args, argv)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(report)
    write_json_summary(report, args.json or Path(f"bench-{report.section or report.size}.json"))
    if args.out is None:
        print("\n" + render_markdown(report))
    else:
        write_report(report, args.out)
    return 0


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m bench", *map(shlex.quote, argv)])
