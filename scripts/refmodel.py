"""kvtorch's reference model: a small decoder with what current open models
have (RMSNorm, RoPE, grouped-query attention, SwiGLU, optional q/k/v bias as in
Qwen2, head_dim 64), its byte-level BPE tokenizer, training and export.

  python refmodel.py train --corpus DIR --out testdata [--steps N] [--seed S]
      trains the tokenizer and the model on DIR/train.jsonl (see corpus.py),
      writes testdata/refmodel.safetensors, refmodel.json (config, training
      record, held-out perplexity), refmodel.tokenizer.json, and the texts
      testdata/calib/*.txt and testdata/eval/*.txt.
  python refmodel.py export --data testdata --out build/refmodel.pt [--device cpu|cuda]
      traces the model to TorchScript following docs/model-contract.md, with
      kvtorch.json and tokenizer.json stored inside.
"""
import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

try:
    from kvtorch.hook import FORMAT_VERSION, KVHook
except ImportError:  # a checkout without the package installed
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    from kvtorch.hook import FORMAT_VERSION, KVHook


@dataclass
class Config:
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 64
    ffn_dim: int = 704
    max_positions: int = 512
    rope_theta: float = 10000.0
    qkv_bias: bool = True
    norm_eps: float = 1e-5


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)
        self.k_hook = KVHook(c.n_kv_heads, c.head_dim)
        self.v_hook = KVHook(c.n_kv_heads, c.head_dim)

    def forward(self, x, cos, sin, recent=None):
        """recent (a scalar tensor, or None): each query takes the true K/V of
        its last `recent` positions and the hooked ones of older positions."""
        b, t, _ = x.shape
        c = self.c
        q = self.q_proj(x).view(b, t, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)  # pre-RoPE keys
        v = self.v_proj(x).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        kh = self.k_hook(k)
        vh = self.v_hook(v)
        q = q * cos + rotate_half(q) * sin
        kh = kh * cos + rotate_half(kh) * sin
        groups = c.n_heads // c.n_kv_heads
        kh = kh.repeat_interleave(groups, dim=1)
        vh = vh.repeat_interleave(groups, dim=1)
        if recent is None:
            o = F.scaled_dot_product_attention(q, kh, vh, is_causal=True)
        else:
            ke = (k * cos + rotate_half(k) * sin).repeat_interleave(groups, dim=1)
            ve = v.repeat_interleave(groups, dim=1)
            pos = torch.ones_like(cos[:, 0]).cumsum(0) - 1  # 0 .. T-1, with a traced T
            dist = pos[:, None] - pos[None, :]
            near = dist < recent
            mask = torch.cat([(dist >= 0) & ~near, (dist >= 0) & near], dim=-1)
            o = F.scaled_dot_product_attention(q, torch.cat([kh, ke], dim=2), torch.cat([vh, ve], dim=2), attn_mask=mask)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1)), k, v


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = Attention(c)
        self.mlp_norm = RMSNorm(c.d_model, c.norm_eps)
        self.gate = nn.Linear(c.d_model, c.ffn_dim, bias=False)
        self.up = nn.Linear(c.d_model, c.ffn_dim, bias=False)
        self.down = nn.Linear(c.ffn_dim, c.d_model, bias=False)

    def forward(self, x, cos, sin, recent=None):
        a, k, v = self.attn(self.attn_norm(x), cos, sin, recent)
        x = x + a
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h)), k, v


class RefModel(nn.Module):
    """forward(input_ids int64[B, T]) -> (logits [B, T, V], keys, values), keys and
    values tuples of per-layer [B, H_kv, T, D] (pre-RoPE keys, values), as
    returned by the projections before the compression hook."""

    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim))
        ang = torch.outer(torch.arange(c.max_positions).float(), inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("rope_cos", ang.cos(), persistent=False)
        self.register_buffer("rope_sin", ang.sin(), persistent=False)
        self.register_buffer("recent_tokens", torch.tensor(0.0), persistent=False)  # the recent method's window

    def forward(self, input_ids):
        hidden, keys, values = self.body(input_ids)
        return self.head(hidden), keys, values

    def body(self, input_ids):
        """The model without its output layer: (hidden [B, T, d_model], keys, values)."""
        return self._body(input_ids, None)

    def recent(self, input_ids):
        """body with the recent window of recent_tokens (docs/model-contract.md)."""
        return self._body(input_ids, self.recent_tokens)

    def _body(self, input_ids, recent):
        t = input_ids.shape[1]
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embed(input_ids)
        keys, values = [], []
        for blk in self.blocks:
            x, k, v = blk(x, cos, sin, recent)
            keys.append(k)
            values.append(v)
        return self.norm(x), tuple(keys), tuple(values)

    def kv(self, input_ids):
        """Keys and values alone (what calibration takes)."""
        _, keys, values = self.body(input_ids)
        return keys, values

    def head(self, hidden):
        return F.linear(hidden, self.embed.weight)  # tied embeddings


# ---------------------------------------------------------------- data

def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def train_tokenizer(texts, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def write_texts(out_dir, sub, docs, tok, min_tokens, limit_tokens):
    """Writes docs with at least min_tokens tokens as sub/NNN-kind.txt until
    limit_tokens; returns the documents written."""
    d = os.path.join(out_dir, sub)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    total, written = 0, []
    for doc in docs:
        ntok = len(tok.encode(doc["text"]).ids)
        if ntok < min_tokens:
            continue
        with open(os.path.join(d, f"{len(written):03d}-{doc['kind']}.txt"), "w") as f:
            f.write(doc["text"])
        total += ntok
        written.append(doc)
        if total >= limit_tokens:
            break
    return written


def interleave_kinds(docs, seed):
    """Orders docs so that kinds alternate (diverse prefixes)."""
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    rng = random.Random(seed)
    for ds in by_kind.values():
        rng.shuffle(ds)
    out = []
    while any(by_kind.values()):
        for k in sorted(by_kind):
            if by_kind[k]:
                out.append(by_kind[k].pop())
    return out


@torch.no_grad()
def perplexity(model, ids, seq_len, max_windows=None):
    model.eval()
    nll, count = 0.0, 0
    windows = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    if max_windows:
        windows = windows[:max_windows]
    for i in range(0, len(windows), 8):
        x = torch.tensor(windows[i:i + 8])
        logits = model(x)[0]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        nll += loss.item()
        count += x[:, 1:].numel()
    return math.exp(nll / count), count


def cmd_train(args):
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    train_docs = read_jsonl(os.path.join(args.corpus, "train.jsonl"))
    calib_docs = read_jsonl(os.path.join(args.corpus, "calib.jsonl"))
    eval_docs = read_jsonl(os.path.join(args.corpus, "eval.jsonl"))
    c = Config(n_layers=args.layers, d_model=args.d_model, ffn_dim=args.ffn_dim, vocab_size=args.vocab)

    t0 = time.time()
    tok = train_tokenizer([d["text"] for d in train_docs], c.vocab_size)
    c.vocab_size = tok.get_vocab_size()
    eos = tok.token_to_id("<|endoftext|>")
    print(f"tokenizer: {c.vocab_size} tokens in {time.time() - t0:.0f}s", flush=True)

    stream = []
    for d in train_docs:
        stream.extend(tok.encode(d["text"]).ids)
        stream.append(eos)
    L = c.max_positions
    seqs = torch.tensor(stream[: len(stream) // L * L]).view(-1, L)
    print(f"train: {len(stream)} tokens, {seqs.shape[0]} sequences of {L}", flush=True)

    model = RefModel(c)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02 / (math.sqrt(2 * c.n_layers) if name.endswith(("o_proj.weight", "down.weight")) else 1))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(seqs.shape[0], generator=g)
    pos = 0
    t0 = time.time()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for grp in opt.param_groups:
            grp["lr"] = lr
        if pos + args.batch > len(order):
            order = torch.randperm(seqs.shape[0], generator=g)
            pos = 0
        x = seqs[order[pos:pos + args.batch]]
        pos += args.batch
        model.train()
        logits = model(x)[0]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, c.vocab_size), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0

    os.makedirs(args.out, exist_ok=True)
    calib_written = write_texts(args.out, "calib", interleave_kinds(calib_docs, args.seed), tok, 256, 40_000)
    eval_written = write_texts(args.out, "eval", interleave_kinds(eval_docs, args.seed), tok, 256, 80_000)
    # Held-out perplexity on the shipped evaluation texts, in file order,
    # joined by <|endoftext|>, non-overlapping windows of 512 tokens.
    eval_stream = []
    for d in eval_written:
        eval_stream.extend(tok.encode(d["text"]).ids)
        eval_stream.append(eos)
    ppl, n_eval = perplexity(model, eval_stream, 512)
    print(f"held-out perplexity {ppl:.2f} over {n_eval} predicted tokens (seq-len 512)", flush=True)

    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "hook" not in k}
    save_file(state, os.path.join(args.out, "refmodel.safetensors"))
    tok.save(os.path.join(args.out, "refmodel.tokenizer.json"))
    record = {
        "config": asdict(c),
        "training": {"seed": args.seed, "steps": args.steps, "batch": args.batch, "seq_len": L, "lr": args.lr,
                     "threads": args.threads, "train_tokens": len(stream), "seconds": round(train_s),
                     "device": "cpu", "torch": torch.__version__},
        "heldout": {"perplexity": round(ppl, 3), "predicted_tokens": n_eval, "seq_len": 512,
                    "texts": "testdata/eval (files in order, joined by <|endoftext|>)"},
        "texts": {"calib_files": len(calib_written), "eval_files": len(eval_written),
                  "corpus_documents": {"train": len(train_docs), "calib": len(calib_docs), "eval": len(eval_docs)}},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    with open(os.path.join(args.out, "refmodel.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record["heldout"]))


# ---------------------------------------------------------------- export

def load_model(data_dir):
    from safetensors.torch import load_file
    with open(os.path.join(data_dir, "refmodel.json")) as f:
        rec = json.load(f)
    c = Config(**rec["config"])
    model = RefModel(c)
    missing, unexpected = model.load_state_dict(load_file(os.path.join(data_dir, "refmodel.safetensors")), strict=False)
    if unexpected or any("hook" not in m for m in missing):
        raise SystemExit(f"refmodel weights do not match: missing {missing}, unexpected {unexpected}")
    return model.eval(), c


def metadata(c: Config, device: str):
    return {
        "format_version": FORMAT_VERSION,
        "methods": ["kv", "body", "head", "recent"],
        "name": "kvtorch-refmodel",
        "architecture": "kvtorch-ref",
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "head_dim_k": c.head_dim,
        "head_dim_v": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_positions": c.max_positions,
        "dtype": "float32",
        "device": device,
        "kv_source": "pre_rope",
        "hook": {"k": "blocks.{layer}.attn.k_hook", "v": "blocks.{layer}.attn.v_hook"},
        "tokenizer": "tokenizer.json",
        "add_bos": False,
        "bos_token_id": None,
        "eos_token_id": 0,
    }


def cmd_export(args):
    model, c = load_model(args.data)
    model = model.to(args.device)
    example = torch.randint(0, c.vocab_size, (2, 16), device=args.device)
    with torch.no_grad():
        hidden = model.body(example)[0]
        traced = torch.jit.trace_module(model, {"forward": (example,), "kv": (example,), "body": (example,),
                                                "head": (hidden,), "recent": (example,)}, check_trace=False)
    with open(os.path.join(args.data, "refmodel.tokenizer.json")) as f:
        tokenizer = f.read()
    extra = {"kvtorch.json": json.dumps(metadata(c, args.device), indent=2), "tokenizer.json": tokenizer}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    try:
        torch.jit.save(traced, tmp, _extra_files=extra)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):  # a failed save leaves nothing behind
            os.remove(tmp)
    print(f"exported {args.out} ({args.device})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--corpus", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=1200)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--layers", type=int, default=6)
    t.add_argument("--d-model", type=int, default=256)
    t.add_argument("--ffn-dim", type=int, default=704)
    t.add_argument("--vocab", type=int, default=4096)
    e = sub.add_parser("export")
    e.add_argument("--data", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--device", default="cpu")
    args = ap.parse_args()
    {"train": cmd_train, "export": cmd_export}[args.cmd](args)


if __name__ == "__main__":
    main()
