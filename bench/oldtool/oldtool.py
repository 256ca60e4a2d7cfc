"""A Python implementation of the pipeline kvtorch replaces (the old tool's,
../shared/notes/prior-art.md), for side-by-side benchmarks on kvtorch models:

- calibration keeps every K/V of every calibration token in memory, flattens
  the KV heads into one basis per layer, centres in float32 and runs
  torch.pca_lowrank(q=rank, niter=2) for ONE rank;
- the calibration file is the old format (version 3, float16 U [D, rank], mean,
  latent_std, latent_max_abs, energy_fraction);
- tuning is a grid over ranks {128,116,106,96,85,80,64} (scaled to the head
  dim) x bits {16, 8}, re-calibrating in a new process for every rank, V only
  by default, keeping the most compressing configuration within the budget.

  python oldtool.py calibrate --model M.pt --texts DIR... --rank R --out old.pt
  python oldtool.py eval --model M.pt --calibration old.pt --texts DIR --target v --bits 16
  python oldtool.py tune --model M.pt --calib-texts DIR --texts DIR --target-ppl-delta 0.05

Perplexity is measured as kvtorch measures it (same windows), with the
compression applied through the model's hook buffers. OLDTOOL_DEVICE=cuda
runs it on a GPU (with a model traced there).
"""
import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

# Run TorchScript files as plain interpreted graphs: the profiling executor
# would re-specialise them for every new sequence length.
torch._C._set_graph_executor_optimize(False)

GRID = [128, 116, 106, 96, 85, 80, 64]


DEVICE = os.environ.get("OLDTOOL_DEVICE", "cpu")


def load(model_path):
    files = {"kvtorch.json": "", "tokenizer.json": ""}
    model = torch.jit.load(model_path, map_location=DEVICE, _extra_files=files)
    from tokenizers import Tokenizer

    return model, json.loads(files["kvtorch.json"]), Tokenizer.from_str(files["tokenizer.json"].decode())


def read_texts(paths):
    out = []
    for p in paths:
        files = sorted(glob.glob(os.path.join(p, "**", "*.txt"), recursive=True)) if os.path.isdir(p) else [p]
        for f in files:
            with open(f, encoding="utf-8") as fh:
                out.append(fh.read())
    return out


def calibrate(model_path, texts, rank, out, max_length=512):
    model, meta, tok = load(model_path)
    keep = {(l, s): [] for l in range(meta["n_layers"]) for s in "KV"}
    with torch.no_grad():
        for text in texts:
            ids = tok.encode(text).ids
            for s in range(0, len(ids), max_length):
                _, keys, values = model(torch.tensor([ids[s:s + max_length]], device=DEVICE))
                for l in range(meta["n_layers"]):
                    keep[(l, "K")].append(keys[l].reshape(-1, keys[l].shape[-1]).clone())  # heads flattened
                    keep[(l, "V")].append(values[l].reshape(-1, values[l].shape[-1]).clone())
    layers = []
    for l in range(meta["n_layers"]):
        entry = {}
        for s in "KV":
            X = torch.cat(keep[(l, s)]).float()
            mean = X.mean(0)
            Xc = X - mean
            try:
                _, _, basis = torch.pca_lowrank(Xc, q=rank, center=False, niter=2)  # randomised; basis [D, rank]
            except RuntimeError:  # the old tool fell back to a full SVD
                basis = torch.linalg.svd(Xc, full_matrices=False)[2].T[:, :rank]
            Z = Xc @ basis
            std = Z.std(0)
            entry[s] = {"U": basis.half(), "mean": mean.half(), "latent_std": std.half(),
                        "latent_max_abs": Z.abs().amax(0).half(), "energy_fraction": (std / std.sum()).half()}
        layers.append(entry)
    torch.save({"version": 3, "model": meta["name"], "rank": rank, "head_dim": meta["head_dim_v"],
                "n_layers": meta["n_layers"], "n_heads": meta["n_kv_heads"], "gamma_aware": False,
                "channel_pruning": False, "layers": layers}, out)


def windows(tok, meta, texts, seq_len, max_tokens):
    stream = []
    for t in texts:
        stream += tok.encode(t).ids
        if meta.get("eos_token_id") is not None:
            stream.append(meta["eos_token_id"])
    out = []
    for s in range(0, len(stream) - seq_len + 1, seq_len):
        if max_tokens and (len(out) + 1) * (seq_len - 1) > max_tokens:
            break
        out.append(stream[s:s + seq_len])
    return torch.tensor(out)


def perplexity(model, wins, batch=4):
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(wins), batch):
            x = wins[i:i + batch].to(DEVICE)
            logits = model(x)[0][:, :-1].float()
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
            n += x[:, 1:].numel()
    return math.exp(nll / n)


def apply(model, meta, cal, target, bits):
    """Writes the old basis (shared by heads) into the model's hook buffers."""
    buffers = dict(model.named_buffers())
    for l in range(meta["n_layers"]):
        for s in "KV":
            prefix = meta["hook"][s.lower()].format(layer=l)
            d = meta["head_dim_" + s.lower()]
            h = meta["n_kv_heads"]
            if cal is None or s.lower() not in target:
                down = torch.eye(d, device=DEVICE).expand(h, d, d)
                mean = torch.zeros(h, d, device=DEVICE)
                b = 16
            else:
                U = cal["layers"][l][s]["U"].float().to(DEVICE)
                down = torch.zeros(d, d, device=DEVICE)
                down[:, :U.shape[1]] = U
                down = down.expand(h, d, d)
                mean = cal["layers"][l][s]["mean"].float().to(DEVICE).expand(h, d)
                b = bits
            up = down.transpose(-1, -2)
            if buffers[prefix + ".down"].dim() == 2:  # hook format 2: [E, E] over the heads joined
                down, up, mean = torch.block_diag(*down), torch.block_diag(*up), mean.flatten()
            buffers[prefix + ".down"].copy_(down)
            buffers[prefix + ".up"].copy_(up)
            buffers[prefix + ".mean"].copy_(mean)
            buffers[prefix + ".bits"].fill_(b)


def evaluate(model_path, cal_path, texts, target, bits, seq_len=512, max_tokens=0):
    model, meta, tok = load(model_path)
    wins = windows(tok, meta, read_texts(texts), seq_len, max_tokens)
    apply(model, meta, None, target, 16)
    base = perplexity(model, wins)
    apply(model, meta, torch.load(cal_path) if cal_path else None, target, bits)
    return base, perplexity(model, wins)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("--model", required=True)
    c.add_argument("--texts", nargs="+", required=True)
    c.add_argument("--rank", type=int, required=True)
    c.add_argument("--out", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--calibration", required=True)
    e.add_argument("--texts", nargs="+", required=True)
    e.add_argument("--target", default="v")
    e.add_argument("--bits", type=int, default=16)
    e.add_argument("--max-tokens", type=int, default=0)
    t = sub.add_parser("tune")
    t.add_argument("--model", required=True)
    t.add_argument("--calib-texts", nargs="+", required=True)
    t.add_argument("--texts", nargs="+", required=True)
    t.add_argument("--target", default="v")
    t.add_argument("--target-ppl-delta", type=float, default=0.05)
    t.add_argument("--max-tokens", type=int, default=0)
    t.add_argument("--workdir", default=".")
    args = ap.parse_args()
    if args.cmd == "calibrate":
        calibrate(args.model, read_texts(args.texts), args.rank, args.out)
    elif args.cmd == "eval":
        base, comp = evaluate(args.model, args.calibration, args.texts, args.target, args.bits, max_tokens=args.max_tokens)
        print(json.dumps({"baseline_ppl": base, "compressed_ppl": comp, "ppl_delta": comp / base - 1}))
    else:
        _, meta, _ = load(args.model)
        d = meta["head_dim_v"]
        h = meta["n_kv_heads"]
        results, best = [], None
        t0 = time.time()
        for g in GRID:
            rank = round(g / 128 * d)
            cal = os.path.join(args.workdir, f"old-rank{rank}.pt")
            # A new process per rank, as the old tool re-calibrated (model reloaded) for each.
            subprocess.run([sys.executable, __file__, "calibrate", "--model", args.model, "--texts", *args.calib_texts,
                            "--rank", str(rank), "--out", cal], check=True)
            for bits in (16, 8):
                if rank == d and bits == 16:
                    continue
                base, comp = evaluate(args.model, cal, args.texts, args.target, bits, max_tokens=args.max_tokens)
                per_side = lambda on: h * ((rank * bits + 7) // 8 + (2 if bits < 16 else 0)) if on else h * d * 2  # noqa: E731
                before = 2 * h * d * 2
                after = per_side("k" in args.target) + per_side("v" in args.target)
                r = {"rank": rank, "bits": bits, "baseline_ppl": base, "compressed_ppl": comp,
                     "ppl_delta": comp / base - 1, "compression_ratio": before / after}
                results.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
                if r["ppl_delta"] <= args.target_ppl_delta and (best is None or r["compression_ratio"] > best["compression_ratio"]):
                    best = r
        print(json.dumps({"best": best, "candidates": results, "seconds": time.time() - t0}))


if __name__ == "__main__":
    main()
