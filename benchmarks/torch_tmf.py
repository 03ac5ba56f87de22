"""The TMF fusion member built from torch.nn modules: the parity reference and the PyTorch baseline.

`TorchTMF` is the seed team's architecture written the way a PyTorch user writes it
(`nn.TransformerEncoder` of `nn.TransformerEncoderLayer(batch_first=True)`, `nn.BatchNorm1d` head;
the 1x1 projections as `nn.Linear`, which is the same map per frame). `to_flax` converts its weights to
`abaw_jax.models.fusion.TMF` variables. tests/test_fusion_model.py checks the two agree;
benchmarks/fusion_ensemble.py times it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from abaw_jax.models.fusion import TMFConfig


class TorchTMF(nn.Module):
    def __init__(self, config: TMFConfig):
        super().__init__()
        c = config
        self.config = c
        self.proj1 = nn.Linear(c.input_dim, c.proj_dim)
        self.no_face = nn.Parameter(torch.randn(c.proj_dim) * 0.02)
        self.act = nn.LeakyReLU(c.negative_slope)
        self.proj2 = nn.Linear(c.proj_dim, c.width)
        # torch's own defaults (LayerNorm eps 1e-5, ReLU, post-LN; BatchNorm eps 1e-5, momentum 0.1), not
        # the config's: the reference must not inherit a wrong value from the code it checks.
        layer = nn.TransformerEncoderLayer(c.width, c.num_heads, c.mlp_dim, c.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.depth, enable_nested_tensor=False)
        self.head1 = nn.Linear(c.width, c.head_dim)
        self.head_norm = nn.BatchNorm1d(c.head_dim)
        self.head2 = nn.Linear(c.head_dim, c.num_outputs)

    def forward(self, x: torch.Tensor, face: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D), face (B, L) bool, mask (B, L) bool (False = padding) or None (no padding)."""
        h = self.proj1(x) + torch.where(face[..., None], torch.zeros_like(self.no_face), self.no_face)
        h = self.proj2(self.act(h))
        h = self.encoder(h, src_key_padding_mask=None if mask is None else ~mask)
        h = self.head1(h)
        if mask is None:
            h = self.head_norm(h.reshape(-1, h.shape[-1])).reshape(h.shape)
        else:  # BatchNorm over the real frames only, like the masked statistics of ours
            normed = torch.zeros_like(h)
            normed[mask] = self.head_norm(h[mask])
            h = normed
        out = self.head2(h)
        return torch.tanh(out) if self.config.bounded else out


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _dense(linear: nn.Linear) -> dict[str, np.ndarray]:
    return {"kernel": _np(linear.weight).T, "bias": _np(linear.bias)}


def to_flax(model: TorchTMF) -> dict[str, Any]:
    """{'params', 'batch_stats'} for `abaw_jax.models.fusion.TMF(model.config)`."""
    c = model.config
    heads, per_head = c.num_heads, c.width // c.num_heads
    params: dict[str, Any] = {"proj1": _dense(model.proj1), "no_face": _np(model.no_face), "proj2": _dense(model.proj2)}
    for i, layer in enumerate(model.encoder.layers):
        attn = layer.self_attn
        w, b = _np(attn.in_proj_weight), _np(attn.in_proj_bias)
        attention = {}
        for j, name in enumerate(("query", "key", "value")):
            rows = slice(j * c.width, (j + 1) * c.width)
            attention[name] = {
                "kernel": w[rows].T.reshape(c.width, heads, per_head),
                "bias": b[rows].reshape(heads, per_head),
            }
        attention["out"] = {
            "kernel": _np(attn.out_proj.weight).T.reshape(heads, per_head, c.width),
            "bias": _np(attn.out_proj.bias),
        }
        params[f"layer{i}"] = {
            "attention": attention,
            "norm1": {"scale": _np(layer.norm1.weight), "bias": _np(layer.norm1.bias)},
            "linear1": _dense(layer.linear1),
            "linear2": _dense(layer.linear2),
            "norm2": {"scale": _np(layer.norm2.weight), "bias": _np(layer.norm2.bias)},
        }
    params["head1"] = _dense(model.head1)
    params["head_norm"] = {"scale": _np(model.head_norm.weight), "bias": _np(model.head_norm.bias)}
    params["head2"] = _dense(model.head2)
    batch_stats = {"head_norm": {"mean": _np(model.head_norm.running_mean), "var": _np(model.head_norm.running_var)}}
    return {"params": params, "batch_stats": batch_stats}
