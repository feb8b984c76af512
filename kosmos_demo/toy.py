"""A small Kosmos-2 trained here on generated shapes: the offline proof that boxes and heatmaps work.

Real Kosmos-2 weights can never be downloaded on this project's machines, so
this module builds a small ``Kosmos2ForConditionalGeneration`` (the stock
transformers class, the real processor, a locally trained tokenizer) and
teaches it, on images of coloured squares, circles and triangles generated on
the fly, to write grounded captions in the real model's markup::

    <grounding>An image of<phrase> a red circle</phrase><object><patch_index_0396><patch_index_0662></object>.

and to answer phrase-grounding prompts (``<grounding><phrase> the red circle</phrase>``
-> ``<object>..</object>``). The result is a normal ``save_pretrained`` folder
that the engine loads with plain ``from_pretrained``.

Everything here is plain functions and small classes: :func:`make_scene`
(data), :func:`toy_config` / :func:`build_toy_model` (model), :func:`train`
(resumable, deterministic for a seed, a wall-clock budget), :func:`evaluate`
(trained model against a random-init one of the same shape, through the engine).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .checkpoints import TOY_MARKER
from .compat import load_kosmos2
from .geometry import GRID, box_iou, cell_overlap
from .grounding import location_tokens


SHAPES = ("square", "circle", "triangle")
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (245, 215, 20),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "orange": (250, 130, 0),
    "purple": (140, 40, 180),
}
# Colours whose word starts with the same tokenizer piece ("▁" for red/yellow/orange,
# "▁b" for blue/black). One image never holds two colours of one group, and never two
# shapes of one kind, so the caption has no repeated 3-gram and the official decoding
# (no_repeat_ngram_size=3) can still write it.
_COLOR_GROUPS = (("red", "yellow", "orange"), ("blue", "black"), ("green",), ("white",), ("purple",))

PROMPT_CAPTION = "<grounding>An image of"


# --- data -------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    box: tuple[float, float, float, float]
    """Normalised (x1, y1, x2, y2) of the drawn pixels: x2, y2 exclusive, as fractions."""
    pixel_box: tuple[int, int, int, int]
    """(x1, y1, x2, y2) in pixels, x2/y2 exclusive: the tight box of the drawn pixels."""

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"

    @property
    def article(self) -> str:
        return "an" if self.color[0] in "aeiou" else "a"


@dataclass
class Scene:
    image: Image.Image
    shapes: list[Shape]
    noisy: bool

    def caption(self) -> str:
        """The grounded continuation after ``<grounding>An image of`` (shapes left to right)."""
        parts = [f"<phrase> {s.article} {s.name}</phrase><object>{location_tokens(s.box)}</object>" for s in self.shapes]
        if len(parts) == 1:
            return parts[0] + "."
        return ",".join(parts[:-1]) + " and" + parts[-1] + "."


def _draw(draw: ImageDraw.ImageDraw, kind: str, x: int, y: int, size: int, fill) -> None:
    if kind == "square":
        draw.rectangle((x, y, x + size - 1, y + size - 1), fill=fill)
    elif kind == "circle":
        draw.ellipse((x, y, x + size - 1, y + size - 1), fill=fill)
    else:
        draw.polygon([(x + (size - 1) / 2, y), (x, y + size - 1), (x + size - 1, y + size - 1)], fill=fill)


def make_scene(rng: np.random.Generator, num_shapes: int | None = None, noisy: bool | None = None,
               size: tuple[int, int] | None = None) -> Scene:
    """One image with 1-3 non-overlapping shapes, distinct kinds and colours; boxes from the drawn pixels."""
    if size is None:
        width, height = int(rng.integers(160, 321)), int(rng.integers(160, 321))
    else:
        width, height = size
    if num_shapes is None:
        num_shapes = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    if noisy is None:
        noisy = bool(rng.random() < 0.5)
    grey = int(rng.integers(95, 170))
    if noisy:
        tint = rng.integers(-20, 21, size=3)
        pixels = grey + tint + rng.normal(0, 22, size=(height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    else:
        image = Image.new("RGB", (width, height), (grey, grey, grey))
    kinds = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:num_shapes]]
    groups = [_COLOR_GROUPS[i] for i in rng.permutation(len(_COLOR_GROUPS))[:num_shapes]]
    colors = [g[int(rng.integers(len(g)))] for g in groups]
    short = min(width, height)
    low, high = (0.25, 0.6) if num_shapes == 1 else (0.18, 0.42)
    placed: list[tuple[int, int, int]] = []
    for _ in range(num_shapes):
        for _attempt in range(60):
            s = int(rng.integers(int(low * short), int(high * short) + 1))
            x = int(rng.integers(0, width - s + 1))
            y = int(rng.integers(0, height - s + 1))
            if all(x + s + 3 <= px or px + ps + 3 <= x or y + s + 3 <= py or py + ps + 3 <= y for px, py, ps in placed):
                placed.append((x, y, s))
                break
    draw = ImageDraw.Draw(image)
    shapes = []
    for (x, y, s), kind, color in zip(placed, kinds, colors):
        mask = Image.new("L", (width, height), 0)
        _draw(ImageDraw.Draw(mask), kind, x, y, s, 255)
        ys, xs = np.nonzero(np.asarray(mask))
        _draw(draw, kind, x, y, s, COLORS[color])
        px = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        box = (px[0] / width, px[1] / height, px[2] / width, px[3] / height)
        shapes.append(Shape(kind, color, box, px))
    shapes.sort(key=lambda sh: (sh.box[0], sh.box[1]))
    return Scene(image, shapes, noisy)


@dataclass(frozen=True)
class Example:
    image: Image.Image
    prompt: str
    target: str
    scene: Scene


def make_example(rng: np.random.Generator, num_shapes: int | None = None, phrase_share: float = 0.4,
                 region_share: float = 0.0) -> Example:
    """A caption example; ``phrase_share`` of the time a phrase-grounding one; ``region_share`` a region one.

    The region prompt is the engine's "Describe a region" prompt for the shape's
    box, and the target names the shape: ``<grounding><phrase> It</phrase><object>..</object> is`` -> `` a red circle.``
    """
    scene = make_scene(rng, num_shapes=num_shapes)
    draw = rng.random()
    if draw < phrase_share:
        shape = scene.shapes[int(rng.integers(len(scene.shapes)))]
        article = "the" if rng.random() < 0.5 else shape.article
        prompt = f"<grounding><phrase> {article} {shape.name}</phrase>"
        return Example(scene.image, prompt, f"<object>{location_tokens(shape.box)}</object>", scene)
    if draw < phrase_share + region_share:
        shape = scene.shapes[int(rng.integers(len(scene.shapes)))]
        prompt = f"<grounding><phrase> It</phrase><object>{location_tokens(shape.box)}</object> is"
        return Example(scene.image, prompt, f" {shape.article} {shape.name}.", scene)
    return Example(scene.image, PROMPT_CAPTION, scene.caption(), scene)


def batch_examples(seed: int, step: int, batch_size: int, single_only: bool = False, phrase_share: float = 0.4,
                   region_share: float = 0.0) -> list[Example]:
    """The examples of one training step: a pure function of (seed, step), so training resumes exactly."""
    rng = np.random.default_rng([seed, step])
    return [make_example(rng, num_shapes=1 if single_only else None, phrase_share=phrase_share,
                         region_share=region_share) for _ in range(batch_size)]


# --- model ------------------------------------------------------------------


@dataclass
class ToyShape:
    """Widths of the toy; the 224 px input, 14 px patches (16x16 grid) and 64 latents are Kosmos-2's own."""

    vision_width: int = 128
    vision_layers: int = 6
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_ffn: int = 512
    latent_query_num: int = 64


def toy_config(vocab_size: int, shape: ToyShape = ToyShape()):
    from transformers import Kosmos2Config

    config = Kosmos2Config(
        text_config=dict(
            vocab_size=vocab_size, embed_dim=shape.text_width, layers=shape.text_layers,
            attention_heads=shape.text_heads, ffn_dim=shape.text_ffn, max_position_embeddings=512,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
        ),
        vision_config=dict(
            hidden_size=shape.vision_width, intermediate_size=4 * shape.vision_width,
            num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
            image_size=224, patch_size=14, attention_dropout=0.0,
        ),
        latent_query_num=shape.latent_query_num,
    )
    setattr(config, TOY_MARKER, True)
    return config


def _location_features(width: int, grid: int = GRID) -> "np.ndarray":
    """(grid*grid, width) 2-D Fourier features of each location cell's centre."""
    cells = np.arange(grid * grid)
    x = (cells % grid + 0.5) / grid
    y = (cells // grid + 0.5) / grid
    n = width // 4
    freqs = np.geomspace(0.5, grid / 2, n)
    feats = [np.sin(2 * np.pi * f * x) for f in freqs] + [np.cos(2 * np.pi * f * x) for f in freqs]
    feats += [np.sin(2 * np.pi * f * y) for f in freqs] + [np.cos(2 * np.pi * f * y) for f in freqs]
    out = np.stack(feats, axis=1)
    return out[:, :width] if out.shape[1] >= width else np.pad(out, ((0, 0), (0, width - out.shape[1])))


def build_toy_model(processor, shape: ToyShape = ToyShape(), seed: int = 0, image_scale: float = 1.0):
    """A freshly initialised toy, with three init choices (stock architecture, so it loads anywhere).

    - location-token embeddings (tied to the output head) start as 2-D Fourier
      features of their cell, so neighbouring cells score alike from the start;
    - the image-to-text projection starts at unit scale (stock init makes the
      image slots about 2% of the position signal in the decoder's input);
    - ``image_scale`` then sets the image slots' size relative to the positions.
    """
    import torch
    from transformers import Kosmos2ForConditionalGeneration

    torch.manual_seed(seed)
    model = Kosmos2ForConditionalGeneration(toy_config(len(processor.tokenizer), shape))
    d = shape.text_width
    with torch.no_grad():
        embed = model.text_model.model.embed_tokens.weight
        first = processor.tokenizer.convert_tokens_to_ids("<patch_index_0000>")
        feats = torch.tensor(_location_features(d), dtype=embed.dtype)
        row_norm = embed.norm(dim=1).mean()
        embed[first : first + GRID * GRID] = feats / feats.norm(dim=1, keepdim=True) * row_norm
        proj = model.image_to_text_projection
        proj.dense.weight.normal_(0.0, 1.0)
        for lin in (proj.x_attn.q_proj, proj.x_attn.k_proj, proj.x_attn.v_proj, proj.x_attn.out_proj):
            lin.weight.normal_(0.0, d**-0.5)
        # Calibrate: image slots (after the decoder's embed_scale) vs the sinusoidal positions.
        rng = np.random.default_rng(seed)
        pixels = processor.image_processor([make_scene(rng).image for _ in range(4)], return_tensors="pt")["pixel_values"]
        embeds = _image_embeds(model, pixels)
        scale = model.text_model.model.embed_scale
        position_rms = 1 / math.sqrt(2)  # sin/cos features
        current = float(embeds.pow(2).mean().sqrt()) * scale
        proj.x_attn.out_proj.weight.mul_(image_scale * position_rms / max(current, 1e-8))
        if proj.x_attn.out_proj.bias is not None:
            proj.x_attn.out_proj.bias.zero_()
    return model


def _image_embeds(model, pixel_values):
    return model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output


# --- training ---------------------------------------------------------------


@dataclass
class TrainConfig:
    steps: int = 5000
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    warmup: int = 150
    minutes: float | None = None
    checkpoint_every: int = 200
    single_only_steps: int = 1000
    """Curriculum: the first steps use single-shape images only."""
    location_sigma: float = 1.0
    """Soft target (cells) of the auxiliary location loss; 0 turns it off."""
    location_weight: float = 1.0
    slot_prior_weight: float = 1.0
    """Weight of the auxiliary loss that keeps each of the 64 image slots on its own 2x2-patch region; 0 turns it off."""
    slot_prior_sigma: float = 1.0
    """Width (patches) of each slot's target region."""
    phrase_share: float = 0.3
    """Share of phrase-grounding examples (phrase -> box)."""
    region_share: float = 0.3
    """Share of region examples (box -> shape name); the rest are grounded captions."""
    name_attention_weight: float = 0.5
    """Weight of the auxiliary loss that puts the decoder's image attention, on the rows that write a
    shape's name, inside that shape's box (the attention the heatmaps show); 0 turns it off."""
    init_from: str | None = None
    """Start from the weights of this toy folder (fresh optimizer) instead of a new initialisation."""
    image_scale: float = 1.0
    shape: ToyShape = field(default_factory=ToyShape)
    device: str = "auto"
    """auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:N or mps (``engine.resolve_device``)."""
    workers: int | None = None
    """Processes generating batches ahead of training; None: 0 on CPU, up to 8 on a GPU."""


def encode_batch(processor, examples: Sequence[Example], num_image_tokens: int):
    """Processor inputs + labels: -100 on the image slots, the prompt and padding; loss on the continuation."""
    import torch

    tokenizer = processor.tokenizer
    tokenizer.padding_side = "right"
    full = [e.prompt + e.target for e in examples]
    inputs = processor(text=full, images=[e.image for e in examples], return_tensors="pt", padding=True,
                       num_image_tokens=num_image_tokens)
    target_lengths = [len(tokenizer.tokenize(e.target)) for e in examples]  # targets start with a tag token
    ids = inputs["input_ids"]
    lengths = inputs["attention_mask"].sum(dim=1)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    # append </s> after each row's last token
    ids = torch.cat([ids, torch.full((ids.shape[0], 1), pad, dtype=ids.dtype)], dim=1)
    attention = torch.cat([inputs["attention_mask"], torch.zeros(ids.shape[0], 1, dtype=ids.dtype)], dim=1)
    mask = torch.cat([inputs["image_embeds_position_mask"], torch.zeros(ids.shape[0], 1, dtype=ids.dtype)], dim=1)
    labels = torch.full_like(ids, -100)
    for row in range(ids.shape[0]):
        n = int(lengths[row])
        ids[row, n] = eos
        attention[row, n] = 1
        start = n - target_lengths[row]
        labels[row, start : n + 1] = ids[row, start : n + 1]
    return {"input_ids": ids, "attention_mask": attention, "image_embeds_position_mask": mask,
            "pixel_values": inputs["pixel_values"]}, labels


def name_attention_targets(processor, examples: Sequence[Example], labels, slots: int):
    """(batch, positions, slots): where the row that predicts each shape-naming token should look.

    Rows predicting the words of a caption's ``<phrase>`` (the k-th phrase is the
    k-th shape) or of a region answer get the slot-grid cells under that shape's
    box (their covered share, summing to 1); every other row is all zero. Slot j
    stands for cell j of the grid because the slot prior keeps it there.
    """
    import torch

    tokenizer = processor.tokenizer
    open_id, close_id = tokenizer.convert_tokens_to_ids(["<phrase>", "</phrase>"])
    side = int(round(slots**0.5))
    cells = {}

    def cell_target(box):
        if box not in cells:
            cover = torch.tensor(cell_overlap(box, side), dtype=torch.float32).reshape(-1)
            cells[box] = cover / cover.sum()
        return cells[box]

    targets = torch.zeros(labels.shape[0], labels.shape[1], slots)
    for row, example in enumerate(examples):
        positions = [p for p in range(labels.shape[1]) if labels[row, p] != -100]
        ids = [int(labels[row, p]) for p in positions]
        if example.prompt == PROMPT_CAPTION:
            shapes, inside, boxes = iter(example.scene.shapes), False, []
            for p, token in zip(positions, ids):
                if token == open_id:
                    inside, box = True, next(shapes).box
                elif token == close_id:
                    inside = False
                elif inside:
                    boxes.append((p, box))
        elif example.prompt.endswith(" is"):  # region: the answer names one shape, before its "." and </s>
            shape = next(s for s in example.scene.shapes if example.target.endswith(f" {s.name}."))
            boxes = [(p, shape.box) for p in positions[:-2]]
        else:
            boxes = []
        for p, box in boxes:
            targets[row, p - 1] = cell_target(box)  # the row at p - 1 predicts the token at p
    return targets


def slot_regions(slots: int, patches_side: int, sigma: float) -> "np.ndarray":
    """(slots, patches): slot ``j`` of a square slot grid -> a 2-D Gaussian over its own block of patches.

    >>> t = slot_regions(4, 4, 0.5)  # 2x2 slots over a 4x4 patch grid: slot 0 is the top-left 2x2 block
    >>> t.shape, round(float(t[0].reshape(4, 4)[:2, :2].sum()), 2), round(float(t[3].reshape(4, 4)[2:, 2:].sum()), 2)
    ((4, 16), 0.98, 0.98)
    """
    side = int(round(slots**0.5))
    block = patches_side / side
    centres = (np.arange(side) + 0.5) * block  # region centres in patch units
    coords = np.arange(patches_side) + 0.5
    g = np.exp(-((coords[None, :] - centres[:, None]) ** 2) / (2 * sigma**2))  # (side, patches_side)
    target = (g[:, None, :, None] * g[None, :, None, :])  # (row, col, prow, pcol)
    target = target.reshape(side * side, patches_side * patches_side)
    return target / target.sum(axis=1, keepdims=True)


def loss_fn(model, batch, labels, location_first: int, sigma: float = 1.0, weight: float = 1.0,
            slot_target=None, slot_weight: float = 0.0, name_target=None, name_weight: float = 0.0):
    """Next-token cross-entropy on the continuation, plus a soft 2-D target on location tokens.

    With eager attention, also: with ``slot_target`` (slots, patches), a cross-entropy
    between each image slot's attention over the patches and its own region; with
    ``name_target`` (from :func:`name_attention_targets`), one between the decoder's
    image-slot attention (layers and heads averaged, renormalised: what a heatmap
    shows) and the named shape's cells.
    """
    import torch
    import torch.nn.functional as F

    from .attention import projection_attentions

    use_names = name_target is not None and name_weight > 0
    out = model(**batch, use_cache=False, output_attentions=use_names)
    logits = out.logits[:, :-1].float()
    target = labels[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    parts = {"ce": float(ce.detach())}
    total = ce
    is_loc = (target >= location_first) & (target < location_first + GRID * GRID)
    if sigma > 0 and weight > 0 and bool(is_loc.any()):
        loc_logits = logits[is_loc][:, location_first : location_first + GRID * GRID]
        cells = target[is_loc] - location_first
        tx, ty = (cells % GRID).float(), (cells // GRID).float()
        grid = torch.arange(GRID, dtype=torch.float32, device=logits.device)
        gx = torch.exp(-((grid[None, :] - tx[:, None]) ** 2) / (2 * sigma**2))
        gy = torch.exp(-((grid[None, :] - ty[:, None]) ** 2) / (2 * sigma**2))
        soft = (gy[:, :, None] * gx[:, None, :]).reshape(len(cells), -1)
        soft = soft / soft.sum(dim=1, keepdim=True)
        loc = -(soft * loc_logits.log_softmax(dim=-1)).sum(dim=1).mean()
        parts["loc"] = float(loc.detach())
        total = total + weight * loc
    if slot_target is not None and slot_weight > 0:
        attention = projection_attentions(out)  # (B, heads, slots, 1 + patches + slots) under eager attention
        if attention is None:
            raise RuntimeError("the slot prior needs the projection's attention weights: use eager attention")
        patches = attention.float().mean(dim=1)[:, :, 1 : 1 + slot_target.shape[1]]
        slot = -(slot_target[None] * (patches + 1e-6).log()).sum(dim=-1).mean()
        parts["slot"] = float(slot.detach())
        total = total + slot_weight * slot
    if use_names:
        if not out.attentions or out.attentions[0] is None:
            raise RuntimeError("the name-attention loss needs the decoder's attention weights: use eager attention")
        slot_positions = batch["image_embeds_position_mask"].bool()
        index = slot_positions.nonzero()[:, 1].reshape(slot_positions.shape[0], 1, -1)
        index = index.expand(-1, labels.shape[1], -1)  # (B, rows, slots)
        image = sum(layer.float().mean(dim=1).gather(-1, index) for layer in out.attentions) / len(out.attentions)
        image = image / image.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        rows = name_target.sum(dim=-1) > 0
        if bool(rows.any()):
            names = -(name_target[rows] * (image[rows] + 1e-6).log()).sum(dim=-1).mean()
            parts["names"] = float(names.detach())
            total = total + name_weight * names
    return total, parts


class StepBatches:
    """Map-style dataset: item ``i`` is the encoded batch of step ``start + i`` (so workers may run ahead)."""

    def __init__(self, processor, config: TrainConfig, slots: int, start: int):
        self.processor, self.config, self.slots, self.start = processor, config, slots, start

    def __len__(self) -> int:
        return max(self.config.steps - self.start, 0)

    def __getitem__(self, index: int):
        step = self.start + index
        examples = batch_examples(self.config.seed, step, self.config.batch_size,
                                  single_only=step < self.config.single_only_steps,
                                  phrase_share=self.config.phrase_share, region_share=self.config.region_share)
        batch, labels = encode_batch(self.processor, examples, self.slots)
        names = name_attention_targets(self.processor, examples, labels, self.slots) \
            if self.config.name_attention_weight > 0 else None
        return batch, labels, names


def batch_stream(dataset: StepBatches, workers: int):
    """Batches in step order; ``workers`` > 0 generates them in background processes."""
    import torch

    if workers <= 0:
        return (dataset[i] for i in range(len(dataset)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                            prefetch_factor=4, persistent_workers=False))


_STATE = "training_state.pt"
_TRAIN_JSON = "toy_training.json"


def train(out_dir: str | Path, config: TrainConfig = TrainConfig(), log=None, progress: bool = True) -> Path:
    """Train (or resume) the toy in ``out_dir``; a ``save_pretrained`` folder every ``checkpoint_every`` steps."""
    import torch
    from tqdm import tqdm

    from .engine import resolve_device  # here: the engine module imports this one
    from .tiny import build_processor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda message: print(message, file=sys.stderr))
    device = resolve_device(config.device)
    workers = config.workers if config.workers is not None else (
        0 if device.type == "cpu" else min(8, max((os.cpu_count() or 1) - 1, 0)))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    processor = build_processor()
    state_path = out / _STATE
    if state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location="cpu")
        saved = state["config"]
        for key in ("batch_size", "lr", "seed", "warmup", "single_only_steps", "location_sigma",
                    "location_weight", "image_scale", "slot_prior_weight", "slot_prior_sigma", "phrase_share",
                    "region_share"):
            if key in saved:
                setattr(config, key, saved[key])
        config.name_attention_weight = saved.get("name_attention_weight", 0.0)  # runs from before it existed
        config.shape = ToyShape(**saved["shape"])
        model = load_kosmos2(out, attn_implementation="sdpa", dtype=torch.float32)
        step, spent = state["step"], state["seconds"]
        say(f"Resuming from step {step} in {out} ({spent / 60:.1f} min spent so far).")
    elif config.init_from:
        model = load_kosmos2(config.init_from, attn_implementation="sdpa", dtype=torch.float32)
        state, step, spent = None, 0, 0.0
        say(f"Starting from the weights in {config.init_from}.")
    else:
        model = build_toy_model(processor, config.shape, seed=config.seed, image_scale=config.image_scale)
        state, step, spent = None, 0, 0.0
    model.to(device)
    if config.slot_prior_weight > 0 or config.name_attention_weight > 0:
        model.set_attn_implementation("eager")  # the auxiliary losses read attention weights
    slot_target = None
    if config.slot_prior_weight > 0:
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        slot_target = torch.tensor(slot_regions(model.config.latent_query_num, side, config.slot_prior_sigma),
                                   dtype=torch.float32, device=device)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.lr, betas=(0.9, 0.98))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])  # its tensors follow the parameters' device

    def lr_at(s: int) -> float:
        """Warm-up, then cosine to 5%; with a wall-clock budget, progress is the further of steps and time."""
        if s < config.warmup:
            return config.lr * (s + 1) / config.warmup
        frac = min((s - config.warmup) / max(config.steps - config.warmup, 1), 1.0)
        if budget is not None:
            frac = max(frac, min((time.time() - started) / budget, 1.0))
        return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    location_first = processor.tokenizer.convert_tokens_to_ids("<patch_index_0000>")
    slots = model.config.latent_query_num
    started = time.time() - spent
    budget = config.minutes * 60 if config.minutes else None
    history: list[dict] = state["history"] if state is not None else []
    bar = tqdm(total=config.steps, initial=step, desc=f"train-toy ({device.type})", unit="step", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    smooth = None
    batches = batch_stream(StepBatches(processor, config, slots, step), workers)

    def checkpoint():
        model.config.__dict__[TOY_MARKER] = True
        model.save_pretrained(out)
        processor.save_pretrained(out)
        torch.save({"step": step, "seconds": time.time() - started, "optimizer": optimizer.state_dict(),
                    "config": {**asdict(config), "minutes": None}, "history": history}, state_path)
        (out / _TRAIN_JSON).write_text(json.dumps(
            {"step": step, "minutes": round((time.time() - started) / 60, 2), "config": asdict(config),
             "last_loss": history[-1] if history else None}, indent=2))

    while step < config.steps:
        if budget is not None and time.time() - started > budget:
            say(f"Wall-clock budget of {config.minutes} min reached at step {step}.")
            break
        batch, labels, names = next(batches)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        labels = labels.to(device, non_blocking=True)
        names = names.to(device, non_blocking=True) if names is not None else None
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss, parts = loss_fn(model, batch, labels, location_first, config.location_sigma, config.location_weight,
                              slot_target, config.slot_prior_weight, names, config.name_attention_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        value = float(loss.detach())
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        if step % 10 == 0 or step == 1:
            history.append({"step": step, "loss": round(value, 4), **{k: round(v, 4) for k, v in parts.items()},
                            "seconds": round(time.time() - started, 1)})
        shown = {"loss": f"{smooth:.3f}", "ce": f"{parts['ce']:.3f}", "loc": f"{parts.get('loc', 0):.2f}",
                 "slot": f"{parts.get('slot', 0):.2f}", "names": f"{parts.get('names', 0):.2f}"}
        if budget is not None:  # the bar's own ETA counts steps, which a time budget usually cuts short
            shown["left"] = f"{max(budget - (time.time() - started), 0) / 60:.1f}min"
        bar.set_postfix(shown)
        bar.update(1)
        if step % config.checkpoint_every == 0:
            checkpoint()
    bar.close()
    checkpoint()
    say(f"Saved the toy at step {step} to {out} ({(time.time() - started) / 60:.1f} min in all).")
    return out


def export(train_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Copy a trained toy to a clean folder: model + processor only (no optimizer state)."""
    import torch
    from transformers import AutoProcessor

    model = load_kosmos2(train_dir, attn_implementation="sdpa", dtype=getattr(torch, dtype))
    setattr(model.config, TOY_MARKER, True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(train_dir).save_pretrained(out)
    if (Path(train_dir) / _TRAIN_JSON).exists():
        (out / _TRAIN_JSON).write_text((Path(train_dir) / _TRAIN_JSON).read_text())
    return out


# --- evaluation ---------------------------------------------------------------


def heatmap_scores(heatmap: np.ndarray, box: Sequence[float]) -> tuple[float, bool]:
    """(share of the map's mass inside the box, whether its peak cell's centre lies inside)."""
    side = heatmap.shape[0]
    inside = cell_overlap(box, side)
    total = float(heatmap.sum())
    mass = float((heatmap * inside).sum() / total) if total > 0 else 0.0
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    cx, cy = (x + 0.5) / side, (y + 0.5) / side
    hit = box[0] <= cx <= box[2] and box[1] <= cy <= box[3]
    return mass, bool(hit)


def phrase_map(result, entity) -> np.ndarray | None:
    """The mean heatmap of the generated tokens that spell an entity's phrase (None without any)."""
    if result.heatmaps is None:
        return None
    start, end = entity.span
    maps = [result.heatmaps.maps[t.heatmap_index] for t in result.tokens
            if t.heatmap_index is not None and t.kind == "text" and t.span is not None
            and t.span[0] < end and t.span[1] > start and t.text.strip()]
    return np.mean(maps, axis=0) if maps else None


def _names(phrase: str) -> tuple[str | None, str | None]:
    words = re.findall(r"[a-z]+", phrase.lower())
    color = next((w for w in words if w in COLORS), None)
    kind = next((w for w in words if w in SHAPES), None)
    return color, kind


def evaluate_engine(engine, n: int = 100, seed: int = 10_000, multi: int = 0) -> dict:
    """Scores of an engine on ``n`` fresh single-shape images (+ ``multi`` 2-3 shape images)."""
    from .settings import DecodingSettings
    from .tasks import Request, Task

    rng = np.random.default_rng(seed)
    decoding = DecodingSettings(max_new_tokens=48)
    caption = Request(Task.BRIEF, heatmaps=True, decoding=decoding)
    stats = {k: [] for k in ("phrase", "color", "kind", "iou", "mass", "chance", "hit", "phrase_iou",
                             "multi_phrase", "multi_iou", "wellformed", "region_named")}
    for i in range(n + multi):
        single = i < n
        scene = make_scene(rng, num_shapes=1 if single else int(rng.integers(2, 4)))
        result = engine.describe(scene.image, caption)
        entities = [e for e in result.entities if e.boxes_normalized]
        if single:
            truth = scene.shapes[0]
            stats["wellformed"].append(len(entities) == 1 and entities[0].complete)
            entity = entities[0] if entities else None
            color, kind = _names(entity.phrase) if entity else (None, None)
            stats["color"].append(color == truth.color)
            stats["kind"].append(kind == truth.kind)
            stats["phrase"].append(color == truth.color and kind == truth.kind)
            stats["iou"].append(box_iou(entity.boxes_normalized[0], truth.box) if entity else 0.0)
            heat = phrase_map(result, entity) if entity else None
            if heat is None and result.heatmaps is not None and len(result.heatmaps):
                heat = result.heatmaps.maps.mean(axis=0)  # no phrase: all generated tokens
            if heat is not None:
                mass, hit = heatmap_scores(heat, truth.box)
                stats["mass"].append(mass)
                stats["hit"].append(hit)
            stats["chance"].append((truth.box[2] - truth.box[0]) * (truth.box[3] - truth.box[1]))
            grounded = engine.describe(scene.image, Request(Task.PHRASE, text=f"the {truth.name}", decoding=decoding))
            boxes = [e.boxes_normalized[0] for e in grounded.entities if e.boxes_normalized and not e.from_prompt]
            boxes += [e.boxes_normalized[0] for e in grounded.entities if e.boxes_normalized and e.from_prompt]
            stats["phrase_iou"].append(box_iou(boxes[0], truth.box) if boxes else 0.0)
            region = engine.describe(scene.image, Request(Task.REGION, box=truth.pixel_box, decoding=decoding))
            stats["region_named"].append(_names(region.text) == (truth.color, truth.kind))
        else:
            for truth in scene.shapes:
                match = next((e for e in entities if _names(e.phrase) == (truth.color, truth.kind)), None)
                stats["multi_phrase"].append(match is not None)
                stats["multi_iou"].append(box_iou(match.boxes_normalized[0], truth.box) if match else 0.0)
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {
        "images": n,
        "wellformed": mean(stats["wellformed"]),
        "phrase_exact": mean(stats["phrase"]),
        "color_right": mean(stats["color"]),
        "shape_right": mean(stats["kind"]),
        "mean_iou": mean(stats["iou"]),
        "iou_over_0.5": mean([v > 0.5 for v in stats["iou"]]),
        "heatmap_mass_in_box": mean(stats["mass"]),
        "heatmap_chance": mean(stats["chance"]),
        "pointing_game": mean(stats["hit"]),
        "pointing_chance": mean(stats["chance"]),
        "phrase_grounding_mean_iou": mean(stats["phrase_iou"]),
        "phrase_grounding_iou_over_0.5": mean([v > 0.5 for v in stats["phrase_iou"]]),
        "region_named": mean(stats["region_named"]),
        "multi_images": multi,
        "multi_phrase_found": mean(stats["multi_phrase"]),
        "multi_mean_iou": mean(stats["multi_iou"]),
        "multi_iou_over_0.5": mean([v > 0.5 for v in stats["multi_iou"]]),
    }


def random_baseline(model_dir: str | Path, out_dir: str | Path, seed: int = 1) -> Path:
    """A random-init toy of the same shape and processor as ``model_dir`` (the evaluation's baseline)."""
    import torch
    from transformers import AutoConfig, AutoProcessor, Kosmos2ForConditionalGeneration

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(seed)
    model = Kosmos2ForConditionalGeneration(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(model_dir).save_pretrained(out)
    return out


def evaluate(model_dir: str | Path, n: int = 100, seed: int = 10_000, multi: int = 30,
             baseline: bool = True) -> dict:
    """The trained toy and (optionally) a random-init one of the same shape, on the same fresh images."""
    import tempfile

    import torch

    from .engine import Kosmos2Engine

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    report = {"model": str(model_dir), "seed": seed,
              "toy": evaluate_engine(Kosmos2Engine.load(str(model_dir), device="cpu"), n, seed, multi)}
    if baseline:
        with tempfile.TemporaryDirectory() as tmp:
            path = random_baseline(model_dir, tmp)
            report["random_init"] = evaluate_engine(Kosmos2Engine.load(str(path), device="cpu"), n, seed, multi)
    return report


_ROWS = (
    ("wellformed", "one complete grounded phrase"),
    ("phrase_exact", "phrase exact (colour + shape)"),
    ("color_right", "colour right"),
    ("shape_right", "shape right"),
    ("mean_iou", "caption box: mean IoU"),
    ("iou_over_0.5", "caption box: IoU > 0.5"),
    ("phrase_grounding_mean_iou", "phrase grounding: mean IoU"),
    ("phrase_grounding_iou_over_0.5", "phrase grounding: IoU > 0.5"),
    ("region_named", "region (true box): shape named"),
    ("heatmap_mass_in_box", "heatmap mass inside box"),
    ("heatmap_chance", "  chance (box area)"),
    ("pointing_game", "pointing game (peak in box)"),
    ("pointing_chance", "  chance (box area)"),
    ("multi_phrase_found", "2-3 shapes: shape named"),
    ("multi_mean_iou", "2-3 shapes: mean IoU"),
    ("multi_iou_over_0.5", "2-3 shapes: IoU > 0.5"),
)


def format_report(report: dict) -> str:
    columns = [k for k in ("toy", "random_init") if k in report]
    toy = report["toy"]
    lines = [f"{report['model']}: {toy['images']} single-shape + {toy['multi_images']} multi-shape images, "
             f"seed {report['seed']}", f"{'metric':34s}" + "".join(f"{c:>13s}" for c in columns)]
    for key, label in _ROWS:
        lines.append(f"{label:34s}" + "".join(f"{report[c][key]:13.3f}" for c in columns))
    return "\n".join(lines)
