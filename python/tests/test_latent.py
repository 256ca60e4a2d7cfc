"""The C kernels of kvtorch.latent against plain torch, and the Store they
read: every storage kind, ranks odd and even, token counts that end inside a
tile, query rows beyond one tile of the kernels, several threads."""
import os

import pytest
import torch

from kvtorch import Latents, latent
from kvtorch.preset import dequantize, _quantize

pytestmark = pytest.mark.skipif(bool(os.environ.get("KVTORCH_NO_KERNELS")), reason="KVTORCH_NO_KERNELS is set")


def test_kernels_built():
    assert latent.available, "kvtorch._latent was not built with the package (no C compiler?)"


def latents(bits, b, g, t, r, seed):
    z = torch.randn(b, g, t, r, generator=torch.Generator().manual_seed(seed)) * 3
    if bits == 16:
        return Latents(z.half(), None, 16, r)
    data, scale = _quantize(z, bits)
    return Latents(data, scale, bits, r)


def values(z):
    """The latents' values, float32 [B, G, T, r] (scales applied)."""
    return dequantize(z) if z.bits < 16 else z.data.float()


@pytest.mark.parametrize("bits", [16, 8, 4])
@pytest.mark.parametrize("r", [7, 40])
def test_store_round_trip(bits, r):
    parts = [latents(bits, 2, 3, n, r, seed) for seed, n in enumerate([100, 1, 1, 1, 70, 200])]
    store, start = None, 0
    for z in parts:
        store = latent.write(store, z, start)
        start += z.data.shape[-2]
        assert store.capacity >= start
    got = store.read(0, start)
    assert torch.equal(got.data, torch.cat([z.data for z in parts], dim=-2))
    if bits < 16:
        assert torch.equal(got.scale, torch.cat([z.scale for z in parts], dim=-2))
    assert store.nbytes(start) == sum(z.nbytes for z in parts)
    # Room grows by at most max(16, T/64) tokens, rounded up to a tile.
    assert store.capacity <= -(-(start + max(16, start // 64)) // latent.TILE) * latent.TILE
    # Batch rows picked.
    picked = store.select(lambda x: x[torch.tensor([1])])
    assert torch.equal(picked.read(0, start).data, got.data[1:])
    # Overwriting from the middle (after a crop) keeps what is before.
    again = latent.write(store, parts[0], 50)
    assert torch.equal(again.read(0, 50).data, got.data[..., :50, :])
    assert torch.equal(again.read(50, 150).data, parts[0].data)


@pytest.mark.parametrize("bits", [16, 8, 4])
@pytest.mark.parametrize("r,m,t", [(7, 5, 205), (40, 13, 64), (33, 3, 2000), (190, 9, 1000)])
def test_kernels_match_torch(bits, r, m, t):
    b, g = 2, 3
    z = latents(bits, b, g, t, r, seed=r + m)
    store = latent.write(latent.write(None, latents(bits, b, g, 1, r, 99), 0), z, 0)  # grown, then overwritten
    store = latent.write(store, z, 0)
    zv = values(store.read(0, t))
    gen = torch.Generator().manual_seed(t)
    q = torch.randn(b, g, m, r, generator=gen)
    p = latent.layout(q, bits).contiguous()
    out = torch.full((b, g, m, t + 3), float("nan"))
    latent.scores(store, t, p, out[..., 3:])  # rows longer than T: the row stride is followed
    want = torch.matmul(q, zv.transpose(-1, -2))
    assert torch.allclose(out[..., 3:], want, rtol=1e-5, atol=1e-4 * want.abs().max()), (out[..., 3:] - want).abs().max()
    assert out[..., :3].isnan().all()  # nothing written before the block
    a = torch.softmax(torch.randn(b, g, m, t + 2, generator=gen), dim=-1)[..., 2:]  # tokens contiguous, rows strided
    acc = torch.empty(b, g, m, latent.width(bits, (r + 1) // 2 if bits == 4 else r))
    latent.weigh(store, t, a, acc)
    want = torch.matmul(a, zv)
    if bits == 4:  # the layout's order: even coordinates, then odd ones
        want = latent.layout(want, 4)
    else:
        want = latent.layout(want, bits)
    assert torch.allclose(acc, want, rtol=1e-5, atol=1e-5 * want.abs().max()), (acc - want).abs().max()


def test_kernels_refuse_bad_shapes():
    z = latents(8, 1, 1, 10, 8, 0)
    store = latent.write(None, z, 0)
    with pytest.raises(ValueError, match="queries"):
        latent.scores(store, 10, torch.zeros(1, 1, 2, 8), torch.empty(1, 1, 2, 10))
    with pytest.raises(ValueError, match="weights"):
        latent.weigh(store, 10, torch.zeros(1, 1, 2, 9), torch.empty(1, 1, 2, 16))
    with pytest.raises(ValueError, match="tokens asked for"):
        latent.scores(store, 1000, torch.zeros(1, 1, 2, 16), torch.empty(1, 1, 2, 1000))


@pytest.mark.parametrize("bits", [16, 8, 4])
@pytest.mark.parametrize("r", [7, 40])
def test_store_quantizes_as_compress(bits, r):
    """latent.store (quantized in C) stores exactly what write(compress)
    does: the same levels (ties rounded to even), scales and float16 values."""
    from kvtorch.preset import _quantize

    def compressed(z):
        if bits == 16:
            return Latents(z.half(), None, 16, r)
        return Latents(*_quantize(z, bits), bits, r)

    levels = 127 if bits == 8 else 7
    gen = torch.Generator().manual_seed(r)
    parts = [torch.randn(2, 3, n, r, generator=gen) * 10 ** torch.randint(-3, 3, (2, 3, n, 1), generator=gen)
             for n in (70, 1, 100)]
    ties = torch.zeros(2, 3, 1, r)
    ties[..., 0], ties[..., 1:3] = levels, torch.tensor([2.5, -3.5])  # step 1: halves round to even
    parts.append(ties)
    parts.append(torch.zeros(2, 3, 1, r))  # an all-zero token: the smallest step
    want = got = None
    start = 0
    for z in parts:
        want = latent.write(want, compressed(z), start)
        got = latent.store(got, z, bits, r, start)
        start += z.shape[-2]
    a, b = got.read(0, start), want.read(0, start)
    assert torch.equal(a.data, b.data)
    if bits < 16:
        assert torch.equal(a.scale, b.scale)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("joint", [True, False])
def test_hook_quantizes_as_compress(bits, joint):
    """The hook of exported models (what kvtorch eval measures) chooses the
    levels _quantize chooses, per token over all heads (joint) or per head,
    and reads them back with the float32 step where the cache keeps it as
    float16; project_eager, its eager twin, computes exactly the same."""
    from kvtorch.hook import KVHook, project_eager

    h, d, t = 2, 8, 6
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(1, h, t, d, generator=gen) * 10 ** torch.randint(-2, 3, (1, h, t, 1), generator=gen)
    x[0, 0, 1, :3] = torch.tensor([7.0, 2.5, -3.5])  # with 4 bits: step 1, halves round to even
    x[0, 0, 1, 3:] = 0
    if joint:
        x[0, 1, 1] = 0
    hook = KVHook(h, d)
    hook.bits.fill_(float(bits))
    if joint:
        hook.group.zero_()
    y = hook(x)
    assert torch.equal(y, project_eager(x, torch.eye(h * d), torch.eye(h * d), torch.zeros(h * d), bits=bits, qhead=not joint))
    z = x.transpose(1, 2).reshape(1, 1, t, h * d) if joint else x  # a group per token, or per token and head
    yz = y.transpose(1, 2).reshape(1, 1, t, h * d) if joint else y
    data, scale = _quantize(z, bits)
    levels = dequantize(Latents(data, torch.ones_like(scale), bits, z.shape[-1]))
    step = z.abs().amax(-1, keepdim=True).clamp_min(1e-30) / (2 ** (bits - 1) - 1)
    assert torch.equal(torch.round(yz / step), levels)  # the same levels
    stored = dequantize(Latents(data, scale, bits, z.shape[-1]))
    torch.testing.assert_close(yz, stored, rtol=1e-3, atol=0)  # read with the step in float32 or in float16


def test_hook_splits_latents_by_width():
    """A joint side split by bit width (format 3: bits and group per latent):
    each width's latents quantized with their own per-token scale, the
    16-bit ones exact, the dropped ones zero, exactly as project_eager."""
    from kvtorch.hook import KVHook, project_eager

    h, d, t = 2, 8, 7
    e = h * d
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, h, t, d, generator=gen) * torch.linspace(4, 0.1, d)
    q, _ = torch.linalg.qr(torch.randn(e, e, generator=gen))
    widths = [(2, 16), (3, 8), (6, 4)]  # 11 latents, 5 dropped
    r = sum(n for n, _ in widths)
    qscale = torch.linspace(3, 0.5, r)
    hook = KVHook(h, d)
    hook.down.zero_()
    hook.up.zero_()
    hook.down[:, :r] = q[:, :r]
    hook.up[:r] = q[:, :r].T
    hook.qscale[:r] = qscale
    at = 0
    for i, (n, b) in enumerate(widths):
        hook.bits[at:] = b
        hook.group[at:] = i
        at += n
    y = hook(x)
    want = project_eager(x, q[:, :r], q[:, :r].T, torch.zeros(e), qscale=qscale, widths=widths)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-5)
    z = (x.transpose(1, 2).reshape(1, t, e) @ q[:, :r])
    zy = y.transpose(1, 2).reshape(1, t, e) @ q[:, :r]
    torch.testing.assert_close(zy[..., :2], z[..., :2], rtol=0, atol=1e-5)  # 16 bits: exact
    for (lo, hi, b) in [(2, 5, 8), (5, 11, 4)]:  # each width on its own levels
        zn = z[..., lo:hi] / qscale[lo:hi]
        step = zn.abs().amax(-1, keepdim=True) / (2 ** (b - 1) - 1)
        levels = zy[..., lo:hi] / qscale[lo:hi] / step
        torch.testing.assert_close(levels, torch.round(levels), rtol=0, atol=1e-3)
        assert levels.abs().amax() <= 2 ** (b - 1) - 1 + 1e-3
