"""Gemma-3-270M, the second real model (issue 20), on the default path
(keys pre-RoPE): the HuggingFace folder the exporter writes loads as the
original (its tokenizer adds BOS and reads text as llama.cpp does), and a
full-rank preset through KVTorchCache generates DynamicCache's greedy tokens
for a prompt longer than the sliding window (512), where the cache must keep
to the window on the sliding layers and rotate keys back with the base of
each kind of layer."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TESTDATA

KVTORCH = os.path.join(ROOT, "bin", "kvtorch")
GEMMA = os.environ.get("KVTORCH_GEMMA_DIR")
pytestmark = pytest.mark.skipif(not GEMMA or not os.path.exists(os.path.join(GEMMA or "", "model.pt")),
                                reason="the Gemma-3-270M export is missing (make real-model)")


def kvtorch(*args):
    r = subprocess.run([KVTORCH, *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def full_rank(tmp_path_factory):
    """A 16-bit full-rank preset of Gemma's pre-RoPE keys: joint bases at their
    full 256 dimensions, sink tokens exact."""
    root = tmp_path_factory.mktemp("gemma")
    cal, preset = str(root / "calib.pt"), str(root / "preset.json")
    model = os.path.join(GEMMA, "model.pt")
    kvtorch("calibrate", "-q", "--model", model, "--texts", os.path.join(TESTDATA, "calib", "002-prose.txt"),
            "--output", cal, "--seq-len", "256")
    kvtorch("eval", "--json", "--model", model, "--calibration", cal, "--texts",
            os.path.join(TESTDATA, "eval", "004-prose.txt"), "--seq-len", "128", "--max-tokens", "127",
            "--basis", "joint", "--rank-k", "256", "--rank-v", "256", "--bits", "16", "--output", preset)
    return preset


def test_hf_folder_loads_as_the_original():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(GEMMA, "hf"))
    ids = tok("Hello world, the GNU General Public License is")["input_ids"]
    assert ids[0] == 2 and len(ids) == 10 and 1902 in ids, ids  # BOS, then llama.cpp's 9 ids
    assert tok.decode(ids[1:]) == "Hello world, the GNU General Public License is"


def test_full_rank_pre_rope_generates_as_dynamic_cache_past_the_window(full_rank):
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    from kvtorch import KVTorchCache, Preset

    hf = os.path.join(GEMMA, "hf")
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    assert model.config.sliding_window == 512 and "sliding_attention" in model.config.layer_types
    tok = AutoTokenizer.from_pretrained(hf)
    with open(os.path.join(TESTDATA, "legal", "Apache-2.0.txt"), encoding="utf-8") as f:
        prompt = tok(f.read(), return_tensors="pt")["input_ids"][:, :600]
    assert prompt[0, 0] == 2 and prompt.shape[1] == 600
    preset = Preset(full_rank)
    with torch.no_grad():
        want = model.generate(prompt, past_key_values=DynamicCache(config=model.config), max_new_tokens=12,
                              do_sample=False)
        got = model.generate(prompt, past_key_values=KVTorchCache(preset, model), max_new_tokens=12, do_sample=False)
    assert torch.equal(got, want), (got[0, 600:], want[0, 600:])


def test_generate_compare_on_the_hf_folder(full_rank):
    r = subprocess.run([sys.executable, "-m", "kvtorch.generate", "--preset", full_rank, "--model",
                        os.path.join(GEMMA, "hf"), "--compare", "--max-new-tokens", "8",
                        "The GNU General Public License is"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ours, theirs = r.stdout.split("--- with DynamicCache:\n")
    assert ours.strip() and ours.strip() == theirs.strip() and " 1 1 1" not in ours, r.stdout
