"""Random Kosmos-2 checkpoints for timing: full size, small, tiny; built offline.

``full`` is ``Kosmos2Config()``: the real checkpoint's shapes (1.66 B parameters),
so the same FLOPs and bytes moved per token as ``microsoft/kosmos-2-patch14-224``.
``small`` keeps what shapes the prompt and the heatmaps (224 px input, 14 px
patches = a 16x16 grid, 64 latent slots, the full 65037-token vocabulary) and
shrinks widths and layers. ``tiny`` is for the smoke test only.

The processor is the real ``Kosmos2Processor``; its XLM-R style tokenizer is
trained here on a small corpus and padded with filler pieces up to the real
vocabulary size, so random token ids always decode to something.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SIZE_KEY = "kosmos_demo_bench_size"
"""Written into a saved checkpoint's config so ``--checkpoint`` can be reused safely."""

ADDED_TOKENS = 11 + 1024
"""Tags and ``<patch_index_NNNN>`` tokens the processor adds to the tokenizer."""


@dataclass(frozen=True)
class Size:
    name: str
    vocab_size: int
    text: dict
    vision: dict

    def config(self):
        from transformers import Kosmos2Config

        if self.name == "full":
            config = Kosmos2Config()  # the defaults ARE the real checkpoint
        else:
            config = Kosmos2Config(text_config=dict(vocab_size=self.vocab_size, **self.text),
                                   vision_config=dict(image_size=224, patch_size=14, **self.vision),
                                   latent_query_num=64)
        setattr(config, SIZE_KEY, self.name)
        return config


SIZES = {
    "full": Size("full", 65037, {}, {}),
    "small": Size("small", 65037,
                  dict(embed_dim=512, layers=6, attention_heads=8, ffn_dim=2048, max_position_embeddings=2048),
                  dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4)),
    "tiny": Size("tiny", 4096,
                 dict(embed_dim=64, layers=2, attention_heads=4, ffn_dim=128, max_position_embeddings=2048),
                 dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)),
}


def build_processor(vocab_size: int):
    """The real Kosmos2Processor (224x224 squash) whose tokenizer has exactly ``vocab_size`` ids.

    The tiny checkpoint's vocabulary, padded with filler pieces scored below every real one.
    """
    from transformers import CLIPImageProcessor, Kosmos2Processor, XLMRobertaTokenizer

    from kosmos_demo.tiny import VOCABULARY

    vocab = [tuple(entry) for entry in json.loads(VOCABULARY.read_text(encoding="utf-8"))]
    floor = min(score for _, score in vocab if score < 0) - 1.0
    seen = {piece for piece, _ in vocab}
    base = vocab_size - ADDED_TOKENS
    filler = (f"▁w{i:05d}" for i in range(10 * base))
    while len(vocab) < base:
        piece = next(filler)
        if piece not in seen:
            vocab.append((piece, floor))
    image_processor = CLIPImageProcessor(size={"height": 224, "width": 224}, do_center_crop=False,
                                         crop_size={"height": 224, "width": 224})
    processor = Kosmos2Processor(image_processor, XLMRobertaTokenizer(vocab=vocab))
    if len(processor.tokenizer) != vocab_size:
        raise AssertionError(f"tokenizer has {len(processor.tokenizer)} ids, wanted {vocab_size}")
    return processor


def build_model(size: str, seed: int = 0):
    """A randomly initialised Kosmos2ForConditionalGeneration in fp32 on the CPU."""
    import torch
    from transformers import Kosmos2ForConditionalGeneration

    torch.manual_seed(seed)
    return Kosmos2ForConditionalGeneration(SIZES[size].config()).eval()


def saved_size(directory: Path) -> str | None:
    """The bench size a folder was saved with, or None if it is not one of ours."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get(SIZE_KEY)


def write_checkpoint(size: str, directory: Path, say=print) -> Path:
    """save_pretrained (safetensors, fp32) a random model of ``size`` and its processor."""
    import time

    directory = Path(directory)
    if saved_size(directory) == size:
        say(f"reusing the {size} checkpoint in {directory}")
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = build_model(size)
    say(f"built a random {size} Kosmos-2: {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters "
        f"in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    model.save_pretrained(directory)  # safetensors is the only format in transformers 5
    build_processor(SIZES[size].vocab_size).save_pretrained(directory)
    del model
    bytes_on_disk = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    say(f"saved it to {directory} ({bytes_on_disk / 1e9:.2f} GB of safetensors) in {time.perf_counter() - start:.1f} s")
    return directory


def main(argv=None) -> int:
    """``python -m bench.models SIZE DIR``: write a checkpoint in a process of its own."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m bench.models")
    parser.add_argument("size", choices=sorted(SIZES))
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    write_checkpoint(args.size, args.directory, say=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
