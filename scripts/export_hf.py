"""Exports a HuggingFace causal LM to a kvtorch model (docs/model-contract.md).

  python export_hf.py MODEL --output model.pt [--device cpu|cuda] [--dtype float32]
                      [--kv-source pre_rope|post_rope] [--tokenizer tokenizer.json]

MODEL is a hub id or a local folder (from save_pretrained). The result is a
TorchScript file whose forward(input_ids) returns (logits, keys, values) with
one [B, H_kv, T, D] tensor per layer, compression hooks (KVHook buffers) in
every attention layer, and kvtorch.json and tokenizer.json stored inside.

Supported architectures: llama, mistral, qwen2, qwen3 (keys pre_rope, the
default, or post_rope) and deepseek_v2 (mla_latent: keys are the shared KV
latent, values the RoPE key part, one "head" each). A traced file runs only
on the device it was traced on.
"""
import argparse
import json
import os
import re
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvtorch_hook import KVHook  # noqa: E402

GQA = ("llama", "mistral", "qwen2", "qwen3")
MLA = ("deepseek_v2",)
SUPPORTED = GQA + MLA
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ExportError(Exception):
    pass


def attention_modules(model):
    layers = model.model.layers
    return [layer.self_attn for layer in layers]


class CaptureHook(nn.Module):
    """Wraps a projection (or k_norm): its output, viewed as [B, H, T, D], is
    kept in .captured (the true pre-RoPE K or V) and replaced by the hook's
    output. The hook itself is registered on the attention module, not here."""

    def __init__(self, inner, hook_owner, hook_name, heads, dim, per_head_output):
        super().__init__()
        self.inner = inner
        self._owner = [hook_owner]  # a plain list: do not register the attention module twice
        self.hook_name = hook_name
        self.heads = heads
        self.dim = dim
        self.per_head_output = per_head_output  # output is [B, T, H, D] (k_norm) or [B, T, H*D]
        self.captured = None

    def forward(self, x):
        y = self.inner(x)
        shape = y.shape
        if self.per_head_output:
            heads = y.transpose(1, 2)
        else:
            heads = y.view(shape[0], shape[1], self.heads, self.dim).transpose(1, 2)
        self.captured = heads
        hooked = getattr(self._owner[0], self.hook_name)(heads).transpose(1, 2)
        return hooked.reshape(shape)


def kvtorch_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention with the kvtorch hook on the post-RoPE keys and the values."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, module.k_hook(key), module.v_hook(value), attention_mask, **kwargs)


class Exported(nn.Module):
    def __init__(self, model, kv_source):
        super().__init__()
        self.model = model
        self.kv_source = kv_source
        self._captures = []

    def forward(self, input_ids):
        if self.kv_source == "pre_rope":
            out = self.model(input_ids=input_ids, use_cache=False)
            keys = tuple(a.k_proj.captured if isinstance(a.k_proj, CaptureHook) else a.k_norm.captured
                         for a in attention_modules(self.model))
            values = tuple(a.v_proj.captured for a in attention_modules(self.model))
        else:
            out = self.model(input_ids=input_ids, use_cache=True)
            layers = out.past_key_values.layers
            keys = tuple(l.keys for l in layers)
            values = tuple(l.values for l in layers)
        return out.logits, keys, values


def install_hooks(model, kv_source):
    """Adds k_hook/v_hook to every attention module and routes K and V through
    them. Returns (head dim of K, of V, KV heads) for the metadata."""
    cfg = model.config
    mt = cfg.model_type
    atts = attention_modules(model)
    if mt in MLA:
        dk, dv, heads = cfg.kv_lora_rank, cfg.qk_rope_head_dim, 1
        for a in atts:
            a.k_hook = KVHook(1, dk)
            a.v_hook = KVHook(1, dv)
            orig = a.expand_kv

            def expand(kv_nope, k_rot, _a=a, _orig=orig):
                return _orig(_a.k_hook(kv_nope), _a.v_hook(k_rot))
            a.expand_kv = expand
        return dk, dv, heads
    heads = cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    for a in atts:
        a.k_hook = KVHook(heads, d)
        a.v_hook = KVHook(heads, d)
        if kv_source == "pre_rope":
            if hasattr(a, "k_norm"):  # Qwen3: per-head RMSNorm on keys before RoPE
                a.k_norm = CaptureHook(a.k_norm, a, "k_hook", heads, d, per_head_output=True)
            else:
                a.k_proj = CaptureHook(a.k_proj, a, "k_hook", heads, d, per_head_output=False)
            a.v_proj = CaptureHook(a.v_proj, a, "v_hook", heads, d, per_head_output=False)
    if kv_source == "post_rope":
        from transformers import AttentionInterface

        AttentionInterface.register("kvtorch_sdpa", kvtorch_attention)
        model.set_attn_implementation("kvtorch_sdpa")
    else:
        model.set_attn_implementation("sdpa")
    return d, d, heads


def load(model_id, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_id)
    if cfg.model_type not in SUPPORTED:
        raise ExportError(f"unsupported architecture {cfg.model_type!r}; kvtorch exports {', '.join(SUPPORTED)}")
    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=DTYPES[dtype])
    return model.eval()


def hook_prefix(model, attn):
    for name, mod in model.named_modules():
        if mod is attn:
            return name
    raise ExportError("attention module not found")


def export(model, tokenizer_json, kv_source, device, out, name, trace_len=16):
    cfg = model.config
    mt = cfg.model_type
    if mt in MLA:
        if kv_source not in (None, "mla_latent"):
            raise ExportError(f"{mt} uses multi-head latent attention: kv_source must be mla_latent, not {kv_source}")
        kv_source = "mla_latent"
    elif kv_source not in ("pre_rope", "post_rope"):
        raise ExportError(f"kv_source for {mt} must be pre_rope or post_rope, not {kv_source}")
    dk, dv, heads = install_hooks(model, kv_source)
    model = model.to(device)
    wrapper = Exported(model, "post_rope" if kv_source == "mla_latent" else kv_source).eval()
    example = torch.randint(0, cfg.vocab_size, (2, trace_len), device=device)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (example,), strict=False, check_trace=False)
    # e.g. "model.model.layers.0.self_attn" -> "model.model.layers.{layer}.self_attn"
    prefix = re.sub(r"\.0(\.|$)", r".{layer}\1", hook_prefix(wrapper, attention_modules(model)[0]), count=1)
    meta = {
        "format_version": 1,
        "name": name,
        "architecture": mt,
        "n_layers": cfg.num_hidden_layers,
        "n_heads": cfg.num_attention_heads,
        "n_kv_heads": heads,
        "head_dim_k": dk,
        "head_dim_v": dv,
        "vocab_size": cfg.vocab_size,
        "max_positions": cfg.max_position_embeddings,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": device,
        "kv_source": kv_source,
        "hook": {"k": prefix + ".k_hook", "v": prefix + ".v_hook"},
        "tokenizer": "tokenizer.json",
        "add_bos": bool(getattr(cfg, "bos_token_id", None) is not None and mt in ("llama", "mistral")),
        "bos_token_id": getattr(cfg, "bos_token_id", None),
        "eos_token_id": cfg.eos_token_id if not isinstance(cfg.eos_token_id, list) else cfg.eos_token_id[0],
    }
    extra = {"kvtorch.json": json.dumps(meta, indent=2), "tokenizer.json": tokenizer_json}
    tmp = out + ".tmp"
    try:
        torch.jit.save(traced, tmp, _extra_files=extra)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):  # a failed save leaves nothing behind
            os.remove(tmp)
    return meta


def find_tokenizer(model_id, explicit):
    path = explicit or os.path.join(model_id, "tokenizer.json")
    if os.path.isfile(path):
        with open(path) as f:
            return f.read()
    if explicit is None and not os.path.isdir(model_id):
        try:
            from huggingface_hub import hf_hub_download

            with open(hf_hub_download(model_id, "tokenizer.json")) as f:
                return f.read()
        except Exception as e:  # noqa: BLE001 - reported below
            raise ExportError(f"no tokenizer.json for {model_id} ({e}); pass --tokenizer") from e
    raise ExportError(f"no tokenizer.json at {path}; pass --tokenizer")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Supported: " + ", ".join(SUPPORTED))
    ap.add_argument("model", help="hub id or local folder")
    ap.add_argument("--output", "-o", required=True)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]; the file runs only there")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--kv-source", choices=["pre_rope", "post_rope", "mla_latent"], default=None,
                    help="pre_rope (default) or post_rope keys; deepseek_v2 is always mla_latent")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the model's)")
    args = ap.parse_args()
    try:
        model = load(args.model, args.dtype)
        tok = find_tokenizer(args.model, args.tokenizer)
        kv = args.kv_source
        if kv is None and model.config.model_type not in MLA:
            kv = "pre_rope"
        meta = export(model, tok, kv, args.device, args.output, name=os.path.basename(args.model.rstrip("/")))
    except (ExportError, OSError, ValueError) as e:
        print(f"export_hf: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"exported {args.output}: {meta['architecture']}, {meta['n_layers']} layers, kv_source {meta['kv_source']}, {args.device}")


if __name__ == "__main__":
    main()
