"""``kosmos-demo`` / ``python -m kosmos_demo``: serve the app, describe images (JSON Lines on stdout), build checkpoints."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .messages import quote_value, valid_unicode
from .settings import QUANTIZATIONS, STRATEGIES, DecodingSettings, SettingsError
from .tasks import PromptError, Request, Task, build_prompt, parse_box

_DECODING_FLAGS = [f for f in fields(DecodingSettings) if f.name != "strategy"]


def program_name() -> str:
    """``kosmos-demo`` when run as the console script, else ``python -m kosmos_demo``."""
    return "kosmos-demo" if Path(sys.argv[0]).name.startswith("kosmos-demo") else "python -m kosmos_demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name(), description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", add_help=False,
                        help="serve the web app (the options of app.py; `serve --help` lists them)")

    describe = commands.add_parser("describe", help="caption and ground images; one JSON object per image")
    describe.add_argument("images", nargs="+", help="image files, or folders (their files, not recursive)")
    tasks = [t.value for t in Task]
    describe.add_argument("--task", default="brief", choices=tasks, type=one_of(tasks))
    describe.add_argument("--text", default="", help="phrase, question or custom prompt, as the task needs")
    describe.add_argument("--box", default=None, help="X1,Y1,X2,Y2 in pixels of the original image (region tasks)")
    describe.add_argument("--no-grounding", action="store_true", help="custom prompt: do not add <grounding>")
    add_model_options(describe)
    describe.add_argument("--strategy", default="greedy", choices=STRATEGIES, type=one_of(STRATEGIES))
    for f in _DECODING_FLAGS:
        describe.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                              help=f"default {f.default}")
    describe.add_argument("--heatmaps", action="store_true", help="per-token attention heatmaps (PNGs with --out)")
    describe.add_argument("--batch-size", type=number(int), default=4, help="images per generate call (default 4)")
    describe.add_argument("--out", type=Path, default=None, help="folder for annotated and heatmap PNGs")

    tiny = commands.add_parser("tiny-model", help="write a tiny random Kosmos-2 checkpoint for tests and previews")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=number(int), default=0)

    train_toy = commands.add_parser("train-toy", help="train the small shapes toy from scratch (resumable) in DIR")
    train_toy.add_argument("dir", type=Path)
    train_toy.add_argument("--steps", type=number(int), default=5000)
    train_toy.add_argument("--batch-size", type=number(int), default=16)
    train_toy.add_argument("--seed", type=number(int), default=0)
    train_toy.add_argument("--lr", type=number(float), default=1e-3)
    train_toy.add_argument("--minutes", type=number(float), default=None,
                           help="wall-clock budget; stops and saves when spent")
    train_toy.add_argument("--checkpoint-every", type=number(int), default=200)
    train_toy.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N, mps")
    train_toy.add_argument("--init-from", type=Path, default=None,
                           help="start from the weights of this toy folder (fresh optimizer), e.g. to fine-tune")
    train_toy.add_argument("--workers", type=number(int), default=None,
                           help="processes generating batches ahead (default: 0 on CPU, up to 8 with a GPU)")

    eval_toy = commands.add_parser("eval-toy", help="score a trained toy against a random-init one on fresh shapes")
    eval_toy.add_argument("dir", type=Path)
    eval_toy.add_argument("--images", type=number(int), default=100, help="single-shape images (default 100)")
    eval_toy.add_argument("--multi", type=number(int), default=30, help="extra 2-3 shape images (default 30)")
    eval_toy.add_argument("--seed", type=number(int), default=10_000, help="held out: training uses other seeds")
    eval_toy.add_argument("--no-baseline", action="store_true")
    eval_toy.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --quantize: shared with app.py."""
    parser.add_argument("--model", default=None,
                        help="hub id or local folder (default: $KOSMOS_MODEL or microsoft/kosmos-2-patch14-224)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, type=one_of(QUANTIZATIONS), default="none",
                        help="load the weights in 8 or 4 bits through bitsandbytes (a CUDA GPU; pip install bitsandbytes)")


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """argparse ``type=`` for a flag with ``choices``: a wrong value is quoted short (argparse quotes all of it)."""
    def check(text: str) -> str:
        if text not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise argparse.ArgumentTypeError(f"invalid choice: {quote_value(text)} (choose from {listed})")
        return text

    return check


def number(kind: type) -> Callable[[str], int | float]:
    """argparse ``type=`` for an int or float flag, quoting a bad value short as :func:`one_of` does."""
    def convert(text: str) -> int | float:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {quote_value(text)}") from None

    return convert


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # its own parser: the app's options live with the app
        from .server import main as serve

        return serve(argv[1:], prog=f"{program_name()} serve")
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
            raise SettingsError("batch_size", f"must be at least 1 (got {quote_value(args.batch_size)})")
        if args.out is not None:
            check_out_folder(args.out)
    except (SettingsError, PromptError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    skipped: list[Path] = []
    paths = list(_expand(args.images, skipped))
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
    for index, (path, problem) in enumerate(paths):
        try:
            if problem is None:
                image = load_image(path, engine.image_limits)
                build_prompt(request, image.size)
                batch.append((index, path, image))
            else:
                lines[index] = {**_image_fields(path), "error": problem}
        except (ImageLoadError, PromptError) as error:
            lines[index] = {**_image_fields(path), "error": str(error)}
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
    if skipped:
        shown = ", ".join(quote_value(p.name) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        print(f"note: not read: {len(skipped)} subfolder(s) or hidden entries of the folders given ({shown})",
              file=sys.stderr)
    return 1 if failed else 0


def _run_batch(engine, request, batch, out: Path | None, names: set[str]) -> dict[int, dict]:
    """One generate call for up to --batch-size loaded images -> their JSON lines by input position."""
    from .engine import EngineError

    try:
        results = engine.describe_batch([image for _, _, image in batch], request)
    except (EngineError, PromptError, ValueError) as error:
        return {index: {**_image_fields(path), "error": str(error)} for index, path, _ in batch}
    lines = {}
    for (index, path, image), result in zip(batch, results):
        line = {**_image_fields(path), **result.to_json()}
        if out is not None:
            line.update(_write_pngs(out, _unique_stem(path, names), image, result, _shown(Path(path.name))))
        lines[index] = line
    return lines


def _write_pngs(out: Path, stem: str, image, result, name: str) -> dict:
    """The exporter's files for one image (as the page's downloads), each token's heatmap too, as line fields."""
    from .export import export

    written = export(out, image, result, name, stem=stem, token_images=True).to_json()
    return {key: [_shown(Path(v)) for v in value] if isinstance(value, list) else _shown(Path(value))
            for key, value in written.items()}


def _image_fields(path: Path) -> dict:
    """A line's ``image``: the path as given, with bytes that are not UTF-8 written ``\\xNN``; then
    ``image_bytes``, the base64 of the path's exact bytes, only for such a name."""
    shown = _shown(path)
    if shown == str(path):
        return {"image": shown}
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate that no file system byte stands for
        return {"image": shown}
    return {"image": shown, "image_bytes": base64.b64encode(raw).decode("ascii")}


def _shown(path: Path) -> str:
    return valid_unicode(str(path))


def _emit(line: dict) -> None:
    sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def check_out_folder(out: Path) -> None:
    """Create ``out`` and write (then remove) a probe file in it; SettingsError if it cannot hold the PNGs."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=out, prefix=".kosmos-probe-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        reason = _OUT_REASONS.get(type(error)) or error.strerror or type(error).__name__
        raise SettingsError("--out", f"cannot write the PNGs to {quote_value(_shown(out), limit=200)}: "
                                     f"{reason}") from None


_OUT_REASONS = {FileExistsError: "it is a file, not a folder",
                NotADirectoryError: "a part of its path is a file, not a folder"}


def _expand(items: Sequence[str], skipped: list[Path]) -> Iterator[tuple[Path, str | None]]:
    """(path, None) per image to read, or (folder, error) for a folder that gives none.

    A folder gives its entries that are neither folders nor hidden, so a FIFO or a
    broken link gets its own error line from load_image; the rest go to ``skipped``.
    """
    for item in items:
        path = Path(item)
        if not path.is_dir():
            yield path, None  # a missing file becomes an error line, not a crash
            continue
        try:
            entries = sorted(path.iterdir())
        except OSError as error:
            yield path, f"The folder cannot be read ({error.strerror or type(error).__name__})."
            continue
        chosen = []
        for entry in entries:
            (skipped if entry.name.startswith(".") or entry.is_dir() else chosen).append(entry)
        if not chosen:
            yield path, "The folder holds no files to describe (subfolders and hidden files are not read)."
        yield from ((p, None) for p in chosen)


def _unique_stem(path: Path, taken: set[str]) -> str:
    base = valid_unicode(path.stem)  # written as the line names it: not-UTF-8 bytes as \xNN
    stem, n = base, 2
    while stem in taken:
        stem, n = f"{base}-{n}", n + 1
    taken.add(stem)
    return stem
