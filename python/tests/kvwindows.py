"""kvtorch's evaluation windows rebuilt in Python, independently of the Go
code (texts/windows.go): each text file's ids without special tokens, BOS
as the model's kvtorch.json says, files joined by EOS, cut into windows of
seq_len tokens (BOS first when the model wants it), and at most
max_tokens // (seq_len - 1) of them chosen evenly among all (the middle of
each stride, kvtorch's seed 0). For texts small enough that kvtorch
tokenizes all of them (what the tests use)."""
import glob
import json
import os

import torch


def load(model_pt):
    """(kvtorch.json, tokenizers.Tokenizer) of an exported model."""
    from tokenizers import Tokenizer

    files = {"kvtorch.json": "", "tokenizer.json": ""}
    torch.jit.load(model_pt, map_location="cpu", _extra_files=files)
    return json.loads(files["kvtorch.json"]), Tokenizer.from_str(files["tokenizer.json"].decode())


def windows(model_pt, text_dir, seq_len, max_tokens):
    meta, tok = load(model_pt)
    bos = meta["bos_token_id"] if meta.get("add_bos") else None
    eos = meta.get("eos_token_id")
    files = sorted(glob.glob(os.path.join(text_dir, "**", "*.txt"), recursive=True)) if os.path.isdir(text_dir) else [text_dir]
    stream = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            stream += tok.encode(fh.read(), add_special_tokens=False).ids
        if eos is not None:
            stream.append(eos)
    need = seq_len - (bos is not None)
    wins = [stream[i:i + need] for i in range(0, len(stream) - need + 1, need)]
    n = max_tokens // (seq_len - 1) if max_tokens else len(wins)
    if len(wins) > n:
        wins = [wins[int((j + 0.5) * len(wins) / n)] for j in range(n)]
    if bos is not None:
        wins = [[bos] + w for w in wins]
    return torch.tensor(wins)
