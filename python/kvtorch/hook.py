"""The compression hook of the kvtorch model contract (docs/model-contract.md).

A KVHook sits where a model's keys or values enter attention and computes, per
KV head h,

    x -> up_h( quant_bits( down_h(x - mean_h) ) ) + mean_h

with down_h = U_r (a D x D matrix whose columns past r are zero), up_h = U_r^T
(rows past r zero), and quant_bits a per-token absmax fake quantization of the
latents to `bits` bits (16 = none). kvtorch overwrites the buffers at run time;
with the defaults (identity, zero mean, 16 bits) the output equals the input
exactly, so the model's logits are unchanged.

The arithmetic is done in float32 whatever the model's dtype.
"""
import torch
from torch import nn


class KVHook(nn.Module):
    def __init__(self, heads: int, dim: int):
        super().__init__()
        eye = torch.eye(dim).expand(heads, dim, dim).clone()
        self.register_buffer("down", eye)
        self.register_buffer("up", eye.clone())
        self.register_buffer("mean", torch.zeros(heads, dim))
        self.register_buffer("bits", torch.tensor(16.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, T, D] -> the same shape and dtype."""
        mean = self.mean[:, None, :]
        z = torch.matmul(x.float() - mean, self.down)
        levels = torch.pow(2.0, self.bits - 1) - 1
        scale = z.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / levels
        zq = torch.round(z / scale) * scale
        z = torch.where(self.bits >= 16, z, zq)
        return (torch.matmul(z, self.up) + mean).to(x.dtype)


def project_eager(x: torch.Tensor, U: torch.Tensor, mean: torch.Tensor, rank: int, bits: int = 16) -> torch.Tensor:
    """The hook's computation in plain eager torch, for tests: x [B, H, T, D],
    U [H, D, D] (columns by decreasing variance), mean [H, D]."""
    Ur = U[:, :, :rank]
    z = torch.matmul(x.float() - mean[:, None, :], Ur)
    if bits < 16:
        levels = 2 ** (bits - 1) - 1
        scale = z.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / levels
        z = torch.round(z / scale) * scale
    return (torch.matmul(z, Ur.transpose(-1, -2)) + mean[:, None, :]).to(x.dtype)
