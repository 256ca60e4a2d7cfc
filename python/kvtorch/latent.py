"""How KVTorchCache stores latents (Store), and the attention products on
them (the C kernels of _latent.c, on the CPU).

PyTorch has no CPU product of int8 or packed 4-bit data with float32
queries: converting the latents first writes and reads them again as
float32, every decoding step. These kernels read them as stored. They are
built with the package (setup.py; optional: where no C compiler builds them,
or with KVTORCH_NO_KERNELS set, `available` is False and the cache uses
plain torch).

    from kvtorch import latent
    s = latent.write(None, z, 0)              # Latents [B, G, t, w] stored at tokens 0 .. t-1
    s.read(0, t)                              # back as Latents (a copy)
    if latent.available:
        s = latent.store(s, x, bits, r, t)    # float latents x [B, G, t2, r] quantized into tokens t ..
        n = latent.width(bits, w)             # floats per stored row; queries laid out by latent.layout
        latent.scores(s, t, p, out)           # out [B, G, M, t] = scale_t · p · z_t
        latent.weigh(s, t, a, acc)            # acc [B, G, M, n] = Σ_t a_t · scale_t · z_t

p [B, G, M, n], a [B, G, M, t], out, acc: float32 on the CPU.
"""
import ctypes
import importlib.machinery
import os

import torch

from kvtorch.preset import Latents

TILE = 32  # tokens per tile of a Store (_latent.c's TILE)
_I64x3 = ctypes.c_int64 * 3


class _Latents(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("z", ctypes.c_void_p), ("zs", _I64x3), ("scale", ctypes.c_void_p),
                ("ss", _I64x3), ("batch", ctypes.c_int64), ("groups", ctypes.c_int64), ("tokens", ctypes.c_int64),
                ("w", ctypes.c_int64)]


def _load():
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_latent" + suffix)
        if os.path.exists(path):
            lib = ctypes.CDLL(path)
            p = ctypes.POINTER(_Latents)
            i64, ptr = ctypes.c_int64, ctypes.c_void_p
            lib.kvt_scores.argtypes, lib.kvt_scores.restype = [p, ptr, i64, ptr, i64], ctypes.c_int
            lib.kvt_weigh.argtypes, lib.kvt_weigh.restype = [p, ptr, _I64x3, i64, ptr], ctypes.c_int
            lib.kvt_store.argtypes, lib.kvt_store.restype = [p, ptr, i64, i64, i64], None
            if lib.kvt_tile() != TILE:
                raise ImportError(f"{path} was built with tiles of {lib.kvt_tile()} tokens, not {TILE}: reinstall kvtorch")
            return lib
    return None


_lib = None if os.environ.get("KVTORCH_NO_KERNELS") else _load()
available = _lib is not None


def width(bits, w):
    """The floats a stored row of w elements (bytes when packed) is read as:
    w rounded up to a multiple of 16, twice that for 4 bits."""
    wp = -(-w // 16) * 16
    return 2 * wp if bits == 4 else wp


def layout(u, bits):
    """The columns of u [..., r] (one per latent coordinate) laid out as the
    kernels read a stored row: zero-padded to width(bits, w); for 4 bits the
    even coordinates (low nibbles) first, then the odd ones."""
    r = u.shape[-1]
    if bits == 4:
        w = (r + 1) // 2
        wp = width(4, w) // 2
        out = u.new_zeros(*u.shape[:-1], 2 * wp)
        out[..., :w] = u[..., 0::2]
        out[..., wp:wp + r // 2] = u[..., 1::2]
        return out
    out = u.new_zeros(*u.shape[:-1], width(bits, r))
    out[..., :r] = u
    return out


class Store:
    """One side's latents of one layer, stored for the kernels: tiles of
    TILE tokens, coordinate-major within a tile (data [B, G, tiles, w,
    TILE]: a tile is one contiguous block, a coordinate's tokens are
    contiguous in it), and a float16 scale per token (scale [B, G,
    capacity], or None for float16 latents). Room is made as tokens come:
    a first write takes what it needs, later ones leave room for max(16,
    need/64) more tokens, rounded up to a tile."""

    def __init__(self, data, scale, bits, rank):
        self.data, self.scale, self.bits, self.rank = data, scale, bits, rank

    @property
    def capacity(self):
        return self.data.shape[2] * TILE

    def read(self, start, stop):
        """Tokens start .. stop-1 as Latents [B, G, stop - start, w] (a copy
        of the tiles they lie in)."""
        b, g, _, w, _ = self.data.shape
        first, last = start // TILE, -(-stop // TILE)
        tokens = self.data[:, :, first:last].transpose(-1, -2).reshape(b, g, (last - first) * TILE, w)
        scale = None if self.scale is None else self.scale[..., start:stop, None]
        return Latents(tokens[..., start - first * TILE:stop - first * TILE, :], scale, self.bits, self.rank)

    def nbytes(self, tokens):
        """Bytes of tokens tokens' latents and scales."""
        n = tokens * self.data.shape[0] * self.data.shape[1] * self.data.shape[3] * self.data.element_size()
        if self.scale is not None:
            n += tokens * self.scale.shape[0] * self.scale.shape[1] * self.scale.element_size()
        return n

    def select(self, fn):
        """A Store of the batch rows fn picks (fn: a function of tensors
        indexing their first dimension)."""
        return Store(fn(self.data), None if self.scale is None else fn(self.scale), self.bits, self.rank)


_DTYPES = {16: torch.float16, 8: torch.int8, 4: torch.uint8}


def _room(store, b, g, w, bits, rank, start, need, device):
    """store, or a larger Store holding store's first start tokens, with room
    for tokens up to need."""
    if store is not None and need <= store.capacity and tuple(store.data.shape[:2]) == (b, g):
        return store
    cap = need + (max(16, need // 64) if start else 0)
    tiles = -(-cap // TILE)
    data = torch.empty(b, g, tiles, w, TILE, dtype=_DTYPES[bits], device=device)
    scale = None if bits == 16 else torch.empty(b, g, tiles * TILE, dtype=torch.float16, device=device)
    if start:  # the tiles holding the first start tokens
        keep = -(-start // TILE)
        data[:, :, :keep] = store.data[:, :, :keep]
        if scale is not None:
            scale[..., :start] = store.scale[..., :start]
    return Store(data, scale, bits, rank)


def write(into, z, start):
    """into (a Store, or None) with Latents z [B, G, t, w] written at tokens
    start .. start+t-1: into itself, or a larger Store holding its first
    start tokens."""
    b, g, t, w = z.data.shape
    need = start + t
    store = _room(into, b, g, w, z.bits, z.rank, start, need, z.data.device)
    if z.scale is not None:
        store.scale[..., start:need] = z.scale[..., 0]
    tokens = store.data.transpose(-1, -2)  # [B, G, tiles, TILE, w]: a view
    i = start
    while i < need:
        tile, off = divmod(i, TILE)
        k = min(TILE - off, need - i)
        if off == 0 and need - i >= 2 * TILE:  # whole tiles at once
            k = (need - i) // TILE * TILE
            tokens[:, :, tile:tile + k // TILE] = z.data[..., i - start:i - start + k, :].reshape(b, g, k // TILE, TILE, w)
        else:
            tokens[:, :, tile, off:off + k] = z.data[..., i - start:i - start + k, :]
        i += k
    return store


def store(into, z, bits, rank, start):
    """write(into, Latents, start) for the Latents kvtorch.preset's compress
    makes of float32 latents z [B, G, t, rank] in bits (Preset.project),
    quantized by the C kernel as they are written (CPU only)."""
    b, g, t, r = z.shape
    if z.dtype != torch.float32 or z.device.type != "cpu" or r != rank:
        raise ValueError(f"store: want float32 [B, G, t, {rank}] latents on the CPU, have {z.dtype} {tuple(z.shape)}")
    into = _room(into, b, g, (r + 1) // 2 if bits == 4 else r, bits, rank, start, start + t, z.device)
    z = z.contiguous()
    _lib.kvt_store(ctypes.byref(_describe(into, start + t)), z.data_ptr(), t, r, start)
    return into


def _describe(store, tokens):
    d = store.data
    b, g, _, w, _ = d.shape
    if d.device.type != "cpu" or d.stride()[2:] != (w * TILE, TILE, 1) or tokens > store.capacity:
        raise ValueError("latents: a Store of contiguous tiles on the CPU, with the tokens asked for")
    s = store.scale
    return _Latents(store.bits, d.data_ptr(), _I64x3(*d.stride()[:3]), 0 if s is None else s.data_ptr(),
                    _I64x3(*(s.stride()[:2] + (1,) if s is not None else (0, 0, 0))), b, g, tokens, w)


def _check(x, shape, name):
    if x.dtype != torch.float32 or x.device.type != "cpu" or tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: want float32 {tuple(shape)} on the CPU, have {x.dtype} {tuple(x.shape)} on {x.device}")


def scores(store, tokens, p, out):
    """out [B, G, M, T] (rows may be longer than T: out's row stride) =
    scale_t · (p · z_t) over the first T = tokens tokens, for projected
    queries p [B, G, M, width]."""
    d = _describe(store, tokens)
    b, g, m, n = p.shape
    _check(p, (d.batch, d.groups, m, width(store.bits, d.w)), "queries")
    if not p.is_contiguous() or out.stride(-1) != 1 or out.stride(-2) * m != out.stride(-3) or \
            out.stride(-3) * g != out.stride(0) or out.shape[-1] < d.tokens:
        raise ValueError("scores: queries must be contiguous, out a contiguous [B, G, M, ≥T] block")
    if _lib.kvt_scores(ctypes.byref(d), p.data_ptr(), m, out.data_ptr(), out.stride(-2)):
        raise MemoryError("kvtorch.latent.scores: out of memory")
    return out


def weigh(store, tokens, a, acc):
    """acc [B, G, M, width] = Σ_t a[..., t] · scale_t · z_t over the first
    T = tokens tokens, for weights a [B, G, M, T] (tokens contiguous)."""
    d = _describe(store, tokens)
    b, g, m, t = a.shape
    _check(a, (d.batch, d.groups, m, d.tokens), "weights")
    _check(acc, (d.batch, d.groups, m, width(store.bits, d.w)), "acc")
    if a.stride(-1) != 1 or not acc.is_contiguous():
        raise ValueError("weigh: the weights' tokens must be contiguous, acc contiguous")
    if _lib.kvt_weigh(ctypes.byref(d), a.data_ptr(), _I64x3(*a.stride()[:3]), m, acc.data_ptr()):
        raise MemoryError("kvtorch.latent.weigh: out of memory")
    return acc
