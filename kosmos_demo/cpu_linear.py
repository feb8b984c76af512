"""Faster CPU inference: every ``nn.Linear`` on a oneDNN-packed weight.

On x86 CPUs PyTorch multiplies fp32 matrices with MKL, whose sgemm for a few
rows (a batch of 4 decoding one token each) costs 2.5-5x its one-row gemv, so a
batched decoding step cost twice a single one. oneDNN's inner product on a
weight reordered once (what inductor's ``freezing`` does on CPU) keeps 4 rows at
about the cost of one and is 2-3x faster than MKL for the prefill and vision
(73 and 257 rows). Measured on the full model (BENCHMARKS.md): a batch of 4 went
from 1.67x to 3.07x the throughput of single runs, and one request got faster.

:func:`pack_linears` swaps each ``nn.Linear`` for a :class:`PackedLinear` that
holds only the packed weight (a weight tied to an embedding, Kosmos-2's
``lm_head``, is copied). Inference only: packed weights are not parameters, so
a packed model cannot be trained, saved or moved. Results change by float
rounding (the summation order differs).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

OPT_OUT = "KOSMOS_DEMO_ONEDNN"
"""Environment variable: ``0`` keeps the stock ``nn.Linear`` on CPU."""


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """None if packing can be used for this device and dtype, else why not."""
    if device.type != "cpu":
        return "oneDNN packing is a CPU path"
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    if dtype not in (torch.float32, torch.bfloat16):
        return f"oneDNN linear packing supports float32 and bfloat16, not {str(dtype).replace('torch.', '')}"
    return _probe(dtype)


@functools.cache
def _probe(dtype: torch.dtype) -> str | None:
    """Pack one tiny weight: oneDNN's bf16 path needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT, and says so."""
    try:
        with torch.no_grad():
            PackedLinear(nn.Linear(8, 8).to(dtype))(torch.ones(1, 8, dtype=dtype))
    except RuntimeError as error:
        return f"this CPU cannot run oneDNN's {str(dtype).replace('torch.', '')} linear ({error})"
    return None


def wanted(device: torch.device, dtype: torch.dtype, quantized: bool = False) -> bool:
    """Packing is on wherever it is available, unless ``KOSMOS_DEMO_ONEDNN=0`` (or the model is quantized)."""
    return (os.environ.get(OPT_OUT, "1").strip() != "0" and not quantized
            and unavailable_reason(device, dtype) is None)


class PackedLinear(nn.Module):
    """``nn.Linear`` on a oneDNN-reordered weight (inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn"


def pack_linears(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` in ``model`` by a :class:`PackedLinear`; returns how many were replaced.

    The remaining parameters are copied out of the checkpoint's memory map, so
    the pages of the replaced weights are released instead of staying mapped.
    """
    targets = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PackedLinear(linear))
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()
        for module in model.modules():
            for key, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[key] = buffer.clone()
    return len(targets)
