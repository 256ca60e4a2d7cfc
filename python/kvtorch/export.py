"""Exports a HuggingFace causal LM to a kvtorch model (docs/model-contract.md).

    python -m kvtorch.export MODEL --output model.pt [--device cpu|cuda] [--dtype float32]
                             [--kv-source pre_rope|post_rope] [--tokenizer tokenizer.json]

MODEL is a hub id, a local folder (from save_pretrained), or a GGUF file (or
a folder holding one), which is dequantized to --dtype. The result is a
TorchScript file whose forward(input_ids) returns (logits, keys, values) with
one [B, H_kv, T, D] tensor per layer, compression hooks (KVHook buffers) in
every attention layer, and kvtorch.json and tokenizer.json stored inside.

Supported architectures: llama, mistral, qwen2, qwen3, gemma2 and gemma3
text models (keys pre_rope, the default, or post_rope) and deepseek_v2
(mla_latent: keys are the shared KV latent, values the RoPE key part, one
"head" each). A traced file runs only on the device it was traced on.
"""
import glob
import json
import os
import re
import tempfile

import torch
from torch import nn

from kvtorch import attention, gguf_tokenizer
from kvtorch.cli import Parser, run
from kvtorch.hook import FORMAT_VERSION, KVHook

GQA = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")
MLA = ("deepseek_v2",)
SUPPORTED = GQA + MLA
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Where a per-head key norm (before RoPE) puts the heads: Qwen3 normalises the
# [B, T, H, D] view, Gemma 3 the [B, H, T, D] one.
KEY_NORM_LAYOUT = {"qwen3": "bthd", "gemma3_text": "bhtd"}


class ExportError(Exception):
    pass


def attention_modules(model):
    return [layer.self_attn for layer in model.model.layers]


class Mode:
    """What the method being traced needs, read by the hooks' Python code at
    trace time (so each method's graph has its own path): bare skips the
    compression hooks (K and V are taken as they are: calibration's kv
    method), skip is the attention module whose output is not needed (the
    last layer's, in kv), recent has attention take the keys and values of
    the last recent_tokens positions exact and the older ones hooked (the
    recent method; owner holds the recent_tokens buffer)."""

    def __init__(self):
        self.bare = False
        self.skip = None
        self.recent = False
        self.owner = None


class CaptureHook(nn.Module):
    """Wraps a projection (or k_norm): its output, viewed as [B, H, T, D], is
    kept in .captured (the true pre-RoPE K or V) and replaced by the hook's
    output. The hook itself is registered on the attention module, not here."""

    def __init__(self, inner, hook_owner, hook_name, heads, dim, layout, mode):
        super().__init__()
        self.inner = inner
        self.mode = mode
        self._owner = [hook_owner]  # a plain list: do not register the attention module twice
        self.hook_name = hook_name
        self.heads = heads
        self.dim = dim
        self.layout = layout  # output is [B, T, H*D] ("flat"), [B, T, H, D] ("bthd") or [B, H, T, D] ("bhtd")
        self.captured = None

    def forward(self, x):
        y = self.inner(x)
        shape = y.shape
        if self.layout == "bhtd":
            heads = y
        elif self.layout == "bthd":
            heads = y.transpose(1, 2)
        else:
            heads = y.view(shape[0], shape[1], self.heads, self.dim).transpose(1, 2)
        self.captured = heads
        if self.mode.bare:
            return y
        hooked = getattr(self._owner[0], self.hook_name)(heads)
        if self.layout == "bhtd":
            out, axis = hooked, 1
        else:
            out, axis = hooked.transpose(1, 2).reshape(shape), 2 if self.layout == "bthd" else -1
        if self.mode.recent:  # twice the heads: the hooked ones, then the true ones (RoPE rotates both)
            return torch.cat([out, y], dim=axis)
        return out


def traced_attention(module, query, key, value, attention_mask, **kwargs):
    """The attention of exported models: for post-RoPE keys, the true K and V
    are kept on the module and the hooked ones go to the attention the model
    would have used (kvtorch.attention); the attention whose output no
    method needs (Mode.skip) gives zeros. In the recent method, the keys and
    values of pre-RoPE exports come with twice the heads (CaptureHook: the
    hooked ones, then the true ones) and recent_attention takes both."""
    mode = module.kvtorch_mode
    hooked = None
    if mode.recent and not module.kvtorch_post:
        h = key.shape[1] // 2
        hooked = key[:, :h], value[:, :h]
        key, value = key[:, h:], value[:, h:]
    if module.kvtorch_post:
        module.kvtorch_k, module.kvtorch_v = key, value
    if mode.skip is module:
        b, h, t, _ = query.shape
        return query.new_zeros(b, t, h, value.shape[-1]), None
    if module.kvtorch_post and not mode.bare:
        hooked = module.k_hook(key), module.v_hook(value)
        if not mode.recent:
            key, value = hooked
    if mode.recent:
        return recent_attention(module, query, hooked[0], hooked[1], key, value, attention_mask,
                                mode.owner.recent_tokens, **kwargs)
    inner, _ = attention.inner(module)
    return inner(module, query, key, value, attention_mask, **kwargs)


def recent_attention(module, query, key_hat, value_hat, key, value, attention_mask, recent, **kwargs):
    """Attention where the query at position t takes the true keys and values
    of positions t - recent + 1 .. t and the hooked ones (key_hat, value_hat:
    what the cache stores) of older positions, within the model's own mask
    (causal, sliding window): the model's attention over both sets side by
    side, with a mask that lets each query see one of every pair. recent
    is a tensor (a buffer kvtorch sets at run time); 0 is the hooked
    attention of body."""
    t, s = query.shape[-2], key.shape[-2]
    allowed = attention.boolean_mask(None if attention_mask is None else attention_mask[..., :s], t, s, query.device)
    qpos = torch.ones_like(query[0, 0, :, 0]).cumsum(0) - 1 + (s - t)  # with a traced T
    kpos = torch.ones_like(key[0, 0, :, 0]).cumsum(0) - 1
    near = (qpos[:, None] - kpos[None, :]) < recent
    mask = torch.cat([allowed & ~near, allowed & near], dim=-1)
    inner, eager = attention.inner(module)
    if eager:
        mask = attention.additive_mask(mask, query.dtype)
    return inner(module, query, torch.cat([key_hat, key], dim=2), torch.cat([value_hat, value], dim=2), mask, **kwargs)


# The methods an export has besides forward (kvtorch.json "methods"): kv
# gives the true keys and values and nothing else (what calibration needs:
# no compression hooks, no LM head, the last layer stopped after its K/V
# projections); body runs the decoder without the LM head, hooks included;
# head is the LM head alone (applied by kvtorch to a few positions at a time,
# so that a window's logits never exist whole); recent is body with the keys
# and values of the last recent_tokens positions (a buffer) taken exact by
# every query, the hooked ones before them (not for mla_latent exports).
METHODS = ("kv", "body", "head", "recent")


class Exported(nn.Module):
    """forward(ids) -> (logits, keys, values); kv(ids) -> (keys, values);
    body(ids) -> (hidden, keys, values), the decoder's output after its final
    norm; head(hidden) -> logits. head(body(ids)[0]) is forward(ids)[0].
    recent(ids) is body with the recent window of the buffer recent_tokens."""

    def __init__(self, model, kv_source, mode):
        super().__init__()
        self.model = model
        self.kv_source = kv_source
        self.mode = mode
        self.register_buffer("recent_tokens", torch.tensor(0.0, device=next(model.parameters()).device))
        mode.owner = self

    def _run(self, module, input_ids):
        """Runs module (the causal LM, or its decoder) and returns its output
        and the K/V of every layer."""
        atts = attention_modules(self.model)
        if self.kv_source == "pre_rope":
            out = module(input_ids=input_ids, use_cache=False)
            keys = tuple(a.k_proj.captured if isinstance(a.k_proj, CaptureHook) else a.k_norm.captured for a in atts)
            values = tuple(a.v_proj.captured for a in atts)
        elif self.kv_source == "post_rope":
            out = module(input_ids=input_ids, use_cache=False)
            keys = tuple(a.kvtorch_k for a in atts)
            values = tuple(a.kvtorch_v for a in atts)
        else:  # mla_latent: the cache holds the latent and the RoPE key part
            out = module(input_ids=input_ids, use_cache=True)
            layers = out.past_key_values.layers
            keys = tuple(l.keys for l in layers)
            values = tuple(l.values for l in layers)
        return out, keys, values

    def forward(self, input_ids):
        out, keys, values = self._run(self.model, input_ids)
        return out.logits, keys, values

    def kv(self, input_ids):
        layer = self.model.model.layers[-1]
        self.mode.bare = True
        if self.kv_source != "mla_latent":
            self.mode.skip = layer.self_attn
            layer.mlp.forward = torch.zeros_like  # its output is never used
        try:
            _, keys, values = self._run(self.model.model, input_ids)
        finally:
            self.mode.bare, self.mode.skip = False, None
            layer.mlp.__dict__.pop("forward", None)
        return keys, values

    def body(self, input_ids):
        out, keys, values = self._run(self.model.model, input_ids)
        return out.last_hidden_state, keys, values

    def recent(self, input_ids):
        self.mode.recent = True
        try:
            return self.body(input_ids)
        finally:
            self.mode.recent = False

    def head(self, hidden):
        logits = self.model.lm_head(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:  # Gemma 2
            logits = torch.tanh(logits / cap) * cap
        return logits


def install_hooks(model, kv_source, mode):
    """Adds k_hook/v_hook to every attention module and routes K and V through
    them (unless mode.bare). Returns (head dim of K, of V, KV heads) for the
    metadata."""
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
                if mode.bare:
                    return _orig(kv_nope, k_rot)
                return _orig(_a.k_hook(kv_nope), _a.v_hook(k_rot))
            a.expand_kv = expand
        return dk, dv, heads
    heads = cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    impl = attention.implementation(cfg)
    for a in atts:
        a.k_hook = KVHook(heads, d)
        a.v_hook = KVHook(heads, d)
        a.kvtorch_mode, a.kvtorch_post = mode, kv_source == "post_rope"
        if kv_source == "pre_rope":
            if hasattr(a, "k_norm"):  # Qwen3, Gemma 3: per-head RMSNorm on keys before RoPE
                a.k_norm = CaptureHook(a.k_norm, a, "k_hook", heads, d, KEY_NORM_LAYOUT[mt], mode)
            else:
                a.k_proj = CaptureHook(a.k_proj, a, "k_hook", heads, d, "flat", mode)
            a.v_proj = CaptureHook(a.v_proj, a, "v_hook", heads, d, "flat", mode)
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

    # Its own names (kvtorch.cache registers "kvtorch" for generation), each
    # with the masks of the attention it runs: without a mask function of its
    # own, a custom attention gets masks without the sliding window.
    name = f"kvtorch_export_{impl}"
    AttentionInterface.register(name, traced_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, eager_mask if impl == "eager" else sdpa_mask)
    model.set_attn_implementation(name)
    return d, d, heads


def find_gguf(path):
    """The GGUF file a model argument names: a .gguf file, or the one .gguf
    in a folder without config.json; None for anything else."""
    if os.path.isfile(path) and path.endswith(".gguf"):
        return path
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        found = sorted(glob.glob(os.path.join(path, "*.gguf")))
        if len(found) > 1:
            raise ExportError(f"{path} holds {len(found)} .gguf files; name one")
        if found:
            return found[0]
    return None


def check_architecture(cfg):
    mt = cfg.model_type
    if mt == "gemma3":
        raise ExportError("gemma3 multimodal checkpoints are not supported; export the text model (gemma3_text)")
    if mt not in SUPPORTED:
        raise ExportError(f"unsupported architecture {mt!r}; kvtorch exports {', '.join(SUPPORTED)}")


class Tokenizer:
    """What the exporter knows of a model's tokenizer: the tokenizer.json
    kvtorch reads (stored in the export), whether the model wants BOS before
    its text and which ids BOS and EOS are (None: ask the model's config and
    the tokenizer's post-processor), and the files of a HuggingFace folder
    for transformers users (name -> text)."""

    def __init__(self, kvtorch_json, add_bos=None, bos=None, eos=None, hf_files=None):
        self.kvtorch_json = kvtorch_json
        self.add_bos, self.bos, self.eos = add_bos, bos, eos
        self.hf_files = hf_files or {"tokenizer.json": kvtorch_json}


def load(model_id, dtype):
    """Loads a model for export: (model, Tokenizer or None: find it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf = find_gguf(model_id)
    if gguf is None:
        cfg = AutoConfig.from_pretrained(model_id)
        check_architecture(cfg)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=DTYPES[dtype])
        return model.eval(), None
    return load_gguf(gguf, dtype)


def load_gguf(path, dtype):
    """A GGUF file, dequantized to dtype: transformers reads it (with the gguf
    package) into a model it marks as quantized, which neither saves nor
    traces as a plain model; so a plain model is built from its config and
    given its weights. The tokenizer comes from the file too, as llama.cpp
    reads it (kvtorch.gguf_tokenizer), BOS and EOS as its metadata says."""
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ExportError("reading GGUF files needs the gguf package (pip install gguf accelerate)") from e
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    cfg = AutoConfig.from_pretrained(folder, gguf_file=name)
    check_architecture(cfg)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=DTYPES[dtype])
    cfg = quantized.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = type(quantized)(cfg).to(DTYPES[dtype])
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ExportError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if cfg.tie_word_embeddings:
        model.tie_weights()
    vocab = gguf_tokenizer.GGUFVocab(path)
    files = {}
    if vocab.model != "llama":  # byte-level BPE: transformers' conversion of the vocabulary and merges
        hf = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            for f in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, f), encoding="utf-8") as fh:
                    files[f] = fh.read()
    try:
        built, vocab = gguf_tokenizer.from_gguf(path, json.loads(files["tokenizer.json"]) if files else None)
    except ValueError as e:
        raise ExportError(f"{path}: {e}") from None
    if built is None:
        raise ExportError(f"{path}: tokenizer.ggml.model {vocab.model!r} is not one kvtorch reads as llama.cpp does "
                          "(llama, gpt2)")
    own, hf_json, hf_config = built
    files["tokenizer.json"] = hf_json
    if hf_config is not None:
        files["tokenizer_config.json"] = json.dumps(hf_config, indent=2)
    tok = Tokenizer(own, vocab.add_bos, vocab.bos, vocab.eos, files)
    for key, tid in (("bos_token_id", tok.bos), ("eos_token_id", tok.eos)):
        if tid is not None:  # the GGUF's ids, for generate too
            setattr(model.config, key, tid)
            if getattr(model, "generation_config", None) is not None:
                setattr(model.generation_config, key, tid)
    return model.eval(), tok


def save_hf(model, tok, folder):
    """save_pretrained of a plain (unhooked) model, with its tokenizer files:
    a folder transformers' AutoModelForCausalLM and AutoTokenizer load as the
    original."""
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    for name, text in tok.hf_files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)


def hf_add_bos(model_id, tokenizer_json, bos):
    """Whether a HuggingFace model wants BOS: its tokenizer_config.json's
    add_bos_token where it says, else whether the tokenizer's post-processor
    prepends BOS."""
    path = os.path.join(model_id, "tokenizer_config.json")
    if not os.path.isfile(path) and not os.path.isdir(model_id):
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(model_id, "tokenizer_config.json")
        except Exception:  # noqa: BLE001 - no config: the post-processor says
            path = None
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        if isinstance(cfg.get("add_bos_token"), bool):
            return cfg["add_bos_token"]
    return adds_bos(tokenizer_json, bos)


def hook_prefix(model, attn):
    for name, mod in model.named_modules():
        if mod is attn:
            return name
    raise ExportError("attention module not found")


def first_id(ids):
    return ids if not isinstance(ids, (list, tuple)) else (ids[0] if ids else None)


def adds_bos(tokenizer_json, bos):
    """Whether the tokenizer's post-processor prepends the BOS token."""
    try:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_str(tokenizer_json).encode("a").ids
    except Exception:  # noqa: BLE001 - a tokenizer kvtorch will refuse later names itself then
        return False
    return bos is not None and bool(ids) and ids[0] == bos


def export(model, tokenizer, kv_source, device, out, name, trace_len=16):
    """Traces model into a kvtorch model file at out. tokenizer: a Tokenizer,
    or a tokenizer.json text (BOS as its post-processor adds it)."""
    if isinstance(tokenizer, str):
        tokenizer = Tokenizer(tokenizer)
    cfg = model.config
    mt = cfg.model_type
    if mt in MLA:
        if kv_source not in (None, "mla_latent"):
            raise ExportError(f"{mt} uses multi-head latent attention: kv_source must be mla_latent, not {kv_source}")
        kv_source = "mla_latent"
    elif kv_source not in ("pre_rope", "post_rope"):
        raise ExportError(f"kv_source for {mt} must be pre_rope or post_rope, not {kv_source}")
    mode = Mode()
    dk, dv, heads = install_hooks(model, kv_source, mode)
    model = model.to(device)
    wrapper = Exported(model, kv_source, mode).eval()
    example = torch.randint(0, cfg.vocab_size, (2, trace_len), device=device)
    with torch.no_grad():
        hidden = wrapper.body(example)[0]
        methods = {"forward": (example,), "kv": (example,), "body": (example,), "head": (hidden,)}
        if kv_source != "mla_latent":
            methods["recent"] = (example,)
        traced = torch.jit.trace_module(wrapper, methods, strict=False, check_trace=False)
    # e.g. "model.model.layers.0.self_attn" -> "model.model.layers.{layer}.self_attn"
    prefix = re.sub(r"\.0(\.|$)", r".{layer}\1", hook_prefix(wrapper, attention_modules(model)[0]), count=1)
    bos = tokenizer.bos if tokenizer.bos is not None else first_id(getattr(cfg, "bos_token_id", None))
    eos = tokenizer.eos if tokenizer.eos is not None else first_id(cfg.eos_token_id)
    add_bos = tokenizer.add_bos if tokenizer.add_bos is not None else adds_bos(tokenizer.kvtorch_json, bos)
    meta = {
        "format_version": FORMAT_VERSION,
        "methods": [m for m in METHODS if m in methods],
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
        "add_bos": bool(add_bos and bos is not None),
        "bos_token_id": bos,
        "eos_token_id": eos,
    }
    extra = {"kvtorch.json": json.dumps(meta, indent=2), "tokenizer.json": tokenizer.kvtorch_json}
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
        with open(path, encoding="utf-8") as f:
            return f.read()
    if explicit is None and not os.path.isdir(model_id):
        try:
            from huggingface_hub import hf_hub_download

            with open(hf_hub_download(model_id, "tokenizer.json"), encoding="utf-8") as f:
                return f.read()
        except Exception as e:  # noqa: BLE001 - reported below
            raise ExportError(f"no tokenizer.json for {model_id} ({e}); pass --tokenizer") from e
    raise ExportError(f"no tokenizer.json at {path}; pass --tokenizer")


# Names an export must not take: files a model is read from.
INPUT_SUFFIXES = (".gguf", ".safetensors", ".bin", ".json", ".model", ".pth", ".jinja")


def check_output(output, model_id, tokenizer, save_hf):
    """Refuses, before anything is loaded, an output that would replace an
    input (the model file, any file of the model's folder, the tokenizer),
    that is named like a model's input file, that exists but is not a regular
    file (a device, a FIFO, a folder), or whose folder does not exist or
    takes no new files."""
    out = os.path.realpath(output)
    if output.endswith(INPUT_SUFFIXES):
        raise ExportError(f"--output {output}: a kvtorch model is a TorchScript file; name it .pt "
                          f"(a {os.path.splitext(output)[1]} name is refused: it is how model inputs are named)")
    if os.path.lexists(output) and not os.path.isfile(output):
        raise ExportError(f"--output {output}: exists and is not a regular file; refusing to replace it")
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise ExportError(f"--output {output}: the folder {folder} does not exist")
    try:  # a real probe: access() says yes to root on a read-only file system
        fd, probe = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(out) + ".", suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ExportError(f"--output {output}: the folder {folder} does not take new files ({e.strerror})") from None
    inputs = [os.path.realpath(p) for p in (model_id, tokenizer) if p and os.path.exists(p)]
    if out in inputs:
        raise ExportError(f"--output {output} is the model's input {out}; choose another name")
    model_dir = os.path.realpath(model_id) if os.path.isdir(model_id) else None
    if model_dir and os.path.exists(out) and os.path.dirname(out) == model_dir:
        raise ExportError(f"--output {output} would replace a file of the model folder {model_id}; choose another name")
    if save_hf:
        hf = os.path.realpath(save_hf)
        if model_dir and hf == model_dir:
            raise ExportError(f"--save-hf {save_hf} is the model folder itself: it would be overwritten")
        if os.path.dirname(out) == hf:
            raise ExportError(f"--output {output} is inside --save-hf {save_hf}; choose another folder")


def check_device(device):
    if device == "cpu":
        return
    if not (device == "cuda" or re.fullmatch(r"cuda:\d+", device)):
        raise ExportError(f"--device {device}: want cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ExportError(f"--device {device}: this torch sees no CUDA device")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ExportError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")


def check_tokenizer(tokenizer_json, source):
    """A tokenizer.json that HF tokenizers reads, or ExportError."""
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_str(tokenizer_json)
    except Exception as e:  # noqa: BLE001 - whatever tokenizers says, the file is unusable
        first = " ".join(str(e).split())[:200]
        raise ExportError(f"{source} is not a tokenizer.json HuggingFace tokenizers reads ({first})") from None


def main(argv=None):
    ap = Parser(prog="python -m kvtorch.export", description=__doc__.splitlines()[0],
                epilog="Supported: " + ", ".join(SUPPORTED) + ". Example: python -m kvtorch.export "
                "Qwen/Qwen2.5-0.5B -o qwen.pt; python -m kvtorch.export model.Q4_K_M.gguf -o m.pt")
    ap.add_argument("model", help="hub id, local folder, or .gguf file (or a folder holding one)")
    ap.add_argument("--output", "-o", required=True)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]; the file runs only there")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--kv-source", choices=["pre_rope", "post_rope", "mla_latent"], default=None,
                    help="pre_rope (default) or post_rope keys; deepseek_v2 is always mla_latent")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the model's)")
    ap.add_argument("--name", help="model name stored in the metadata (default: the folder or file name)")
    ap.add_argument("--save-hf", metavar="DIR", help="also save the loaded model (a GGUF file dequantized) with its "
                    "tokenizer as a HuggingFace folder that transformers loads (what python -m kvtorch.generate and "
                    "KVTorchCache need); default for a GGUF model: OUTPUT without .pt, then -hf")
    ap.add_argument("--no-save-hf", action="store_true", help="do not write the HuggingFace folder of a GGUF model")
    args = ap.parse_args(argv)
    if args.save_hf is None and not args.no_save_hf and find_gguf(args.model) is not None:
        args.save_hf = os.path.splitext(args.output)[0] + "-hf"
    check_output(args.output, args.model, args.tokenizer, args.save_hf)
    check_device(args.device)
    explicit = None
    if args.tokenizer:
        explicit = find_tokenizer(args.model, args.tokenizer)
        check_tokenizer(explicit, args.tokenizer)
    model, tok = load(args.model, args.dtype)
    if explicit is not None or tok is None:
        text = explicit if explicit is not None else find_tokenizer(args.model, None)
        if explicit is None:
            check_tokenizer(text, "the model's tokenizer.json")
        bos = first_id(getattr(model.config, "bos_token_id", None))
        tok = Tokenizer(text, hf_add_bos(args.model, text, bos) if explicit is None else adds_bos(text, bos))
    if args.save_hf:
        save_hf(model, tok, args.save_hf)
    kv = args.kv_source
    if kv is None and model.config.model_type not in MLA:
        kv = "pre_rope"
    name = args.name or os.path.basename(args.model.rstrip("/")).removesuffix(".gguf")
    meta = export(model, tok, kv, args.device, args.output, name=name)
    print(f"exported {args.output}: {meta['architecture']}, {meta['n_layers']} layers, "
          f"{meta['n_kv_heads']} KV heads of {meta['head_dim_k']}, kv_source {meta['kv_source']}, {args.device}, "
          f"{'BOS ' + str(meta['bos_token_id']) + ' before every text' if meta['add_bos'] else 'no BOS'}"
          + (f"; transformers folder {args.save_hf}" if args.save_hf else ""))


if __name__ == "__main__":
    run("kvtorch.export", main)
