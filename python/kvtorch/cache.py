"""KVTorchCache: a transformers cache that stores a preset's latents, and an
attention that works on them.

    from kvtorch import KVTorchCache, Preset
    cache = KVTorchCache(Preset("preset.json"), model)      # model: a transformers causal LM
    out = model.generate(ids, past_key_values=cache, max_new_tokens=100)
    cache.nbytes()                                           # bytes of the tokens stored

Creating the cache registers the attention "kvtorch" and selects it for the
model (model.set_attn_implementation("kvtorch")): for this cache it computes
attention on the stored latents; for any other cache it is the model's own
attention (sdpa, or eager where the model needs it), so the model stays
usable with DynamicCache. Per layer and per decoding step:

- values are never expanded: the attention weights are applied to the
  latents, then one up-projection per query head: out = (A · Z_v) · U_vᵀ +
  (Σ A) · μ_v;
- keys of post-RoPE presets are scored in latent space: (U_kᵀ q) · z + q · μ_k;
  keys of pre-RoPE presets are rebuilt BLOCK tokens at a time (the latents
  converted to float32, then one product with U_kᵀ: a matrix product, 3x
  faster on SmolLM2 at 4k than the kernels, whose rows are queries) and
  rotated to their positions, without keeping a full-size copy (slower:
  RoPE does not commute with the projection);
- latents are read as stored (float16, int8, packed 4-bit), their
  per-token scales applied to the scores and weights: on the CPU by the C
  kernels of kvtorch.latent, which convert 16 tokens of a coordinate at a
  time in registers, so a step reads each latent byte once (PyTorch has no
  CPU product of int8 data with float queries); on other devices (or where
  the package was installed without a C compiler: kvtorch.latent.available
  is False) with torch, BLOCK tokens converted at a time;
- each row's first sink_tokens tokens (positions below the preset's
  sink_tokens, after any left padding) are kept exact, as kvtorch eval
  measured them;
- with a recent window (the preset's recent_tokens, R), each layer keeps a
  float16 ring of its last R tokens (K after RoPE): every query takes the
  exact K/V of the tokens fewer than R positions back and the latents of
  older ones, as the exported model's recent method (kvtorch eval) does.

A prompt (PROMPT or more new tokens at once) is attended by the model's own
attention over the layer's K/V expanded from what was just stored: the same
values, and cheaper than scoring that many queries on latents; the full-size
K/V of one layer live for that call only.

The whole cache API works: crop (assisted and speculative decoding),
reorder_cache (beam search), batch_select_indices, batch_repeat_interleave,
and left-padded batches with an attention mask. Positions must run on from
each row's first real token (as generate makes them).

Storage (kvtorch.latent.Store): the latents of every token (float16, or int8
/ packed 4-bit with a float16 scale per token and group; a side split by bit
width keeps a Store per width, attended as the sum of its parts), by tiles of 32
tokens, float16 copies of each row's sink tokens and the ring: nbytes() =
(sink_tokens + min(R, T)) · bytes_per_token_before + T ·
bytes_per_token_compressed bytes after T tokens per row (the preset counts
the latents of the sinks and of the window's tokens out; the cache keeps
them, so that every position has its latents). The
buffers grow as tokens come, leaving room for max(16, T/64) more tokens
rounded up to a tile, so that a decoding step copies nothing.
"""
import threading
from typing import Any, Iterator

import torch

from kvtorch import attention, latent
from kvtorch.files import KVTorchError
from kvtorch.preset import Latents, Preset, SplitLatents, dequantize, stored

try:
    from transformers import AttentionInterface
    from transformers.cache_utils import Cache, CacheLayerMixin
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
except ImportError as e:  # transformers is optional for the rest of the package
    raise ImportError("kvtorch.KVTorchCache needs transformers: pip install transformers") from e

PROMPT = 32  # from this many new tokens at once (a prompt), attention runs on K/V expanded for the call
BLOCK = 4096  # stored tokens rebuilt or dequantized at a time
QBLOCK = 1024  # queries scored at a time
SCORES = 1 << 25  # and at most this many scores (float32) at a time

_pending = threading.local()  # the layer whose update() the next attention call consumes


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class _TorchSide:
    """One side (K or V) of one layer, prepared for attention on its latents,
    with torch: the latents converted BLOCK tokens at a time.

    Every kind of storage is seen the same way: per KV head h a matrix U_h
    [D, w] and a mean μ_h such that the head's vector is U_h z + μ_h, with z
    the stored latents (w = the rank; D with U = I for elements stored as
    they are, or quantized without a basis). A joint basis stores one
    latent vector per token for all heads (G = 1 group); the others one per
    head (G = H). The joint basis' normalisation of quantized latents is
    folded into U. 4-bit latents are packed two per byte: even coordinates
    in the low nibble, odd ones in the high one, so U is split the same way.

    What a layer asks of a side (the same of _KernelSide): write new tokens
    into a latent.Store, the scores of queries against the keys of its
    first T tokens, the vectors of a range of tokens, and the weighted sum
    of the values of its first T tokens.
    """

    def __init__(self, preset: Preset, layer: int, kind: str, part: tuple[int, int, int] | None = None):
        """part (first, count, bits): only those latents of a side split by
        bit width, without the mean (_SplitSide adds it once)."""
        self.preset, self.layer, self.kind, self.part = preset, layer, kind, part
        s = preset.side(layer, kind)
        h, d = preset.heads, s.dim
        self.bits = s.bits if s.compressed else 16
        if s.compressed and s.basis != "none":
            r = s.rank
            u = s.U.float()
            if s.basis == "joint":
                u = u.view(h, d, r)
                if self.bits < 16:
                    u = u * s.qscale.float()
            self.mean = s.mean.float().view(h, d)
            self.groups = 1 if s.basis == "joint" else h
            if part is not None:
                first, count, self.bits = part
                u, self.mean = u[..., first:first + count], None
        else:
            u = torch.eye(d).expand(h, d, d)
            self.mean = None
            self.groups = h
        if self.bits == 4 and u.shape[-1] % 2:  # the pad nibble holds 0 (8 - 8)
            u = torch.cat([u, torch.zeros(h, d, 1)], dim=-1)
        self.u = u.contiguous()  # [H, D, w]
        self.ut = u.transpose(-1, -2).contiguous()  # [H, w, D]
        if self.bits == 4:
            self.u_lo, self.u_hi = self.u[..., 0::2].contiguous(), self.u[..., 1::2].contiguous()
            self.ut_lo, self.ut_hi = self.ut[:, 0::2].contiguous(), self.ut[:, 1::2].contiguous()

    def to(self, device: torch.device) -> "_TorchSide":
        for name, v in list(vars(self).items()):
            if torch.is_tensor(v):
                setattr(self, name, v.to(device))
        return self

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, n, w] -> [B, G, H/G * n, w]: a joint basis' heads side by
        side (a view)."""
        b, h, n, w = x.shape
        return x.view(b, self.groups, h // self.groups * n, w)

    # -- the interface

    def write(self, store: latent.Store | None, x: torch.Tensor, start: int) -> latent.Store:
        """store with the heads' vectors x [B, H, t, D] (K before RoPE where
        the cache rebuilds keys) compressed into tokens start .. start+t-1."""
        return latent.write(store, self.preset.compress(self.layer, self.kind, x), start)

    def write_latents(self, store: latent.Store | None, z: torch.Tensor, start: int) -> latent.Store:
        """store with float latents z [B, G, t, w] (a part's, normalised)
        stored at self.bits into tokens start .. start+t-1."""
        return latent.write(store, stored(z, self.bits), start)

    def scores(self, qf: torch.Tensor, store: latent.Store, tokens: int, out: torch.Tensor) -> None:
        """Writes qf [B, H, n, D] · the keys of the first T = tokens tokens of
        store into out [B, H, n, T]."""
        blocks = [self._block_scores(qf, store.read(start, stop)) for start, stop in _blocks(tokens)]
        out.copy_(torch.cat(blocks, dim=-1))

    def expand(self, store: latent.Store, start: int, stop: int) -> torch.Tensor:
        """The heads' vectors [B, H, stop - start, D] of tokens start .. stop-1
        (a part's share of them, without the mean)."""
        if self.part is None:
            return self.preset.expand(self.layer, self.kind, store.read(start, stop))
        lat = dequantize(store.read(start, stop))  # [B, 1, t, count]
        return torch.matmul(lat, self.ut[:, :lat.shape[-1]])

    def values(self, a: torch.Tensor, store: latent.Store, tokens: int) -> torch.Tensor:
        """The heads' values [B, H, n, D] for weights a [B, H, n, T] over the
        first T = tokens tokens of store."""
        acc = None
        for start, stop in _blocks(tokens):
            acc = _add(acc, self._weigh(a[..., start:stop], store.read(start, stop)))
        return self._values_of(acc, a.sum(-1, keepdim=True), a.shape[:3])

    # -- one block of latents

    def _block_scores(self, qf: torch.Tensor, z: Latents) -> torch.Tensor:
        """qf [B, H, n, D] · the keys of latents z: [B, H, n, t]."""
        b, h, n, _ = qf.shape
        if self.bits == 4:
            lo, hi = (z.data & 0x0F).float(), (z.data >> 4).float()
            p_lo, p_hi = torch.matmul(qf, self.u_lo), torch.matmul(qf, self.u_hi)
            out = (torch.matmul(self._grouped(p_lo), lo.transpose(-1, -2)) +
                   torch.matmul(self._grouped(p_hi), hi.transpose(-1, -2)) -
                   8 * self._grouped(p_lo.sum(-1, keepdim=True) + p_hi.sum(-1, keepdim=True)))
        else:
            out = torch.matmul(self._grouped(torch.matmul(qf, self.u)), z.data.float().transpose(-1, -2))
        if z.scale is not None:
            out = out * z.scale.float().transpose(-1, -2)
        out = out.view(b, h, n, -1)
        if self.mean is not None:
            out = out + torch.matmul(qf, self.mean[:, :, None])
        return out

    def _weigh(self, a: torch.Tensor, z: Latents) -> Any:
        """Σ_t a_t z_t over latents z for weights a [B, H, n, t]: [B, G, H/G * n, w']
        (per nibble for 4 bits: a pair)."""
        a = self._grouped(a)
        if z.scale is not None:
            a = a * z.scale.float().transpose(-1, -2)
        if self.bits == 4:
            return (torch.matmul(a, (z.data & 0x0F).float()), torch.matmul(a, (z.data >> 4).float()),
                    a.sum(-1, keepdim=True))
        return torch.matmul(a, z.data.float())

    def _values_of(self, acc: Any, mass: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The heads' values from the summed latents: [B, H, n, D]."""
        b, h, n = shape
        if self.bits == 4:
            lo, hi, total = acc
            lo, hi = (lo - 8 * total).view(b, h, n, -1), (hi - 8 * total).view(b, h, n, -1)
            out = torch.matmul(lo, self.ut_lo) + torch.matmul(hi, self.ut_hi)
        else:
            out = torch.matmul(acc.view(b, h, n, -1), self.ut)
        if self.mean is not None:
            out = out + mass * self.mean[:, None, :]
        return out


class _KernelSide(_TorchSide):
    """A side on the CPU with the C kernels of kvtorch.latent: latents
    quantized as they are written, and read as stored (uk [H, D, n] is U laid
    out the way the kernels read a stored row)."""

    def __init__(self, preset: Preset, layer: int, kind: str, part: tuple[int, int, int] | None = None):
        super().__init__(preset, layer, kind, part)
        self.uk = latent.layout(self.u, self.bits)  # [H, D, n]
        self.ukt = self.uk.transpose(-1, -2).contiguous()  # [H, n, D]

    def write(self, store: latent.Store | None, x: torch.Tensor, start: int) -> latent.Store:
        return latent.store(store, *self.preset.project(self.layer, self.kind, x), start)

    def write_latents(self, store: latent.Store | None, z: torch.Tensor, start: int) -> latent.Store:
        return latent.store(store, z, self.bits, z.shape[-1], start)

    def scores(self, qf: torch.Tensor, store: latent.Store, tokens: int, out: torch.Tensor) -> None:
        """out's rows must be contiguous."""
        latent.scores(store, tokens, self._grouped(torch.matmul(qf, self.uk)), self._grouped(out))
        if self.mean is not None:
            out += torch.matmul(qf, self.mean[:, :, None])

    def values(self, a: torch.Tensor, store: latent.Store, tokens: int) -> torch.Tensor:
        """a's tokens must be contiguous."""
        b, h, n, _ = a.shape
        ag = self._grouped(a)
        acc = torch.empty(*ag.shape[:3], self.uk.shape[-1])
        latent.weigh(store, tokens, ag, acc)
        out = torch.matmul(acc.view(b, h, n, -1), self.ukt)
        if self.mean is not None:
            out = out + a.sum(-1, keepdim=True) * self.mean[:, None, :]
        return out


class SplitStore:
    """The latents of a side split by bit width: a latent.Store per width,
    leading components first (the interface of latent.Store KVTorchLayer
    uses)."""

    def __init__(self, parts: list):
        self.parts = parts

    def read(self, start: int, stop: int) -> SplitLatents:
        return SplitLatents([p.read(start, stop) for p in self.parts])

    def nbytes(self, tokens: int) -> int:
        return sum(p.nbytes(tokens) for p in self.parts)

    def select(self, fn: Any) -> "SplitStore":
        return SplitStore([p.select(fn) for p in self.parts])


class _SplitSide:
    """A joint side whose latents are split by bit width: a side (_TorchSide
    or _KernelSide) per width over its latents, each with its own per-token
    scale, their scores and values summed, the mean added once."""

    def __init__(self, preset: Preset, layer: int, kind: str, side: type):
        self.preset, self.layer, self.kind = preset, layer, kind
        s = preset.side(layer, kind)
        self.parts, at = [], 0
        for n, b in s.widths:
            self.parts.append(side(preset, layer, kind, part=(at, n, b)))
            at += n
        self.mean = s.mean.float().view(preset.heads, s.dim)

    def to(self, device: torch.device) -> "_SplitSide":
        self.parts = [p.to(device) for p in self.parts]
        self.mean = self.mean.to(device)
        return self

    def write(self, store: SplitStore | None, x: torch.Tensor, start: int) -> SplitStore:
        z, _, _ = self.preset.project(self.layer, self.kind, x)
        out = []
        for i, p in enumerate(self.parts):
            first, count, _ = p.part
            out.append(p.write_latents(None if store is None else store.parts[i], z[..., first:first + count], start))
        return SplitStore(out)

    def scores(self, qf: torch.Tensor, store: SplitStore, tokens: int, out: torch.Tensor) -> None:
        self.parts[0].scores(qf, store.parts[0], tokens, out)
        more = torch.empty(out.shape, dtype=out.dtype, device=out.device)
        for p, z in zip(self.parts[1:], store.parts[1:]):
            p.scores(qf, z, tokens, more)
            out += more
        out += torch.matmul(qf, self.mean[:, :, None])

    def expand(self, store: SplitStore, start: int, stop: int) -> torch.Tensor:
        out = sum(p.expand(z, start, stop) for p, z in zip(self.parts, store.parts))
        return out + self.mean[:, None, :]

    def values(self, a: torch.Tensor, store: SplitStore, tokens: int) -> torch.Tensor:
        out = sum(p.values(a, z, tokens) for p, z in zip(self.parts, store.parts))
        return out + a.sum(-1, keepdim=True) * self.mean[:, None, :]


def _side(preset: Preset, layer: int, kind: str, device: torch.device) -> Any:
    """The side of (layer, kind) for attention on its latents on device."""
    side = _KernelSide if latent.available and device.type == "cpu" else _TorchSide
    if preset.side(layer, kind).widths:
        return _SplitSide(preset, layer, kind, side).to(device)
    return side(preset, layer, kind).to(device)


def _blocks(tokens: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of BLOCK tokens at a time over the first tokens tokens."""
    for start in range(0, tokens, BLOCK):
        yield start, min(start + BLOCK, tokens)


def _add(acc: Any, x: Any) -> Any:
    if acc is None:
        return x
    if isinstance(x, tuple):
        return tuple(p + q for p, q in zip(acc, x))
    return acc + x


class KVTorchLayer(CacheLayerMixin):
    """One layer of KVTorchCache."""

    is_sliding = False
    is_croppable = True

    def __init__(self, cache: "KVTorchCache", layer: int):
        super().__init__()
        self.cache, self.preset, self.layer = cache, cache.preset, layer
        self.sides = None  # _TorchSide, _KernelSide or _SplitSide of K and V, on the cache's device
        self.zk = self.zv = None  # latent.Store (or SplitStore) of every token's latents
        self.length = 0  # T
        self.first = None  # int64 [B]: where each row's position 0 is stored (after its left padding)
        self.sink_k = self.sink_v = None  # float16 [B, H, s, D]: each row's tokens at positions 0 .. s-1
        self.sink_valid = None  # bool [B, s]: which are stored
        self.sink_at = None  # int64 [B, s]: where (index in T)
        self.recent = cache.preset.recent  # R: every query takes the exact K/V of its last R positions
        self.ring_k = self.ring_v = None  # float16 [B, H, w <= R, D]: the last tokens stored, K after RoPE
        self.ring_at = 0  # the index in T of the ring's first token
        self.window = None  # during one forward: (K, V, start) of the ring before it and the new tokens
        self.pending = None
        self._rebuilt = None  # keys rebuilt during one long attend call

    # -- CacheLayerMixin

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = self.values = torch.empty(0, dtype=self.dtype, device=self.device)  # placeholders
        self.sides = {k: _side(self.preset, self.layer, k, self.device) for k in ("k", "v")}
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.cache.attention_installed():
            self.pending = (key_states, value_states)
            _pending.layer = self
            return key_states, value_states  # the kvtorch attention reads the layer itself
        # Another attention runs: store, then expand everything for it.
        b, t = key_states.shape[0], key_states.shape[-2]
        start = self.get_seq_length()
        pos = torch.arange(start, start + t, device=key_states.device)[None].expand(b, t)
        self.append(key_states, value_states, pos)
        self.window = None  # the ring stands in for it in expanded(): exact for one query at a time
        return self.expanded()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.zk = self.zv = self.first = self.sink_k = self.sink_v = self.sink_valid = self.sink_at = None
        self.ring_k = self.ring_v = self.window = None
        self.length = self.ring_at = 0

    def crop(self, tokens_to_remove: int) -> None:
        n = self.get_seq_length()
        keep = tokens_to_remove if tokens_to_remove > 0 else n + tokens_to_remove  # legacy: an absolute length
        keep = max(min(keep, n), 0)
        if keep == n:
            return
        self.length = keep  # the buffers stay, for the tokens to come
        if self.sink_at is not None:  # sinks stored at or past the cut are gone
            self.sink_valid = self.sink_valid & (self.sink_at < keep)
        if self.ring_k is not None:  # so are the ring's; tokens before it are read from their latents
            n = max(keep - self.ring_at, 0)
            self.ring_k, self.ring_v = self.ring_k[..., :n, :], self.ring_v[..., :n, :]

    def _select(self, fn: Any) -> None:
        self.zk, self.zv = self.zk.select(fn), self.zv.select(fn)
        for name in ("first", "sink_k", "sink_v", "sink_valid", "sink_at", "ring_k", "ring_v"):
            if getattr(self, name) is not None:
                setattr(self, name, fn(getattr(self, name)))

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        if self.length:
            self._select(lambda x: x.index_select(0, beam_idx.to(x.device)))

    def batch_select_indices(self, indices: Any) -> None:
        if self.length:
            self._select(lambda x: x[indices.to(x.device) if torch.is_tensor(indices) else indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self._select(lambda x: x.repeat_interleave(repeats, dim=0))

    # -- storage

    def stored(self, kind: str, start: int = 0, stop: int | None = None) -> Latents:
        """Latents [B, G, stop - start, w] of side kind ("k", "v"), tokens
        start .. stop-1 (default: all), a copy."""
        z = self.zk if kind == "k" else self.zv
        return z.read(start, self.length if stop is None else stop)

    def positions(self, start: int, stop: int) -> torch.Tensor:
        """int64 [B, stop - start]: the positions of stored tokens start ..
        stop - 1 (left padding: negative). Positions run on from each
        row's first real token, as generate makes them."""
        return torch.arange(start, stop, device=self.first.device)[None] - self.first[:, None]

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor, pos: torch.Tensor) -> None:
        """Stores new tokens: key_states as the attention sees them (after
        RoPE), positions pos [B, t] (padding: negative)."""
        p = self.preset
        t = pos.shape[-1]
        if self.first is None or not self.length:
            self.first = (pos < 0).sum(-1)  # left padding
        else:
            # A row with nothing but padding stored (an empty prompt in a
            # batch) starts where its first real token comes, at whatever
            # position generate gives it.
            real = pos >= 0
            empty = (self.first >= self.length) & real.any(-1)
            if bool(empty.any()):
                at = real.float().argmax(-1)
                start = self.length + at - pos.gather(-1, at[:, None])[:, 0]
                self.first = torch.where(empty, start, self.first)
        if self.length and self.layer == 0:  # once per forward: positions must run on (what is stored assumes it)
            want = self.positions(self.length, self.length + t)
            if not torch.equal(torch.where(pos < 0, want, pos), want):
                raise ValueError("KVTorchCache: position ids must run on from the tokens stored (as generate "
                                 "makes them), with padding on the left only")
        k = key_states.float()
        if self._rebuilds():
            cos, sin = self.cache.rope(k, pos.clamp_min(0), self.layer)
            k = k * cos - _rotate_half(k) * sin  # back to before RoPE
        start = self.length
        self.zk = self.sides["k"].write(self.zk, k, start)
        self.zv = self.sides["v"].write(self.zv, value_states, start)
        self.length += t
        if self.recent:
            self._keep_recent(key_states, value_states, start)
        s = p.sinks
        if not s:
            return
        b, h = key_states.shape[:2]
        if self.sink_k is None:
            dev = key_states.device
            self.sink_k = torch.zeros(b, h, s, key_states.shape[-1], dtype=torch.float16, device=dev)
            self.sink_v = torch.zeros(b, h, s, value_states.shape[-1], dtype=torch.float16, device=dev)
            self.sink_valid = torch.zeros(b, s, dtype=torch.bool, device=dev)
            self.sink_at = torch.zeros(b, s, dtype=torch.long, device=dev)
        is_sink = (pos >= 0) & (pos < s)
        if bool(is_sink.any()):
            rows, cols = is_sink.nonzero(as_tuple=True)
            slots = pos[rows, cols]
            self.sink_k[rows, :, slots] = key_states[rows, :, cols].to(torch.float16)
            self.sink_v[rows, :, slots] = value_states[rows, :, cols].to(torch.float16)
            self.sink_at[rows, slots] = start + cols
            self.sink_valid[rows, slots] = True

    def _keep_recent(self, key_states: torch.Tensor, value_states: torch.Tensor, start: int) -> None:
        """The window of this forward (the ring and the new tokens, exact)
        and the ring after it: the last R tokens."""
        k, v = key_states.to(torch.float16), value_states.to(torch.float16)
        if self.ring_k is None or not self.ring_k.shape[-2]:
            at = start
        else:
            k, v, at = torch.cat([self.ring_k, k], dim=-2), torch.cat([self.ring_v, v], dim=-2), self.ring_at
        self.window = (k, v, at)
        n = min(self.recent, k.shape[-2])
        self.ring_k, self.ring_v = k[..., -n:, :].clone(), v[..., -n:, :].clone()
        self.ring_at = self.length - n

    def recent_masks(self, mask: torch.Tensor, q: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For the last q of the T stored tokens as queries and a boolean mask
        [B, 1, q, T] (the model's): the mask of the stored tokens' latents
        (those R or more positions back, or not in the window) and of the
        window's exact tokens (fewer than R back)."""
        t = self.length
        at = self.window[2]
        j = torch.arange(t, device=mask.device)
        dist = torch.arange(t - q, t, device=mask.device)[:, None] - j[None]
        far = (dist >= self.recent) | (j < at)[None]
        return mask & far, (mask & ~far)[..., at:]

    def expanded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every stored token's K (after RoPE) and V, for other attentions."""
        p = self.preset
        k = p.expand(self.layer, "k", self.stored("k"))
        if self._rebuilds():
            cos, sin = self.cache.rope(k, self.positions(0, self.length).clamp_min(0), self.layer)
            k = k * cos + _rotate_half(k) * sin
        v = p.expand(self.layer, "v", self.stored("v"))
        if self.sink_k is not None:
            rows, slots = self.sink_valid.nonzero(as_tuple=True)
            at = self.sink_at[rows, slots]
            k[rows, :, at] = self.sink_k[rows, :, slots].to(k.dtype)
            v[rows, :, at] = self.sink_v[rows, :, slots].to(v.dtype)
        if self.ring_k is not None:  # the last R tokens, exact: no query reads them R or more back
            n = self.ring_k.shape[-2]
            k[..., self.ring_at:self.ring_at + n, :] = self.ring_k.to(k.dtype)
            v[..., self.ring_at:self.ring_at + n, :] = self.ring_v.to(v.dtype)
        return k.to(self.dtype), v.to(self.dtype)

    def nbytes(self) -> int:
        """Bytes of the tokens stored (the buffers have room for up to
        max(16, T/64) more)."""
        n = 0
        for z in (self.zk, self.zv):
            if z is not None:
                n += z.nbytes(self.length)
        if self.sink_k is not None:
            n += self.sink_k.numel() * 2 + self.sink_v.numel() * 2
        if self.ring_k is not None:
            n += self.ring_k.numel() * 2 + self.ring_v.numel() * 2
        return n

    # -- attention on the latents

    def attend(self, query: torch.Tensor, mask: torch.Tensor | None, scaling: float,
               softcap: float | None = None) -> torch.Tensor:
        """query [B, Hq, q, D] (after RoPE) against every stored token:
        [B, q, Hq, D]. mask: bool [B, 1, q, T] (True: attend), or None for
        causal attention over the last q tokens. Long prompts go QBLOCK
        queries at a time, fewer where [B, Hq, QBLOCK, T] scores would
        pass SCORES; keys rebuilt for one block are reused by the next."""
        q, t = query.shape[-2], self.get_seq_length()
        if mask is None and q == 1 and not self.recent:
            return self._attend(query, None, scaling, softcap)  # a decoding step: every token attended
        mask = attention.boolean_mask(mask, q, t, query.device)
        step = max(1, min(QBLOCK, SCORES // (query.shape[0] * query.shape[1] * t)))
        window = None
        if self.recent:
            mask, wmask = self.recent_masks(mask.expand(query.shape[0], 1, q, t), q)
            window = self.window[:2]
        if q <= step:
            return self._attend(query, mask, scaling, softcap, window, None if window is None else wmask)
        self._rebuilt = {}
        try:
            return torch.cat([self._attend(query[:, :, i:i + step], mask[..., i:i + step, :], scaling, softcap,
                                           window, None if window is None else wmask[..., i:i + step, :])
                              for i in range(0, q, step)], dim=1)
        finally:
            self._rebuilt = None

    def _attend(self, query: torch.Tensor, mask: torch.Tensor | None, scaling: float,
                softcap: float | None, window: tuple[torch.Tensor, torch.Tensor] | None = None,
                wmask: torch.Tensor | None = None) -> torch.Tensor:
        """mask: of the stored tokens' latents; window: the exact K, V of
        the recent window's tokens and wmask their mask (with a mask)."""
        b, hq, q, d = query.shape
        t = self.get_seq_length()
        hkv = self.preset.heads
        g = hq // hkv
        qf = query.float().reshape(b, hkv, g * q, d) * scaling  # the query heads of a KV head side by side
        sinks = 0 if self.sink_k is None else self.sink_at.shape[-1]
        w = 0 if window is None else window[0].shape[-2]
        n = sinks + t + w
        scores = torch.empty(b, hkv, g * q, n, device=qf.device)  # the sinks', every stored token's, the window's
        if self._rebuilds():
            scores[..., sinks:sinks + t] = self._rebuilt_key_scores(qf)
        else:
            self.sides["k"].scores(qf, self.zk, t, scores[..., sinks:sinks + t])
        if sinks:
            torch.matmul(qf, self.sink_k.float().transpose(-1, -2), out=scores[..., :sinks])
        if w:
            torch.matmul(qf, window[0].float().transpose(-1, -2), out=scores[..., sinks + t:])
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if mask is None:  # one query per row, every token attended
            if sinks:
                # The sink tokens' exact K/V take their slots' places: a
                # sink stored masks its latents out, one not stored (cut
                # by a crop) its own slot.
                cut = torch.where(self.sink_valid, sinks + self.sink_at,
                                  torch.arange(sinks, device=qf.device)[None])
                scores.view(b, -1, n).scatter_(-1, cut[:, None, :].expand(b, hkv * g * q, sinks), float("-inf"))
            a = torch.softmax(scores, dim=-1)
        else:
            mask = mask.expand(b, 1, q, t)
            if sinks:
                # A sink's exact K/V take its latents' place (the latents'
                # mask gathered: not where the window has it).
                at = self.sink_at.clamp(max=t - 1)[:, None, None, :].expand(b, 1, q, sinks)  # slots past a crop: not valid
                sink_mask = mask.gather(-1, at) & self.sink_valid[:, None, None, :]
                pos = self.positions(0, t)
                is_sink = (pos >= 0) & (pos < sinks)
                mask = torch.cat([sink_mask, mask & ~is_sink[:, None, None, :]], dim=-1)
            if w:
                mask = torch.cat([mask, wmask.expand(b, 1, q, w)], dim=-1)
            scores = scores.view(b, hkv, g, q, n).masked_fill(~mask.view(b, 1, 1, q, n), float("-inf"))
            a = torch.softmax(scores, dim=-1).nan_to_num(0.0).view(b, hkv, g * q, n)  # a fully masked row attends to nothing
        out = self._values(a[..., sinks:sinks + t])  # [B, Hkv, G*q, D]
        if sinks:
            out = out + torch.matmul(a[..., :sinks], self.sink_v.float())
        if w:
            out = out + torch.matmul(a[..., sinks + t:], window[1].float())
        return out.view(b, hq, q, -1).transpose(1, 2).to(query.dtype)

    def _rebuilds(self) -> bool:
        """Whether keys are rebuilt to be scored (pre-RoPE presets)."""
        return self.preset.kv_source == "pre_rope" and self.cache.rotary is not None

    def _rebuilt_key_scores(self, qf: torch.Tensor) -> torch.Tensor:
        """Scores of pre-RoPE keys: rebuilt a block at a time and rotated to
        their positions."""
        out = []
        for start, stop in _blocks(self.length):
            k = None if self._rebuilt is None else self._rebuilt.get(start)
            if k is None:
                k = self.sides["k"].expand(self.zk, start, stop)  # [B, Hkv, t, D]
                cos, sin = self.cache.rope(k, self.positions(start, stop).clamp_min(0), self.layer)
                k = k * cos + _rotate_half(k) * sin
                if self._rebuilt is not None:
                    self._rebuilt[start] = k
            out.append(torch.matmul(qf, k.transpose(-1, -2)))
        return torch.cat(out, dim=-1)

    def _values(self, a: torch.Tensor) -> torch.Tensor:
        return self.sides["v"].values(a, self.zv, self.length)


def kvtorch_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """The attention "kvtorch": on the latents for a KVTorchCache layer,
    else the model's own attention."""
    layer = getattr(_pending, "layer", None)
    _pending.layer = None
    if layer is None or layer.layer != module.layer_idx or layer.pending is None:
        return _own_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    k_new, v_new = layer.pending
    layer.pending = None
    b, t = k_new.shape[0], k_new.shape[-2]
    pos = kwargs.get("position_ids")
    if pos is None:
        start = layer.get_seq_length()
        pos = torch.arange(start, start + t, device=k_new.device)[None].expand(b, t)
    pos = pos.expand(b, t).clone()
    if attention_mask is not None and attention_mask.dtype == torch.bool and attention_mask.shape[-1] >= t:
        # Padding (masked for itself, on the diagonal) gets position -1: never a sink.
        own = attention_mask[:, 0, -t:, -t:].diagonal(dim1=-2, dim2=-1)
        pos = pos.masked_fill(~own, -1)
    layer.append(k_new, v_new, pos)
    try:
        return _latent_attention(layer, module, query, attention_mask, scaling, dropout, **kwargs)
    finally:
        layer.window = None  # the new tokens' exact K/V live for this call only


def _latent_attention(layer: "KVTorchLayer", module: Any, query: torch.Tensor, attention_mask: torch.Tensor | None,
                      scaling: float | None, dropout: float, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    if query.shape[-2] >= PROMPT:
        # A prompt: the model's own attention over this layer's K/V
        # expanded from what was stored (the values the latents stand
        # for), cheaper than scoring many queries on latents; the
        # expansion lives for this call only.
        key, value = layer.expanded()
        if layer.recent:  # the window's exact K/V side by side, each query taking one of every pair
            q, t = query.shape[-2], key.shape[-2]
            mask = attention.boolean_mask(attention_mask, q, t, query.device)
            mask, wmask = layer.recent_masks(mask[..., :t].expand(query.shape[0], 1, q, t), q)
            wk, wv, _ = layer.window
            key, value = torch.cat([key, wk.to(key.dtype)], dim=-2), torch.cat([value, wv.to(value.dtype)], dim=-2)
            attention_mask = torch.cat([mask, wmask], dim=-1)
        return _own_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if scaling is None:
        scaling = module.head_dim ** -0.5
    out = layer.attend(query, attention_mask, scaling, getattr(module, "attn_logit_softcapping", None))
    return out, None

def _own_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, scaling: float | None, dropout: float,
                   **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """The model's own attention on full K/V."""
    inner, eager = attention.inner(module)
    if eager and (attention_mask is None or attention_mask.dtype == torch.bool):
        # Masks are made as sdpa's: boolean, or None for plain causal
        # attention; eager attention adds a float mask to the scores.
        mask = attention.boolean_mask(attention_mask, query.shape[-2], key.shape[-2], query.device)
        attention_mask = attention.additive_mask(mask, query.dtype)
    return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

def _check_model(preset: Preset, cfg: Any) -> None:
    """The preset's shapes and architecture against the model's config."""
    p = preset.preset
    if p["num_layers"] != cfg.num_hidden_layers:
        raise KVTorchError(f"the preset has {p['num_layers']} layers, the model {cfg.num_hidden_layers}")
    arch = preset.calibration_model.get("architecture")
    if arch and getattr(cfg, "model_type", arch) != arch:
        raise KVTorchError(f"the preset was made for a {arch} model, this one is {cfg.model_type}")
    if preset.kv_source == "mla_latent":
        want = (1, getattr(cfg, "kv_lora_rank", None), getattr(cfg, "qk_rope_head_dim", None))
    else:
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        want = (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads, d, d)
    got = (p["n_kv_heads"], p["head_dim_k"], p["head_dim_v"])
    if got != want:
        raise KVTorchError(f"the preset is for {got[0]} KV heads of {got[1]}/{got[2]}, the model has "
                           f"{want[0]} of {want[1]}/{want[2]}")

AttentionInterface.register("kvtorch", kvtorch_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register("kvtorch", sdpa_mask)  # boolean masks, as sdpa's

class KVTorchCache(Cache):
    """A transformers cache that stores kvtorch latents instead of full
    K/V, with attention computed on them (see the module's docs)."""

    def __init__(self, preset: Preset, model: Any, latent_attention: bool = True):
        cfg = model.config
        _check_model(preset, cfg)
        self.preset = preset
        self.config = cfg
        self.rotary = None
        self._rope = {}  # layer type -> cos, sin [P, D] of positions 0 .. P-1 (rope)
        if preset.kv_source == "pre_rope":
            self.rotary = model.model.rotary_emb
        if preset.kv_source == "mla_latent":
            latent_attention = False  # DeepSeek's attention expands the latent itself
        if latent_attention:
            model.set_attn_implementation("kvtorch")
        super().__init__(layers=[KVTorchLayer(self, i) for i in range(cfg.num_hidden_layers)])

    def attention_installed(self) -> bool:
        return getattr(self.config, "_attn_implementation", None) == "kvtorch"

    def rope(self, x: torch.Tensor, pos: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, 1, T, D] in float32 for positions pos [B, T] of
        layer's keys. Models with a rotary base per kind of layer (Gemma
        3: local for sliding-window layers, global for the others) give
        each layer its own. With the default rotary embedding (its values
        depend on the position alone) they come from a table of the
        positions so far, made once for every layer and step."""
        kinds = getattr(self.rotary, "layer_types", None)  # Gemma 3: rotary_emb(x, pos, layer_type)
        kind = self.config.layer_types[layer] if kinds else None
        args = (kind,) if kinds else ()
        rope_type = self.rotary.rope_type[kind] if kinds else getattr(self.rotary, "rope_type", None)
        if rope_type != "default" or not pos.numel():
            cos, sin = self.rotary(x, pos, *args)
            return cos[:, None].to(torch.float32), sin[:, None].to(torch.float32)
        need = int(pos.max()) + 1
        table = self._rope.get(kind)
        if table is None or table[0].shape[0] < need or table[0].device != x.device:
            n = max(need, 2 * (0 if table is None else table[0].shape[0]), 1024)
            cos, sin = self.rotary(x.float(), torch.arange(n, device=x.device)[None], *args)
            table = self._rope[kind] = (cos[0].to(torch.float32), sin[0].to(torch.float32))
        return table[0][pos][:, None], table[1][pos][:, None]

    def nbytes(self) -> int:
        """Bytes of the tokens stored, all layers: latents, scales and the
        sink tokens (the buffers' room to grow not counted)."""
        return sum(layer.nbytes() for layer in self.layers)
