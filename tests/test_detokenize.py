"""PieceDecoder: the same pieces as decoding the whole sequence again per token, for a bounded cost per token."""

import random

import pytest
from PIL import Image

from kosmos_demo.detokenize import PieceDecoder
from kosmos_demo.engine import Partial
from kosmos_demo.grounding import TAG_TOKENS
from kosmos_demo.results import Result
from kosmos_demo.settings import DecodingSettings
from kosmos_demo.tasks import Request, Task
from kosmos_demo.tiny import MULTILINGUAL_SAMPLE, build_processor


def whole_sequence_pieces(tokenizer, ids):
    """The old way, kept as the reference: decode ids[:k] for every k and keep what each token added."""
    pieces, previous = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        common = next((i for i, (a, b) in enumerate(zip(previous, text)) if a != b), min(len(previous), len(text)))
        pieces.append(text[common:])
        previous = text
    return pieces


def _sentences(tokenizer, rng, count):
    """Real text (multilingual included), grounding markup and random ids, as a model might write them."""
    words = ["An image of", " a red circle", " next to", " the green square", ".", " Größe,", " über", " weiß"]
    words += list(MULTILINGUAL_SAMPLE[:24])
    locations = [f"<patch_index_{rng.randrange(1024):04d}>" for _ in range(8)]
    for _ in range(count):
        parts = []
        for _ in range(rng.randrange(3, 12)):
            choice = rng.random()
            if choice < 0.5:
                parts.append(rng.choice(words))
            elif choice < 0.8:
                parts.extend(["<phrase>", rng.choice(words), "</phrase>", "<object>", *rng.sample(locations, 2), "</object>"])
            else:
                parts.append(rng.choice(TAG_TOKENS))
        ids = tokenizer("".join(parts), add_special_tokens=False)["input_ids"]
        ids += [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(0, 6))]  # what random weights emit
        yield ids


@pytest.fixture(scope="module", params=["toy vocabulary", "multilingual"])
def tokenizer(request):
    return build_processor(MULTILINGUAL_SAMPLE if request.param == "multilingual" else "").tokenizer


def test_pieces_equal_decoding_the_whole_sequence_for_every_token(tokenizer):
    rng = random.Random(4)
    checked = 0
    for ids in _sentences(tokenizer, rng, 150):
        decoder = PieceDecoder(tokenizer)
        pieces = [piece for piece, _ in decoder.extend(ids)]
        assert pieces == whole_sequence_pieces(tokenizer, ids), tokenizer.convert_ids_to_tokens(ids)
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        checked += len(ids)
    assert checked > 2000


def test_each_token_costs_the_same_however_long_the_text_before_it(tokenizer):
    ids = [i for sentence in _sentences(tokenizer, random.Random(5), 60) for i in sentence]
    assert len(ids) > 800
    decoder = PieceDecoder(tokenizer)
    per_token = []
    for token_id in ids:
        before = decoder.decoded_ids
        decoder.push(token_id)
        per_token.append(decoder.decoded_ids - before)
    assert max(per_token) <= 3, max(per_token)  # the context token and the new one, then the new one alone
    assert sum(per_token[-100:]) == 300 and sum(per_token[:100]) == 299  # the first token has no context


def test_kinds_come_from_the_ids_given():
    tokenizer = build_processor().tokenizer
    tag, location, word = tokenizer.convert_tokens_to_ids(["<phrase>", "<patch_index_0007>", "▁a"])
    decoder = PieceDecoder(tokenizer, location_ids={location}, tag_ids={tag})
    assert [kind for _, kind in decoder.extend([tag, word, location])] == ["tag", "text", "location"]


def test_a_stream_decodes_each_new_token_once_and_ends_with_the_results_text(tiny_engine, monkeypatch):
    """Work per streamed token stays flat: 400 tokens cost 8 times what 50 do (the old re-decode: 64 times)."""
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    decoded = []
    real_decode = PieceDecoder._decode
    monkeypatch.setattr(PieceDecoder, "_decode", lambda self, ids: decoded.append(len(ids)) or real_decode(self, ids))

    def stream(tokens):
        decoded.clear()
        events = list(tiny_engine.stream(image, Request(Task.VQA, text="Was ist das?", decoding=DecodingSettings(
            max_new_tokens=tokens, min_new_tokens=tokens, no_repeat_ngram_size=0))))
        partials, result = [e for e in events if isinstance(e, Partial)], events[-1]
        assert isinstance(result, Result) and partials and partials[-1].num_generated == tokens
        assert partials[-1].raw_text == result.raw_text and partials[-1].text == result.text
        assert partials[0].text.startswith("Question: Was ist das? Answer:")  # the prompt's words from the start
        return sum(decoded)

    short, long = stream(50), stream(400)
    assert long < 8 * short * 1.05, (short, long)  # postprocess decodes the whole caption once more: also linear
    assert max(decoded) <= 3
