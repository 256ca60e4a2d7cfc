"""An independent computation on the real model with HuggingFace alone, for
cmd/kvtorch's real-model test.

Usage: python hf_reference.py HF_DIR SEQ_LEN MAX_TOKENS FILE...

Prints JSON: {"ids": {file: ids}, "ppl": perplexity}: the tokenizer's ids of
each file (tokenizers' encode), and the eager transformers model's
perplexity over non-overlapping windows of SEQ_LEN tokens of the files
joined by EOS, at most MAX_TOKENS predicted tokens, as kvtorch defines it.
"""
import json
import math
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

hf_dir, seq_len, max_tokens, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
torch.set_num_threads(2)
tok = Tokenizer.from_file(f"{hf_dir}/tokenizer.json")
model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
eos = model.config.eos_token_id
eos = eos[0] if isinstance(eos, list) else eos
ids, stream = {}, []
for f in files:
    with open(f, encoding="utf-8") as fh:
        ids[f] = tok.encode(fh.read()).ids
    stream += ids[f] + [eos]
n = max_tokens // (seq_len - 1)
windows = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)][:n]
nll, count = 0.0, 0
with torch.no_grad():
    for w in windows:
        x = torch.tensor([w])
        logits = model(input_ids=x).logits[0, :-1].double()
        nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += len(w) - 1
print(json.dumps({"ids": ids, "ppl": math.exp(nll / count), "tokens": count}))
