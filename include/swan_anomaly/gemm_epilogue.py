"""A linear layer and GELU as one GEMM with cuBLASLt's GELU epilogue (used on CUDA: :func:`swan_anomaly.modeling.gelu_in_gemm_epilogue`).

A module of its own, as :mod:`swan_anomaly.patch_embedding`: ``modeling`` stays free of a torch
import at the top, and :class:`LinearGelu` is a module-level class, so a model holding one pickles.

On CUDA, ``torch._addmm_activation(..., use_gelu=True)`` runs the GEMM with cuBLASLt's GELU
epilogue, which computes GELU's tanh approximation: the MLP's GELU stops being a memory-bound
kernel of its own (with the patch embedding as a GEMM, 1.18-1.21x the compiled inference of
ViT-B/16 with neither, on an H200: 13,385-13,496 images/s at batch 1024, docs/BENCHMARKS.md).
On the CPU the same call computes the exact GELU.

Example:
    >>> import torch
    >>> linear = torch.nn.Linear(8, 16)
    >>> fused = LinearGelu(8, 16)
    >>> fused.weight, fused.bias = linear.weight, linear.bias
    >>> x = torch.randn(2, 5, 8)
    >>> bool(torch.allclose(fused(x), torch.nn.functional.gelu(linear(x)), atol=1e-6))  # exact GELU on the CPU
    True
"""

from __future__ import annotations

import torch


class LinearGelu(torch.nn.Linear):
    """``gelu(linear(x))`` as one GEMM with the GELU epilogue: the same parameters under the same names as the ``Linear``.

    Left out of ``torch.compile``'s graphs (``torch.compiler.disable``), as attention is: Inductor
    would otherwise take the GEMM apart from its epilogue.
    """

    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch._addmm_activation(self.bias, flat, self.weight.t(), use_gelu=True)
        return out.reshape(*x.shape[:-1], out.shape[-1])
