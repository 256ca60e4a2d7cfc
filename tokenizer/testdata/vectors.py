"""Test vectors for kvtorch's Go tokenizer, produced by HuggingFace tokenizers.

Usage: python vectors.py OUT_DIR [TOKENIZER_JSON ...]

Trains small tokenizers and encodes thousands of strings with each:
byte-level BPE with the pre-tokenizer configurations of GPT-2, Llama-3 and
Qwen2 (and a variant exercising Digits and added-token options); and
SentencePiece-style ones trained on the bundled texts (testdata/): BPE and
Unigram, each with and without byte fallback, and the model of the BPE one
dressed as Llama-2 (legacy Prepend/Replace normalizers), Mistral (Metaspace,
prepend_scheme "first", no split) and Gemma (Replace normalizer, Split)
tokenizer.json files. Writes OUT_DIR/<name>.tokenizer.json and
OUT_DIR/vectors.json: {"<name>": {"tokenizer": path, "cases": [[text, ids,
decoded], ...]}, ...}, decoded being HF's decode(ids). Each further
tokenizer.json given (the reference model's, a real model's) is included
under its file name.
"""
import json
import os
import random
import sys
import sysconfig

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import AddedToken

HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLED = [os.path.join(HERE, "..", "..", "testdata", d) for d in ("calib", "eval")]

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

RANGES = {
    "latin": [(0x20, 0x7E), (0xA0, 0x17F)],
    "cjk": [(0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xAC00, 0xD7A3)],
    "emoji": [(0x1F300, 0x1F6FF), (0x1F900, 0x1F9FF), (0x2600, 0x27BF)],
    "combining": [(0x300, 0x36F), (0x1AB0, 0x1AFF)],
    "rtl": [(0x590, 0x5FF), (0x600, 0x6FF), (0x750, 0x77F)],
    "misc": [(0x400, 0x4FF), (0x900, 0x97F), (0x370, 0x3FF), (0xE00, 0xE7F)],
    "spaces": [(0x2000, 0x200B), (0x3000, 0x3000), (0x85, 0x85), (0x1680, 0x1680), (0x2028, 0x2029), (0x9, 0xD)],
    "digits": [(0x30, 0x39), (0x660, 0x669), (0xFF10, 0xFF19), (0x2160, 0x2188), (0xB2, 0xB3)],
}


def corpus():
    """Training text: Python's own sources plus generated strings."""
    texts = []
    stdlib = sysconfig.get_paths()["stdlib"]
    for name in sorted(os.listdir(stdlib))[:120]:
        if name.endswith(".py"):
            with open(os.path.join(stdlib, name), encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    rng = random.Random(1)
    texts.extend(random_strings(rng, 3000))
    return texts


def rand_chars(rng, kinds, n):
    out = []
    for _ in range(n):
        lo, hi = rng.choice(RANGES[rng.choice(kinds)])
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def random_strings(rng, n):
    words = ["the", "The", "don't", "I'm", "you're", "WE'LL", "they've", "it's", "She'D", "hello", "world",
             "naïve", "café", "über", "日本語", "中文", "한국어", "Привет", "مرحبا", "שלום", "😀", "👍🏽", "🇫🇷",
             "e\u0301", "x\u0308\u0301", "func", "def", "return", "0x1F", "3.14159", "1,000,000", "2024-11-26",
             "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<tool>", " <tool> ", "snake_case",
             "camelCase", "http://example.com/a?b=c", "    ", "\t\t", "\n\n\n", "\r\n", "\u00a0", "\u3000"]
    out = []
    for i in range(n):
        kind = i % 8
        if kind == 0:  # words and punctuation
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + rng.choice(["", ".", "!", "?\n", "..."]))
        elif kind == 1:  # one script or several
            out.append(rand_chars(rng, list(RANGES), rng.randint(1, 40)))
        elif kind == 2:  # whitespace runs
            out.append("".join(rng.choice([" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2009", "a", "b1", "."]) for _ in range(rng.randint(1, 30))))
        elif kind == 3:  # digits
            out.append("".join(rng.choice(["0123456789", "12", "7", " ", ",", ".", "-", "١٢٣", "①", "x"]) for _ in range(rng.randint(1, 15))))
        elif kind == 4:  # code
            out.append(rng.choice([
                "func main() {\n\tfmt.Println(\"hi\")\n}\n", "def f(x):\n    return x**2  # square\n",
                "if (a && b || !c) { return -1; }", "for i in range(10):\n\tprint(i, end='')\n",
                "SELECT * FROM t WHERE id = 42;", "x := []int{1, 2, 3}", "#include <stdio.h>\nint main(void){}",
                "    indented\n        more\n", "a_b-c.d/e\\f", "{{ template }}", "<div class=\"x\">y</div>"]) * rng.randint(1, 3))
        elif kind == 5:  # byte soup: arbitrary code points, controls included
            out.append("".join(chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x7FF), rng.randint(0x800, 0xD7FF),
                                                rng.randint(0xE000, 0xFFFF), rng.randint(0x10000, 0x10FFFF)]))
                               for _ in range(rng.randint(1, 25))))
        elif kind == 6:  # contractions and case
            out.append("".join(rng.choice(["'s", "'S", "'t", "'re", "'RE", "'ve", "'m", "'ll", "'LL", "'d", "'", "x", " ", "O'Neil"]) for _ in range(rng.randint(1, 10))))
        else:  # special tokens inside text
            out.append("".join(rng.choice(["<|endoftext|>", "<|im_start|>", "user", "\n", "hi", " ", "<|im_end|>", "<tool>", " <tool>", "<tool> ", "a<tool>b", "<|begin_of_text|>",
                                           "<s>", "</s>", "<unk>", "[INST]", " [/INST]", "<start_of_turn>", "<0x41>", "\u2581", "\u2581\u2581x", "\ufffd"]) for _ in range(rng.randint(1, 8))))
    return out


def bundled_texts():
    """The bundled calibration and evaluation texts, one paragraph each."""
    texts = []
    for d in BUNDLED:
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), encoding="utf-8") as f:
                texts.extend(p for p in f.read().split("\n\n") if p.strip())
    return texts


def bpe_tokenizer(pre, normalizer=None):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return tok


def train(tok, texts, specials):
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


SP_SPECIALS = ["<unk>", "<s>", "</s>"]


def with_byte_tokens(tok, unigram=False):
    """A copy of tok whose model has SentencePiece's <0x00>..<0xFF> tokens and
    byte_fallback (the trainers make neither)."""
    d = json.loads(tok.to_str())
    m = d["model"]
    if unigram:
        have = {p for p, _ in m["vocab"]}
        low = min(s for _, s in m["vocab"])
        m["vocab"] += [[f"<0x{b:02X}>", low - 1.0] for b in range(256) if f"<0x{b:02X}>" not in have]
    else:
        for b in range(256):
            m["vocab"].setdefault(f"<0x{b:02X}>", len(m["vocab"]))
    m["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(d))


def sentencepiece_tokenizers(extra):
    """SentencePiece-style tokenizers trained on the bundled texts: BPE and
    Unigram with and without byte fallback (a small alphabet, so that rare
    characters are unknown), and Llama-2-, Mistral- and Gemma-style files
    around the BPE model."""
    texts = bundled_texts() + extra[-3000:]
    toks = {}
    bpe = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    bpe.normalizer = normalizers.NFKC()
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    bpe.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=3000, special_tokens=SP_SPECIALS,
                                                       limit_alphabet=150, show_progress=False))
    toks["sp_bpe"] = bpe
    toks["sp_bpe_bytes"] = with_byte_tokens(bpe)

    uni = Tokenizer(models.Unigram())
    uni.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    uni.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    uni.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    uni.train_from_iterator(bundled_texts(), trainers.UnigramTrainer(vocab_size=3000, special_tokens=SP_SPECIALS, unk_token="<unk>",
                                                           show_progress=False))
    toks["sp_unigram"] = uni
    toks["sp_unigram_bytes"] = with_byte_tokens(uni, unigram=True)

    # The BPE model (with byte tokens) as the real models' files wrap it.
    base = toks["sp_bpe_bytes"].to_str()
    sp_decoder = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]

    llama2 = Tokenizer.from_str(base)  # legacy: what the Llama-2 hub files hold
    llama2.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    llama2.pre_tokenizer = None
    llama2.decoder = decoders.Sequence(sp_decoder + [decoders.Strip(content=" ", left=1)])
    llama2.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", llama2.token_to_id("<s>"))])
    toks["llama2"] = llama2

    mistral = Tokenizer.from_str(base)  # transformers' conversion (legacy=False)
    mistral.normalizer = None
    mistral.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    mistral.decoder = decoders.Sequence(sp_decoder + [decoders.Strip(content=" ", left=1)])
    mistral.add_special_tokens(["[INST]", "[/INST]"])
    mistral.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", mistral.token_to_id("<s>"))])
    toks["mistral"] = mistral

    gemma = Tokenizer.from_str(base)  # transformers' GemmaTokenizer
    gemma.normalizer = normalizers.Replace(" ", "\u2581")
    gemma.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    gemma.decoder = decoders.Sequence(sp_decoder)
    gemma.add_special_tokens(["<start_of_turn>", "<end_of_turn>"])
    gemma.add_tokens([AddedToken("<0x41>", normalized=False)])  # a normal added token that looks like a byte token
    gemma.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", gemma.token_to_id("<s>"))])
    toks["gemma"] = gemma
    return toks


def serde_floats(rng):
    """Decimal strings and the float64 HF holds after reading them as Unigram
    scores (serde_json's parser, not always the nearest float), written back
    by HF in its shortest round-trip form."""
    texts = []
    for i in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 19)))
        k = rng.randint(0, len(digits))
        s = "-" + (digits[:k].lstrip("0") or "0") + "." + (digits[k:] or "0")
        if i % 5 == 0:
            s += "e" + str(rng.randint(-30, 5))
        texts.append(s)
    texts += ["-9.007199254740993", "-0.1", "-1e-7", "-12345678901234567890.5", "-3", "0.0"]
    body = ",".join(f'["t{i}", {s}]' for i, s in enumerate(texts))
    tok = Tokenizer.from_str('{"version": "1.0", "model": {"type": "Unigram", "unk_id": 0, "vocab": [' + body + ']}}')
    held = json.loads(tok.to_str())["model"]["vocab"]
    return [[s, repr(v)] for s, (_, v) in zip(texts, held)]


def build(out_dir):
    texts = corpus()
    toks = {}
    gpt2 = bpe_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False))
    gpt2.post_processor = processors.ByteLevel(trim_offsets=True)
    toks["gpt2"] = train(gpt2, texts, ["<|endoftext|>"])

    llama = bpe_tokenizer(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    train(llama, texts, ["<|begin_of_text|>", "<|end_of_text|>"])
    bos = llama.token_to_id("<|begin_of_text|>")
    llama.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])])
    toks["llama3"] = llama

    qwen = bpe_tokenizer(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), normalizer=normalizers.NFC())
    qwen.post_processor = processors.ByteLevel(trim_offsets=False)
    toks["qwen2"] = train(qwen, texts, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])

    # Digits and added-token options; add_prefix_space; a normalized added token.
    variant = bpe_tokenizer(pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=True)]), normalizer=normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]))
    train(variant, texts, ["<|endoftext|>"])
    variant.add_special_tokens([AddedToken("<tool>", lstrip=True, rstrip=True, single_word=False, normalized=False)])
    variant.add_tokens([AddedToken("user", single_word=True, normalized=True), AddedToken("hi", normalized=False)])
    toks["variant"] = variant

    toks.update(sentencepiece_tokenizers(texts))

    paths = {}
    for name, tok in toks.items():
        path = os.path.join(out_dir, f"{name}.tokenizer.json")
        tok.save(path)
        paths[name] = path
    # Llama-3's tokenizer sets ignore_merges; the trainer does not: set it in the file.
    with open(paths["llama3"]) as f:
        d = json.load(f)
    d["model"]["ignore_merges"] = True
    with open(paths["llama3"], "w") as f:
        json.dump(d, f)
    return paths


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    paths = build(out_dir)
    for extra in sys.argv[2:]:
        if os.path.exists(extra):
            paths[os.path.basename(extra).removesuffix(".json").removesuffix(".tokenizer")] = extra
    rng = random.Random(2)
    strings = random_strings(rng, 3000) + ["", " ", "\n", "a", "  leading", "trailing  ", "x\r\ny", "💩" * 40, "a" * 300,
                                           " " * 100 + "b", "1" * 50, "é" * 60, "\u0000\u0001\u001f", "   ", " hello", "  two  spaces  ",
                                           "\u2581", "\u2581hello", "\t\n \u3000x", "<s>", "<s> hi", "hi</s>", "<unk><unk>", "日本語のテキスト 😀👍🏽 and ASCII",
                                           "\ufffd\ufffd", "<0xE6><0x97>", "tab\tsep", "a  b   c    d"]
    strings += bundled_texts()[:200]
    vectors = {}
    for name, path in paths.items():
        tok = Tokenizer.from_file(path)
        cases = []
        for s in strings:
            ids = tok.encode(s).ids
            cases.append([s, ids, tok.decode(ids)])
        vectors[name] = {"tokenizer": path, "cases": cases}
    with open(os.path.join(out_dir, "vectors.json"), "w") as f:
        json.dump(vectors, f)
    with open(os.path.join(out_dir, "serde_floats.json"), "w") as f:
        json.dump(serde_floats(random.Random(3)), f)
    print(f"{len(strings)} strings x {len(paths)} tokenizers")


if __name__ == "__main__":
    main()
