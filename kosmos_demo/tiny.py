"""Build a tiny, randomly initialised Kosmos-2 checkpoint entirely offline.

It has the real classes, the real processor and a real XLM-R style tokenizer
(trained here on a small built-in corpus, with every Kosmos-2 tag and location
token added by the processor), so it loads through the very same
``from_pretrained`` path as ``microsoft/kosmos-2-patch14-224``. Its outputs are
noise: it exists for tests and for offline UI previews.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

TINY_MARKER = "kosmos_demo_tiny_random"
"""Key written into the tiny checkpoint's config so the app can show a banner."""

_WORDS = (
    "a an the of in on at to by with and or is are was it its this that there here "
    "image picture photo describe detail question answer what where who which how why "
    "man woman person people child boy girl dog cat bird horse cow sheep snowman fire "
    "car bus truck bike boat plane train tree flower grass sky cloud sun moon water sea "
    "house building street road table chair bed cup bottle plate food cake pizza apple "
    "red green blue yellow black white orange purple brown gray pink small large big "
    "square circle triangle shape left right top bottom middle center next near front "
    "behind above below sitting standing walking holding wearing looking playing "
    "himself herself warming rocket astronaut coffee camera galaxy stars space"
).split()


def _tokenizer_corpus() -> list[str]:
    """Sentences that cover every printable ASCII character and common caption words."""
    sentences = [" ".join(_WORDS[i : i + 9]) for i in range(0, len(_WORDS), 3)]
    sentences += [w.capitalize() + "." for w in _WORDS]
    sentences += [" ".join(string.printable.split())] * 3
    sentences += [c * 2 for c in string.ascii_letters + string.digits + string.punctuation]
    return sentences * 5


def build_tokenizer(vocab_size: int = 1000):
    """An XLMRobertaTokenizer whose unigram vocabulary is trained here, in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids 0..4
    model = Tokenizer(models.Unigram())
    model.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    model.train_from_iterator(_tokenizer_corpus(), trainer)
    vocab = [tuple(entry) for entry in json.loads(model.to_str())["model"]["vocab"]]
    return XLMRobertaTokenizer(vocab=vocab)


def build_processor():
    """The real Kosmos2Processor over a CLIP image processor that squashes to 224x224."""
    from transformers import CLIPImageProcessor, Kosmos2Processor

    image_processor = CLIPImageProcessor(
        size={"height": 224, "width": 224},
        do_center_crop=False,
        crop_size={"height": 224, "width": 224},
    )
    return Kosmos2Processor(image_processor, build_tokenizer())


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
    processor = build_processor()
    torch.manual_seed(seed)
    model = Kosmos2ForConditionalGeneration(tiny_config(len(processor.tokenizer), latent_query_num))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
