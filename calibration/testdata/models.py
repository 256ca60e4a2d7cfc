"""Tiny kvtorch models for the calibration tests: one that follows the model
contract, the same with the format-1 and format-2 compression hooks (as
models exported before hook formats 2 and 3 have), and variants that break
it in one way each.

Usage: python models.py OUT_DIR
Writes OUT_DIR/{good,good_forward,good_v1,good_v2,no_meta,wrong_arity,wrong_kshape,missing_hook,nan,
short_layers,missing_method}.pt: good has the body and head methods, good_forward (the same weights) only
forward, as files exported before them.
"""
import json
import os
import sys

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts"))
import refmodel  # noqa: E402


def tokenizer_json():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog " * 20, "func main() { return 42 }\n" * 20]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok.to_str(), tok.get_vocab_size()


class KVHookV1(nn.Module):
    """The compression hook of format 1: per KV head, [H, D, D] down/up,
    [H, D] mean, bits; no sinks, raw per-token absmax quantization."""

    def __init__(self, heads, dim):
        super().__init__()
        eye = torch.eye(dim).expand(heads, dim, dim).clone()
        self.register_buffer("down", eye)
        self.register_buffer("up", eye.clone())
        self.register_buffer("mean", torch.zeros(heads, dim))
        self.register_buffer("bits", torch.tensor(16.0))

    def forward(self, x):
        mean = self.mean[:, None, :]
        z = torch.matmul(x.float() - mean, self.down)
        levels = torch.pow(2.0, self.bits - 1) - 1
        scale = z.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / levels
        zq = torch.round(z / scale) * scale
        z = torch.where(self.bits >= 16, z, zq)
        return (torch.matmul(z, self.up) + mean).to(x.dtype)


class KVHookV2(nn.Module):
    """The compression hook of format 2: joint [E, E] down/up, scalar bits,
    and a scalar qhead choosing the quantization groups (per head or over
    all E latents)."""

    def __init__(self, heads, dim):
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

    def forward(self, x):
        xf = x.float().transpose(1, 2).flatten(2)
        z = torch.matmul(xf - self.mean, self.down)
        zn = z / self.qscale
        levels = torch.pow(2.0, self.bits - 1) - 1
        per_head = zn.abs().unflatten(-1, (self.heads, self.dim)).amax(-1).repeat_interleave(self.dim, dim=-1)
        whole = zn.abs().amax(-1, keepdim=True)
        step = torch.where(self.qhead > 0, per_head, whole).clamp_min(1e-30) / levels
        zq = torch.round(zn / step) * step * self.qscale
        z = torch.where(self.bits >= 16, z, zq)
        y = torch.matmul(z, self.up) + self.mean
        position = torch.ones_like(xf[0, :, 0]).cumsum(0) - 1
        y = torch.where((position < self.sink)[None, :, None], xf, y)
        return y.unflatten(-1, (self.heads, self.dim)).transpose(1, 2).to(x.dtype)


class Wrap(nn.Module):
    def __init__(self, inner, mode):
        super().__init__()
        self.inner = inner
        self.mode = mode

    def forward(self, ids):
        logits, keys, values = self.inner(ids)
        if self.mode == "wrong_arity":
            return logits, keys
        if self.mode == "wrong_kshape":
            return logits, tuple(k.transpose(1, 2) for k in keys), values
        if self.mode == "short_layers":
            return logits, keys[:1], values[:1]
        if self.mode == "nan":
            k1 = keys[1].clone()
            k1[:, 1] = float("nan")  # layer 1, head 1
            return logits, (keys[0], k1), values
        return logits, keys, values


def main(out):
    os.makedirs(out, exist_ok=True)
    tok, vocab = tokenizer_json()
    torch.manual_seed(0)
    c = refmodel.Config(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=64, max_positions=128)
    model = refmodel.RefModel(c).eval()
    split = refmodel.metadata(c, "cpu")
    split["name"] = "tiny"
    meta = {k: v for k, v in split.items() if k != "methods"}  # forward only
    example = torch.randint(0, vocab, (2, 8))
    with torch.no_grad():
        hidden = model.body(example)[0]
        traced = torch.jit.trace_module(model, {"forward": (example,), "kv": (example,), "body": (example,),
                                                "head": (hidden,), "recent": (example,)}, check_trace=False)
    torch.jit.save(traced, os.path.join(out, "good.pt"), _extra_files={"tokenizer.json": tok, "kvtorch.json": json.dumps(split)})
    for name, mode, md in [("good_forward", None, meta), ("missing_method", None, split), ("no_meta", None, None),
                           ("wrong_arity", "wrong_arity", meta),
                           ("wrong_kshape", "wrong_kshape", meta), ("short_layers", "short_layers", meta),
                           ("nan", "nan", meta),
                           ("missing_hook", None, dict(meta, hook={"k": "blocks.{layer}.attn.q_hook", "v": meta["hook"]["v"]}))]:
        m = Wrap(model, mode) if mode else model
        with torch.no_grad():
            traced = torch.jit.trace(m, (example,), check_trace=False)
        extra = {"tokenizer.json": tok}
        if md is not None:
            if mode:  # hook buffers live under inner. in the wrapper
                md = dict(md, hook={k: "inner." + v for k, v in md["hook"].items()})
            extra["kvtorch.json"] = json.dumps(md)
        torch.jit.save(traced, os.path.join(out, f"{name}.pt"), _extra_files=extra)
    # The same weights with format-2 hooks, then format-1 ones.
    for hook, version in [(KVHookV2, 2), (KVHookV1, 1)]:
        for blk in model.blocks:
            blk.attn.k_hook = hook(c.n_kv_heads, c.head_dim)
            blk.attn.v_hook = hook(c.n_kv_heads, c.head_dim)
        with torch.no_grad():
            traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, os.path.join(out, f"good_v{version}.pt"),
                       _extra_files={"tokenizer.json": tok, "kvtorch.json": json.dumps(dict(meta, format_version=version))})



if __name__ == "__main__":
    main(sys.argv[1])
