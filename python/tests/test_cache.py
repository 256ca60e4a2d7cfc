"""KVTorchCache as transformers uses it: the attention on the latents against
transformers' own attention, prefill against token-by-token decoding, and the
cache operations generate relies on (crop, beam reordering, batch selection,
left padding)."""
import os
import subprocess
import sys

import pytest
import torch
from transformers import DynamicCache

import kvtorch.cache as kvcache
from kvtorch import KVTorchCache, Preset
from test_preset import CALIB_TEXT, EVAL_TEXT, KVTORCH, kvtorch, train_tiny_tokenizer, write_texts
from tiny_models import tiny_model

pytestmark = pytest.mark.skipif(not os.path.exists(KVTORCH), reason="bin/kvtorch is not built (make build)")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """(arch, kv) -> (model.pt, calib.pt, eval texts) of a tiny random model."""
    tokenizer_json = train_tiny_tokenizer()
    root = tmp_path_factory.mktemp("cache")
    calib, evald = write_texts(root / "calib", CALIB_TEXT), write_texts(root / "eval", EVAL_TEXT)
    done = {}

    def get(arch, kv):
        if (arch, kv) not in done:
            d = root / f"{arch}-{kv}"
            tiny_model(arch).save_pretrained(d / "hf")
            (d / "hf" / "tokenizer.json").write_text(tokenizer_json)
            model_pt, cal = str(d / "model.pt"), str(d / "calib.pt")
            subprocess.run([sys.executable, "-m", "kvtorch.export", str(d / "hf"), "-o", model_pt, "--kv-source", kv],
                           check=True, capture_output=True)
            kvtorch("calibrate", "-q", "--model", model_pt, "--texts", calib, "--output", cal, "--seq-len", "64",
                    "--min-tokens", "8")
            done[(arch, kv)] = (model_pt, cal, evald)
        return done[(arch, kv)]
    return get


def preset_for(calibrated, tmp_path, arch, kv, *setting):
    model_pt, cal, evald = calibrated(arch, kv)
    out = str(tmp_path / "preset.json")
    kvtorch("eval", "--json", "--model", model_pt, "--calibration", cal, "--texts", evald, "--seq-len", "64",
            "--output", out, *setting)
    return Preset(out)


def tolerance(setting):
    """How far logits of one computation reached by two paths may differ.
    Tokens stored one at a time carry the float rounding of another matrix
    shape than a prompt's; with quantized latents that rounding can move a
    value across a quantization boundary (one 8-bit level measured 2e-4 in
    the logits of these tiny models; a 4-bit level is 16 times coarser)."""
    bits = setting[setting.index("--bits") + 1] if "--bits" in setting else "16"
    return {"16": 1e-4, "8": 1e-3}.get(bits, 1e-2)


def ids(n, batch=1, seed=1):
    return torch.randint(3, 400, (batch, n), generator=torch.Generator().manual_seed(seed))


def logits(model, x, cache, **kw):
    with torch.no_grad():
        return model(input_ids=x, past_key_values=cache, use_cache=True, **kw).logits.float()


# Full rank and 16 bits: the cache stores K/V as float16, so its attention
# must give transformers' own logits up to float16 rounding.
@pytest.mark.parametrize("arch,kv,basis", [("llama", "post_rope", "joint"), ("llama", "pre_rope", "head"),
                                           ("qwen3", "pre_rope", "joint"), ("gemma2", "post_rope", "head")])
def test_full_rank_matches_transformers(calibrated, tmp_path, arch, kv, basis):
    m = tiny_model(arch)
    d = m.config.head_dim if getattr(m.config, "head_dim", None) else m.config.hidden_size // m.config.num_attention_heads
    rank = d * (m.config.num_key_value_heads if basis == "joint" else 1)
    preset = preset_for(calibrated, tmp_path, arch, kv, "--basis", basis, "--rank-k", str(rank), "--rank-v", str(rank))
    x = ids(40)
    want = logits(m, x, DynamicCache(config=m.config))
    got = logits(m, x, KVTorchCache(preset, m))
    assert m.config._attn_implementation == "kvtorch"
    assert (got - want).abs().max() < 1e-2 * want.abs().max(), (got - want).abs().max()
    # The model still runs with other caches (kvtorch's attention falls back to the model's own).
    again = logits(m, x, DynamicCache(config=m.config))
    assert torch.allclose(again, want, atol=1e-5)


SETTINGS = [("llama", "post_rope", ["--basis", "joint", "--rank-k", "12", "--rank-v", "20", "--bits", "8"]),
            ("llama", "pre_rope", ["--basis", "joint", "--rank-k", "12", "--rank-v", "20", "--bits", "4"]),
            ("llama", "post_rope", ["--basis", "head", "--rank-k", "8", "--rank-v", "12", "--bits", "16"]),
            ("qwen2", "pre_rope", ["--basis", "none", "--bits", "4", "--sinks", "2"])]


@pytest.mark.parametrize("arch,kv,setting", SETTINGS)
def test_decode_matches_prefill(calibrated, tmp_path, monkeypatch, arch, kv, setting):
    """A compressed cache gives the same logits whether the tokens come in one
    prefill or one at a time (each token is stored once, the same way)."""
    preset = preset_for(calibrated, tmp_path, arch, kv, *setting)
    m = tiny_model(arch)
    x = ids(24)
    want = logits(m, x, KVTorchCache(preset, m))
    cache = KVTorchCache(preset, m)
    steps = [logits(m, x[:, :10], cache)]
    for i in range(10, 24):
        steps.append(logits(m, x[:, i:i + 1], cache))
    got = torch.cat(steps, dim=1)
    assert torch.allclose(got, want, atol=tolerance(setting)), (got - want).abs().max()
    assert cache.get_seq_length() == 24
    # Long prompts are scored a block of queries, and a block of stored tokens, at a time.
    monkeypatch.setattr(kvcache, "QBLOCK", 5)
    monkeypatch.setattr(kvcache, "BLOCK", 7)
    assert torch.allclose(logits(m, x, KVTorchCache(preset, m)), want, atol=1e-4)
    # Without the C kernels (CUDA, or no C compiler): plain torch, the same logits.
    monkeypatch.setattr(kvcache.latent, "available", False)
    assert torch.allclose(logits(m, x, KVTorchCache(preset, m)), want, atol=1e-4)
    # Compression did something: the logits differ from the uncompressed model's.
    assert not torch.allclose(want, logits(m, x, DynamicCache(config=m.config)), atol=1e-3)


@pytest.mark.parametrize("arch,kv,setting", SETTINGS)
@pytest.mark.parametrize("prompt", ["expanded", "latents"])
def test_logits_match_kvtorch_eval(calibrated, tmp_path, monkeypatch, arch, kv, setting, prompt):
    """At each position, the logits through the cache are those of the
    exported model with its hooks set to the preset: what kvtorch eval
    measures (up to the cache's float16 storage of scales and latents);
    the prompt attended on K/V expanded from the latents, or on the latents."""
    import json

    preset = preset_for(calibrated, tmp_path, arch, kv, *setting)
    extra = {"kvtorch.json": ""}
    hooked = torch.jit.load(calibrated(arch, kv)[0], _extra_files=extra)
    preset.apply(hooked, json.loads(extra["kvtorch.json"]))
    m = tiny_model(arch)
    x = ids(48, batch=2)
    if prompt == "latents":
        monkeypatch.setattr(kvcache, "PROMPT", 1 << 30)
    with torch.no_grad():
        want = hooked(x)[0].float()
    got = logits(m, x, KVTorchCache(preset, m))
    plain = logits(m, x, DynamicCache(config=m.config))
    err, effect = (got - want).abs().max(), (plain - want).abs().max()
    assert err < 0.01 * effect, (err, effect)  # the compression's effect, reproduced to 1%


@pytest.mark.parametrize("arch,kv,setting", SETTINGS[:2])
def test_cache_operations(calibrated, tmp_path, arch, kv, setting):
    preset = preset_for(calibrated, tmp_path, arch, kv, *setting)
    m = tiny_model(arch)
    x = ids(20, batch=2)
    whole = logits(m, x, KVTorchCache(preset, m))
    tol = tolerance(setting)

    # crop (assisted decoding): cut back to 12 tokens, then decode 12..19 again.
    cache = KVTorchCache(preset, m)
    logits(m, x, cache)
    cache.crop(12)
    assert cache.get_seq_length() == 12
    again = torch.cat([logits(m, x[:, i:i + 1], cache) for i in range(12, 20)], dim=1)
    assert torch.allclose(again, whole[:, 12:], atol=tol)
    # a crop into the sink tokens drops them, and they are stored again.
    cache.crop(2)
    again = torch.cat([logits(m, x[:, i:i + 1], cache) for i in range(2, 20)], dim=1)
    assert torch.allclose(again, whole[:, 2:], atol=tol)

    # reorder_cache (beam search): the rows swapped decode as the swapped batch.
    cache = KVTorchCache(preset, m)
    logits(m, x[:, :19], cache)
    cache.reorder_cache(torch.tensor([1, 0]))
    got = logits(m, x.flip(0)[:, 19:], cache)
    assert torch.allclose(got, whole.flip(0)[:, 19:], atol=tol)

    # batch_select_indices and batch_repeat_interleave (contrastive search, num_return_sequences).
    cache = KVTorchCache(preset, m)
    logits(m, x[:, :19], cache)
    cache.batch_select_indices(torch.tensor([1]))
    assert torch.allclose(logits(m, x[1:, 19:], cache), whole[1:, 19:], atol=tol)
    cache = KVTorchCache(preset, m)
    logits(m, x[:1, :19], cache)
    cache.batch_repeat_interleave(3)
    assert torch.allclose(logits(m, x[:1, 19:].expand(3, 1), cache), whole[:1, 19:].expand(3, 1, -1), atol=tol)


@pytest.mark.parametrize("arch,kv,setting", SETTINGS[:2])
@pytest.mark.parametrize("prompt", ["expanded", "latents"])
def test_left_padding(calibrated, tmp_path, monkeypatch, arch, kv, setting, prompt):
    """In a left-padded batch each row's logits are its logits alone: padding
    is never attended to and never taken for a sink token (prompts attended
    on expanded K/V, or on the latents)."""
    monkeypatch.setattr(kvcache, "PROMPT", 8 if prompt == "expanded" else 1 << 30)
    preset = preset_for(calibrated, tmp_path, arch, kv, *setting)
    m = tiny_model(arch)
    long, short = ids(20, seed=2), ids(13, seed=3)
    pad = 20 - 13
    x = torch.cat([long, torch.cat([torch.zeros(1, pad, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(x)
    mask[1, :pad] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = KVTorchCache(preset, m)
    got = logits(m, x, cache, attention_mask=mask, position_ids=pos)
    assert torch.allclose(got[:1], logits(m, long, KVTorchCache(preset, m)), atol=tolerance(setting))
    alone = logits(m, short, KVTorchCache(preset, m))
    assert torch.allclose(got[1:, pad:], alone, atol=tolerance(setting))
    # one more token each, through the same cache
    nxt = ids(1, batch=2, seed=4)
    mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    step = logits(m, nxt, cache, attention_mask=mask, position_ids=torch.tensor([[20], [13]]))
    alone_cache = KVTorchCache(preset, m)
    logits(m, short, alone_cache)
    assert torch.allclose(step[1:], logits(m, nxt[1:], alone_cache), atol=tolerance(setting))


def test_generate_greedy_and_beam(calibrated, tmp_path):
    """generate with the cache: greedy picks the argmax of the logits the
    cache gives for the whole sequence; beam search and sampling run, with
    padding, and the cache holds the bytes the preset counts."""
    preset = preset_for(calibrated, tmp_path, "llama", "pre_rope", "--basis", "joint", "--rank-k", "12",
                        "--rank-v", "20", "--bits", "8")
    m = tiny_model("llama")
    prompt = ids(12)
    cache = KVTorchCache(preset, m)
    with torch.no_grad():
        out = m.generate(prompt, past_key_values=cache, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 22)
    full = logits(m, out, KVTorchCache(preset, m))
    top2 = full[0, 11:21].topk(2, dim=-1)
    picked = full[0, 11:21].gather(-1, out[0, 12:22, None])[:, 0]
    # each token is the argmax, up to ties within float noise
    assert ((picked - top2.values[:, 0]).abs() < 1e-4).all(), (out, top2)
    meta = preset.preset
    # 21 tokens stored (the last generated token is never fed back)
    assert cache.nbytes() == meta["sink_tokens"] * meta["bytes_per_token_before"] + 21 * meta["bytes_per_token_compressed"]

    batch = torch.cat([ids(12, seed=5), torch.cat([torch.zeros(1, 4, dtype=torch.long), ids(8, seed=6)], 1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    with torch.no_grad():
        beams = m.generate(batch, attention_mask=mask, past_key_values=KVTorchCache(preset, m), max_new_tokens=6,
                           num_beams=3, do_sample=False, pad_token_id=0)
        sampled = m.generate(batch, attention_mask=mask, past_key_values=KVTorchCache(preset, m), max_new_tokens=6,
                             do_sample=True, num_return_sequences=2, pad_token_id=0)
    assert beams.shape == (2, 18) and sampled.shape == (4, 18)


@pytest.mark.parametrize("arch,kv,basis", [("llama", "post_rope", "joint"), ("qwen2", "pre_rope", "head"),
                                           ("gemma3_text", "pre_rope", "joint"), ("gemma3_text", "post_rope", "head"),
                                           ("gemma2", "pre_rope", "head")])
def test_full_rank_generates_as_dynamic_cache(calibrated, tmp_path, arch, kv, basis):
    """At full rank and 16 bits, greedy and beam search give DynamicCache's
    tokens: Gemma's sliding-window layers (window 8 in these tiny models)
    honoured past the window, and Gemma 3's pre-RoPE keys rotated back with
    the base of their kind of layer (issue 20)."""
    m = tiny_model(arch)
    d = getattr(m.config, "head_dim", None) or m.config.hidden_size // m.config.num_attention_heads
    rank = d * (m.config.num_key_value_heads if basis == "joint" else 1)
    preset = preset_for(calibrated, tmp_path, arch, kv, "--basis", basis, "--rank-k", str(rank), "--rank-v", str(rank))
    batch = torch.cat([ids(12, seed=7), torch.cat([torch.zeros(1, 5, dtype=torch.long), ids(7, seed=8)], 1)])
    mask = torch.ones_like(batch)
    mask[1, :5] = 0
    for kw in (dict(do_sample=False), dict(num_beams=3, do_sample=False)):
        with torch.no_grad():
            want = m.generate(batch, attention_mask=mask, past_key_values=DynamicCache(config=m.config),
                              max_new_tokens=16, pad_token_id=0, **kw)
            got = m.generate(batch, attention_mask=mask, past_key_values=KVTorchCache(preset, m), max_new_tokens=16,
                             pad_token_id=0, **kw)
        assert torch.equal(got, want), (kw, got, want)


def test_all_padding_row(calibrated, tmp_path):
    """A left-padded batch with a row that is all padding (an empty prompt)
    generates as DynamicCache does at full rank (issue 21: the cache raised)."""
    m = tiny_model("llama")
    d = m.config.hidden_size // m.config.num_attention_heads
    rank = d * m.config.num_key_value_heads
    preset = preset_for(calibrated, tmp_path, "llama", "pre_rope", "--basis", "joint", "--rank-k", str(rank),
                        "--rank-v", str(rank))
    batch = torch.cat([ids(10, seed=9), torch.zeros(1, 10, dtype=torch.long)])
    mask = torch.ones_like(batch)
    mask[1] = 0
    with torch.no_grad():
        want = m.generate(batch, attention_mask=mask, past_key_values=DynamicCache(config=m.config),
                          max_new_tokens=8, pad_token_id=0, do_sample=False)
        got = m.generate(batch, attention_mask=mask, past_key_values=KVTorchCache(preset, m), max_new_tokens=8,
                         pad_token_id=0, do_sample=False)
    assert torch.equal(got, want), (got, want)


RECENT = [("llama", "post_rope", ["--basis", "joint", "--rank-k", "12", "--rank-v", "20", "--bits", "8", "--recent", "6"]),
          ("llama", "pre_rope", ["--basis", "joint", "--rank-k", "12", "--rank-v", "20", "--bits", "4", "--recent", "6"]),
          ("gemma3_text", "pre_rope", ["--basis", "head", "--rank-k", "12", "--rank-v", "12", "--bits", "4", "--sinks", "2",
                                       "--recent", "5"])]


@pytest.mark.parametrize("arch,kv,setting", RECENT)
def test_recent_window(calibrated, tmp_path, monkeypatch, arch, kv, setting):
    """A preset with a recent window (issue 19): through the cache, each
    position's logits are the exported model's recent method with the
    preset applied (what kvtorch eval measures), whether the prompt comes
    at once (attended on expanded K/V, or on the latents), a few tokens at a
    time or one at a time (Gemma 3: a sliding window of 8 too); the ring of
    the last R tokens is counted in nbytes, and a crop keeps what it can."""
    import json

    recent = int(setting[setting.index("--recent") + 1])
    preset = preset_for(calibrated, tmp_path, arch, kv, *setting)
    assert preset.recent == recent and preset.preset["recent_tokens"] == recent
    extra = {"kvtorch.json": ""}
    hooked = torch.jit.load(calibrated(arch, kv)[0], _extra_files=extra)
    preset.apply(hooked, json.loads(extra["kvtorch.json"]))
    m = tiny_model(arch)
    x = ids(40, batch=2)
    with torch.no_grad():
        want = hooked.head(hooked.recent(x)[0]).float()
        without = hooked.head(hooked.body(x)[0]).float()  # the same preset, no window
    effect = (without - want).abs().max()
    assert effect > 1e-3
    for prompt in (kvcache.PROMPT, 1 << 30):  # expanded K/V, or the latents
        monkeypatch.setattr(kvcache, "PROMPT", prompt)
        err = (logits(m, x, KVTorchCache(preset, m)) - want).abs().max()
        assert err < 0.02 * effect, (prompt, err, effect)
    monkeypatch.setattr(kvcache, "PROMPT", 32)
    for step in (1, 3):
        cache = KVTorchCache(preset, m)
        parts = [logits(m, x[:, :10], cache)]
        for i in range(10, 40, step):
            parts.append(logits(m, x[:, i:i + step], cache))
        got = torch.cat(parts, dim=1)
        assert (got - want).abs().max() < 0.02 * effect, (step, (got - want).abs().max(), effect)
    # The ring: R tokens of every layer at float16, besides the latents.
    layer = cache.layers[0]
    assert layer.ring_k.shape[-2] == recent and layer.ring_at == 40 - recent and layer.window is None
    h, dk, dv = preset.heads, preset.side(0, "k").dim, preset.side(0, "v").dim
    assert layer.nbytes() - layer.zk.nbytes(40) - layer.zv.nbytes(40) - (0 if layer.sink_k is None else
                                                                          (layer.sink_k.numel() + layer.sink_v.numel()) * 2) \
        == 2 * recent * h * (dk + dv) * 2
    # A crop past the ring's start: the ring keeps the tokens before the
    # cut; tokens in the new queries' windows whose exact copies went with
    # the ring's older part are read from their latents, so the logits
    # land between the window's and none's.
    cache.crop(36)
    assert layer.ring_k.shape[-2] == recent - 4
    again = logits(m, x[:, 36:40], cache)
    assert (again - want[:, 36:40]).abs().max() < (without[:, 36:40] - want[:, 36:40]).abs().max()
