"""An independent computation on the real model with HuggingFace alone, for
cmd/kvtorch's real-model test.

Usage: python hf_reference.py [--preset PRESET] HF_DIR SEQ_LEN MAX_TOKENS FILE...

Prints JSON: {"ids": {file: ids}, "ppl": perplexity, "tokens": n}: the
tokenizer's ids of each file (tokenizers' encode, without special tokens),
and the transformers model's perplexity over non-overlapping windows of
SEQ_LEN tokens of the files joined by EOS, each starting with BOS when the
tokenizer's config says add_bos_token, at most MAX_TOKENS predicted tokens,
chosen evenly among all of them (the middle of each stride), as kvtorch
defines it. With --preset the model also runs with kvtorch.KVTorchCache holding the
preset's latents, and the JSON adds "ppl_cache" (the perplexity through the
cache), "cache_bytes" (after the first window) and "generated" (20 greedy
tokens after the first 64 of the text, with the cache, and with
transformers' DynamicCache).
"""
import json
import math
import os
import sys

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.utils import logging  # noqa: E402

logging.disable_progress_bar()
args = sys.argv[1:]
preset = None
if args[:1] == ["--preset"]:
    from kvtorch import KVTorchCache, Preset

    preset, args = Preset(args[1]), args[2:]
hf_dir, seq_len, max_tokens, files = args[0], int(args[1]), int(args[2]), args[3:]
torch.set_num_threads(2)
tok = Tokenizer.from_file(f"{hf_dir}/tokenizer.json")
model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
eos = model.config.eos_token_id
eos = eos[0] if isinstance(eos, list) else eos
bos = None
if os.path.exists(f"{hf_dir}/tokenizer_config.json"):
    with open(f"{hf_dir}/tokenizer_config.json", encoding="utf-8") as fh:
        if json.load(fh).get("add_bos_token"):
            bos = model.config.bos_token_id
ids, stream = {}, []
for f in files:
    with open(f, encoding="utf-8") as fh:
        ids[f] = tok.encode(fh.read(), add_special_tokens=False).ids
    stream += ids[f] + [eos]
n = max_tokens // (seq_len - 1)
need = seq_len - (bos is not None)
windows = [stream[i:i + need] for i in range(0, len(stream) - need + 1, need)]
if len(windows) > n:
    windows = [windows[int((j + 0.5) * len(windows) / n)] for j in range(n)]
if bos is not None:
    windows = [[bos] + w for w in windows]
extra = {}


def perplexity(with_cache):
    nll, count = 0.0, 0
    for w in windows:
        x = torch.tensor([w])
        cache = KVTorchCache(preset, model) if with_cache else None
        logits = model(input_ids=x, past_key_values=cache, use_cache=cache is not None).logits[0, :-1].double()
        nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += len(w) - 1
        if with_cache:
            extra.setdefault("cache_bytes", cache.nbytes())
    return math.exp(nll / count), count


with torch.no_grad():
    ppl, count = perplexity(False)
    if preset is not None:
        extra["ppl_cache"], _ = perplexity(True)
        prompt = torch.tensor([([bos] if bos is not None else []) + stream[:63 + (bos is None)]])
        ours = model.generate(prompt, past_key_values=KVTorchCache(preset, model), max_new_tokens=20, do_sample=False)
        theirs = model.generate(prompt, max_new_tokens=20, do_sample=False)
        extra["generated"] = {"kvtorch": ours[0, 64:].tolist(), "dynamic": theirs[0, 64:].tolist()}
print(json.dumps({"ids": ids, "ppl": ppl, "tokens": count, **extra}))
