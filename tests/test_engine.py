"""End to end through real ``generate`` on the tiny checkpoint built offline."""

import importlib.util
import threading

import numpy as np
import pytest
import torch
from forcing import CONTINUATION, ForceTokens, forced_describe, token_ids  # noqa: F401
from PIL import Image
from transformers import LogitsProcessor

from kosmos_demo import attention
from kosmos_demo.attention import ImageAttentionRecorder, projection_attentions, token_heatmaps
from kosmos_demo.checkpoints import kind_of
from kosmos_demo.compat import load_kosmos2
from kosmos_demo.engine import Kosmos2Engine, ModelLoadError, Partial, get_engine
from kosmos_demo.images import ImageLoadError
from kosmos_demo.results import Result
from kosmos_demo.settings import DecodingSettings
from kosmos_demo.tasks import PromptError, Request, Task


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))


def test_forced_grounded_generation_gives_model_card_entities(tiny_engine, image):
    request = Request(Task.BRIEF, decoding=DecodingSettings(max_new_tokens=60), heatmaps=True)
    result, ids = forced_describe(tiny_engine, image, request)
    assert result.prompt == "<grounding>An image of"
    assert result.text == "An image of a snowman warming himself by a fire."
    assert result.raw_text.startswith("<grounding>") and "<patch_index_0044><patch_index_0863>" in result.raw_text
    snowman, fire = result.entities
    assert (snowman.phrase, snowman.span, snowman.boxes) == ("a snowman", (12, 21), ((250, 23, 630, 398),))
    assert (fire.phrase, fire.span, fire.boxes) == ("a fire", (41, 47), ((110, 8, 310, 428),))
    assert snowman.boxes_normalized == ((0.390625, 0.046875, 0.984375, 0.828125),)
    assert not snowman.from_prompt and snowman.complete

    generated = result.generated_tokens
    assert len(generated) == len(ids)
    # every visible generated token points at its own characters of the caption
    for token in generated:
        if token.kind == "text":
            start, end = token.span
            assert result.text[start:end] == token.text.strip() or token.text.strip() in result.text[start:end + 1]
        else:
            assert token.span is None
    spans = [t.span for t in result.tokens if t.span]
    assert "".join(result.text[s:e] for s, e in spans) == result.text
    assert sum(t.kind == "location" for t in generated) == 4

    maps = result.heatmaps.maps
    assert maps.shape == (len(ids), 16, 16) and maps.dtype == np.float32
    assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0, atol=1e-3)
    assert ((result.heatmaps.image_share > 0) & (result.heatmaps.image_share <= 1.0001)).all()
    assert [t.heatmap_index for t in generated] == list(range(len(ids)))
    assert set(result.timings) >= {"preprocess", "vision", "generate", "postprocess", "total"}




@pytest.mark.parametrize("chunk_rows", [128, 5])
def test_recorded_heatmaps_equal_eager_attention(tiny_checkpoint, tiny_engine, image, chunk_rows, monkeypatch):
    monkeypatch.setattr(ImageAttentionRecorder, "chunk_rows", chunk_rows)  # 5: the deferred rows in 3 chunks
    request = Request(Task.BRIEF, decoding=DecodingSettings(max_new_tokens=12, min_new_tokens=12), heatmaps=True)
    prepared = tiny_engine.preprocess([image], [request])
    generated = tiny_engine.forward(prepared)
    sequence = generated.sequences
    mask = torch.zeros_like(sequence)
    mask[:, : prepared.inputs["image_embeds_position_mask"].shape[1]] = prepared.inputs["image_embeds_position_mask"]
    eager = load_kosmos2(str(tiny_checkpoint), attn_implementation="eager").eval()
    with torch.no_grad():
        out = eager(pixel_values=prepared.inputs["pixel_values"], input_ids=sequence,
                    attention_mask=torch.ones_like(sequence), image_embeds_position_mask=mask,
                    output_attentions=True)
    slots = mask[0].nonzero()[:, 0]
    prompt_length = prepared.inputs["input_ids"].shape[1]
    rows = range(prompt_length - 1, sequence.shape[1] - 1)  # the positions that predicted each new token
    decoder = torch.stack(out.attentions).mean(dim=(0, 2))[0]  # layers and heads averaged: (L, L)
    expected_rows = decoder[list(rows)][:, slots].numpy()
    projection = projection_attentions(out)[0].mean(dim=0)[:, 1:257].numpy()
    np.testing.assert_allclose(generated.slot_rows[0].float().numpy(), expected_rows, atol=2e-3)
    np.testing.assert_allclose(generated.patch_weights[0].float().numpy(), projection, atol=2e-3)
    result = tiny_engine.postprocess(prepared, generated)[0]
    maps, share = token_heatmaps(expected_rows, projection)
    np.testing.assert_allclose(result.heatmaps.maps, maps, atol=2e-2)
    np.testing.assert_allclose(result.heatmaps.image_share, share, atol=2e-3)


def test_decoding_steps_run_no_attention_math_until_generate_ends(tiny_engine, image, monkeypatch):
    """A GPU decode is launch-bound: the recorder keeps references per step and softmaxes once per layer after."""
    calls = []
    softmax = attention._softmax_rows
    monkeypatch.setattr(attention, "_softmax_rows", lambda *args: calls.append(args[0].shape[2]) or softmax(*args))
    steps = 9
    request = Request(Task.BRIEF, decoding=DecodingSettings(max_new_tokens=steps, min_new_tokens=steps), heatmaps=True)
    prepared = tiny_engine.preprocess([image], [request])
    generated = tiny_engine.forward(prepared)
    layers = len(tiny_engine.model.text_model.model.layers)
    # the projection once, the prefill's row once per layer, then each layer's deferred steps in one go
    assert calls == [tiny_engine.num_slots] + [1] * layers + [steps - 1] * layers
    assert generated.slot_rows.shape == (1, steps, tiny_engine.num_slots)
    assert "heatmaps" in generated.timings


def test_quantization_is_checked_before_anything_loads(tiny_checkpoint):
    from kosmos_demo.engine import EngineError, quantization_config

    assert quantization_config("none", torch.float16) is None
    with pytest.raises(EngineError, match="Unknown quantization '3bit'"):
        Kosmos2Engine.load(str(tiny_checkpoint), device="cpu", quantize="3bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(EngineError, match="needs bitsandbytes"):
            Kosmos2Engine.load(str(tiny_checkpoint), device="cpu", quantize="8bit")
    else:
        assert quantization_config("4bit", torch.float16).bnb_4bit_quant_type == "nf4"


@pytest.mark.parametrize("check", ["device", "cuda device", "dtype", "quantization", "hub id"])
def test_a_long_device_dtype_or_model_is_quoted_short(check):
    from kosmos_demo.engine import EngineError, _load_failure, quantization_config, resolve_device, resolve_dtype

    long = "x" * 100_000
    with pytest.raises(EngineError) as caught:
        if check == "device":
            resolve_device(long)
        elif check == "cuda device" and not torch.cuda.is_available():
            resolve_device("cuda:" + "9" * 4000)
        elif check == "dtype":
            resolve_dtype(long)
        elif check == "quantization":
            quantization_config(long, torch.float16)
        else:
            raise _load_failure("a/" + long[:-2], OSError("not found"))
    message = str(caught.value)
    assert len(message) < 1500 and "x" * 200 not in message and "9" * 200 not in message


def test_beam_search_heatmaps_come_from_one_teacher_forced_pass(tiny_engine, image):
    beam = Request(Task.BRIEF, decoding=DecodingSettings(strategy="beam", num_beams=3, max_new_tokens=8), heatmaps=True)
    result = tiny_engine.describe(image, beam)
    assert "heatmaps" in result.timings
    assert len(result.heatmaps) == len(result.generated_tokens)
    # and the maps equal those of a greedy recorder run over the same tokens
    plain = tiny_engine.describe(image, Request(Task.BRIEF, decoding=DecodingSettings(strategy="beam", num_beams=3, max_new_tokens=8)))
    assert plain.raw_text == result.raw_text and plain.heatmaps is None


def test_heatmaps_off_keeps_nothing(tiny_engine, image):
    result = tiny_engine.describe(image, Request(decoding=DecodingSettings(max_new_tokens=4)))
    assert result.heatmaps is None
    assert all(t.heatmap_index is None for t in result.tokens)


def test_region_description_returns_prompt_entity_with_users_box(tiny_engine, image):
    box = (100, 50, 400, 300)
    result = tiny_engine.describe(image, Request(Task.REGION, box=box, decoding=DecodingSettings(max_new_tokens=6)))
    assert result.prompt.startswith("<grounding><phrase> It</phrase><object><patch_index_")
    first = result.entities[0]
    assert first.from_prompt and first.phrase == "It" and first.boxes == (box,)
    assert first.boxes_normalized == ((100 / 640, 50 / 480, 400 / 640, 300 / 480),)
    assert result.text.startswith("It is")


def test_batch_equals_single_runs_with_left_padding(tiny_engine, image):
    other = Image.new("RGB", (120, 300), "navy")
    settings = DecodingSettings(max_new_tokens=10)
    requests = [Request(Task.BRIEF, decoding=settings, heatmaps=True),
                Request(Task.VQA, text="What is in the middle of this picture?", decoding=settings, heatmaps=True)]
    batch = tiny_engine.describe_batch([image, other], requests)
    singles = [tiny_engine.describe(img, req) for img, req in zip([image, other], requests)]
    for b, s in zip(batch, singles):
        assert b.raw_text == s.raw_text
        assert [t.text for t in b.tokens] == [t.text for t in s.tokens]
        np.testing.assert_allclose(b.heatmaps.maps, s.heatmaps.maps, atol=2e-2)
        np.testing.assert_allclose(b.heatmaps.image_share, s.heatmaps.image_share, atol=2e-3)


def test_same_seed_same_sample(tiny_engine, image):
    request = Request(decoding=DecodingSettings(strategy="sample", temperature=1.5, top_p=1.0, top_k=0, seed=7, max_new_tokens=12))
    assert tiny_engine.describe(image, request).raw_text == tiny_engine.describe(image, request).raw_text


def test_stream_yields_partials_then_result(tiny_engine, image):
    events = list(tiny_engine.stream(image, Request(decoding=DecodingSettings(max_new_tokens=6, min_new_tokens=6))))
    partials = [e for e in events if isinstance(e, Partial)]
    assert isinstance(events[-1], Result)
    assert [p.num_generated for p in partials] == list(range(1, 7))
    assert partials[-1].raw_text == events[-1].raw_text


def test_stream_that_ends_normally_leaves_cancel_unset(tiny_engine, image):
    cancel = threading.Event()
    for _ in range(5):
        list(tiny_engine.stream(image, Request(decoding=DecodingSettings(max_new_tokens=2)), cancel=cancel))
    assert not cancel.is_set()


def test_stream_cancel_stops_generation(tiny_engine, image):
    cancel = threading.Event()
    request = Request(decoding=DecodingSettings(max_new_tokens=200, min_new_tokens=200))
    stream = tiny_engine.stream(image, request, cancel=cancel)
    next(stream)
    cancel.set()
    result = [e for e in stream][-1]
    assert len(result.generated_tokens) < 200


def test_bad_inputs_raise_clear_errors(tiny_engine, image, monkeypatch):
    with pytest.raises(ImageLoadError, match="empty"):
        tiny_engine.describe(b"", Request())
    with pytest.raises(PromptError, match="needs text"):
        tiny_engine.describe(image, Request(Task.PHRASE))
    monkeypatch.setattr(tiny_engine, "max_positions", 100)  # the real model's 2048, scaled to the test
    with pytest.raises(PromptError, match="positions"):
        tiny_engine.describe(image, Request(Task.VQA, text="why " * 10, decoding=DecodingSettings(max_new_tokens=64)))


def test_engine_is_loaded_once(tiny_checkpoint):
    a = get_engine(str(tiny_checkpoint), "cpu", "float32")
    b = get_engine(str(tiny_checkpoint), "cpu", "float32")
    assert a is b and kind_of(a.model.config).is_random


def test_load_failures_are_one_clear_paragraph(tmp_path):
    with pytest.raises(ModelLoadError) as missing:
        Kosmos2Engine.load(str(tmp_path / "nowhere"), device="cpu")
    message = str(missing.value)
    assert "--model" in message and "\n" not in message and "Traceback" not in message
    assert "--model toy" in message  # the offline preview that shows something true

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="not Kosmos-2"):
        Kosmos2Engine.load(str(tmp_path / "bert"), device="cpu")

    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        Kosmos2Engine.load("microsoft/kosmos-2-patch14-224", device="cpu")


def test_out_of_memory_is_reported_and_next_request_works(tiny_engine, image):
    class OutOfMemory(LogitsProcessor):
        def __call__(self, input_ids, scores):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    from kosmos_demo.engine import EngineError

    with pytest.raises(EngineError, match="ran out of memory"):
        tiny_engine.describe(image, Request(), logits_processors=[OutOfMemory()])
    assert tiny_engine.describe(image, Request(decoding=DecodingSettings(max_new_tokens=3))).text
