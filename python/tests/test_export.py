"""kvtorch.export on tiny random-weight models of every supported architecture."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import HERE
from kvtorch.hook import project_eager
from tiny_models import random_basis, tiny_model
from kvtorch import export

EXPORT = [sys.executable, "-m", "kvtorch.export"]
CASES = [(a, kv) for a in export.GQA for kv in ("pre_rope", "post_rope")] + [("deepseek_v2", "mla_latent")]
SLIDING = ("gemma2", "gemma3_text")  # tiny configs with a sliding window of 8
TOKENIZER = json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}})


def exported(arch, kv, tmp_path):
    model = tiny_model(arch)
    out = str(tmp_path / f"{arch}.pt")
    meta = export.export(model, TOKENIZER, None if kv == "mla_latent" else kv, "cpu", out, arch)
    return torch.jit.load(out), meta


def captured_reference(arch, kv, ids):
    """Logits and K/V of the unmodified eager model: the cache (post_rope,
    mla_latent) or the projection outputs (pre_rope)."""
    model = tiny_model(arch)
    caught = {}
    layout = export.KEY_NORM_LAYOUT.get(arch, "flat")
    if kv == "pre_rope":
        for i, layer in enumerate(model.model.layers):
            a = layer.self_attn
            kmod = a.k_norm if hasattr(a, "k_norm") else a.k_proj
            kmod.register_forward_hook(lambda m, inp, out, i=i: caught.__setitem__((i, "k"), out))
            a.v_proj.register_forward_hook(lambda m, inp, out, i=i: caught.__setitem__((i, "v"), out))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    n = model.config.num_hidden_layers
    if kv == "pre_rope":
        b, t = ids.shape
        h = model.config.num_key_value_heads

        def heads(x, layout):
            if layout == "bhtd":
                return x
            return (x if layout == "bthd" else x.view(b, t, h, -1)).transpose(1, 2)
        return (out.logits, [heads(caught[(i, "k")], layout) for i in range(n)],
                [heads(caught[(i, "v")], "flat") for i in range(n)])
    if arch in SLIDING and kv == "post_rope":  # the cache keeps only the window: catch K/V in attention
        return captured_in_attention(arch, ids)
    layers = out.past_key_values.layers
    return out.logits, [l.keys for l in layers], [l.values for l in layers]


def wrap_attention(model, name, fn):
    """Routes the model's attention through fn(module, q, k, v) -> (k, v)
    before the attention it uses (its eager function, or sdpa)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

    impl = model.config._attn_implementation

    def attn(module, q, k, v, mask, **kw):
        k, v = fn(module, q, k, v)
        if impl == "eager":
            inner = sys.modules[type(module).__module__].eager_attention_forward
        else:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward as inner
        return inner(module, q, k, v, mask, **kw)
    AttentionInterface.register(name, attn)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, eager_mask if impl == "eager" else sdpa_mask)  # sliding windows too
    model.set_attn_implementation(name)


def captured_in_attention(arch, ids):
    """Logits and post-RoPE K/V as the eager model's attention receives them."""
    model = tiny_model(arch)
    caught = {}

    def catch(module, q, k, v):
        caught[(module.layer_idx, "k")], caught[(module.layer_idx, "v")] = k, v
        return k, v
    wrap_attention(model, "capture_kv", catch)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    n = model.config.num_hidden_layers
    return out.logits, [caught[(i, "k")] for i in range(n)], [caught[(i, "v")] for i in range(n)]


@pytest.mark.parametrize("arch,kv", CASES)
def test_default_hooks_and_kv(arch, kv, tmp_path):
    m, meta = exported(arch, kv, tmp_path)
    assert meta["kv_source"] == kv and meta["architecture"] == arch
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    want_logits, want_k, want_v = captured_reference(arch, kv, ids)
    with torch.no_grad():
        logits, keys, values = m(ids)
    scale = want_logits.abs().max().item()
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5 * scale)
    with torch.no_grad():  # and the unmodified model's own logits
        plain = tiny_model(arch)(input_ids=ids).logits
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5 * scale)
    assert len(keys) == len(values) == meta["n_layers"]
    for i in range(meta["n_layers"]):
        assert keys[i].shape == (2, meta["n_kv_heads"], 24, meta["head_dim_k"])
        assert values[i].shape == (2, meta["n_kv_heads"], 24, meta["head_dim_v"])
        torch.testing.assert_close(keys[i], want_k[i], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(values[i], want_v[i], rtol=1e-6, atol=1e-6)
    # The trace generalises to other batch sizes and lengths.
    with torch.no_grad():
        assert m(torch.randint(0, 512, (3, 41)))[0].shape == (3, 41, 512)
    # The methods besides forward (issue 22): kv gives forward's keys and
    # values without the hooks or the LM head; head(body) is forward's
    # logits, hooks included; at lengths past the trace's and the sliding
    # window's.
    assert meta["methods"] == (["kv", "body", "head"] if kv == "mla_latent" else ["kv", "body", "head", "recent"])
    ids = torch.randint(0, 512, (2, 37), generator=torch.Generator().manual_seed(4))
    buffers = dict(m.named_buffers())
    with torch.no_grad():
        logits, keys, values = m(ids)
        k2, v2 = m.kv(ids)
        hidden, k3, v3 = m.body(ids)
        assert torch.equal(m.head(hidden), logits)
        for a, b, c in zip(keys + values, k2 + v2, k3 + v3):
            assert torch.equal(a, b) and torch.equal(a, c)
        buffers[meta["hook"]["v"].format(layer=0) + ".bits"].fill_(4.0)  # a hook that changes the model
        changed = m(ids)[0]
        assert not torch.equal(changed, logits)
        assert torch.equal(m.head(m.body(ids)[0]), changed)
        for a, b in zip(m.kv(ids)[1], values):  # kv: the true values, never hooked
            assert torch.equal(a, b)


def eager_projected(arch, kv, bases, ids, sink):
    """The tiny model in eager PyTorch with project_eager applied where the hook sits."""
    model = tiny_model(arch)
    for i, layer in enumerate(model.model.layers):
        a = layer.self_attn
        bk, bv = bases[(i, "k")], bases[(i, "v")]

        def pk(x, b=bk):
            return project_eager(x, b[2], b[3], b[4], sink=sink)

        def pv(x, b=bv):
            return project_eager(x, b[2], b[3], b[4], sink=sink)
        if kv == "mla_latent":
            orig = a.expand_kv
            a.expand_kv = lambda kn, kr, orig=orig, pk=pk, pv=pv: orig(pk(kn), pv(kr))
        elif kv == "post_rope":
            a.k_hook, a.v_hook = pk, pv
        else:
            h = model.config.num_key_value_heads

            def via_heads(fn, out, layout):
                if layout == "bhtd":
                    return fn(out)
                b, t = out.shape[:2]
                x = out.transpose(1, 2) if layout == "bthd" else out.view(b, t, h, -1).transpose(1, 2)
                return fn(x).transpose(1, 2).reshape(out.shape)
            kmod = a.k_norm if hasattr(a, "k_norm") else a.k_proj
            layout = export.KEY_NORM_LAYOUT.get(arch, "flat") if hasattr(a, "k_norm") else "flat"
            kmod.register_forward_hook(lambda m, inp, out, pk=pk, lay=layout: via_heads(pk, out, lay))
            a.v_proj.register_forward_hook(lambda m, inp, out, pv=pv: via_heads(pv, out, "flat"))
    if kv == "post_rope":
        wrap_attention(model, "eager_projected", lambda module, q, k, v: (module.k_hook(k), module.v_hook(v)))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", SLIDING)
@pytest.mark.parametrize("kv", ["pre_rope", "post_rope"])
def test_sliding_window_generalises(arch, kv, tmp_path):
    """Traced at 16 tokens, the model's sliding-window masks (window 8) still
    hold at 40: the logits equal the eager model's (post_rope exports run
    kvtorch's own attention function, which must bring the masks along)."""
    m, _ = exported(arch, kv, tmp_path)
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = tiny_model(arch)(input_ids=ids).logits
        got = m(ids)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("arch,kv", CASES)
def test_random_projection_matches_eager(arch, kv, tmp_path):
    m, meta = exported(arch, kv, tmp_path)
    h = meta["n_kv_heads"]
    bases = {}
    buffers = dict(m.named_buffers())
    sink = 3
    for i in range(meta["n_layers"]):
        for kind, d in (("k", meta["head_dim_k"]), ("v", meta["head_dim_v"])):
            joint = (i + (kind == "v")) % 2 == 0  # both kinds of basis in every model
            rank = h * d // 2 if joint else d // 4
            b = random_basis(h, d, rank, joint, seed=7 * i + (kind == "v"))
            bases[(i, kind)] = b
            prefix = meta["hook"][kind].format(layer=i)
            buffers[prefix + ".down"].copy_(b[0])
            buffers[prefix + ".up"].copy_(b[1])
            buffers[prefix + ".mean"].copy_(b[4] * 0.5)
            bases[(i, kind)] = b[:4] + (b[4] * 0.5,)
            buffers[prefix + ".sink"].fill_(sink)
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(2))
    want = eager_projected(arch, kv, bases, ids, sink)
    base = tiny_model(arch)(input_ids=ids).logits
    with torch.no_grad():
        got = m(ids)[0]
    assert (want - base).abs().max() > 1e-4  # the projection changes the logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_cli_exports_a_saved_model(tmp_path):
    model = tiny_model("qwen2")
    folder = tmp_path / "tiny-qwen2"
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(TOKENIZER)
    out = tmp_path / "q.pt"
    r = subprocess.run([*EXPORT, str(folder), "-o", str(out), "--kv-source", "post_rope"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    files = {"kvtorch.json": "", "tokenizer.json": ""}
    torch.jit.load(str(out), _extra_files=files)
    meta = json.loads(files["kvtorch.json"])
    assert meta["name"] == "tiny-qwen2" and meta["kv_source"] == "post_rope"
    assert files["tokenizer.json"].decode() == (folder / "tokenizer.json").read_text()


def test_cli_refuses_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(folder)
    r = subprocess.run([*EXPORT, str(folder), "-o", str(tmp_path / "x.pt")], capture_output=True, text=True)
    assert r.returncode == 1
    assert "unsupported architecture 'gpt2'" in r.stderr and "llama" in r.stderr
    assert not (tmp_path / "x.pt").exists()


def run_export(*args):
    return subprocess.run(EXPORT + list(args), capture_output=True, text=True, timeout=300)


def test_export_never_replaces_an_input(tmp_path):
    """Issue 21: -o naming the model's weights, a GGUF, a device, a file of the
    model folder, or a folder that takes no files, is refused with one line
    before anything is loaded; a tokenizer that is not one is refused too."""
    folder = tmp_path / "hf"
    tiny_model("llama").save_pretrained(folder)
    (folder / "tokenizer.json").write_text(TOKENIZER)
    (folder / "x.gguf").write_bytes(b"GGUF not really")
    (folder / "notes").write_text("mine")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    ro = "/sys" if os.geteuid() == 0 else str(tmp_path / "ro")
    if os.geteuid() != 0:
        os.mkdir(ro, 0o555)
    for args, want in [
        ((str(folder), "-o", str(folder / "model.safetensors")), "name it .pt"),
        ((str(folder), "-o", str(folder / "x.gguf")), "name it .pt"),
        ((str(folder / "x.gguf"), "-o", str(folder / "x.gguf")), "name it .pt"),
        ((str(folder), "-o", str(folder / "notes")), "a file of the model folder"),
        ((str(folder), "-o", "/dev/null"), "not a regular file"),
        ((str(folder), "-o", os.path.join(ro, "m.pt")), "does not take new files"),
        ((str(folder), "-o", str(tmp_path / "no" / "m.pt")), "does not exist"),
        ((str(folder), "-o", str(tmp_path / "m.pt"), "--save-hf", str(folder)), "the model folder itself"),
        ((str(folder), "-o", str(tmp_path / "m.pt"), "--tokenizer", "/etc/passwd"), "not a tokenizer.json"),
        ((str(folder), "-o", str(tmp_path / "m.pt"), "--device", "tpu"), "want cpu, cuda or cuda:N"),
        ((str(folder), "--output"), "expected one argument"),
    ]:
        r = run_export(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode in (1, 2) and len(lines) == 1 and want in lines[0], (args, r.stderr)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    assert not (tmp_path / "m.pt").exists()
    if not torch.cuda.is_available():
        r = run_export(str(folder), "-o", str(tmp_path / "m.pt"), "--device", "cuda")
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "no CUDA device" in r.stderr, r.stderr


def recent_reference(arch, kv, ids, recent):
    """The tiny model's logits with every K/V quantized to 4 bits (keys
    before RoPE for pre_rope) except, for each query, the keys and values of
    the last `recent` positions, one query and one key at a time in plain
    torch."""
    model = tiny_model(arch)
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    def quant(x):
        e = x.shape[1] * x.shape[3]
        return project_eager(x, torch.eye(e), torch.eye(e), torch.zeros(e), bits=4)
    pre = {}
    if kv == "pre_rope":  # the true pre-RoPE keys, from the projection (or k_norm)
        layout = export.KEY_NORM_LAYOUT.get(arch, "flat")
        h = model.config.num_key_value_heads
        for i, layer in enumerate(model.model.layers):
            a = layer.self_attn
            kmod = a.k_norm if hasattr(a, "k_norm") else a.k_proj

            def catch(m, inp, out, i=i, lay=layout if hasattr(a, "k_norm") else "flat"):
                if lay == "flat":
                    out = out.view(out.shape[0], out.shape[1], h, -1)
                pre[i] = out if lay == "bhtd" else out.transpose(1, 2)
            kmod.register_forward_hook(catch)

    def attn(module, q, k, v, mask, scaling=None, **kw):
        kh, vh = quant(k), quant(v)
        if kv == "pre_rope":  # quantized before RoPE, then rotated as the model rotates
            rot = model.model.rotary_emb
            pos = torch.arange(k.shape[2])[None]
            args = (model.config.layer_types[module.layer_idx],) if getattr(rot, "layer_types", None) else ()
            cos, sin = rot(k, pos, *args)
            rotate = sys.modules[type(module).__module__].apply_rotary_pos_emb
            kh = rotate(kh, quant(pre[module.layer_idx]), cos, sin)[1]
        b, hq, t, d = q.shape
        g = hq // k.shape[1]
        window = getattr(module, "sliding_window", None)
        out = torch.zeros(b, t, hq, v.shape[-1])
        for i in range(t):
            seen = [j for j in range(i + 1) if window is None or i - j < window]
            ks = torch.stack([k[:, :, j] if i - j < recent else kh[:, :, j] for j in seen], 2).repeat_interleave(g, 1)
            vs = torch.stack([v[:, :, j] if i - j < recent else vh[:, :, j] for j in seen], 2).repeat_interleave(g, 1)
            a = torch.softmax((q[:, :, i:i + 1] @ ks.transpose(-1, -2)) * scaling, -1)
            out[:, i] = (a @ vs)[:, :, 0]
        return out, None
    AttentionInterface.register("recent_reference", attn)
    ALL_MASK_ATTENTION_FUNCTIONS.register("recent_reference", sdpa_mask)
    model.set_attn_implementation("recent_reference")
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3_text"])
@pytest.mark.parametrize("kv", ["pre_rope", "post_rope"])
def test_recent_window(arch, kv, tmp_path):
    """The recent method (issue 19): with recent_tokens 0 it is body, past
    the sequence's length the model unhooked, and in between each query
    takes the true K/V of its last recent positions and the hooked ones
    before them, within the model's sliding window (8), as a one-query-at-a-
    time reference computes it."""
    m, meta = exported(arch, kv, tmp_path)
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(5))
    buffers = dict(m.named_buffers())
    with torch.no_grad():
        plain = m.head(m.body(ids)[0])
        for i in range(meta["n_layers"]):
            for kind in ("k", "v"):
                buffers[meta["hook"][kind].format(layer=i) + ".bits"].fill_(4.0)
        hooked, k0, v0 = m.body(ids)
        hidden, k1, v1 = m.recent(ids)
        assert torch.equal(hidden, hooked)
        for a, b in zip(k0 + v0, k1 + v1):  # the true keys and values, as body gives them
            assert torch.equal(a, b)
        buffers["recent_tokens"].fill_(40)
        torch.testing.assert_close(m.head(m.recent(ids)[0]), plain, rtol=1e-5, atol=1e-5)
        buffers["recent_tokens"].fill_(5)
        got = m.head(m.recent(ids)[0])
    want = recent_reference(arch, kv, ids, 5)
    assert (want - m.head(hooked)).abs().max() > 1e-3 and (want - plain).abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
