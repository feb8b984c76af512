"""Build a tiny, randomly initialised Kosmos-2 checkpoint entirely offline.

It has the real classes, the real processor and a real XLM-R style tokenizer
(a small unigram vocabulary kept in :data:`VOCABULARY`, with every Kosmos-2 tag
and location token added by the processor), so it loads through the very same
``from_pretrained`` path as ``microsoft/kosmos-2-patch14-224``. Its outputs are
noise: it exists for tests and for offline UI previews.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoints import TINY_MARKER

VOCABULARY = Path(__file__).with_name("tiny_vocab.json")
"""The unigram pieces and scores of the tiny and toy tokenizers, trained once and kept.

Training a unigram vocabulary again is not reproducible: pieces of equal
frequency (single punctuation marks, capitals, digits) come out in a different
order, so under different ids, in every process. The shipped toy learned the
ids of the tokenizer it was saved with, so every tokenizer the project builds
reads this one list (the toy's own, without the tags and location tokens the
processor adds).
"""


MULTILINGUAL_SAMPLE = "这是什么图片？红色的圆形在哪里。ما هذه الصورة؟ أين الدائرة الحمراء؟ Wo ist der grüne Kreis? Größe, über, weiß."
"""Text in Chinese, Arabic and German whose characters the tiny checkpoint can spell.

The real model's XLM-R vocabulary covers these scripts; the toy's does not
(it only knows its English shape captions). Tiny checkpoints add one piece per
character of this sample, after the toy's vocabulary, so tests can push
non-Latin text through the real tokenizer and processor without ``<unk>``.
"""


def build_tokenizer(extra_characters: str = ""):
    """An XLMRobertaTokenizer over :data:`VOCABULARY` (plus one piece per new character): the same ids always."""
    from transformers import XLMRobertaTokenizer

    vocab = [tuple(entry) for entry in json.loads(VOCABULARY.read_text(encoding="utf-8"))]
    known = {piece for piece, _ in vocab}
    for character in dict.fromkeys(extra_characters):  # first occurrence order: deterministic
        for piece in (character, "\u2581" + character):
            if not character.isspace() and piece not in known:
                vocab.append((piece, -20.0))
                known.add(piece)
    return XLMRobertaTokenizer(vocab=vocab)


def build_processor(extra_characters: str = ""):
    """The real Kosmos2Processor over a CLIP image processor that squashes to 224x224."""
    from transformers import CLIPImageProcessor, Kosmos2Processor

    image_processor = CLIPImageProcessor(
        size={"height": 224, "width": 224},
        do_center_crop=False,
        crop_size={"height": 224, "width": 224},
    )
    return Kosmos2Processor(image_processor, build_tokenizer(extra_characters))


def tiny_config(vocab_size: int, latent_query_num: int = 16):
    """Tiny widths, but the real 224 px input and 14 px patches (a 16x16 grid)."""
    from transformers import Kosmos2Config

    config = Kosmos2Config(
        text_config=dict(
            vocab_size=vocab_size,
            embed_dim=32,
            layers=2,
            attention_heads=4,
            ffn_dim=64,
            max_position_embeddings=2048,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=224,
            patch_size=14,
        ),
        latent_query_num=latent_query_num,
    )
    setattr(config, TINY_MARKER, True)
    return config


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0, latent_query_num: int = 16) -> Path:
    """Write model, processor and tokenizer to ``out_dir``; deterministic for a seed."""
    import torch
    from transformers import Kosmos2ForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor(MULTILINGUAL_SAMPLE)
    torch.manual_seed(seed)
    model = Kosmos2ForConditionalGeneration(tiny_config(len(processor.tokenizer), latent_query_num))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
