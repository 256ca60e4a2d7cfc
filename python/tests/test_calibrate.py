"""kvtorch calibrate against an independent Python computation: collect every
K/V with the venv's torch, centre, eigh."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

KVTORCH = os.path.join(ROOT, "bin", "kvtorch")
REFMODEL = os.path.join(ROOT, "build", "refmodel.pt")
pytestmark = pytest.mark.skipif(not os.path.exists(KVTORCH), reason="bin/kvtorch is not built (make build)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    subprocess.run([sys.executable, os.path.join(ROOT, "calibration", "testdata", "models.py"), str(d)], check=True)
    texts = d / "texts"
    texts.mkdir()
    for i in range(5):
        (texts / f"t{i}.txt").write_text("the quick brown fox jumps over the lazy dog; func main() { return 42 } " * (3 + i))
    return str(d / "good.pt"), str(texts)


def reference(model_path, text_dir, max_length, min_tokens, sinks):
    """K/V of every calibration token but the first `sinks` of each sequence,
    by Python alone; per layer and side, per head and joint over the heads:
    (n, mean, eigenvalues descending, eigenvectors)."""
    from tokenizers import Tokenizer

    files = {"kvtorch.json": "", "tokenizer.json": ""}
    model = torch.jit.load(model_path, _extra_files=files)
    meta = json.loads(files["kvtorch.json"])
    tok = Tokenizer.from_str(files["tokenizer.json"].decode())
    rows = {}
    for path in sorted(glob.glob(os.path.join(text_dir, "**", "*.txt"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            ids = tok.encode(f.read()).ids
        if len(ids) < min_tokens:
            continue
        for s in range(0, len(ids), max_length):
            with torch.no_grad():
                _, keys, values = model(torch.tensor([ids[s:s + max_length]]))
            for l in range(meta["n_layers"]):
                for kind, x in (("K", keys[l]), ("V", values[l])):
                    rows.setdefault((l, kind), []).append(x[0, :, sinks:].double())  # [H, T, D]
    out = {}
    for (l, kind), xs in rows.items():
        X = torch.cat(xs, dim=1)  # [H, N, D]
        joint = X.transpose(0, 1).flatten(1)[None]  # [1, N, H*D]
        for name, Y in (("head", X), ("joint", joint)):
            mean = Y.mean(dim=1)
            Yc = Y - mean[:, None, :]
            cov = Yc.transpose(1, 2) @ Yc / (Y.shape[1] - 1)
            w, V = torch.linalg.eigh(cov)
            out[(l, kind, name)] = (Y.shape[1], mean, w.flip(-1), V.flip(-1))
    return meta, out


def sin_largest_angle(A, B):
    """Sine of the largest principal angle between the column spans of A and B (orthonormal)."""
    P = B @ B.transpose(-1, -2)
    R = A - P @ A
    return torch.linalg.matrix_norm(R, ord=2)


def check(model_path, text_dir, tmp_path, max_length, ranks):
    out = tmp_path / "calib.pt"
    r = subprocess.run([KVTORCH, "calibrate", "--model", model_path, "--texts", text_dir, "--output", str(out),
                        "--seq-len", str(max_length), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cal = torch.load(str(out))  # bare torch.load: weights_only=True
    sinks = cal["options"]["sinks"]
    assert sinks == 4
    meta, ref = reference(model_path, text_dir, max_length, cal["options"]["min_tokens"], sinks)
    assert cal["format"] == "kvtorch-calibration" and cal["version"] == 2 and cal["n_layers"] == meta["n_layers"]
    for (l, kind, basis), (n, mean, w, V) in ref.items():
        got = cal["layers"][l][kind]
        if basis == "joint":  # stored without the group axis
            got = {k: v[None] for k, v in got["joint"].items()}
        assert cal["tokens"] == n
        torch.testing.assert_close(got["mean"].double(), mean, rtol=1e-4, atol=1e-5)
        gw = got["eigenvalues"].double()
        # within 1e-4 relative (with a floor of 1e-6 of the top eigenvalue for the smallest ones)
        assert ((gw - w).abs() <= 1e-4 * w.abs() + 1e-6 * w[:, :1]).all(), (l, kind, basis, (gw - w).abs().max())
        U = got["U"].double()
        for rank in ranks + [2 * r for r in ranks]:
            s = sin_largest_angle(U[:, :, :rank], V[:, :, :rank])
            assert (s <= 1e-3).all(), (l, kind, basis, rank, s)
    return out


def test_tiny_model_matches_python(tiny, tmp_path):
    check(*tiny, tmp_path, max_length=32, ranks=[4, 8])


@pytest.mark.skipif(not os.path.exists(REFMODEL), reason="build/refmodel.pt is not exported (make deps)")
def test_reference_model_matches_python(tmp_path):
    texts = tmp_path / "texts"  # a folder of four kinds of calibration text (all 13 files take 4x as long)
    texts.mkdir()
    for name in ("000-code-go.txt", "001-code-python.txt", "002-prose.txt", "003-technical.txt"):
        shutil.copy(os.path.join(ROOT, "testdata", "calib", name), texts / name)
    check(REFMODEL, str(texts), tmp_path, max_length=512, ranks=[8, 16, 32])


def test_docs_snippet_runs(tiny, tmp_path):
    out = tmp_path / "calib.pt"
    r = subprocess.run([KVTORCH, "calibrate", "--model", tiny[0], "--texts", tiny[1], "--output", str(out), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(ROOT, "docs", "calibration-format.md")) as f:
        snippet = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
    snippet = snippet.replace('"calib.pt"', repr(str(out))).replace("layer, rank = 3, 16", "layer, rank = 1, 4")
    env = {}
    exec(snippet, env)  # noqa: S102 - the documented example must run as written
    assert env["k_hat"].shape == env["k"].shape and env["latents"].shape[-1] == 4
