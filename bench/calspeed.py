"""Calibration against the model's own forward pass, side by side.

    python bench/calspeed.py --model MODEL.pt --hf HF_FOLDER --name NAME [--texts FILE ...] [--rounds 3] [--device cpu]

Runs, alternating in one invocation, on the same tokens (the texts as
`kvtorch tokenize` reads them, cut into sequences of --seq-len as calibrate
cuts them, one sequence a batch on the CPU):

- `kvtorch calibrate` (its whole work: tokenizing, the forward passes through
  the model's body method, the statistics on the device, the PCA), timed by
  the wall time it reports;
- the full forward of the same model in plain PyTorch: transformers' eager
  model from HF_FOLDER, and the traced file itself from Python
  (torch.jit.load, forward with logits), timed around the forward loop only.

Prints a Markdown table of median tokens/s and the ratios of kvtorch's to the
forwards' (the issue's goal: >= 1.15x on SmolLM2, >= 1.8x on Gemma 3 270M on
the CPU). With --device cuda the model file must have been exported for CUDA
(make gpu-check runs it that way).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def tokens_of(kvtorch, model, texts):
    out = subprocess.run([kvtorch, "tokenize", "--json", "--model", model, *texts], capture_output=True, text=True,
                         check=True).stdout
    return [json.loads(line)["input_ids"] for line in out.splitlines() if line.strip()]


def sequences(docs, seq_len, min_tokens=32):
    out = []
    for ids in docs:
        if len(ids) < min_tokens:
            continue
        out += [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)]
    return out


def timed_forward(fn, seqs, device):
    with torch.inference_mode():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for s in seqs:
            fn(torch.tensor([s], device=device))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kvtorch", default="bin/kvtorch")
    ap.add_argument("--model", required=True, help="the kvtorch model file")
    ap.add_argument("--hf", required=True, help="the same weights as a transformers folder")
    ap.add_argument("--name", default="model")
    ap.add_argument("--texts", nargs="+", default=["testdata/calib/002-prose.txt", "testdata/calib/003-technical.txt",
                                                  "testdata/calib/007-code-go.txt"])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    seqs = sequences(tokens_of(a.kvtorch, a.model, a.texts), a.seq_len)
    total = sum(len(s) for s in seqs)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32, attn_implementation="eager").to(a.device).eval()
    torch._C._set_graph_executor_optimize(False)  # as kvtorch runs traced files (sequence lengths vary)
    traced = torch.jit.load(a.model, map_location=a.device)
    runs = {"kvtorch calibrate": [], "HF eager forward": [], "traced forward (Python)": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            out = subprocess.run([a.kvtorch, "calibrate", "-q", "--json", "--model", a.model, "--output",
                                  os.path.join(tmp, "calib.pt"), "--seq-len", str(a.seq_len), "--device", a.device,
                                  *sum((["--texts", t] for t in a.texts), [])],
                                 capture_output=True, text=True, check=True).stdout
            runs["kvtorch calibrate"].append(json.loads(out)["seconds"])
            runs["HF eager forward"].append(timed_forward(lambda x: hf(input_ids=x).logits, seqs, a.device))
            runs["traced forward (Python)"].append(timed_forward(lambda x: traced(x)[0], seqs, a.device))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in runs.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    kv = med["kvtorch calibrate"]
    print(f"{a.name}, {total} tokens in {len(seqs)} sequences of at most {a.seq_len}, {a.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.rounds} rounds (medians):\n")
    print("| run | seconds | tokens/s | kvtorch calibrate's speed against it |")
    print("| --- | ---: | ---: | ---: |")
    for k, v in med.items():
        ratio = "—" if k == "kvtorch calibrate" else f"{v / kv:.2f}x"
        print(f"| {k} | {v:.1f} | {total / v:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
