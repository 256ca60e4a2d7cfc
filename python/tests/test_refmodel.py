"""The reference model follows the model contract (docs/model-contract.md)."""
import json
import os

import pytest
import torch
from torch import nn

from conftest import TESTDATA
from kvtorch.hook import KVHook, project_eager
import refmodel
from tiny_models import random_basis

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(TESTDATA, "refmodel.safetensors")),
                                reason="testdata/refmodel.safetensors is missing (make refmodel)")


class EagerProjection(nn.Module):
    def __init__(self, down, up, mean, **kw):
        super().__init__()
        self.down, self.up, self.mean, self.kw = down, up, mean, kw

    def forward(self, x):
        return project_eager(x, self.down, self.up, self.mean, **self.kw)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "refmodel.pt")
    refmodel.cmd_export(type("A", (), {"data": TESTDATA, "out": out, "device": "cpu"}))
    return out


def eager_with(replace):
    """The eager reference model with every KVHook replaced by replace(layer, kind)."""
    model, c = refmodel.load_model(TESTDATA)
    for i, blk in enumerate(model.blocks):
        blk.attn.k_hook = replace(i, "k")
        blk.attn.v_hook = replace(i, "v")
    return model, c


def ids_for(c, b=2, t=64, seed=0):
    return torch.randint(0, c.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def test_metadata_and_tokenizer_inside(traced):
    files = {"kvtorch.json": "", "tokenizer.json": ""}
    torch.jit.load(traced, _extra_files=files)
    meta = json.loads(files["kvtorch.json"])
    assert meta["kv_source"] == "pre_rope" and meta["n_kv_heads"] == 2 and meta["head_dim_k"] == 64
    assert meta["n_heads"] > meta["n_kv_heads"]  # grouped-query attention
    assert json.loads(files["tokenizer.json"])["model"]["type"] == "BPE"
    names = dict(torch.jit.load(traced).named_buffers())
    for layer in range(meta["n_layers"]):
        for kind in "kv":
            prefix = meta["hook"][kind].format(layer=layer)
            assert names[prefix + ".down"].shape == (128, 128)  # 2 KV heads of 64, joined
            assert names[prefix + ".mean"].shape == (128,)
            assert names[prefix + ".sink"].shape == ()


def test_default_hooks_reproduce_logits(traced):
    model, c = eager_with(lambda i, kind: nn.Identity())
    ids = ids_for(c)
    with torch.no_grad():
        want = model(ids)[0]
        got = torch.jit.load(traced)(ids)[0]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_returned_kv_are_the_projections(traced):
    model, c = eager_with(lambda i, kind: nn.Identity())
    caught = {}
    for i, blk in enumerate(model.blocks):
        for kind in "kv":
            proj = getattr(blk.attn, f"{kind}_proj")
            proj.register_forward_hook(lambda m, inp, out, i=i, kind=kind: caught.__setitem__((i, kind), out))
    ids = ids_for(c, b=3, t=40)
    with torch.no_grad():
        model(ids)
        _, keys, values = torch.jit.load(traced)(ids)
    assert len(keys) == c.n_layers
    for i in range(c.n_layers):
        for kind, got in (("k", keys[i]), ("v", values[i])):
            want = caught[(i, kind)].view(3, 40, c.n_kv_heads, c.head_dim).transpose(1, 2)
            assert got.shape == (3, c.n_kv_heads, 40, c.head_dim)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rank,joint,sink", [(8, False, 0), (32, False, 3), (40, True, 0), (100, True, 4)])
def test_random_projection_matches_eager(traced, rank, joint, sink):
    _, c = refmodel.load_model(TESTDATA)
    bases = {(i, kind): random_basis(c.n_kv_heads, c.head_dim, rank, joint, seed=10 * i + (kind == "v"))
             for i in range(c.n_layers) for kind in "kv"}
    model, _ = eager_with(lambda i, kind: EagerProjection(*bases[(i, kind)][2:], sink=sink))
    m = torch.jit.load(traced)
    buffers = dict(m.named_buffers())
    for (i, kind), (down, up, _, _, mean) in bases.items():
        prefix = f"blocks.{i}.attn.{kind}_hook"
        buffers[prefix + ".down"].copy_(down)
        buffers[prefix + ".up"].copy_(up)
        buffers[prefix + ".mean"].copy_(mean)
        buffers[prefix + ".sink"].fill_(sink)
    ids = ids_for(c, seed=3)
    with torch.no_grad():
        want = model(ids)[0]
        got = m(ids)[0]
        base = refmodel.load_model(TESTDATA)[0](ids)[0]
    assert (want - base).abs().max() > 1e-2  # the projection really changes the logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if sink:  # the first positions attend only to exact K/V: their logits are the model's
        torch.testing.assert_close(got[:, :sink], base[:, :sink], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("joint", [False, True])
def test_hook_quantization_matches_eager(joint):
    torch.manual_seed(0)
    h, d, r = 2, 64, 24
    down, up, cdown, cup, mean = random_basis(h, d, r, joint, seed=1)
    x = torch.randn(3, h, 50, d) * torch.linspace(0.2, 3, d)
    hook = KVHook(h, d)
    hook.down.copy_(down)
    hook.up.copy_(up)
    hook.mean.copy_(mean)
    if joint:
        hook.group.zero_()
    k = cdown.shape[1]
    qscale = torch.linspace(0.5, 2.0, k)
    full_qscale = torch.ones(h * d)
    full_qscale[(down != 0).any(0)] = qscale  # the latents' columns, in order
    hook.qscale.copy_(full_qscale)
    for bits in (16, 8, 4):
        hook.bits.fill_(bits)
        got = hook(x)
        want = project_eager(x, cdown, cup, mean, bits=bits, qscale=qscale, qhead=not joint)
        # Equal up to latents that round the other way at a tie: at most one step.
        step = (x.abs().max() + mean.abs().max()) * 2.0 ** (1 - bits) * 8
        assert (got - want).abs().max() <= step
        if bits == 16:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    hook.bits.fill_(16)
    hook.sink.fill_(5)
    assert torch.equal(hook(x)[:, :, :5], x[:, :, :5])  # sinks: exact
    fresh = KVHook(h, d)
    assert torch.equal(fresh(x), x)  # default buffers: exact
