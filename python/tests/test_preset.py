"""kvtorch.Preset and KVTorchCache against the Go numbers: presets made by
`kvtorch tune` give the same perplexity through Preset.compress/expand (the
reference model) and through KVTorchCache (tiny random transformers models),
and the cache stores exactly the bytes the preset accounts for."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, TESTDATA
from kvtorch import KVTorchCache, Preset
import kvwindows
from tiny_models import tiny_model

KVTORCH = os.path.join(ROOT, "bin", "kvtorch")
REFMODEL = os.path.join(ROOT, "build", "refmodel.pt")
pytestmark = pytest.mark.skipif(not os.path.exists(KVTORCH), reason="bin/kvtorch is not built (make build)")

CALIB_TEXT = ["The quick brown fox jumps over the lazy dog. " * 8, "def f(x):\n    return x * 2\n" * 12,
              "Once upon a time there was a model with a cache. " * 9, "for i in range(10): print(i)\n" * 10]
EVAL_TEXT = ["A lazy dog sleeps while the brown fox runs. " * 10, "while True:\n    x = f(x) + 1\n" * 12,
             "Models with caches were once upon a time. " * 11]


def kvtorch(*args):
    r = subprocess.run([KVTORCH, *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


def split_preset(path, out):
    """The preset at path with every compressed joint side's latents split
    by bit width (its first latent at 16 bits, a third of the rest at 8, the
    others at 4), its bytes counted again: a version 5 preset written to
    out (its perplexities are the unsplit preset's; kvtorch eval --preset
    measures it)."""
    import json

    from kvtorch.files import side_bytes, side_compresses

    p = json.load(open(path))
    p["version"] = 5
    compressed = 0
    for pl in p["layers"]:
        total = 0
        for kind in ("k", "v"):
            basis, rank, bits = pl.get(f"basis_{kind}", "head"), pl[f"rank_{kind}"], pl[f"bits_{kind}"]
            widths = None
            if basis == "joint" and side_compresses(p, kind, basis, rank, bits) and rank >= 3:
                n8 = (rank - 1) // 3
                widths = [(1, 16), (n8, 8), (rank - 1 - n8, 4)]
                pl[f"groups_{kind}"] = [{"count": n, "bits": b} for n, b in widths]
                pl[f"bits_{kind}"] = bits = 4
            total += side_bytes(p, kind, basis, rank, bits, widths)
        pl["bytes_per_token_after"] = total
        compressed += total
    context, before = p["context_length"], p["bytes_per_token_before"]
    exact = min(p.get("sink_tokens", 0) + p.get("recent_tokens", 0), context)
    p["bytes_per_token_compressed"] = compressed
    p["bytes_per_token_after"] = (exact * before + (context - exact) * compressed) / context
    p["compression_ratio"] = p["total_compression"] = before / p["bytes_per_token_after"]
    p.pop("bits", None)
    with open(out, "w") as f:
        json.dump(p, f, indent=2)
    return out


def write_texts(folder, texts):
    os.makedirs(folder, exist_ok=True)
    for i, t in enumerate(texts):
        with open(os.path.join(folder, f"{i:02d}.txt"), "w") as f:
            f.write(t)
    return str(folder)


def windows(model_pt, text_dir, seq_len, max_tokens):
    """The evaluation windows exactly as kvtorch builds them (rebuilt
    independently of the Go code)."""
    return kvwindows.windows(model_pt, text_dir, seq_len, max_tokens)


def ppl_of(logits_fn, wins):
    nll, n = 0.0, 0
    for w in wins:
        logits = logits_fn(w[None])
        nll += F.cross_entropy(logits[0, :-1].double(), w[1:], reduction="sum").item()
        n += len(w) - 1
    return math.exp(nll / n)


def through_cache(preset, hf, wins):
    """The perplexity of windows wins through KVTorchCache (a fresh cache per
    window), and a cache that has stored the first window."""
    with torch.no_grad():
        comp = ppl_of(lambda ids: hf(input_ids=ids, past_key_values=KVTorchCache(preset, hf), use_cache=True).logits, wins)
        cache = KVTorchCache(preset, hf)
        hf(input_ids=wins[:1], past_key_values=cache, use_cache=True)
    return comp, cache


def train_tiny_tokenizer():
    """A byte-level BPE tokenizer of 400 ids trained on the test texts, as JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CALIB_TEXT + EVAL_TEXT, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok.to_str()


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return train_tiny_tokenizer()


@pytest.mark.parametrize("arch,kv", [("llama", "pre_rope"), ("llama", "post_rope"), ("qwen2", "pre_rope"),
                                     ("deepseek_v2", "mla_latent")])
def test_cache_matches_go(arch, kv, tiny_tokenizer, tmp_path):
    folder = tmp_path / "hf"
    model = tiny_model(arch)
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(tiny_tokenizer)
    model_pt = str(tmp_path / "model.pt")
    args = [sys.executable, "-m", "kvtorch.export", str(folder), "-o", model_pt]
    if kv != "mla_latent":
        args += ["--kv-source", kv]
    subprocess.run(args, check=True, capture_output=True)
    calib, evald = write_texts(tmp_path / "calib", CALIB_TEXT), write_texts(tmp_path / "eval", EVAL_TEXT)
    cal = str(tmp_path / "calib.pt")
    kvtorch("calibrate", "-q", "--model", model_pt, "--texts", calib, "--output", cal, "--seq-len", "64", "--min-tokens", "8")
    preset_path = str(tmp_path / "preset.json")
    kvtorch("tune", "-q", "--model", model_pt, "--calibration", cal, "--texts", evald, "--seq-len", "64",
            "--bits", "16,8,4", "--target-ppl-delta", "0.03", "--output", preset_path)
    preset = Preset(preset_path)
    meta = preset.preset
    assert meta["compression_ratio"] > 1, "tune found nothing to compress"

    hf = tiny_model(arch)  # the same weights (same seed) as the exported model
    wins = windows(model_pt, evald, meta["eval"]["seq_len"], meta["eval"]["tokens"])
    with torch.no_grad():
        base = ppl_of(lambda ids: hf(input_ids=ids).logits, wins)
    comp, cache = through_cache(preset, hf, wins)
    assert abs(base / meta["baseline_ppl"] - 1) < 1e-5
    # 16-bit latents are stored as float16 and scales as float16: close, not bit-equal.
    assert abs(comp / meta["compressed_ppl"] - 1) < 2e-3, (comp, meta["compressed_ppl"])

    # The cache holds the bytes the preset accounts for: the latents of every
    # token at bytes_per_token_after, and the sink tokens' exact copies.
    t, s = wins.shape[1], meta["sink_tokens"]
    assert s == 4
    for l, layer in enumerate(cache.layers):
        pl = meta["layers"][l]
        assert layer.nbytes() == s * pl["bytes_per_token_before"] + t * pl["bytes_per_token_after"]
    assert cache.nbytes() == s * meta["bytes_per_token_before"] + t * meta["bytes_per_token_compressed"]

    # generate runs with the compressed cache.
    out = hf.generate(wins[:1, :16], past_key_values=KVTorchCache(preset, hf), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 20)


def calibrated_tiny(tmp_path, tiny_tokenizer, kv=None):
    """(model.pt, calib.pt, eval texts) of the tiny llama, exported (with kv
    keys when given) and calibrated."""
    folder = tmp_path / "hf"
    model = tiny_model("llama")
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(tiny_tokenizer)
    model_pt = str(tmp_path / "model.pt")
    subprocess.run([sys.executable, "-m", "kvtorch.export", str(folder), "-o", model_pt] + (["--kv-source", kv] if kv else []),
                   check=True, capture_output=True)
    calib, evald = write_texts(tmp_path / "calib", CALIB_TEXT), write_texts(tmp_path / "eval", EVAL_TEXT)
    cal = str(tmp_path / "calib.pt")
    kvtorch("calibrate", "-q", "--model", model_pt, "--texts", calib, "--output", cal, "--seq-len", "64", "--min-tokens", "8")
    return model_pt, cal, evald


@pytest.mark.parametrize("setting", [
    ["--basis", "none", "--bits", "8"],
    ["--basis", "none", "--bits", "4", "--sinks", "0"],
    ["--basis", "head", "--rank-k", "8", "--rank-v", "12", "--bits", "4"],
    ["--basis", "joint", "--rank-k", "12", "--rank-v", "20", "--bits", "8", "--sinks", "2"],
])
def test_every_basis_through_the_cache(setting, tiny_tokenizer, tmp_path):
    """Presets of every kind of basis (written by kvtorch eval --output) give
    Go's perplexity through KVTorchCache, and store the bytes they count."""
    model_pt, cal, evald = calibrated_tiny(tmp_path, tiny_tokenizer)
    preset_path = str(tmp_path / "preset.json")
    kvtorch("eval", "--json", "--model", model_pt, "--calibration", cal, "--texts", evald, "--seq-len", "64",
            "--output", preset_path, *setting)
    preset = Preset(preset_path)
    meta = preset.preset
    assert meta["compressed_ppl"] != meta["baseline_ppl"]
    hf = tiny_model("llama")
    wins = windows(model_pt, evald, meta["eval"]["seq_len"], meta["eval"]["tokens"])
    comp, cache = through_cache(preset, hf, wins)
    assert abs(comp / meta["compressed_ppl"] - 1) < 2e-3, (comp, meta["compressed_ppl"])
    t, s = wins.shape[1], meta["sink_tokens"]
    assert cache.nbytes() == s * meta["bytes_per_token_before"] + t * meta["bytes_per_token_compressed"]


@pytest.mark.parametrize("kv", ["pre_rope", "post_rope"])
def test_split_latents_through_the_cache(kv, tiny_tokenizer, tmp_path):
    """A preset whose latents are split by bit width (16, 8 and 4 bits, a
    scale per width) gives kvtorch eval's perplexity through KVTorchCache,
    with the C kernels and with plain torch, stores the bytes it counts,
    and is applied to an exported model's hooks as eval measured it."""
    import json

    model_pt, cal, evald = calibrated_tiny(tmp_path, tiny_tokenizer, kv)
    plain = str(tmp_path / "plain.json")
    common = ["--model", model_pt, "--calibration", cal, "--texts", evald, "--seq-len", "64"]
    kvtorch("eval", "--json", *common, "--output", plain, "--basis", "joint", "--rank-k", "12", "--rank-v", "20",
            "--bits", "8", "--sinks", "2")
    split = split_preset(plain, str(tmp_path / "split.json"))
    rows = json.loads(kvtorch("eval", "--json", *common, "--preset", split).stdout)["rows"]
    go = rows[-1]["ppl"]
    preset = Preset(split)
    meta = preset.preset
    assert preset.side(0, "k").widths == [(1, 16), (3, 8), (8, 4)]
    assert go not in (meta["compressed_ppl"], meta["baseline_ppl"])  # a setting of its own
    hf = tiny_model("llama")
    wins = windows(model_pt, evald, meta["eval"]["seq_len"], meta["eval"]["tokens"])
    comp, cache = through_cache(preset, hf, wins)
    with torch.no_grad():
        extra = {"kvtorch.json": ""}
        hooked = torch.jit.load(model_pt, _extra_files=extra)
        preset.apply(hooked, json.loads(extra["kvtorch.json"]))
        applied = ppl_of(lambda ids: hooked(ids)[0], wins)
    assert abs(comp / go - 1) < 2e-3, (comp, go)
    assert abs(applied / go - 1) < 1e-5, (applied, go)
    t, s = wins.shape[1], meta["sink_tokens"]
    assert cache.nbytes() == s * meta["bytes_per_token_before"] + t * meta["bytes_per_token_compressed"]
    # Token by token, with the kernels and without: the prompt's logits.
    ids = wins[:1, :24]
    with torch.no_grad():
        want = hf(input_ids=ids, past_key_values=KVTorchCache(preset, hf), use_cache=True).logits
        for kernels in (True, False):
            import kvtorch.cache as kvcache
            old, kvcache.latent.available = kvcache.latent.available, kernels and kvcache.latent.available
            try:
                cache = KVTorchCache(preset, hf)
                steps = [hf(input_ids=ids[:, :8], past_key_values=cache, use_cache=True).logits]
                for i in range(8, 24):
                    steps.append(hf(input_ids=ids[:, i:i + 1], past_key_values=cache, use_cache=True).logits)
            finally:
                kvcache.latent.available = old
            got = torch.cat(steps, dim=1)
            assert (got - want).abs().max() < 1e-2, (kernels, (got - want).abs().max())


def test_compress_expand_shapes_and_packing(tmp_path):
    """4-bit latents pack two per byte; odd ranks pad; expand inverts compress."""
    from kvtorch import Latents

    z = Latents(torch.zeros(1, 1, 3, 3, dtype=torch.uint8), torch.ones(1, 1, 3, 1, dtype=torch.float16), 4, 5)
    assert z.nbytes == 9 + 6


@pytest.mark.skipif(not os.path.exists(REFMODEL), reason="build/refmodel.pt is not exported (make deps)")
def test_reference_model_compress_expand_match_go(tmp_path):
    import refmodel
    from torch import nn

    cal = str(tmp_path / "calib.pt")
    kvtorch("calibrate", "-q", "--model", REFMODEL, "--output", cal)
    preset_path = str(tmp_path / "preset.json")
    kvtorch("tune", "-q", "--model", REFMODEL, "--calibration", cal, "--max-tokens", "4096", "--bits", "16,8",
            "--output", preset_path)
    preset = Preset(preset_path)

    class Through(nn.Module):
        def __init__(self, layer, kind):
            super().__init__()
            self.layer, self.kind = layer, kind

        def forward(self, x):
            y = preset.expand(self.layer, self.kind, preset.compress(self.layer, self.kind, x))
            y[:, :, :preset.sinks] = x[:, :, :preset.sinks]  # the sink tokens stay exact
            return y

    model, c = refmodel.load_model(TESTDATA)
    for i, blk in enumerate(model.blocks):
        blk.attn.k_hook, blk.attn.v_hook = Through(i, "k"), Through(i, "v")
    meta = preset.preset
    wins = windows(REFMODEL, os.path.join(TESTDATA, "eval"), meta["eval"]["seq_len"], meta["eval"]["tokens"])
    with torch.no_grad():
        comp = ppl_of(lambda ids: model(ids)[0], wins)
    assert abs(comp / meta["compressed_ppl"] - 1) < 2e-3, (comp, meta["compressed_ppl"])
