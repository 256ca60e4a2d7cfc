"""The compression hook of the kvtorch model contract (docs/model-contract.md).

A KVHook sits where a model's keys or values enter attention. It sees one
layer's K (or V) as x [B, H, T, D], joins the heads of each token into one
vector of E = H * D and computes

    z  = (x - mean) @ down                  latents (columns of down past the rank are zero)
    z' = quant(z / qscale) * qscale         fake quantization, latent j to bits[j] (16: none)
    y  = z' @ up + mean                     back to E
    y[t] = x[t] for the first `sink` positions

with quant the quantization rule of kvtorch.preset (stated there once:
per-token absmax, 2^(bits-1) - 1 levels, rounded half to even) over each
group of latents (group[j] names latent j's group: a head's D coordinates
for a basis per head, all E latents for a joint one, or the latents of one
bit width of a joint side split by width), read back with the float32 step.
A basis per KV
head is a block-diagonal down/up; one basis over all heads ("joint") fills
them. kvtorch overwrites the buffers at run time; with the defaults
(identity, zero mean, 16 bits, groups per head, no sinks) the output equals the input
exactly, so the model's logits are unchanged.

The arithmetic is float32 whatever the model's dtype.
"""
import torch
from torch import nn

# The hook's version, kvtorch.json's format_version: 3 is this hook; 2 had
# one scalar bits and a scalar qhead (groups per head or over all E); 1 was
# a per-head hook ([H, D, D] down/up, [H, D] mean, bits) without sinks.
FORMAT_VERSION = 3


class KVHook(nn.Module):
    def __init__(self, heads: int, dim: int):
        super().__init__()
        e = heads * dim
        self.heads, self.dim = heads, dim
        self.register_buffer("down", torch.eye(e))
        self.register_buffer("up", torch.eye(e))
        self.register_buffer("mean", torch.zeros(e))
        self.register_buffer("bits", torch.full((e,), 16.0))
        self.register_buffer("qscale", torch.ones(e))
        self.register_buffer("group", torch.div(torch.arange(e), dim, rounding_mode="floor").float())  # per head
        self.register_buffer("sink", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, T, D] -> the same shape and dtype."""
        xf = x.float().transpose(1, 2).flatten(2)  # [B, T, E]
        z = torch.matmul(xf - self.mean, self.down)
        zn = z / self.qscale
        levels = torch.pow(2.0, self.bits - 1) - 1
        a = zn.abs()
        index = self.group.long().expand(a.shape)  # the absmax of each latent's group, per token
        amax = torch.zeros_like(a).scatter_reduce(-1, index, a, "amax").gather(-1, index)
        step = amax.clamp_min(1e-30) / levels
        zq = torch.round(zn / step) * step * self.qscale
        z = torch.where(self.bits >= 16, z, zq)
        y = torch.matmul(z, self.up) + self.mean
        position = torch.ones_like(xf[0, :, 0]).cumsum(0) - 1  # 0 .. T-1, with a traced T
        y = torch.where((position < self.sink)[None, :, None], xf, y)
        return y.unflatten(-1, (self.heads, self.dim)).transpose(1, 2).to(x.dtype)


def project_eager(x, down, up, mean, bits=16, qscale=None, qhead=True, sink=0, widths=None):
    """The hook's computation in plain eager torch, for tests: x [B, H, T, D];
    down [E, r] and up [r, E] (the latents' columns and rows), mean [E];
    widths [(count, bits), ...] splits joint latents by bit width."""
    b, h, t, d = x.shape
    xf = x.float().transpose(1, 2).reshape(b, t, h * d)
    z = (xf - mean) @ down
    qs = torch.ones(z.shape[-1]) if qscale is None else qscale
    if widths is not None:
        parts, at = [], 0
        for n, nb in widths:
            zn = z[..., at:at + n] / qs[at:at + n]
            if nb < 16:
                step = zn.abs().amax(-1, keepdim=True).clamp_min(1e-30) / (2 ** (nb - 1) - 1)
                zn = torch.round(zn / step) * step
            parts.append(zn * qs[at:at + n])
            at += n
        z = torch.cat(parts, -1)
    elif bits < 16:
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
