"""ViT's patch embedding computed as one matrix product (used on CUDA; see :func:`swan_anomaly.modeling.patch_embedding_as_matmul`).

A module of its own, imported by ``modeling`` inside its functions: ``modeling`` stays free of a
torch import at the top, and :class:`PatchMatmul` is a module-level class, so a model holding one
pickles (``torch.save`` of the whole model, multiprocessing) as one holding a ``Conv2d`` would.

Example:
    >>> import torch
    >>> conv = torch.nn.Conv2d(3, 8, 4, stride=4)
    >>> fast = PatchMatmul(3, 8, 4, stride=4)
    >>> fast.weight, fast.bias = conv.weight, conv.bias
    >>> x = torch.randn(2, 3, 8, 8)
    >>> bool(torch.allclose(fast(x), conv(x), atol=1e-6))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PatchMatmul(torch.nn.Conv2d):
    """A ``Conv2d`` with kernel == stride and no padding, computed as a matrix product of the flattened patches.

    The same parameters under the same names as the convolution; its output has the
    convolution's shape and layout (``[B, D, H / p, W / q]``, as a view), and like the
    convolution it drops the pixels that fill no whole patch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (p, q), d = self.kernel_size, self.out_channels
        b, c, h, w = x.shape
        gh, gw = h // p, w // q
        x = x[:, :, : gh * p, : gw * q]
        flat = x.reshape(b, c, gh, p, gw, q).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * p * q)
        out = F.linear(flat, self.weight.reshape(d, c * p * q), self.bias)
        return out.transpose(1, 2).reshape(b, d, gh, gw)
