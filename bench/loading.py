"""Load time and peak RSS of a saved checkpoint, each load in a FRESH process.

``python -m bench.loading {bare,engine} DIR --device cpu --dtype float32``
imports torch and transformers, then times one load and prints one JSON line:
seconds, peak RSS (``ru_maxrss`` of the child itself, so nothing of the parent
is counted), and whether every weight ended up in the target dtype and device.

With safetensors, a load whose dtype matches the file's (fp32 here) keeps the
weights as views of the memory-mapped file: ``from_pretrained`` returns in about
a second and the pages come in at the first forward. So the child then reads
one value per page of every weight ("materialise") and reports the time and
the peak RSS after that too: that is the memory the model really takes.

``bare`` is ``Kosmos2ForConditionalGeneration.from_pretrained(dir, dtype=...)``
(plus ``device_map`` off the CPU); ``engine`` is ``Kosmos2Engine.load(dir, device,
dtype)``: config check, processor and the model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class LoadSample:
    kind: str
    seconds: float
    import_seconds: float
    peak_rss_after_load_bytes: int
    materialise_seconds: float
    peak_rss_bytes: int
    rss_after_bytes: int
    gpu_bytes: int | None
    dtype: str
    device: str
    weights_on_target: bool


def _load(kind: str, directory: str, device: str, dtype: str) -> LoadSample:
    start = time.perf_counter()
    import torch
    from transformers.utils import logging as hf_logging

    from kosmos_demo.compat import load_kosmos2
    from kosmos_demo.engine import Kosmos2Engine, resolve_device, resolve_dtype

    from .timing import current_rss, peak_rss, synchronize

    hf_logging.disable_progress_bar()
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    imported = time.perf_counter() - start

    start = time.perf_counter()
    if kind == "engine":
        model = Kosmos2Engine.load(directory, device=str(target), dtype=str(torch_dtype).replace("torch.", "")).model
    else:
        extra = {} if target.type == "cpu" else {"device_map": str(target)}
        model = load_kosmos2(directory, attn_implementation="sdpa", dtype=torch_dtype, **extra)
    synchronize(target)
    seconds = time.perf_counter() - start
    after_load = peak_rss()
    start = time.perf_counter()
    _touch_every_page(model)
    synchronize(target)
    materialise = time.perf_counter() - start
    on_target = all(p.dtype == torch_dtype and p.device.type == target.type for p in model.parameters())
    return LoadSample(
        kind=kind, seconds=seconds, import_seconds=imported, peak_rss_after_load_bytes=after_load,
        materialise_seconds=materialise, peak_rss_bytes=peak_rss(), rss_after_bytes=current_rss(),
        gpu_bytes=torch.cuda.max_memory_allocated(target) if target.type == "cuda" else None,
        dtype=str(torch_dtype).replace("torch.", ""), device=str(target), weights_on_target=on_target,
    )


def _touch_every_page(model) -> None:
    """Read one element per 4 KiB of every weight, so a memory-mapped checkpoint is paged in."""
    import torch

    total = 0.0
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            flat = tensor.detach().reshape(-1)
            step = max(1, 4096 // flat.element_size())
            total += float(flat[::step].float().sum())


def measure_in_child(kind: str, directory: Path, device: str, dtype: str, timeout: float = 1800) -> LoadSample:
    """Run one load in a fresh ``python -m bench.loading`` and read its JSON line."""
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "bench.loading", kind, str(directory), "--device", device, "--dtype", dtype]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} load failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return LoadSample(**json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loading", description=__doc__)
    parser.add_argument("kind", choices=["bare", "engine"])
    parser.add_argument("directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    print(json.dumps(asdict(_load(args.kind, args.directory, args.device, args.dtype))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
