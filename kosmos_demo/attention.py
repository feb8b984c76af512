"""Image attention for heatmaps, recorded while the model runs with sdpa.

Kosmos-2's text decoder sees the image only through 64 (``latent_query_num``)
embedding slots, and each slot is a mix of the 16x16 vision patches given by
the image-to-text projection's one cross-attention. So a token's map is

    decoder attention of the position that predicted it -> image slots
    (heads and layers averaged, renormalised)  @  projection attention -> patches

Eager attention would return both, but it is slow and keeps every row of every
layer. Instead the model runs with :data:`ATTENTION_IMPLEMENTATION`: sdpa for
the output, plus, only while an :class:`ImageAttentionRecorder` is active, a
softmax of ``q k^T`` for the rows it needs, reduced to their image-slot
columns. While decoding, the recorder only keeps each step's one query row per
layer (a reference: no kernel runs) and the layer's latest keys; after
``generate`` one masked softmax per layer turns them into rows. A GPU decode
is bound by kernel launches, so work per step would show there; nothing is
computed or kept when heatmaps are off.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager

import numpy as np
import torch
from transformers import AttentionInterface

from .compat import assumption_failed
from .messages import quote_value

ATTENTION_IMPLEMENTATION = "kosmos_demo_sdpa"
"""sdpa that can also report image-slot attention; the engine loads models with it."""

_ACTIVE: contextvars.ContextVar["ImageAttentionRecorder | None"] = contextvars.ContextVar("recorder", default=None)


_SDPA = AttentionInterface()["sdpa"]  # transformers' own sdpa, through the public registry


def _sdpa_with_image_rows(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    output = _SDPA(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    recorder = _ACTIVE.get()
    if recorder is not None:
        recorder.observe(module, query, key, attention_mask, scaling)
    return output


def check_attention_call(module, query, key, attention_mask, scaling) -> None:
    """What the recorder assumes of an attention call, which transformers does not promise; checked, not trusted.

    Each broken assumption raises :class:`~kosmos_demo.compat.TransformersAssumptionError` (one line): a mask
    of another kind, another layout or keys other than the cache plus the queries would give wrong rows, silently.
    """
    heads, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    if query.dim() != 4 or query.shape[1] != heads or query.shape[3] != head_dim or key.shape[1] != heads:
        raise assumption_failed(f"attention gets query and key as (batch, heads={heads}, seq, dim={head_dim})",
                                f"query {tuple(query.shape)}, key {tuple(key.shape)}")
    if key.shape[2] < query.shape[2]:
        raise assumption_failed("attention's keys are the cache followed by the queries (at least as many)",
                                f"{key.shape[2]} keys for {query.shape[2]} queries")
    if attention_mask is not None and (not attention_mask.dtype.is_floating_point or attention_mask.dim() != 4
                                       or attention_mask.shape[-1] != key.shape[2]
                                       or attention_mask.shape[-2] != query.shape[2]):
        raise assumption_failed("attention's mask is additive float (batch, 1, queries, keys)",
                                f"{attention_mask.dtype} {tuple(attention_mask.shape)} for "
                                f"{query.shape[2]} queries, {key.shape[2]} keys")
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool) or scaling <= 0:
        raise assumption_failed("attention is called with the layer's float scaling=", quote_value(scaling))


AttentionInterface.register(ATTENTION_IMPLEMENTATION, _sdpa_with_image_rows)


class ImageAttentionRecorder:
    """Collects, for one batch, what the heatmaps need and nothing more.

    ``slot_positions`` (batch, slots) are the sequence positions of the image
    slots (from ``image_embeds_position_mask``); rows are kept for query
    positions >= ``first_row``, i.e. from the position that predicts the first
    generated token on. After the run, :meth:`slot_rows` is (batch, rows, slots)
    and :meth:`patch_weights` is (batch, slots, patches), both on the CPU.
    """

    chunk_rows = 128
    """Decoding rows softmaxed at once after ``generate``: bounds the (batch, heads, rows, keys) scores."""

    def __init__(self, model, slot_positions: torch.Tensor, first_row: int):
        layers = model.text_model.model.layers
        self._layer_of = {id(layer.self_attn): i for i, layer in enumerate(layers)}
        self._num_layers = len(layers)
        self._projection = id(model.image_to_text_projection.x_attn)
        self._num_patches = model.config.vision_config.image_size // model.config.vision_config.patch_size
        self._num_patches **= 2
        self._slots = slot_positions
        self._slot_index: torch.Tensor | None = None  # _slots on the model's device, copied once
        self._first_row = first_row
        self._rows: list[torch.Tensor | None] = [None] * self._num_layers  # (B, rows, slots) computed at once
        self._queries: list[list[torch.Tensor]] = [[] for _ in range(self._num_layers)]  # decoding steps, deferred
        self._positions: list[int] = []  # each decoding step's query position (the same in every layer)
        self._keys: list[torch.Tensor | None] = [None] * self._num_layers  # each layer's latest (longest) keys
        self._padding: torch.Tensor | None = None  # the latest step's mask: it sees every key
        self._scaling: float | None = None
        self._patches: torch.Tensor | None = None

    @contextmanager
    def active(self):
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def observe(self, module, query, key, attention_mask, scaling) -> None:
        if id(module) == self._projection:
            check_attention_call(module, query, key, attention_mask, scaling)
            probs = _softmax_rows(query, key, None, scaling).mean(dim=1)  # (B, slots, 1 + patches + slots)
            self._patches = probs[..., 1 : 1 + self._num_patches]
            return
        layer = self._layer_of.get(id(module))
        if layer is None:
            return
        check_attention_call(module, query, key, attention_mask, scaling)
        start = key.shape[2] - query.shape[2]  # absolute position of the first query row
        first = max(self._first_row - start, 0)
        if first >= query.shape[2]:
            return
        if query.shape[2] == 1 and start > self._first_row:  # a decoding step: keep references only
            self._queries[layer].append(query)
            self._keys[layer] = key
            if layer == 0:
                expected = self._positions[-1] + 1 if self._positions else self._first_row + 1
                if start != expected:  # a static or sliding cache would hand over keys of another length
                    raise assumption_failed("each decoding step's keys are the cache plus its one query",
                                            f"{key.shape[2]} keys at decoding position {expected}")
                self._positions.append(start)
                self._padding, self._scaling = attention_mask, scaling
            return
        mask = attention_mask[:, :, first:, :] if attention_mask is not None else None
        self._rows[layer] = self._image_columns(_softmax_rows(query[:, :, first:], key, mask, scaling))

    def _image_columns(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, H, rows, keys) -> (B, rows, slots): the image-slot columns, heads averaged."""
        if self._slot_index is None or self._slot_index.device != probs.device:
            # once, not per layer: a host-to-GPU copy would stall an asynchronous decode
            self._slot_index = self._slots.to(probs.device)
        index = self._slot_index[:, None, None, :].expand(-1, probs.shape[1], probs.shape[2], -1)
        return probs.gather(-1, index).mean(dim=1)

    def _decoding_mask(self) -> torch.Tensor | None:
        """(B or 1, 1, steps, keys) additive mask of the deferred rows: padding, and no key past a row's position."""
        if not self._positions:
            return None
        keys = self._keys[0]
        length = keys.shape[2]
        positions = torch.tensor(self._positions, device=keys.device)
        mask = torch.zeros(len(positions), length, device=keys.device)
        mask.masked_fill_(torch.arange(length, device=keys.device)[None, :] > positions[:, None], float("-inf"))
        mask = mask[None, None]
        if self._padding is not None:
            mask = mask + self._padding[:, :, -1:, :length].float()
        return mask

    def _decoded_rows(self, layer: int, mask: torch.Tensor) -> torch.Tensor:
        """The deferred decoding steps of one layer, as image-slot rows."""
        query, keys = torch.cat(self._queries[layer], dim=2), self._keys[layer]  # (B, H, steps, d)
        parts = []
        for begin in range(0, query.shape[2], self.chunk_rows):
            rows = slice(begin, begin + self.chunk_rows)
            parts.append(self._image_columns(_softmax_rows(query[:, :, rows], keys, mask[:, :, rows], self._scaling)))
        return torch.cat(parts, dim=1)

    def slot_rows(self) -> torch.Tensor:
        """(batch, rows, slots): each kept row's attention to the image slots, layers and heads averaged."""
        total = None
        mask = self._decoding_mask()
        for layer in range(self._num_layers):
            decoded = None if mask is None else self._decoded_rows(layer, mask)
            parts = [r for r in (self._rows[layer], decoded) if r is not None]
            if parts:
                rows = torch.cat(parts, dim=1)
                total = rows if total is None else total + rows
        self._queries = [[] for _ in range(self._num_layers)]  # done: let the step tensors go
        self._positions, self._keys, self._padding = [], [None] * self._num_layers, None
        if total is None:
            return torch.zeros(self._slots.shape[0], 0, self._slots.shape[1])
        return (total / self._num_layers).to("cpu", torch.float16)

    def patch_weights(self) -> torch.Tensor:
        """(batch, slots, patches): the projection's attention from each slot to each patch."""
        if self._patches is None:
            raise RuntimeError("the image-to-text projection did not run while recording")
        return self._patches.to("cpu", torch.float16)


def projection_attentions(output) -> torch.Tensor | None:
    """The image-to-text projection's attention weights from an eager forward's output, or None.

    transformers 5.24 moved them from the output to ``output.image_outputs``
    (the old attribute warns, and goes in 5.30).
    """
    image_outputs = getattr(output, "image_outputs", None)
    if image_outputs is not None:
        return image_outputs.projection_attentions
    return getattr(output, "projection_attentions", None)


def _softmax_rows(query, key, mask, scaling) -> torch.Tensor:
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    if mask is not None:
        scores = scores + mask.float()
    return scores.softmax(dim=-1)


def token_heatmaps(slot_rows: np.ndarray | torch.Tensor, patch_weights: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-token maps on the patch grid, each scaled to [0, 1], and each token's image share.

    ``slot_rows`` is (tokens, slots), ``patch_weights`` (slots, patches) with a
    square number of patches. A token that gave the image no attention at all
    gets an all-zero map.

    >>> rows = np.array([[0.5, 0.0], [0.0, 0.25]])
    >>> patches = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    >>> maps, share = token_heatmaps(rows, patches)
    >>> maps[0].tolist(), maps[1].tolist(), share.tolist()
    ([[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]], [0.5, 0.25])
    """
    rows = np.asarray(slot_rows, dtype=np.float32)
    weights = np.asarray(patch_weights, dtype=np.float32)
    share = rows.sum(axis=-1)
    mixed = (rows / np.maximum(share, 1e-12)[:, None]) @ weights  # (tokens, patches)
    side = int(round(weights.shape[-1] ** 0.5))
    if side * side != weights.shape[-1]:
        raise ValueError(f"{weights.shape[-1]} patches do not form a square grid")
    peak = mixed.max(axis=-1, keepdims=True)
    maps = np.where(peak > 0, mixed / np.maximum(peak, 1e-12), 0.0).reshape(-1, side, side)
    return maps.astype(np.float32), share.astype(np.float32)
