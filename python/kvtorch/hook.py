"""The compression hook of the kvtorch model contract (docs/model-contract.md).

A KVHook sits where a model's keys or values enter attention. It sees one
layer's K (or V) as x [B, H, T, D], joins the heads of each token into one
vector of E = H * D and computes

    z  = (x - mean) @ down                  latents (columns of down past the rank are zero)
    z' = quant(z / qscale) * qscale         fake quantization to `bits` (16: none)
    y  = z' @ up + mean                     back to E
    y[t] = x[t] for the first `sink` positions

with quant the quantization rule of kvtorch.preset (stated there once:
per-token absmax, 2^(bits-1) - 1 levels, rounded half to even), over each
head's D coordinates (qhead = 1) or over all E (qhead = 0), read back with
the float32 step. A basis per KV
head is a block-diagonal down/up; one basis over all heads ("joint") fills
them. kvtorch overwrites the buffers at run time; with the defaults
(identity, zero mean, 16 bits, no sinks) the output equals the input
exactly, so the model's logits are unchanged.

The arithmetic is float32 whatever the model's dtype.
"""
import torch
from torch import nn

# The hook's version, kvtorch.json's format_version: 2 is this hook; 1 was
# a per-head hook ([H, D, D] down/up, [H, D] mean, bits) without sinks.
FORMAT_VERSION = 2


class KVHook(nn.Module):
    def __init__(self, heads: int, dim: int):
        super().__init__()
        e = heads * dim
        self.heads, self.dim = heads, dim
        self.register_buffer("down", torch.eye(e))
        self.register_buffer("up", torch.eye(e))
        self.register_buffer("mean", torch.zeros(e))
        self.register_buffer("bits", torch.tensor(16.0))
        self.register_buffer("qscale", torch.ones(e))
        self.register_buffer("qhead", torch.tensor(1.0))
        self.register_buffer("sink", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, T, D] -> the same shape and dtype."""
        xf = x.float().transpose(1, 2).flatten(2)  # [B, T, E]
        z = torch.matmul(xf - self.mean, self.down)
        zn = z / self.qscale
        levels = torch.pow(2.0, self.bits - 1) - 1
        per_head = zn.abs().unflatten(-1, (self.heads, self.dim)).amax(-1).repeat_interleave(self.dim, dim=-1)
        whole = zn.abs().amax(-1, keepdim=True)
        step = torch.where(self.qhead > 0, per_head, whole).clamp_min(1e-30) / levels
        zq = torch.round(zn / step) * step * self.qscale
        z = torch.where(self.bits >= 16, z, zq)
        y = torch.matmul(z, self.up) + self.mean
        position = torch.ones_like(xf[0, :, 0]).cumsum(0) - 1  # 0 .. T-1, with a traced T
        y = torch.where((position < self.sink)[None, :, None], xf, y)
        return y.unflatten(-1, (self.heads, self.dim)).transpose(1, 2).to(x.dtype)


def project_eager(x, down, up, mean, bits=16, qscale=None, qhead=True, sink=0):
    """The hook's computation in plain eager torch, for tests: x [B, H, T, D];
    down [E, r] and up [r, E] (the latents' columns and rows), mean [E]."""
    b, h, t, d = x.shape
    xf = x.float().transpose(1, 2).reshape(b, t, h * d)
    z = (xf - mean) @ down
    if bits < 16:
        qs = torch.ones(z.shape[-1]) if qscale is None else qscale
        zn = z / qs
        levels = 2 ** (bits - 1) - 1
        if qhead:  # latents of a per-head basis: head i owns columns i*r/h .. (i+1)*r/h
            g = zn.abs().reshape(b, t, h, -1).amax(-1, keepdim=True).expand(b, t, h, zn.shape[-1] // h).reshape(zn.shape)
        else:
            g = zn.abs().amax(-1, keepdim=True)
        step = g.clamp_min(1e-30) / levels
        z = torch.round(zn / step) * step * qs
    y = z @ up + mean
    y[:, :sink] = xf[:, :sink]
    return y.reshape(b, t, h, d).transpose(1, 2).to(x.dtype)
