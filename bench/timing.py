"""The one timing helper, the token clock, and memory readings.

Every figure in the report comes from :func:`timed`: synchronise the device,
start the clock, run the work, synchronise again, stop. :func:`alternate`
repeats it over several variants in rotation (a, b, c, a, b, c, ...) so slow
drifts of a shared machine hit every variant alike.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class TokenClock:
    """Time of the first and the last generated token, for one ``generate`` call.

    It speaks both protocols ``generate`` accepts: a streamer (``put``/``end``,
    called with the prompt first, then after each chosen token) for the plain
    transformers reference, and a logits processor (called once per step, when
    that step's logits are ready, just before the token is chosen) for the
    engine, whose public calls take ``logits_processors`` but no streamer. The
    two readings differ by the choice of one token (an argmax), microseconds
    next to a decoder forward.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.first: float | None = None
        self.last: float | None = None
        self.steps = 0
        self._prompt_seen = False

    def _tick(self) -> None:
        if self.first is None:
            synchronize(self.device)  # once: later steps are synchronised by generate's own stopping checks
            self.first = time.perf_counter()
        self.last = time.perf_counter()
        self.steps += 1

    # streamer protocol
    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._tick()

    def end(self) -> None:
        pass

    # logits processor protocol
    def __call__(self, input_ids, scores):
        self._tick()
        return scores


@dataclass
class Sample:
    """One timed run."""

    seconds: float
    first_token: float | None = None
    """Seconds from the start of the run to the first generated token."""
    decode_rate: float | None = None
    """Tokens per second per sequence after the first token: (steps - 1) / (last - first)."""
    steps: int = 0
    """Generated tokens the clock saw (per sequence)."""
    stages: dict[str, float] = field(default_factory=dict)
    """The engine's own per-stage seconds (``Result.timings``) when the work returned a Result."""
    gpu_peak_bytes: int | None = None


@dataclass
class Series:
    """All samples of one variant; figures are medians."""

    name: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        values = [s.seconds for s in self.samples]
        return min(values), max(values)

    @property
    def first_token(self) -> float | None:
        values = [s.first_token for s in self.samples if s.first_token is not None]
        return statistics.median(values) if values else None

    @property
    def decode_rate(self) -> float | None:
        values = [s.decode_rate for s in self.samples if s.decode_rate is not None]
        return statistics.median(values) if values else None

    @property
    def stages(self) -> dict[str, float]:
        names = [name for name in self.samples[0].stages] if self.samples else []
        return {name: statistics.median(s.stages.get(name, 0.0) for s in self.samples) for name in names}

    @property
    def gpu_peak_bytes(self) -> int | None:
        values = [s.gpu_peak_bytes for s in self.samples if s.gpu_peak_bytes is not None]
        return max(values) if values else None


Work = Callable[[TokenClock], object]
"""A measured workload: it runs once, handing the clock to ``generate``."""


@dataclass
class Variant:
    """A named workload and what must be switched, outside the timer, before it runs."""

    name: str
    work: Work
    prepare: Callable[[], None] | None = None


def timed(work: Work, device: torch.device) -> Sample:
    """THE timing helper: one run of ``work`` between two device synchronisations."""
    clock = TokenClock(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    out = work(clock)
    synchronize(device)
    seconds = time.perf_counter() - start
    sample = Sample(seconds, steps=clock.steps)
    first = out[0] if isinstance(out, list) and out else out
    if isinstance(getattr(first, "timings", None), dict):
        sample.stages = dict(first.timings)
    if clock.first is not None:
        sample.first_token = clock.first - start
        if clock.steps > 1 and clock.last > clock.first:
            sample.decode_rate = (clock.steps - 1) / (clock.last - clock.first)
    if device.type == "cuda":
        sample.gpu_peak_bytes = torch.cuda.max_memory_allocated(device)
    return sample


def alternate(variants: list[Variant], runs: int, warmup: int, device: torch.device,
              say: Callable[[str], None] = print) -> dict[str, Series]:
    """Warm every variant up, then time them in rotation (a, b, a, b, ...) ``runs`` times."""
    series = {v.name: Series(v.name) for v in variants}
    for round_ in range(warmup + runs):
        gc.collect()
        for variant in variants:
            if variant.prepare is not None:
                variant.prepare()
            sample = timed(variant.work, device)
            if round_ < warmup:
                say(f"  warm-up {round_ + 1}/{warmup} {variant.name}: {sample.seconds:.3f} s")
            else:
                series[variant.name].samples.append(sample)
                say(f"  run {round_ - warmup + 1}/{runs} {variant.name}: {sample.seconds:.3f} s"
                    + (f", first token {sample.first_token:.3f} s" if sample.first_token is not None else ""))
    return series


# --- memory ---------------------------------------------------------------


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import psutil

            return psutil.Process().memory_info().rss
        except ImportError:  # pragma: no cover
            return peak_rss()


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def machine_load() -> str:
    """``uptime``'s three load averages and the number of CPUs, as one line."""
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"
    except OSError:  # pragma: no cover
        return "load average unavailable"
