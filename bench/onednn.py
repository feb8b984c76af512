"""``--onednn``: a prototype of the CPU change proposed for the engine (see BENCHMARKS.md).

On this machine (AMD EPYC, PyTorch's MKL build), an fp32 ``nn.Linear`` with a
few rows (a batch of 4 decoding one token each) costs 2.5-5x as much as with
one row: MKL's sgemm takes a slow path for small M, while its gemv (M = 1) is
fine. So a batched decoding step costs about twice a single one and a batch of
4 cannot reach 2.5x the throughput of 4 single runs. oneDNN's inner product on
weights reordered once (what inductor's ``freezing`` does for CPU) keeps M = 4
at about the M = 1 cost and is 2-3x faster than MKL for the prefill and the
vision tower (M = 73 and 257 rows).

:func:`pack_linears` swaps every ``nn.Linear`` of a model for
:class:`PackedLinear`, which holds the oneDNN-reordered weight and drops the
dense one (so memory does not double; a weight tied to an embedding, Kosmos-2's
``lm_head``, is copied). It changes fp32 results by float rounding only
(different summation order). It applies to the shared model, so the reference
and the engine both get it: ratios between them stay fair.
"""

from __future__ import annotations

import torch
from torch import nn


def available(device: torch.device, dtype: torch.dtype) -> str | None:
    """None if packing can be used here, else why not."""
    if device.type != "cpu":
        return "oneDNN packing is a CPU path"
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    if dtype not in (torch.float32, torch.bfloat16):
        return f"oneDNN linear packing supports float32 and bfloat16, not {dtype}"
    return None


class PackedLinear(nn.Module):
    """``nn.Linear`` on a oneDNN-reordered weight (inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn"


def pack_linears(model: nn.Module) -> int:
    """Replace every nn.Linear in ``model`` by a PackedLinear; returns how many were replaced."""
    targets = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PackedLinear(linear))
    return len(targets)
