"""The shapes toy: data, one training step, and what the SHIPPED toy really does (no training here)."""

from pathlib import Path

import numpy as np
import pytest

from kosmos_demo import toy
from kosmos_demo.checkpoints import TOY, kind_of
from kosmos_demo.geometry import box_iou, cell_overlap

SHIPPED = Path(__file__).resolve().parent.parent / "kosmos_demo" / "assets" / "toy-model"


def _scene_bytes(scene):
    return scene.image.tobytes(), [(s.kind, s.color, s.pixel_box) for s in scene.shapes], scene.image.size


def test_scenes_are_deterministic_for_a_seed():
    a = [_scene_bytes(toy.make_scene(np.random.default_rng(7))) for _ in range(3)]
    b = [_scene_bytes(toy.make_scene(np.random.default_rng(7))) for _ in range(3)]
    assert a == b
    c = _scene_bytes(toy.make_scene(np.random.default_rng(8)))
    assert c != a[0]
    first = [e.prompt + e.target for e in toy.batch_examples(3, 5, 4)]
    assert first == [e.prompt + e.target for e in toy.batch_examples(3, 5, 4)]
    assert first != [e.prompt + e.target for e in toy.batch_examples(3, 6, 4)]


@pytest.mark.parametrize("seed", range(12))
def test_boxes_match_the_drawn_pixels(seed):
    rng = np.random.default_rng(seed)
    scene = toy.make_scene(rng, num_shapes=1 + seed % 3, noisy=False)
    pixels = np.asarray(scene.image)
    width, height = scene.image.size
    assert len(scene.shapes) == 1 + seed % 3
    assert len({s.kind for s in scene.shapes}) == len(scene.shapes)  # distinct kinds and colours
    assert len({s.color for s in scene.shapes}) == len(scene.shapes)
    for shape in scene.shapes:
        ys, xs = np.nonzero((pixels == np.array(toy.COLORS[shape.color])).all(axis=-1))
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == shape.pixel_box
        x1, y1, x2, y2 = shape.pixel_box
        assert shape.box == pytest.approx((x1 / width, y1 / height, x2 / width, y2 / height))
        # a square fills its box, a circle about pi/4 of it, a triangle about half
        fill = len(xs) / ((x2 - x1) * (y2 - y1))
        expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[shape.kind]
        assert fill == pytest.approx(expected, abs=0.08)
    boxes = [s.box for s in scene.shapes]
    assert boxes == sorted(boxes)  # captions name shapes left to right
    assert all(box_iou(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_caption_markup_parses_back_to_the_boxes():
    from kosmos_demo.grounding import parse_grounded, split_markup

    scene = toy.make_scene(np.random.default_rng(3), num_shapes=3)
    parsed = parse_grounded(split_markup(toy.PROMPT_CAPTION + scene.caption()))
    assert [e.phrase for e in parsed.entities] == [f"{s.article} {s.name}" for s in scene.shapes]
    for entity, shape in zip(parsed.entities, scene.shapes):
        assert box_iou(entity.boxes[0], shape.box) > 0.7  # 32x32 cells, centres


_TINY_SHAPE = dict(vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1, text_heads=2,
                   text_ffn=64, latent_query_num=16)


def test_one_training_step_on_a_tiny_config_is_finite():
    import torch

    from kosmos_demo.tiny import build_processor

    torch.manual_seed(0)
    processor = build_processor()
    shape = toy.ToyShape(**_TINY_SHAPE)
    model = toy.build_toy_model(processor, shape, seed=0)
    assert getattr(model.config, toy.TOY_MARKER) is True
    examples = toy.batch_examples(0, 0, 2)
    batch, labels = toy.encode_batch(processor, examples, shape.latent_query_num)
    slots = batch["image_embeds_position_mask"].bool()
    assert (labels[slots] == -100).all()
    for row, example in enumerate(examples):  # loss only on the continuation, which ends with </s>
        kept = [i for i in labels[row].tolist() if i != -100]
        assert processor.tokenizer.decode(kept[:-1], skip_special_tokens=False).replace(" ", "") == \
            example.target.replace(" ", "")
        assert kept[-1] == processor.tokenizer.eos_token_id
    first = processor.tokenizer.convert_tokens_to_ids("<patch_index_0000>")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, parts = toy.loss_fn(model, batch, labels, first)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and parts["loc"] > 0

    model.set_attn_implementation("eager")  # the auxiliary attention losses read attention weights
    examples = toy.batch_examples(0, 1, 4, phrase_share=0.0, region_share=0.5)
    batch, labels = toy.encode_batch(processor, examples, shape.latent_query_num)
    names = toy.name_attention_targets(processor, examples, labels, shape.latent_query_num)
    slots = torch.tensor(toy.slot_regions(shape.latent_query_num, 16, 1.0), dtype=torch.float32)
    loss, parts = toy.loss_fn(model, batch, labels, first, slot_target=slots, slot_weight=1.0,
                              name_target=names, name_weight=0.5)
    loss.backward()
    assert torch.isfinite(loss) and parts["slot"] > 0 and parts["names"] > 0


def _train_tiny(out, steps):
    said = []
    config = toy.TrainConfig(steps=steps, batch_size=2, warmup=2, single_only_steps=1, checkpoint_every=2,
                             device="cpu", workers=0, shape=toy.ToyShape(**_TINY_SHAPE))
    toy.train(out, config, log=said.append, progress=False)
    return said


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def test_training_is_deterministic_for_a_seed_and_resumes_where_it_stopped(tmp_path):
    import json

    import torch

    _train_tiny(tmp_path / "straight", 4)
    _train_tiny(tmp_path / "again", 4)
    assert _train_tiny(tmp_path / "resumed", 2)[-1].startswith("Saved the toy at step 2")
    said = _train_tiny(tmp_path / "resumed", 4)
    assert said[0].startswith("Resuming from step 2")

    straight, again, resumed = (_weights(tmp_path / d) for d in ("straight", "again", "resumed"))
    from kosmos_demo.tiny import build_processor

    initial = toy.build_toy_model(build_processor(), toy.ToyShape(**_TINY_SHAPE), seed=0).state_dict()
    assert any(not torch.equal(straight[k], initial[k]) for k in straight)  # it did train
    for name, tensor in straight.items():
        assert torch.equal(tensor, again[name]), name
        assert torch.allclose(tensor, resumed[name], atol=1e-6), name
    record = json.loads((tmp_path / "resumed" / "toy_training.json").read_text())
    assert record["step"] == 4 and record["config"]["seed"] == 0


def _example(seed, **shares):
    return toy.make_example(np.random.default_rng(seed), num_shapes=2, **shares)


def test_name_attention_targets_point_the_rows_that_name_a_shape_at_its_box():
    from kosmos_demo.tiny import build_processor

    processor = build_processor()
    tokenizer = processor.tokenizer
    caption = _example(0, phrase_share=0.0)
    region = _example(1, phrase_share=0.0, region_share=1.0)
    grounding = _example(2, phrase_share=1.0)
    examples = [caption, region, grounding]
    _, labels = toy.encode_batch(processor, examples, 64)
    targets = toy.name_attention_targets(processor, examples, labels, 64)
    assert targets.shape == (3, labels.shape[1], 64)

    def named(row):  # the text each supervised row predicts, and the cells it must look at
        rows = (targets[row].sum(dim=-1) > 0).nonzero()[:, 0].tolist()
        text = tokenizer.decode([int(labels[row, r + 1]) for r in rows]).replace(" ", "")
        return rows, text

    rows, text = named(0)
    assert text == "".join(f"{s.article}{s.name}" for s in caption.scene.shapes).replace(" ", "")
    rows, text = named(1)
    assert text == region.target.strip(" .").replace(" ", "")
    assert named(2) == ([], "")  # phrase grounding: the phrase is in the prompt, nothing to name

    first_phrase = cell_overlap(caption.scene.shapes[0].box, 8).reshape(-1)
    row = int((targets[0].sum(dim=-1) > 0).nonzero()[0, 0])  # predicts the first phrase's first word
    assert float(targets[0, row].sum()) == pytest.approx(1.0)
    assert np.allclose(targets[0, row].numpy(), first_phrase / first_phrase.sum())


def test_cell_overlap_and_heatmap_scores():
    box = (0.25, 0.25, 0.75, 0.5)
    overlap = cell_overlap(box, 4)
    assert overlap.sum() == pytest.approx(0.5 * 0.25 * 16)
    heat = np.zeros((4, 4))
    heat[1, 1] = 1.0
    assert toy.heatmap_scores(heat, box) == (1.0, True)
    heat[3, 3] = 1.0
    assert toy.heatmap_scores(heat, box)[0] == pytest.approx(0.5)


def test_cli_has_the_toy_commands():
    from kosmos_demo.cli import build_parser

    args = build_parser().parse_args(["train-toy", "/tmp/x", "--steps", "3", "--minutes", "1.5", "--lr", "2e-3"])
    assert (args.steps, args.minutes, args.lr, args.batch_size, args.seed) == (3, 1.5, 2e-3, 16, 0)
    args = build_parser().parse_args(["eval-toy", "/tmp/x", "--json", "--images", "5"])
    assert args.json and args.images == 5


# --- the shipped toy: what it means -------------------------------------------------

needs_toy = pytest.mark.skipif(not (SHIPPED / "config.json").exists(),
                               reason="assets/toy-model is missing: train it with `python -m kosmos_demo train-toy`")


@pytest.fixture(scope="module")
def toy_engine():
    from kosmos_demo.engine import Kosmos2Engine

    return Kosmos2Engine.load(str(SHIPPED), device="cpu")


@pytest.fixture(scope="module")
def toy_scores(toy_engine):
    return toy.evaluate_engine(toy_engine, n=12, seed=20_000)


@needs_toy
def test_shipped_toy_is_marked_and_small(toy_engine):
    assert getattr(toy_engine.model.config, toy.TOY_MARKER) is True
    assert kind_of(toy_engine.model.config) is TOY
    size = sum(p.stat().st_size for p in SHIPPED.iterdir() if p.is_file())
    assert size <= 10 * 2**20
    assert (SHIPPED / "README.md").exists()


@needs_toy
def test_shipped_toy_writes_grounded_captions_naming_colour_and_shape(toy_scores):
    assert toy_scores["wellformed"] >= THRESHOLDS["wellformed"]
    assert toy_scores["color_right"] >= THRESHOLDS["color_right"]
    assert toy_scores["shape_right"] >= THRESHOLDS["shape_right"]
    assert toy_scores["phrase_exact"] >= THRESHOLDS["phrase_exact"]
    assert toy_scores["region_named"] >= THRESHOLDS["region_named"]


@needs_toy
def test_shipped_toy_puts_its_boxes_on_the_shape(toy_scores):
    assert toy_scores["iou_over_0.5"] >= THRESHOLDS["caption_iou_over_0.5"]
    assert toy_scores["mean_iou"] >= THRESHOLDS["caption_mean_iou"]
    assert toy_scores["phrase_grounding_mean_iou"] >= THRESHOLDS["phrase_grounding_mean_iou"]


@needs_toy
def test_shipped_toy_heatmaps_sit_on_the_shape(toy_scores):
    assert toy_scores["heatmap_mass_in_box"] >= THRESHOLDS["mass_over_chance"] * toy_scores["heatmap_chance"]
    assert toy_scores["pointing_game"] >= THRESHOLDS["pointing_over_chance"] * toy_scores["pointing_chance"]


THRESHOLDS = {
    "wellformed": 0.8,  # measured 1.00 (50 images)
    "color_right": 0.8,  # measured 1.00
    "shape_right": 0.75,  # measured 0.98 (chance 0.33)
    "phrase_exact": 0.75,  # measured 0.98 (target 0.9)
    "caption_iou_over_0.5": 0.75,  # measured 1.00 (target 0.8)
    "caption_mean_iou": 0.7,  # measured 0.90
    "phrase_grounding_mean_iou": 0.7,  # measured 0.90
    "region_named": 0.75,  # measured 0.98
    "mass_over_chance": 2.5,  # measured 0.70 vs 0.16 chance (4.4x; target 2x)
    "pointing_over_chance": 4.0,  # measured 1.00 vs 0.16 chance
}
"""Set from the shipped toy's measured figures (assets/toy-model/README.md), with margin for 12 images."""


@needs_toy
def test_every_tokenizer_the_project_builds_is_the_toys_own():
    """A unigram vocabulary trained again puts equal-frequency pieces under other ids (the toy wrote "Z" for ",")."""
    from transformers import AutoProcessor

    from kosmos_demo.tiny import build_processor

    assert build_processor().tokenizer.get_vocab() == AutoProcessor.from_pretrained(SHIPPED).tokenizer.get_vocab()


@needs_toy
def test_shipped_toy_separates_three_shapes_with_a_comma(toy_engine):
    from kosmos_demo.tasks import Request

    example = SHIPPED.parent / "toy-examples" / "purple-triangle-and-black-circle-and-white-square.png"
    text = toy_engine.describe(str(example), Request()).text
    assert "purple triangle ," in text and " and a white square" in text, text
    assert "Z" not in text
