"""Prefill with KVTorchCache against DynamicCache, side by side in one run:
one forward pass over a prompt of --tokens tokens (random ids), median of
--repeat passes each, for DynamicCache (sdpa), KVTorchCache as shipped (a
prompt is attended on K/V expanded from the latents), KVTorchCache with
prompts attended on the latents (the C kernels), and the same without the
kernels (plain torch).

    python bench/prefillbench.py --model HF_FOLDER --preset P.json [--tokens 2048] [--repeat 2]
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, DynamicCache  # noqa: E402

import kvtorch.cache as kvcache  # noqa: E402
from kvtorch import KVTorchCache, Preset, latent  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    preset = Preset(a.preset)
    ids = torch.randint(100, 20000, (1, a.tokens), generator=torch.Generator().manual_seed(0))
    kernels, prompt = latent.available, kvcache.PROMPT

    def dynamic():
        model.set_attn_implementation("sdpa")
        return DynamicCache(config=model.config)

    def kv(on_latents, with_kernels):
        def make():
            kvcache.PROMPT = 1 << 30 if on_latents else prompt
            latent.available = kernels and with_kernels
            return KVTorchCache(preset, model)
        return make

    rows = [("DynamicCache", dynamic), ("KVTorchCache (prompt on expanded K/V)", kv(False, True)),
            ("KVTorchCache, prompt on latents, C kernels", kv(True, True)),
            ("KVTorchCache, prompt on latents, plain torch", kv(True, False))]
    times = {name: [] for name, _ in rows}
    with torch.no_grad():
        for _ in range(a.repeat):
            for name, make in rows:
                cache = make()
                t0 = time.perf_counter()
                model(input_ids=ids, past_key_values=cache, use_cache=True)
                times[name].append(time.perf_counter() - t0)
    kvcache.PROMPT, latent.available = prompt, kernels
    print(f"| prefill of {a.tokens} tokens | median |")
    print("|---|---:|")
    for name, _ in rows:
        print(f"| {name} | {statistics.median(times[name]):.2f} s |")


if __name__ == "__main__":
    main()
