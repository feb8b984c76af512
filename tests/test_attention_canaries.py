"""Canaries for what the engine assumes of transformers internals, and proof that the public paths change nothing.

Where transformers has no public path (the position fix for left padding, the
recorder's reading of each attention call) the engine checks its assumption.
Each canary runs the real model of the installed transformers (so it fails,
with the one-line diagnosis, on a release that breaks the assumption) and then
breaks the assumption on purpose, to show the diagnosis is what one gets.
"""

import re

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from kosmos_demo import attention, engine
from kosmos_demo.attention import ImageAttentionRecorder, check_attention_call
from kosmos_demo.compat import TransformersAssumptionError
from kosmos_demo.engine import Kosmos2Engine
from kosmos_demo.settings import DecodingSettings
from kosmos_demo.tasks import Request, Task

DIAGNOSIS = re.compile(rf"^transformers {re.escape(transformers.__version__)} broke an assumption of kosmos-demo: "
                       r"[^\n]+ \(found [^\n]+\); install transformers>=")


def _one_line(raised) -> str:
    message = str(raised.value)
    assert DIAGNOSIS.match(message) and "\n" not in message and len(message) < 400, message
    return message


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def own_engine(tiny_checkpoint):
    """An engine of this module's own: it is closed at the end, which the shared one must not be."""
    made = Kosmos2Engine.load(str(tiny_checkpoint), device="cpu", pack=False)
    yield made
    made.close()


# --- the left-padding position fix ----------------------------------------


def _positions(embed_positions, pads, cache_length):
    keyword = engine._CACHE_LENGTH_KEYWORD
    ids = torch.full((2, 1), 5)
    token = engine._LEFT_PADDING.set(pads)
    try:
        return embed_positions(input_ids=ids, inputs_embeds=None, position_ids=None, **{keyword: cache_length})
    finally:
        engine._LEFT_PADDING.reset(token)


def test_canary_position_embedding_keyword_is_read_and_the_hook_fires(own_engine):
    embed_positions = own_engine.model.text_model.model.embed_positions
    shifted = _positions(embed_positions, torch.tensor([0, 3]), cache_length=10)
    unpadded = _positions(embed_positions, None, cache_length=10)
    assert torch.equal(shifted[0], unpadded[0])  # no padding: untouched
    later = _positions(embed_positions, None, cache_length=7)  # 3 pads: the position of cache length 7
    assert torch.equal(shifted[1], later[1]) and not torch.equal(shifted[1], unpadded[1])


def test_canary_a_renamed_position_keyword_stops_the_engine_loudly(own_engine):
    real = type(own_engine.model.text_model.model.embed_positions)

    class Renamed(real):  # what 5.24 did to past_key_values_length, once more
        def forward(self, input_ids=None, inputs_embeds=None, past_length=0, position_ids=None):
            return super().forward(input_ids, inputs_embeds, position_ids=position_ids)

    module = Renamed.__new__(Renamed)
    module.__dict__.update(own_engine.model.text_model.model.embed_positions.__dict__)
    with pytest.raises(TransformersAssumptionError) as raised:
        engine._hook_position_embedding(module)
    assert "cache_length" in _one_line(raised) and "past_length" in str(raised.value)


def test_canary_a_position_call_without_the_keyword_is_loud_not_silent(own_engine):
    embed_positions = own_engine.model.text_model.model.embed_positions
    token = engine._LEFT_PADDING.set(torch.tensor([0, 3]))
    try:
        with pytest.raises(TransformersAssumptionError) as raised:
            embed_positions(torch.full((2, 1), 5))  # positionally: the hook cannot see the cache length
    finally:
        engine._LEFT_PADDING.reset(token)
    assert "called with" in _one_line(raised)


def test_close_removes_the_position_hook(tiny_checkpoint):
    closing = Kosmos2Engine.load(str(tiny_checkpoint), device="cpu", pack=False)
    embed_positions = closing.model.text_model.model.embed_positions
    before = _positions(embed_positions, torch.tensor([0, 3]), cache_length=10)
    closing.close()
    closing.close()  # idempotent
    after = _positions(embed_positions, torch.tensor([0, 3]), cache_length=10)
    assert not torch.equal(before[1], after[1]) and torch.equal(after[1], after[0])


# --- the recorder's reading of each attention call --------------------------


def test_canary_every_recorded_attention_call_meets_the_recorder_assumptions(own_engine, image, monkeypatch):
    seen = []

    def checked(module, query, key, attention_mask, scaling):
        seen.append((query.shape[2], None if attention_mask is None else attention_mask.dtype))
        check_attention_call(module, query, key, attention_mask, scaling)

    monkeypatch.setattr(attention, "check_attention_call", checked)
    request = Request(Task.BRIEF, decoding=DecodingSettings(max_new_tokens=4, min_new_tokens=4), heatmaps=True)
    prepared = own_engine.preprocess([image, image.resize((40, 40))], [request, Request(
        Task.PHRASE, text="a long phrase to pad the other row", decoding=request.decoding, heatmaps=True)])
    own_engine.forward(prepared)
    layers = len(own_engine.model.text_model.model.layers)
    assert len(seen) == 1 + layers * 4  # the projection, then every layer at the prefill and 3 decoding steps
    assert {dtype for _, dtype in seen[1:]} <= {torch.float32}  # additive float masks, as assumed


def _real_call(model, queries=5, keys=5):
    module = model.text_model.model.layers[0].self_attn
    heads, dim = module.num_heads, module.head_dim
    query, key = torch.randn(1, heads, queries, dim), torch.randn(1, heads, keys, dim)
    return module, query, key, torch.zeros(1, 1, queries, keys), module.scaling


@pytest.mark.parametrize("assumption, breaks", [
    ("(batch, heads", lambda m, q, k, mask, s: (m, q.transpose(1, 2), k.transpose(1, 2), mask, s)),
    ("keys are the cache", lambda m, q, k, mask, s: (m, q, k[:, :, :2], mask[..., :2], s)),
    ("additive float", lambda m, q, k, mask, s: (m, q, k, mask.bool(), s)),
    ("float scaling", lambda m, q, k, mask, s: (m, q, k, mask, None)),
])
def test_canary_a_broken_attention_assumption_is_one_line(own_engine, assumption, breaks):
    check_attention_call(*_real_call(own_engine.model))  # as this transformers calls it: fine
    with pytest.raises(TransformersAssumptionError) as raised:
        check_attention_call(*breaks(*_real_call(own_engine.model)))
    assert assumption in _one_line(raised)


def test_canary_decoding_keys_are_the_cache_plus_one(own_engine):
    """A static cache would hand every step the full-length keys: the recorder's positions would be wrong."""
    model = own_engine.model
    recorder = ImageAttentionRecorder(model, torch.arange(2, 2 + own_engine.num_slots)[None], first_row=9)
    module, query, key, mask, scaling = _real_call(model, queries=1, keys=11)
    recorder.observe(module, query, key, torch.zeros(1, 1, 1, 11), scaling)  # position 10: the first step
    with pytest.raises(TransformersAssumptionError) as raised:
        recorder.observe(module, query, key, torch.zeros(1, 1, 1, 11), scaling)  # the same length again
    assert "decoding step" in _one_line(raised)


# --- public paths give what the reach-ins gave -------------------------------


def test_get_image_features_equals_the_hand_made_image_embeddings(own_engine, image):
    model = own_engine.model
    pixels = own_engine.preprocess([image], [Request()]).inputs["pixel_values"]
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixels)  # what engine and toy did by hand before
        features = torch.nn.functional.normalize(model.vision_model.model.post_layernorm(vision[0]), dim=-1)
        by_hand = model.image_to_text_projection(features)[0]
        public = own_engine._image_embeds(pixels)
    assert torch.equal(public, by_hand)


def test_teacher_forced_pass_through_the_model_equals_the_text_model_call(own_engine, image):
    request = Request(Task.BRIEF, decoding=DecodingSettings(strategy="beam", num_beams=2, max_new_tokens=5),
                      heatmaps=True)
    prepared = own_engine.preprocess([image], [request])
    generated = own_engine.forward(prepared)  # beam: rows from own_engine._teacher_forced (the model's forward)
    inputs = prepared.inputs
    mask = inputs["image_embeds_position_mask"]
    sequences = generated.sequences
    slots = mask.nonzero()[:, 1].view(mask.shape[0], -1)
    recorder = ImageAttentionRecorder(own_engine.model, slots, inputs["input_ids"].shape[1] - 1)
    full_mask = torch.zeros_like(sequences, dtype=torch.bool)
    full_mask[:, : mask.shape[1]] = mask.bool()
    with torch.no_grad(), recorder.active():
        image_embeds = own_engine._image_embeds(inputs["pixel_values"])
        own_engine.model.text_model.model(  # the internal call the engine made before
            input_ids=sequences, attention_mask=torch.ones_like(sequences), image_embeds=image_embeds,
            image_embeds_position_mask=full_mask, use_cache=False)
    torch.testing.assert_close(generated.slot_rows, recorder.slot_rows())
    torch.testing.assert_close(generated.patch_weights, recorder.patch_weights())


def test_the_recorder_wraps_transformers_own_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward  # only to show it is the same

    assert attention._SDPA is sdpa_attention_forward


def test_a_broken_internal_stops_the_load_with_the_diagnosis(tiny_checkpoint, monkeypatch):
    """What app.py and the CLI print at start-up: the one line, as a ModelLoadError, not a traceback."""
    from kosmos_demo.engine import ModelLoadError

    monkeypatch.setattr(engine, "_CACHE_LENGTH_KEYWORD", "past_length")  # as if this release had renamed it
    with pytest.raises(ModelLoadError) as raised:
        Kosmos2Engine.load(str(tiny_checkpoint), device="cpu", pack=False)
    assert DIAGNOSIS.match(str(raised.value)) and "past_length" in str(raised.value)
