"""The summary printed at the end of a run and its section of BENCHMARKS.md.

Each run owns one section between HTML comment markers, named by ``--section``
(default: the size: full, small, tiny); a run replaces its own section and
keeps everything else in the file, so the hand-written analysis and the other
runs' tables survive re-runs.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import re
import statistics
import sys
from pathlib import Path

from .run import Report, command_line
from .timing import Series

GiB = 2**30
MiB = 2**20


def _ratio(report: Report, name: str) -> float | None:
    single = report.single
    if name in single and "a" in single:
        return single[name].seconds / single["a"].seconds
    return None


TARGETS = {  # name: (at most or at least, bound, unit as written)
    "b/a": ("<=", 1.05, ""),
    "c/a": ("<=", 1.10, ""),
    "batch gain": (">=", 2.5, "x"),
    "app added": ("<=", 0.3, " s"),
    "page/describe": ("<=", 1.10, ""),
}


def target_text(name: str) -> str:
    """``'<= 1.05'``: a target as the report writes it."""
    op, bound, unit = TARGETS[name]
    return f"{op} {bound:g}{unit}" if unit else f"{op} {bound:.2f}"


def _met(name: str, value: float | None) -> bool | None:
    if value is None:
        return None
    op, bound, _ = TARGETS[name]
    return value <= bound if op == "<=" else value >= bound


def targets(report: Report) -> dict[str, tuple[str, bool | None]]:
    """Each target's measured value and whether it was met (None: not measured)."""
    b, c = _ratio(report, "b"), _ratio(report, "c")
    gain = report.batch.gain if report.batch else None
    added = report.app.paired_added if report.app else None
    worst = max(report.page, key=lambda p: p.ratio) if report.page else None
    return {
        "b/a": (_fmt(b, "{:.3f}"), _met("b/a", b)),
        "c/a": (_fmt(c, "{:.3f}"), _met("c/a", c)),
        "batch gain": (_fmt(gain, "{:.2f}x"), _met("batch gain", gain)),
        "app added": (_fmt(added, "{:+.3f} s"), _met("app added", added)),
        "page/describe": (_fmt(worst and worst.ratio, "{:.3f}") + (f" (worst: {worst.tokens} tokens)" if worst else ""),
                          _met("page/describe", worst and worst.ratio)),
    }


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def print_summary(report: Report) -> None:
    print(f"\n{report.size} Kosmos-2, {report.device}, {report.dtype}, {report.tokens} tokens, "
          f"median of {report.runs}")
    for name, series in report.single.items():
        print(f"  {name}: {series.seconds:.3f} s  first token {_fmt(series.first_token, '{:.3f} s')}  "
              f"decode {_fmt(series.decode_rate, '{:.2f} tok/s')}")
    for name, (value, met) in targets(report).items():
        verdict = {True: "met", False: "MISSED", None: "not measured"}[met]
        print(f"  {name}: {value}  (target {target_text(name)}: {verdict})")
    if report.app is not None and not report.app.available:
        print(f"  app: unavailable: {report.app.reason}")
    for page in report.page:
        print(f"  page {page.tokens} tokens: {page.page.seconds:.3f} s / /describe {page.describe.seconds:.3f} s "
              f"= {page.ratio:.3f}")
    print(f"  peak RSS {report.peak_rss / GiB:.2f} GiB"
          + (f", GPU peak {report.gpu_peak / GiB:.2f} GiB" if report.gpu_peak is not None else ""))
    if report.loading and report.loading.samples:
        bare, engine = _median_load(report, "bare"), _median_load(report, "engine")
        print(f"  load: engine {engine[0]:.2f} s / bare {bare[0]:.2f} s = {engine[0] / bare[0]:.2f}; "
              f"peak RSS engine {engine[1] / GiB:.2f} GiB / bare {bare[1] / GiB:.2f} GiB = {engine[1] / bare[1]:.2f}")
    if report.memory:
        memory = report.memory
        print(f"  heatmaps keep {memory.kept_bytes} bytes per request ({memory.kept_shapes}); recording took "
              f"{memory.recorder_seconds:.3f} s of a {memory.forward_seconds:.2f} s forward")
    if report.leak:
        leak = report.leak
        print(f"  leak: RSS {leak.growth / MiB:+.1f} MiB ({100 * leak.growth / leak.rss_after_warmup:+.2f} %) "
              f"over {leak.runs} heatmap runs")


def _median_load(report: Report, kind: str) -> tuple[float, int]:
    samples = report.loading.of(kind)
    return (statistics.median(s.seconds for s in samples), int(statistics.median(s.peak_rss_bytes for s in samples)))


# --- Markdown --------------------------------------------------------------


def environment() -> dict[str, str]:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover
        pass
    import os

    info = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gradio": _version_or_absent("gradio"),
        "CPU": f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
    }
    if torch.cuda.is_available():
        info["GPU"] = torch.cuda.get_device_name()
        info["bitsandbytes"] = _version_or_absent("bitsandbytes")
    return info


def _version_or_absent(package: str) -> str:
    """A GPU box may lack the app's packages (part e is then skipped): the report still gets written."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _fastest(series: Series) -> float:
    return min(sample.seconds for sample in series.samples)


def _series_row(label: str, what: str, series: Series, base: Series | None, per: int = 1) -> str:
    low, high = series.spread
    ratio = f"{series.seconds / base.seconds:.3f}" if base is not None else ""
    gpu = f" / {series.gpu_peak_bytes / GiB:.2f}" if series.gpu_peak_bytes is not None else ""
    return (f"| {label} | {what} | {series.seconds:.3f} ({low:.3f}-{high:.3f}) | {ratio} | "
            f"{_fmt(series.first_token, '{:.3f}')} | {_fmt(series.decode_rate, '{:.2f}')}{gpu} |")


def render_markdown(report: Report) -> str:
    env = environment()
    lines = [
        f"### {report.section or report.size}: {report.size} model, {report.device}, {report.dtype}",
        "",
        f"Command: `{command_line(report.argv)}`  ",
        f"Date: {env['date']}; python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"gradio {env['gradio']}  ",
        f"Machine: {env['CPU']}" + (f"; GPU {env['GPU']}" if "GPU" in env else "") + "  ",
        f"Machine load: before `{report.load_before}`, after `{report.load_after}`  ",
        f"Model: {report.model_params / 1e9:.3f} B parameters, loaded in {report.model_load_seconds:.1f} s; "
        f"{report.tokens} generated tokens (min = max), {report.strategy}, no_repeat_ngram_size 3; "
        f"compile {'on' if report.compile else 'off'}, quantize {report.quantize}, "
        f"oneDNN packing {'on' if report.onednn else 'off'}; "
        f"median of {report.runs} rotated runs after warm-up (min-max in brackets)",
        "",
    ]
    if report.single:
        base = report.single.get("a")
        gpu_head = " / GPU peak GiB" if report.device.startswith("cuda") else ""
        lines += ["| part | what | seconds | / a | first token s | decode tok/s" + gpu_head + " |",
                  "|---|---|---|---|---|---|"]
        what = {"a": "model card: processor, generate, batch_decode, post_process_generation",
                "b": "engine.describe + annotate_entities",
                "c": "engine.describe(heatmaps) + annotate_entities + 1 heatmap overlay"}
        for name, series in report.single.items():
            lines.append(_series_row(name, what[name], series, base))
        lines.append("")
        if base is not None and len(report.single) > 1:
            fastest = ", ".join(f"{name}/a {_fastest(series) / _fastest(base):.3f}"
                                for name, series in report.single.items() if name != "a")
            lines += [f"Ratios of the fastest runs (least disturbed by other load): {fastest}.", ""]
        for name, series in report.single.items():
            if series.stages:
                stages = ", ".join(f"{k} {v:.3f}" for k, v in series.stages.items())
                lines += [f"Engine stages ({name}, median s): {stages}  "]
        lines.append("")
    if report.batch:
        batch = report.batch
        images = batch.size * report.tokens
        lines += [
            f"Batch (d): {batch.size} images, one `describe_batch` call: {batch.batch.seconds:.3f} s "
            f"({images / batch.batch.seconds:.2f} tok/s over all rows); {batch.size} `describe` calls: "
            f"{batch.singles.seconds:.3f} s ({images / batch.singles.seconds:.2f} tok/s); "
            f"throughput gain **{batch.gain:.2f}x**. First token: batch "
            f"{_fmt(batch.batch.first_token, '{:.3f}')} s, first single {_fmt(batch.singles.first_token, '{:.3f}')} s; "
            f"decode per row: batch {_fmt(batch.batch.decode_rate, '{:.2f}')} tok/s, "
            f"single {_fmt(batch.singles.decode_rate, '{:.2f}')} tok/s.",
            "",
        ]
        if batch.batch.stages:
            lines += ["Engine stages (batch, median s): "
                      + ", ".join(f"{k} {v:.3f}" for k, v in batch.batch.stages.items()), ""]
    if report.app is not None:
        app = report.app
        if app.available:
            lines += [f"App (e): `/describe` over HTTP {app.app.seconds:.3f} s against engine (b) "
                      f"{app.engine.seconds:.3f} s in the same rotation: {app.added:+.3f} s (difference of medians, "
                      f"as noisy as the model's run time). Per request, wall time minus the engine's own "
                      f"`timings.total` for that request: app minus b **{app.paired_added:+.3f} s** added "
                      "(the figure checked against the target).", ""]
        else:
            lines += [f"App (e): not measured: {app.reason}.", ""]
    if report.page:
        lines += ["Page (f): the page's streaming Run (from `/queue/join` to `process_completed`, every streamed "
                  "update and the page's final rendering included) against `/describe`, both over HTTP on one "
                  "server, in rotation:", "", "| tokens | page s | /describe s | page / describe |", "|---|---|---|---|"]
        lines += [f"| {p.tokens} | {p.page.seconds:.3f} | {p.describe.seconds:.3f} | {p.ratio:.3f} |" for p in report.page]
        lines.append("")
    if report.loading and report.loading.samples:
        lines += _loading_lines(report)
    if report.memory:
        memory = report.memory
        lines += [f"Heatmap memory: a request keeps {memory.kept_bytes:,} bytes of recorded attention "
                  f"({memory.kept_shapes}); its Result holds {memory.result_bytes:,} bytes of maps and shares "
                  f"({memory.tokens} tokens).", "",
                  f"Heatmap recording cost, instrumented in one request: {memory.recorder_seconds:.3f} s in "
                  f"{memory.recorder_calls} `ImageAttentionRecorder.observe` and `slot_rows` calls, "
                  f"{100 * memory.recorder_seconds / memory.forward_seconds:.1f} % of that request's "
                  f"{memory.forward_seconds:.2f} s `engine.forward`.", ""]
    if report.leak:
        leak = report.leak
        trace = ", ".join(f"{n}: {rss / MiB:.0f}" for n, rss in leak.trace)
        gpu = f"; GPU allocated {leak.gpu_growth_bytes / MiB:+.1f} MiB" if leak.gpu_growth_bytes is not None else ""
        percent = 100 * leak.growth / leak.rss_after_warmup
        lines += [f"Leak check: {leak.runs} `describe(heatmaps=True)` + rendering runs on the {leak.model} model "
                  f"after {leak.warmup} warm-up runs: RSS {leak.rss_after_warmup / MiB:.0f} -> "
                  f"{leak.rss_end / MiB:.0f} MiB, **{leak.growth / MiB:+.1f} MiB ({percent:+.2f} %)**{gpu}. "
                  f"RSS MiB by runs done: {trace}.", ""]
    lines += [f"Peak RSS of the benchmark process: {report.peak_rss / GiB:.2f} GiB (right after from_pretrained: "
              f"{report.rss_after_model / GiB:.2f} GiB, the weights still memory-mapped, paged in by the first forward)"
              + (f"; GPU peak allocated {report.gpu_peak / GiB:.2f} GiB" if report.gpu_peak is not None else "")
              + ".", ""]
    lines += ["| target | measured | met |", "|---|---|---|"]
    for name, (value, met) in targets(report).items():
        lines.append(f"| {name} {target_text(name)} | {value} | {({True: 'yes', False: '**no**', None: '-'})[met]} |")
    lines += [""] + [f"Note: {note}" for note in report.notes]
    return "\n".join(lines).rstrip() + "\n"


def _loading_lines(report: Report) -> list[str]:
    loading = report.loading
    bare, engine = _median_load(report, "bare"), _median_load(report, "engine")
    lines = [f"Loading a saved {loading.checkpoint_bytes / 1e9:.2f} GB safetensors checkpoint, each load in a fresh "
             f"process (median of {len(loading.of('bare'))}, page cache warm). \"materialise\" reads every page of "
             "every weight after the load (a memory-mapped checkpoint is otherwise paged in by the first forward):",
             "", "| loader | load s | peak RSS after load GiB | materialise s | peak RSS after materialise GiB "
             "| weights in target dtype/device |", "|---|---|---|---|---|---|"]
    for kind, label in (("bare", "`Kosmos2ForConditionalGeneration.from_pretrained(dir, dtype=)`"),
                        ("engine", "`Kosmos2Engine.load(dir, device, dtype)` (config, processor, model)")):
        samples = loading.of(kind)
        seconds, rss = _median_load(report, kind)
        after_load = statistics.median(s.peak_rss_after_load_bytes for s in samples)
        materialise = statistics.median(s.materialise_seconds for s in samples)
        ok = all(s.weights_on_target for s in samples)
        lines.append(f"| {label} | {seconds:.2f} | {after_load / GiB:.2f} | {materialise:.2f} | {rss / GiB:.2f} | "
                     f"{'yes' if ok else '**no**'} |")
    lines += ["", f"Engine / bare: load time {engine[0] / bare[0]:.2f}, peak RSS (after materialise) "
                  f"{engine[1] / bare[1]:.2f}.", ""]
    return lines


def json_summary(report: Report) -> dict:
    """The run's options, each target's value and verdict, and every median: what a script compares."""
    return {
        "command": command_line(report.argv),
        "size": report.size, "device": report.device, "dtype": report.dtype, "tokens": report.tokens,
        "runs": report.runs, "strategy": report.strategy, "section": report.section or report.size,
        "targets": {name: {"value": value, "target": target_text(name), "met": met}
                    for name, (value, met) in targets(report).items()},
        "seconds": {name: series.seconds for name, series in report.single.items()},
        "page": [{"tokens": p.tokens, "page_s": p.page.seconds, "describe_s": p.describe.seconds, "ratio": p.ratio}
                 for p in report.page],
        "peak_rss_bytes": report.peak_rss,
        "load_before": report.load_before, "load_after": report.load_after,
    }


def write_json_summary(report: Report, path: Path) -> None:
    path.write_text(json.dumps(json_summary(report), indent=2) + "\n")
    print(f"JSON summary written to {path}", file=sys.stderr)


def write_report(report: Report, path: Path) -> None:
    """Replace this run's section of ``path`` (created with a header if missing)."""
    name = report.section or report.size
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    section = f"{begin}\n{render_markdown(report)}{end}"
    text = path.read_text() if path.exists() else (
        "# Benchmarks\n\nGenerated by `python -m bench`; each section is rewritten by its own run.\n")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
    print(f"report section '{name}' written to {path}", file=sys.stderr)
