"""oneDNN-packed linears: the engine's CPU path gives the stock results, faster (speed: python -m bench)."""

import pytest
from PIL import Image
import torch
from torch import nn

from kosmos_demo import cpu_linear
from kosmos_demo.engine import Kosmos2Engine
from kosmos_demo.tasks import Request, Task

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


@needs_onednn
def test_packed_linear_matches_nn_linear_for_one_and_many_rows():
    torch.manual_seed(0)
    linear = nn.Linear(48, 80)
    packed = cpu_linear.PackedLinear(linear)
    for rows in ((1, 1, 48), (4, 1, 48), (2, 73, 48)):
        x = torch.randn(rows)
        torch.testing.assert_close(packed(x), linear(x), atol=1e-5, rtol=1e-5)
    assert "onednn" in repr(packed)


@needs_onednn
def test_pack_linears_replaces_every_linear_and_keeps_the_logits(tiny_checkpoint):
    from transformers import AutoProcessor
    from PIL import Image

    from kosmos_demo.compat import load_kosmos2

    stock = load_kosmos2(tiny_checkpoint, attn_implementation="sdpa").eval()
    packed = load_kosmos2(tiny_checkpoint, attn_implementation="sdpa").eval()
    linears = sum(type(m) is nn.Linear for m in stock.modules())
    assert cpu_linear.pack_linears(packed) == linears > 0
    assert not any(type(m) is nn.Linear for m in packed.modules())
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    inputs = processor(text="<grounding>An image of", images=Image.new("RGB", (64, 48), "red"), return_tensors="pt",
                       num_image_tokens=stock.config.latent_query_num)
    with torch.no_grad():
        torch.testing.assert_close(packed(**inputs).logits, stock(**inputs).logits, atol=1e-4, rtol=1e-4)


@needs_onednn
def test_engine_packs_on_cpu_unless_told_not_to(tiny_checkpoint, monkeypatch):
    assert any(isinstance(m, cpu_linear.PackedLinear) for m in Kosmos2Engine.load(str(tiny_checkpoint), device="cpu").model.modules())
    stock = Kosmos2Engine.load(str(tiny_checkpoint), device="cpu", pack=False).model
    assert not any(isinstance(m, cpu_linear.PackedLinear) for m in stock.modules())
    monkeypatch.setenv(cpu_linear.OPT_OUT, "0")
    opted_out = Kosmos2Engine.load(str(tiny_checkpoint), device="cpu").model
    assert not any(isinstance(m, cpu_linear.PackedLinear) for m in opted_out.modules())


def test_packing_is_only_offered_where_it_works():
    assert cpu_linear.unavailable_reason(torch.device("cuda"), torch.bfloat16) == "oneDNN packing is a CPU path"
    assert "float16" in cpu_linear.unavailable_reason(torch.device("cpu"), torch.float16)
    assert not cpu_linear.wanted(torch.device("cpu"), torch.float16)
    assert not cpu_linear.wanted(torch.device("cpu"), torch.float32, quantized=True)  # bitsandbytes layers stay


@needs_onednn
def test_the_toy_says_the_same_with_and_without_packing():
    """Same grounded caption and boxes, heatmaps equal to rounding, on a trained checkpoint."""
    from kosmos_demo import toy
    import numpy as np

    packed = Kosmos2Engine.load("toy", device="cpu")
    stock = Kosmos2Engine.load("toy", device="cpu", pack=False)
    scene = toy.make_scene(np.random.default_rng(31), num_shapes=1)
    request = Request(Task.BRIEF, heatmaps=True)
    a, b = packed.describe(scene.image, request), stock.describe(scene.image, request)
    assert a.text == b.text and [e.boxes for e in a.entities] == [e.boxes for e in b.entities]
    np.testing.assert_allclose(a.heatmaps.maps, b.heatmaps.maps, atol=2e-2)


@needs_onednn
def test_the_probe_agrees_with_the_cpu_on_bfloat16():
    supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert (cpu_linear.unavailable_reason(torch.device("cpu"), torch.bfloat16) is None) == supported


@needs_onednn
def test_a_cpu_without_onednn_bfloat16_loads_the_stock_layers(tiny_checkpoint, monkeypatch):
    """CPUs without AVX-512 refuse bf16 packing with a RuntimeError: the engine must load unpacked, and say why."""
    def refuse(weight, *args):
        if weight.dtype == torch.bfloat16:
            raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or avx512bw")
        return real(weight, *args)

    real = torch.ops.mkldnn._reorder_linear_weight
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    cpu_linear._probe.cache_clear()
    try:
        said = []
        engine = Kosmos2Engine.load(str(tiny_checkpoint), device="cpu", dtype="bfloat16", progress=said.append)
        assert not any(isinstance(m, cpu_linear.PackedLinear) for m in engine.model.modules())
        assert any("stock linear layers" in line and "avx512bw" in line for line in said), said
        assert engine.describe(Image.new("RGB", (40, 30), "red")).prompt
        fp32 = Kosmos2Engine.load(str(tiny_checkpoint), device="cpu")
        assert any(isinstance(m, cpu_linear.PackedLinear) for m in fp32.model.modules())
    finally:
        cpu_linear._probe.cache_clear()
