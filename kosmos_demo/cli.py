"""``python -m kosmos_demo``: describe images (JSON Lines on stdout) or build a tiny checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Iterator, Sequence

from .settings import QUANTIZATIONS, STRATEGIES, DecodingSettings, SettingsError
from .tasks import PromptError, Request, Task, build_prompt, parse_box

_DECODING_FLAGS = [f for f in fields(DecodingSettings) if f.name != "strategy"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kosmos_demo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    describe = commands.add_parser("describe", help="caption and ground images; one JSON object per image")
    describe.add_argument("images", nargs="+", help="image files, or folders (their files, not recursive)")
    describe.add_argument("--task", default="brief", choices=[t.value for t in Task])
    describe.add_argument("--text", default="", help="phrase, question or custom prompt, as the task needs")
    describe.add_argument("--box", default=None, help="X1,Y1,X2,Y2 in pixels of the original image (region tasks)")
    describe.add_argument("--no-grounding", action="store_true", help="custom prompt: do not add <grounding>")
    add_model_options(describe)
    describe.add_argument("--strategy", default="greedy", choices=STRATEGIES)
    for f in _DECODING_FLAGS:
        describe.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                              help=f"default {f.default}")
    describe.add_argument("--heatmaps", action="store_true", help="per-token attention heatmaps (PNGs with --out)")
    describe.add_argument("--batch-size", type=int, default=4, help="images per generate call (default 4)")
    describe.add_argument("--out", type=Path, default=None, help="folder for annotated and heatmap PNGs")

    tiny = commands.add_parser("tiny-model", help="write a tiny random Kosmos-2 checkpoint for tests and previews")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)

    train_toy = commands.add_parser("train-toy", help="train the small shapes toy from scratch (resumable) in DIR")
    train_toy.add_argument("dir", type=Path)
    train_toy.add_argument("--steps", type=int, default=5000)
    train_toy.add_argument("--batch-size", type=int, default=16)
    train_toy.add_argument("--seed", type=int, default=0)
    train_toy.add_argument("--lr", type=float, default=1e-3)
    train_toy.add_argument("--minutes", type=float, default=None, help="wall-clock budget; stops and saves when spent")
    train_toy.add_argument("--checkpoint-every", type=int, default=200)
    train_toy.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N, mps")
    train_toy.add_argument("--init-from", type=Path, default=None,
                           help="start from the weights of this toy folder (fresh optimizer), e.g. to fine-tune")
    train_toy.add_argument("--workers", type=int, default=None,
                           help="processes generating batches ahead (default: 0 on CPU, up to 8 with a GPU)")

    eval_toy = commands.add_parser("eval-toy", help="score a trained toy against a random-init one on fresh shapes")
    eval_toy.add_argument("dir", type=Path)
    eval_toy.add_argument("--images", type=int, default=100, help="single-shape images (default 100)")
    eval_toy.add_argument("--multi", type=int, default=30, help="extra 2-3 shape images (default 30)")
    eval_toy.add_argument("--seed", type=int, default=10_000, help="held out: training uses other seeds")
    eval_toy.add_argument("--no-baseline", action="store_true")
    eval_toy.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --quantize: shared with app.py."""
    parser.add_argument("--model", default=None,
                        help="hub id or local folder (default: $KOSMOS_MODEL or microsoft/kosmos-2-patch14-224)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="load the weights in 8 or 4 bits through bitsandbytes (a CUDA GPU; pip install bitsandbytes)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "tiny-model":
        from .tiny import build_tiny_checkpoint

        path = build_tiny_checkpoint(args.dir, seed=args.seed)
        print(f"Wrote a tiny random Kosmos-2 checkpoint to {path} (noise outputs; for tests and previews).",
              file=sys.stderr)
        return 0
    if args.command in ("train-toy", "eval-toy"):
        return toy_command(args)
    return describe(args)


def toy_command(args: argparse.Namespace) -> int:
    import torch

    from . import toy

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    if args.command == "train-toy":
        toy.train(args.dir, toy.TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, lr=args.lr,
                                            minutes=args.minutes, checkpoint_every=args.checkpoint_every,
                                            device=args.device, workers=args.workers,
                                            init_from=str(args.init_from) if args.init_from else None))
        return 0
    report = toy.evaluate(args.dir, n=args.images, seed=args.seed, multi=args.multi, baseline=not args.no_baseline)
    print(json.dumps(report, indent=2) if args.json else toy.format_report(report))
    return 0


def describe(args: argparse.Namespace) -> int:
    try:  # checked before torch is imported: a mistyped flag is answered at once, not after seconds
        request = Request(
            task=Task(args.task), text=args.text, box=parse_box(args.box) if args.box else None,
            grounding=not args.no_grounding, heatmaps=args.heatmaps,
            decoding=DecodingSettings.from_mapping(
                {"strategy": args.strategy, **{f.name: getattr(args, f.name) for f in _DECODING_FLAGS}}
            ),
        )
        if args.batch_size < 1:
            raise SettingsError("batch_size", f"must be at least 1 (got {args.batch_size})")
    except (SettingsError, PromptError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = list(_expand(args.images))
    if not paths:
        print("error: no image files given", file=sys.stderr)
        return 2
    from .engine import EngineError, get_engine
    from .images import ImageLoadError, load_image

    try:
        engine = get_engine(args.model, args.device, args.dtype, progress=lambda m: print(m, file=sys.stderr),
                            quantize=args.quantize)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    from tqdm import tqdm

    names: set[str] = set()
    lines: dict[int, dict] = {}  # by input position: printed in the order the images were given
    printed = failed = 0
    batch: list[tuple[int, Path, object]] = []
    bar = tqdm(total=len(paths), desc="images", unit="img", file=sys.stderr, disable=len(paths) < 2)
    for index, path in enumerate(paths):
        try:
            image = load_image(path, engine.image_limits)
            build_prompt(request, image.size)
            batch.append((index, path, image))
        except (ImageLoadError, PromptError) as error:
            lines[index] = {"image": str(path), "error": str(error)}
        if batch and (len(batch) == args.batch_size or index == len(paths) - 1):
            lines.update(_run_batch(engine, request, batch, args.out, names))
            batch = []
        while printed in lines:
            line = lines.pop(printed)
            failed += "error" in line
            _emit(line)
            bar.update(1)
            printed += 1
    bar.close()
    return 1 if failed else 0


def _run_batch(engine, request, batch, out: Path | None, names: set[str]) -> dict[int, dict]:
    """One generate call for up to --batch-size loaded images -> their JSON lines by input position."""
    from .engine import EngineError

    try:
        results = engine.describe_batch([image for _, _, image in batch], request)
    except (EngineError, PromptError, ValueError) as error:
        return {index: {"image": str(path), "error": str(error)} for index, path, _ in batch}
    lines = {}
    for (index, path, image), result in zip(batch, results):
        line = {"image": str(path), **result.to_json()}
        if out is not None:
            line.update(_write_pngs(out, _unique_stem(path, names), image, result))
        lines[index] = line
    return lines


def _write_pngs(out: Path, stem: str, image, result) -> dict:
    from .render import HeatmapAnnotator, annotate_entities, heatmap_grid

    out.mkdir(parents=True, exist_ok=True)
    written = {"annotated": str(out / f"{stem}.annotated.png")}
    annotate_entities(image, result.entities).save(written["annotated"])
    if result.heatmaps is not None and len(result.heatmaps):
        tokens = [t for t in result.tokens if t.heatmap_index is not None]
        grid = out / f"{stem}.heatmaps.png"
        heatmap_grid(image, result.heatmaps.maps, [t.text for t in tokens], result.heatmaps.image_share).save(grid)
        overlay = HeatmapAnnotator()
        per_token = []
        for token in tokens:
            path = out / f"{stem}.heatmap-{token.heatmap_index:03d}.png"
            overlay.annotate(image, result.heatmaps.maps[token.heatmap_index]).save(path)
            per_token.append(str(path))
        written.update(heatmap_grid=str(grid), heatmaps=per_token)
    return written


def _emit(line: dict) -> None:
    sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _expand(items: Sequence[str]) -> Iterator[Path]:
    for item in items:
        path = Path(item)
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            yield path  # a missing file becomes an error line, not a crash


def _unique_stem(path: Path, taken: set[str]) -> str:
    stem, n = path.stem, 2
    while stem in taken:
        stem, n = f"{path.stem}-{n}", n + 1
    taken.add(stem)
    return stem
