"""kvtorch reads a GGUF model's text as llama.cpp does (issue 20): the ids of
kvtorch's tokenizer (the Go one, in the exported model) equal llama.cpp's,
through llama-cpp-python, on thousands of strings (whitespace runs, digits,
CJK, emoji, code, markup, special-token look-alikes), for the real models
`make real-model` fetches: SmolLM2-135M (byte-level BPE) and Gemma-3-270M
(SentencePiece BPE, where transformers' conversion differs); and BOS is as
the GGUF says."""
import json
import os
import random
import subprocess
import zipfile

import pytest

from conftest import ROOT, TESTDATA

KVTORCH = os.path.join(ROOT, "bin", "kvtorch")
MODELS = {"smollm2": os.environ.get("KVTORCH_REAL_MODEL_DIR"), "gemma3": os.environ.get("KVTORCH_GEMMA_DIR")}

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make test installs it)")


def model_dir(name):
    d = MODELS[name]
    if not d or not os.path.exists(os.path.join(d, "model.pt")):
        pytest.skip(f"the real model {name} is not exported (make real-model)")
    return d


def gguf_of(d):
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".gguf")][0]


PIECES = ["  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", " \n ", "0", "7", "42", "1234567", "3.14159", "1e-9",
          "日本語", "中文字符", "한국어", "ไทย", "Ελληνικά", "русский", "🙂", "👍🏽", "🇩🇪", "e\u0301", "café", "naïve",
          "def f(x):", "    return x * 2", "for (i = 0; i < n; i++) {", "}", "<div>", "</div>", "<br/>", "&amp;",
          "<start_of_turn>", "<bos>", "<eos>", "<|im_start|>", "<unk>", "[multimodal]", "▁", "▁▁", "\u00a0", "\u200b",
          " the", " world", "Hello", "HELLO", "hello,", "it's", "don't", "U.S.A.", "--flag=value", "/usr/bin/env",
          "https://example.com/a?b=c", "x" * 40, "ab" * 30, "\r\n", "\x0b", "a\u2028b", "ﬁ", "Ⅻ", "½", "²"]


def strings(n=3000, seed=0):
    """n strings made of the pieces above and of the texts in testdata."""
    rng = random.Random(seed)
    lines = []
    for folder in ("calib", "eval", "legal"):
        for f in sorted(os.listdir(os.path.join(TESTDATA, folder))):
            with open(os.path.join(TESTDATA, folder, f), encoding="utf-8") as fh:
                text = fh.read()
            for _ in range(20):
                a = rng.randrange(len(text))
                lines.append(text[a:a + rng.randrange(1, 400)])
    out = list(PIECES) + lines
    while len(out) < n:
        out.append("".join(rng.choice(PIECES + [" ", "a", "b", ".", ",", "\n"]) for _ in range(rng.randrange(1, 12))))
    return out


def kvtorch_ids(model_pt, texts, tmp_path):
    path = tmp_path / "strings.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    r = subprocess.run([KVTORCH, "tokenize", "--json", "--no-special", "--model", model_pt, str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [json.loads(line)["input_ids"] for line in r.stdout.splitlines()]


def metadata(model_pt):
    with zipfile.ZipFile(model_pt) as z:
        return json.loads(z.read(next(n for n in z.namelist() if n.endswith("/extra/kvtorch.json"))))


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_ids_equal_llama_cpp(name, tmp_path):
    d = model_dir(name)
    ref = llama_cpp.Llama(model_path=gguf_of(d), vocab_only=True, verbose=False)
    texts = [t for t in strings() if t]
    want = [ref.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in texts]
    got = kvtorch_ids(os.path.join(d, "model.pt"), texts, tmp_path)
    bad = [(t, g, w) for t, g, w in zip(texts, got, want) if g != w]
    assert len(got) == len(texts)
    assert not bad, f"{len(bad)} of {len(texts)} strings differ from llama.cpp, e.g. {bad[:3]}"
    # BOS as the GGUF says: llama.cpp adds it for Gemma, not for SmolLM2.
    meta = metadata(os.path.join(d, "model.pt"))
    with_bos = ref.tokenize(b"hi", add_bos=True, special=False)
    wants_bos = len(with_bos) > len(ref.tokenize(b"hi", add_bos=False, special=False))
    assert meta["add_bos"] == wants_bos and (not wants_bos or meta["bos_token_id"] == with_bos[0]), meta
    assert meta["eos_token_id"] == ref.token_eos()


def test_gemma_prose_is_not_split_into_pieces(tmp_path):
    """Issue 20's example: 9 ids, as llama.cpp reads it, not transformers' 20."""
    d = model_dir("gemma3")
    (ids,) = kvtorch_ids(os.path.join(d, "model.pt"), ["Hello world, the GNU General Public License is"], tmp_path)
    assert len(ids) == 9 and 1902 in ids, ids
