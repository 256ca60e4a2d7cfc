"""Tokenizers built from a GGUF file itself, as llama.cpp reads them.

llama.cpp is the reference for what a GGUF model's ids are: it reads
tokenizer.ggml.model, the tokens, their scores and types, the merges and the
add_bos/add_eos/add_space_prefix flags. transformers' own GGUF conversion can
differ: for a SentencePiece-style vocabulary ("llama" model: scores, no
merges) it builds a Unigram model, which splits " world" as "▁w/or/ld" where
llama.cpp (and the model's training) gives "▁world". This module writes a
HuggingFace tokenizer.json that encodes as llama.cpp does:

- "llama" (SentencePiece BPE): llama.cpp merges the adjacent pair of highest
  score whose concatenation is a token, leftmost first, and falls back to the
  bytes (<0xXX>) of characters not in the vocabulary. That is a BPE model
  whose merges are every split of every token into two tokens, ranked by the
  token's score, with byte fallback; spaces become "▁" (and a "▁" is
  prepended when add_space_prefix says so). User-defined tokens (type 4:
  Gemma's runs of newlines, tabs and spaces, some HTML tags) are matched in
  the raw text first, as llama.cpp partitions text on them; control tokens
  (type 3: <bos>, <start_of_turn>, ...) are not matched in text
  (llama.cpp's parse_special=False, what kvtorch reads text with).
- "gpt2" (byte-level BPE with merges): transformers' conversion of the
  vocabulary and merges, with llama.cpp's pre-tokenizer for the GGUF's
  tokenizer.ggml.pre where transformers' differs: for "smollm" (SmolLM2)
  llama.cpp isolates every digit before the byte-level split, which
  transformers' conversion leaves out (so ".\n\n8" was "\n", "\n" where
  llama.cpp, and SmolLM2's own tokenizer, read "\n\n"); control tokens are
  not matched in text either.

The tokenizer kvtorch stores in a model has no post-processor: kvtorch adds
BOS itself, to every window, from the metadata (add_bos). The tokenizer of the
HuggingFace folder the exporter writes for transformers users adds BOS in its
post-processor and marks the control tokens special, as transformers expects.
"""
import json

TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = 1, 2, 3, 4, 5, 6


class GGUFVocab:
    """The tokenizer fields of a GGUF file."""

    def __init__(self, path):
        import gguf

        r = gguf.GGUFReader(path)
        f = r.fields

        def get(key, default=None):
            return f[key].contents() if key in f else default

        self.model = get("tokenizer.ggml.model")
        self.pre = get("tokenizer.ggml.pre", "default")
        self.tokens = get("tokenizer.ggml.tokens") or []
        self.scores = get("tokenizer.ggml.scores")
        self.types = get("tokenizer.ggml.token_type")
        self.merges = get("tokenizer.ggml.merges")
        self.bos = get("tokenizer.ggml.bos_token_id")
        self.eos = get("tokenizer.ggml.eos_token_id")
        self.unk = get("tokenizer.ggml.unknown_token_id")
        self.pad = get("tokenizer.ggml.padding_token_id")
        # llama.cpp's defaults when the flags are absent: BOS for SentencePiece models, not for BPE ones.
        self.add_bos = bool(get("tokenizer.ggml.add_bos_token", self.model == "llama"))
        self.add_eos = bool(get("tokenizer.ggml.add_eos_token", False))
        self.add_space_prefix = bool(get("tokenizer.ggml.add_space_prefix", self.model == "llama"))
        self.chat_template = get("tokenizer.chat_template")

    def token(self, i):
        return self.tokens[i] if i is not None and 0 <= i < len(self.tokens) else None


def spm_tokenizer(v, for_transformers=False):
    """A tokenizer.json (dict) for a "llama" (SentencePiece BPE) vocabulary."""
    tokens, types, scores = v.tokens, v.types, v.scores
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    # Every split of every token into two tokens, by the token's score:
    # llama.cpp merges the highest-scoring pair first.
    ranked = []
    for i, t in enumerate(tokens):
        if types[i] in (TYPE_CONTROL, TYPE_BYTE, TYPE_UNKNOWN, TYPE_UNUSED) or len(t) < 2 or vocab[t] != i:
            continue
        for cut in range(1, len(t)):
            a, b = t[:cut], t[cut:]
            if a in vocab and b in vocab:
                ranked.append((-scores[i], cut, a, b))
    ranked.sort(key=lambda x: (x[0], x[1]))
    merges = [[a, b] for _, _, a, b in ranked]
    added = []
    for i, t in enumerate(tokens):
        if types[i] == TYPE_USER_DEFINED:
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": False})
        elif types[i] in (TYPE_CONTROL, TYPE_UNKNOWN) and for_transformers:
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True})
    normalizers = [{"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]
    decoders = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}]
    if v.add_space_prefix:
        normalizers.insert(0, {"type": "Prepend", "prepend": "▁"})
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    unk = v.token(v.unk)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": sorted(added, key=lambda a: a["id"]),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": post_processor(v) if for_transformers else None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def post_processor(v):
    """BOS (and EOS) as the GGUF says, for transformers users."""
    single, pair, special = [], [], {}
    for flag, tid in ((v.add_bos, v.bos), (None, None)):
        if flag and tid is not None:
            single.append({"SpecialToken": {"id": v.token(tid), "type_id": 0}})
            pair.append({"SpecialToken": {"id": v.token(tid), "type_id": 0}})
            special[v.token(tid)] = {"id": v.token(tid), "ids": [tid], "tokens": [v.token(tid)]}
    single.append({"Sequence": {"id": "A", "type_id": 0}})
    pair.append({"Sequence": {"id": "A", "type_id": 0}})
    pair.append({"Sequence": {"id": "B", "type_id": 1}})
    if v.add_eos and v.eos is not None:
        single.append({"SpecialToken": {"id": v.token(v.eos), "type_id": 0}})
        pair.append({"SpecialToken": {"id": v.token(v.eos), "type_id": 0}})
        special[v.token(v.eos)] = {"id": v.token(v.eos), "ids": [v.eos], "tokens": [v.token(v.eos)]}
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special}


# llama.cpp's pre-tokenizers of byte-level BPE vocabularies
# (llama-vocab.cpp, by tokenizer.ggml.pre), as HuggingFace pre-tokenizers.
# The GPT-2 expression is ByteLevel's own.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
BPE_PRE_TOKENIZERS = {
    "default": _BYTE_LEVEL,
    "gpt2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": False}, _BYTE_LEVEL]},
}


def bpe_tokenizer(v, converted, for_transformers=False):
    """transformers' conversion (a tokenizer.json dict) of a "gpt2" GGUF
    vocabulary, read as llama.cpp reads it: its pre-tokenizer, and control
    tokens not matched in text (unless for transformers, which needs its
    special tokens)."""
    out = json.loads(json.dumps(converted))
    pre = BPE_PRE_TOKENIZERS.get(v.pre)
    if pre is None:
        raise ValueError(f"tokenizer.ggml.pre {v.pre!r}: kvtorch does not know llama.cpp's pre-tokenizer for it")
    out["pre_tokenizer"] = pre
    if not for_transformers:
        types = v.types or []
        out["added_tokens"] = [a for a in out.get("added_tokens", [])
                               if not (a["id"] < len(types) and types[a["id"]] in (TYPE_CONTROL, TYPE_UNKNOWN))]
        out["post_processor"] = None
    return out


def tokenizer_config(v, tokenizer_json):
    """tokenizer_config.json for transformers: the special tokens, BOS
    handling and the chat template the GGUF has."""
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": v.add_bos, "add_eos_token": v.add_eos,
           "clean_up_tokenization_spaces": False, "model_max_length": 1_000_000_000_000_000_019_884_624_838_656}
    for name, tid in (("bos_token", v.bos), ("eos_token", v.eos), ("unk_token", v.unk), ("pad_token", v.pad)):
        if v.token(tid) is not None:
            cfg[name] = v.token(tid)
    if v.chat_template:
        cfg["chat_template"] = v.chat_template
    return cfg


def from_gguf(path, converted=None):
    """(tokenizer.json for kvtorch, tokenizer.json for transformers,
    tokenizer_config.json for transformers, the GGUFVocab). A "gpt2"
    vocabulary needs transformers' conversion of it (converted: its
    tokenizer.json, a dict); without one, (None, GGUFVocab)."""
    v = GGUFVocab(path)
    if v.model == "llama":
        own = json.dumps(spm_tokenizer(v), ensure_ascii=False)
        hf = spm_tokenizer(v, for_transformers=True)
        return (own, json.dumps(hf, ensure_ascii=False), tokenizer_config(v, hf)), v
    if v.model == "gpt2" and converted is not None:
        own = json.dumps(bpe_tokenizer(v, converted), ensure_ascii=False)
        hf = json.dumps(bpe_tokenizer(v, converted, for_transformers=True), ensure_ascii=False)
        return (own, hf, None), v
    return None, v
