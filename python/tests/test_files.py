"""One strict reading of presets and calibrations, in Python and in Go: the
same bad files (issue 21's adversarial trial) are fed to kvtorch.Preset, to
python -m kvtorch.generate and to the Go binary (kvtorch check); each refuses
every one with one line and a non-zero exit, and none runs code from a file."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from kvtorch import KVTorchError, Preset
from kvtorch.files import load_preset
from test_preset import CALIB_TEXT, EVAL_TEXT, KVTORCH, kvtorch, train_tiny_tokenizer, write_texts
from tiny_models import tiny_model

pytestmark = pytest.mark.skipif(not os.path.exists(KVTORCH), reason="bin/kvtorch is not built (make build)")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny pre-RoPE llama exported, calibrated, and a preset of it: (model.pt, HF folder, preset dict, folder)."""
    root = tmp_path_factory.mktemp("files")
    tiny_model("llama").save_pretrained(root / "hf")
    (root / "hf" / "tokenizer.json").write_text(train_tiny_tokenizer())
    model_pt, cal = str(root / "model.pt"), str(root / "calib.pt")
    subprocess.run([sys.executable, "-m", "kvtorch.export", str(root / "hf"), "-o", model_pt], check=True,
                   capture_output=True)
    calib, evald = write_texts(root / "calib", CALIB_TEXT), write_texts(root / "eval", EVAL_TEXT)
    kvtorch("calibrate", "-q", "--model", model_pt, "--texts", calib, "--output", cal, "--seq-len", "64",
            "--min-tokens", "8")
    preset = str(root / "preset.json")
    kvtorch("eval", "--json", "--model", model_pt, "--calibration", cal, "--texts", evald, "--seq-len", "64",
            "--basis", "joint", "--rank-k", "24", "--rank-v", "24", "--bits", "8", "--output", preset)
    with open(preset) as f:
        return model_pt, str(root / "hf"), json.load(f), root


def sha256(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_preset(root, name, p):
    path = root / f"{name}.json"
    path.write_text(json.dumps(p) if not isinstance(p, str) else p)
    return str(path)


def with_calibration(root, name, p, cal):
    """p pointing at calibration file cal (a dict saved with torch.save, or a path)."""
    path = str(root / f"{name}.pt")
    if isinstance(cal, str):
        path = cal
    else:
        torch.save(cal, path)
    q = json.loads(json.dumps(p))
    q["calibration_file"] = path
    if os.path.isfile(path):
        q["calibration_sha256"] = sha256(path)
    return q


def layer_edit(p, **kw):
    q = json.loads(json.dumps(p))
    q["layers"][0].update(kw)
    return q


class Evil:
    """A pickle that runs a command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_files(good):
    model_pt, _, p, root = good
    cal = torch.load(p["calibration_file"], weights_only=True)
    raw = json.dumps(p)
    nan_u = {**cal, "layers": [dict(layer) for layer in cal["layers"]]}
    nan_u["layers"][0] = {"K": {**cal["layers"][0]["K"], "joint": {**cal["layers"][0]["K"]["joint"]}},
                          "V": cal["layers"][0]["V"]}
    nan_u["layers"][0]["K"]["joint"]["U"] = cal["layers"][0]["K"]["joint"]["U"].clone()
    nan_u["layers"][0]["K"]["joint"]["U"][0, 0] = float("nan")
    fifo = str(root / "fifo.pt")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    cases = {
        "NaN": raw.replace('"baseline_ppl": ', '"baseline_ppl": NaN, "x": ', 1),
        "bits 0": layer_edit(p, bits_k=0), "bits 1": layer_edit(p, bits_k=1), "bits 3": layer_edit(p, bits_v=3),
        "bits 32": layer_edit(p, bits_k=32),
        "basis bogus": layer_edit(p, basis_k="bogus"),
        "2 of the layers": {**p, "layers": p["layers"][:1]},
        "sinks -3": {**p, "sink_tokens": -3},
        "recent -1": {**p, "recent_tokens": -1},
        "recent not counted": {**p, "recent_tokens": 64},
        "recent in version 3": {**p, "version": 3, "recent_tokens": 0},
        "groups of one width": layer_edit(p, groups_k=[{"count": 24, "bits": 8}]),
        "groups out of order": layer_edit(p, groups_k=[{"count": 4, "bits": 8}, {"count": 20, "bits": 16}]),
        "groups not summing to the rank": layer_edit(p, bits_k=4, groups_k=[{"count": 4, "bits": 8}, {"count": 10, "bits": 4}]),
        "groups of 2 bits": layer_edit(p, groups_k=[{"count": 4, "bits": 8}, {"count": 20, "bits": 2}]),
        "groups in version 4": {**layer_edit(p, bits_k=4, groups_k=[{"count": 4, "bits": 8}, {"count": 20, "bits": 4}]),
                                "version": 4},
        "kv_source unknown": {**p, "kv_source": "rotated"},
        "kv_source relabelled": {**p, "kv_source": "post_rope"},
        "upper-case key": raw.replace('"rank_k": ', '"RANK_K": 128, "BITS_K": 16, "rank_k": ', 1),
        "key twice": raw.replace('"rank_k": ', '"rank_k": 1, "rank_k": ', 1),
        "unknown key": {**p, "recent": 3},
        "no calibration_file": {k: v for k, v in p.items() if k != "calibration_file"},
        "a JSON list": [p],
        "deep nesting": "[" * 100000 + "]" * 100000,
        "edited bytes": {**p, "bytes_per_token_compressed": 1},
        "calibration /dev/zero": with_calibration(root, "devzero", p, "/dev/zero"),
        "calibration FIFO": with_calibration(root, "fifo", p, fifo),
        "NaN in joint U": with_calibration(root, "nan-u", p, nan_u),
        "code in the calibration": with_calibration(root, "evil", p, {**cal, "evil": Evil(root / "ran")}),
        "calibration of another shape": with_calibration(root, "shape", p, {**cal, "n_kv_heads": 3}),
    }
    return {name: write_preset(root, name.replace(" ", "_").replace("/", ""), c) for name, c in cases.items()}


# The cases also run through python -m kvtorch.generate (a few: each starts
# transformers).
GENERATE = ("a JSON list", "calibration FIFO", "NaN in joint U", "code in the calibration")


def one_line(text):
    return len(text.strip().splitlines()) == 1


def test_bad_files_refused_by_python_and_go(good, monkeypatch):
    model_pt, hf, p, root = good
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # an explicit weights_only=True still wins
    env = dict(os.environ)
    for name, path in bad_files(good).items():
        with pytest.raises(KVTorchError) as e:
            preset = Preset(path)
            # a relabelled preset loads only if the calibration agrees; the cache
            # refuses it against the model
            from kvtorch import KVTorchCache

            KVTorchCache(preset, tiny_model("llama"))
        assert one_line(str(e.value)), (name, str(e.value))
        if name in GENERATE:
            r = subprocess.run([sys.executable, "-m", "kvtorch.generate", "--preset", path, "--model", hf, "hello"],
                               capture_output=True, text=True, env=env, timeout=120)
            assert r.returncode == 1 and one_line(r.stderr) and "Traceback" not in r.stderr, (name, r.stderr)
        r = subprocess.run([KVTORCH, "check", "--preset", path, "--model", model_pt, "--max-ppl-delta", "0.5"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and one_line(r.stderr.splitlines()[-1]), (name, r.stderr)
        assert not (root / "ran").exists(), f"{name}: the calibration's pickle ran a command"


def test_good_preset_loads_with_strict_rules(good):
    _, _, p, root = good
    path = write_preset(root, "same", p)
    assert load_preset(path) == p
    assert Preset(path).preset == p


def test_preset_schema_is_the_go_one():
    """The Python package ships the schema the Go code embeds."""
    import kvtorch.files as files

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "kvfile", "preset.schema.json")) as f:
        assert json.load(f) == files.PRESET_SCHEMA
