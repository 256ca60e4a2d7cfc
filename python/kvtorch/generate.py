"""Text generation with a kvtorch preset: the model's KV cache holds the
preset's latents (KVTorchCache) instead of full K/V.

    python -m kvtorch.generate --preset preset.json --model HF_FOLDER "Once upon a time"
    python -m kvtorch.generate --preset preset.json --model HF_FOLDER --compare --max-new-tokens 64 - < prompt.txt

HF_FOLDER is what transformers loads (a hub id, or a folder such as the one
`python -m kvtorch.export MODEL.gguf --save-hf DIR` writes); the preset must
be one made for that model (kvtorch tune, or kvtorch eval --output). With
--compare the same prompt is also generated with transformers' DynamicCache,
and both caches' sizes are printed.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from kvtorch.cli import Parser, run  # noqa: E402
from kvtorch.preset import Preset  # noqa: E402


def dynamic_nbytes(cache):
    return sum(l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size()
               for l in cache.layers if l.keys is not None)


def load_tokenizer(model):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError):
        from tokenizers import Tokenizer

        path = os.path.join(model, "tokenizer.json")
        if not os.path.exists(path):
            raise
        tok = Tokenizer.from_file(path)

        class Plain:  # the two calls generate needs
            def encode(self, text):
                return tok.encode(text).ids

            def decode(self, ids, skip_special_tokens=True):
                return tok.decode(ids, skip_special_tokens=skip_special_tokens)
        return Plain()


def main(argv=None):
    ap = Parser(prog="python -m kvtorch.generate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    ap.add_argument("--preset", required=True, help="a kvtorch preset JSON made for this model")
    ap.add_argument("--calibration", help="the preset's calibration file (default: the one it names)")
    ap.add_argument("--model", required=True, help="transformers model: hub id or folder")
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compare", action="store_true", help="also generate with transformers' DynamicCache")
    a = ap.parse_args(argv)
    if a.max_new_tokens < 1:
        ap.error("--max-new-tokens must be at least 1")
    prompt = sys.stdin.read() if a.prompt == "-" else a.prompt
    if not prompt:
        ap.error("the prompt is empty")

    from transformers import AutoModelForCausalLM, DynamicCache

    from kvtorch.cache import KVTorchCache

    preset = Preset(a.preset, a.calibration, device=a.device)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).to(a.device).eval()
    tok = load_tokenizer(a.model)
    ids = torch.tensor([tok.encode(prompt)], device=a.device)
    cache = KVTorchCache(preset, model)

    def run(cache):
        torch.manual_seed(a.seed)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                                 max_new_tokens=a.max_new_tokens, do_sample=a.sample,
                                 pad_token_id=model.config.eos_token_id)
        new = out.shape[1] - ids.shape[1]
        return tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True), new, time.perf_counter() - start

    text, new, secs = run(cache)
    print(text)
    print(f"[KVTorchCache: {cache.get_seq_length()} tokens in {cache.nbytes() / 1e6:.2f} MB; "
          f"{new} new tokens in {secs:.1f} s, {new / secs:.1f} tokens/s including the prompt]", file=sys.stderr)
    if a.compare:
        dyn = DynamicCache(config=model.config)
        text, new, secs = run(dyn)
        print("--- with DynamicCache:")
        print(text)
        print(f"[DynamicCache: {dyn.get_seq_length()} tokens in {dynamic_nbytes(dyn) / 1e6:.2f} MB "
              f"({next(model.parameters()).dtype}); {new} new tokens in {secs:.1f} s, {new / secs:.1f} tokens/s]",
              file=sys.stderr)


if __name__ == "__main__":
    run("kvtorch.generate", main)
