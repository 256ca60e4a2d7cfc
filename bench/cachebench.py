"""Decoding with kvtorch presets against transformers' caches: tokens/s and
the bytes each cache holds, side by side in one run.

    python bench/cachebench.py --model HF_FOLDER --preset NAME=preset.json [--preset ...]
                               [--contexts 1024,4096,16384] [--steps 8] [--rounds 3] [--json out.json]

For each context length T, the prompt (T tokens of --texts, repeated as
needed) is run once through the model with DynamicCache (prefill, 2048
tokens at a time); every cache is then filled with that prompt's K/V through
its own update() (KVTorchCache compresses them as it stores them), and
decodes --rounds × --steps tokens, one forward pass per token, the caches
taking turns round by round. Reported: the median seconds per decoding step,
its ratio to DynamicCache's, and the bytes each cache holds at the end,
measured from the storages of the tensors it references (a tensor shared
twice counts once; KVTorchCache's room for the tokens to come included);
for KVTorchCache also the preset's count ((sink tokens + min(recent
window, T)) · bytes_per_token_before + T · bytes_per_token_compressed). On CUDA, the peak
memory allocated during decoding is reported too.

transformers' QuantizedCache (quanto backend, 4 and 2 bits) is included when
optimum-quanto is installed (make bench installs it).
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, DynamicCache  # noqa: E402

from kvtorch import KVTorchCache, Latents, Preset, latent  # noqa: E402
from kvtorch.cache import SplitStore  # noqa: E402

PREFILL = 2048


def held_bytes(obj):
    """Bytes of the distinct storages of the tensors obj references (its
    attributes, lists, dicts, Latents, tensor subclasses' inner tensors)."""
    seen, total = set(), 0

    def walk(x, depth=0):
        nonlocal total
        if depth > 6 or x is None:
            return
        if torch.is_tensor(x):
            if hasattr(x, "__tensor_flatten__") and type(x) is not torch.Tensor:  # quanto's packed tensors
                names, _ = x.__tensor_flatten__()
                for n in names:
                    walk(getattr(x, n), depth + 1)
                return
            st = x.untyped_storage()
            key = (st.data_ptr(), x.device)
            if key not in seen and st.nbytes():
                seen.add(key)
                total += st.nbytes()
            return
        if isinstance(x, (list, tuple)):
            for y in x:
                walk(y, depth + 1)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y, depth + 1)
        elif isinstance(x, (Latents, latent.Store)):
            walk(x.data, depth + 1)
            walk(x.scale, depth + 1)
        elif isinstance(x, SplitStore):  # a side split by bit width: a Store per width
            walk(x.parts, depth + 1)

    for layer in obj.layers:
        for name, v in vars(layer).items():
            if name in ("cache", "preset", "sides"):  # the preset's bases are not the cache's (reported apart)
                continue
            walk(v)
    return total


def prompt_ids(tok, texts, n):
    ids = []
    files = sorted(os.path.join(texts, f) for f in os.listdir(texts)) if os.path.isdir(texts) else [texts]
    while len(ids) < n + 4096:
        for f in files:
            with open(f, encoding="utf-8") as fh:
                ids += tok.encode(fh.read()).ids
    return torch.tensor([ids[:n + 4096]])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="transformers model folder (e.g. make real-model's hf/)")
    ap.add_argument("--preset", action="append", default=[], help="NAME=preset.json, one per KVTorchCache row")
    ap.add_argument("--contexts", default="1024,4096,16384")
    ap.add_argument("--steps", type=int, default=8, help="decoding steps per cache per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--texts", default=os.path.join(os.path.dirname(__file__), "..", "testdata", "eval"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-quanto", action="store_true", help="leave transformers' QuantizedCache out")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()

    dev = torch.device(a.device)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).to(dev).eval()
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    presets = []
    for spec in a.preset:
        name, _, path = spec.partition("=")
        presets.append((name, Preset(path, device=a.device)))
    quanto = False
    if not a.no_quanto:
        try:
            import optimum.quanto  # noqa: F401
            quanto = True
        except ImportError:
            print("optimum-quanto is not installed: QuantizedCache left out", file=sys.stderr)

    results = {"model": a.model, "device": str(dev), "threads": torch.get_num_threads(), "steps": a.steps,
               "rounds": a.rounds, "rows": []}
    for ctx in (int(c) for c in a.contexts.split(",")):
        ids = prompt_ids(tok, a.texts, ctx).to(dev)
        prompt, follow = ids[:, :ctx], ids[:, ctx:]
        model.set_attn_implementation("sdpa")
        dyn = DynamicCache(config=model.config)
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, ctx, PREFILL):
                model(input_ids=prompt[:, i:i + PREFILL], past_key_values=dyn, use_cache=True)
        print(f"T={ctx}: prefill {time.perf_counter() - start:.1f} s", file=sys.stderr)
        kv = [(l.keys, l.values) for l in dyn.layers]

        caches = [("DynamicCache (float32)", dyn, "sdpa", None)]
        if quanto:
            from transformers import QuantizedCache

            for bits in (4, 2):
                qc = QuantizedCache("quanto", model.config, nbits=bits)
                for i, (k, v) in enumerate(kv):
                    qc.update(k, v, i)
                caches.append((f"QuantizedCache quanto {bits}-bit", qc, "sdpa", None))
        for name, p in presets:
            c = KVTorchCache(p, model)  # selects the "kvtorch" attention
            model.set_attn_implementation("sdpa")  # filled through update(): stores the prompt compressed
            with torch.no_grad():
                for i, (k, v) in enumerate(kv):
                    c.update(k, v, i)
            caches.append((f"KVTorchCache {name}", c, "kvtorch", p))
        dyn_fresh = DynamicCache(config=model.config)  # the prefilled one, copied: every cache decodes the same tokens
        for i, (k, v) in enumerate(kv):
            dyn_fresh.update(k.clone(), v.clone(), i)
        caches[0] = ("DynamicCache (float32)", dyn_fresh, "sdpa", None)
        del dyn, kv

        times = {name: [] for name, *_ in caches}
        peaks = {}
        with torch.no_grad():
            for r in range(a.rounds):
                for name, cache, attn, _ in caches:
                    model.set_attn_implementation(attn)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        base = torch.cuda.memory_allocated()
                    for s in range(a.steps):
                        n = cache.get_seq_length()
                        x = follow[:, r * a.steps + s:r * a.steps + s + 1]
                        t0 = time.perf_counter()
                        model(input_ids=x, past_key_values=cache, use_cache=True,
                              position_ids=torch.tensor([[n]], device=dev))
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                        times[name].append(time.perf_counter() - t0)
                    if dev.type == "cuda":
                        peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated() - base)
        base = statistics.median(times[caches[0][0]])
        for name, cache, _, p in caches:
            med = statistics.median(times[name])
            row = {"context": ctx, "cache": name, "tokens": cache.get_seq_length(), "step_s": med,
                   "tokens_per_s": 1 / med, "speed_vs_dynamic": base / med, "held_bytes": held_bytes(cache)}
            if p is not None:
                m = p.preset
                exact = m["sink_tokens"] + min(m.get("recent_tokens", 0), row["tokens"])  # the sinks and the ring
                row["preset_bytes"] = exact * m["bytes_per_token_before"] + row["tokens"] * m["bytes_per_token_compressed"]
                row["kv_source"] = p.kv_source
            if name in peaks:
                row["peak_decode_bytes"] = peaks[name]
            results["rows"].append(row)
            print(json.dumps(row), file=sys.stderr)

    print(f"| context | cache | step (median) | tokens/s | speed vs DynamicCache | bytes held | MB held | preset's count |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results["rows"]:
        count = f"{r['preset_bytes']:,}" if "preset_bytes" in r else ""
        print(f"| {r['context']} | {r['cache']} | {1000 * r['step_s']:.1f} ms | {r['tokens_per_s']:.1f} | "
              f"{r['speed_vs_dynamic']:.2f}× | {r['held_bytes']:,} | {r['held_bytes'] / 2**20:.1f} | {count} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
