"""Builds the TorchScript fixture that torch/module_test.go loads.

Usage: python fixture.py OUT_DIR

Writes OUT_DIR/fixture.pt (torch.jit.script of Fixture, with two extra files)
and OUT_DIR/expected.json: an input, the outputs Python computes for it, and
the outputs after the buffer "block.scale" is overwritten with 2.0 everywhere.
"""
import json
import sys

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("scale", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * self.scale


class Fixture(nn.Module):
    """forward(ids int64[B, T]) -> (logits [B, T, V], (k0, k1), [v0, v1])."""

    def __init__(self, vocab: int = 11, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, dim)
        self.block = Block(dim)
        self.out = nn.Linear(dim, vocab)
        self.register_buffer("step", torch.tensor(3, dtype=torch.int64))

    def forward(self, ids: torch.Tensor):
        b, t = ids.shape
        x = self.emb(ids)
        k0 = x.reshape(b, t, self.heads, -1).transpose(1, 2)
        h = self.block(x)
        k1 = h.reshape(b, t, self.heads, -1).transpose(1, 2)
        logits = self.out(torch.tanh(h))
        return logits, (k0, k1), [x * 2.0, h + 1.0]

    @torch.jit.export
    def body(self, ids: torch.Tensor):
        """A second method: the hidden state before the output layer."""
        return torch.tanh(self.block(self.emb(ids)))


def flat(outputs):
    """Tensors of the output tree in depth-first order, as {shape, data}."""
    if isinstance(outputs, torch.Tensor):
        return [{"shape": list(outputs.shape), "data": outputs.detach().flatten().tolist()}]
    res = []
    for o in outputs:
        res.extend(flat(o))
    return res


def main(out_dir: str) -> None:
    torch.manual_seed(1234)
    model = Fixture().eval()
    scripted = torch.jit.script(model)
    extra = {"kvtorch.json": json.dumps({"fixture": True, "n_layers": 2}), "notes.txt": "hello\nworld"}
    torch.jit.save(scripted, f"{out_dir}/fixture.pt", _extra_files=extra)

    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], dtype=torch.int64)
    with torch.no_grad():
        before = flat(scripted(ids))
        body = flat(scripted.body(ids))
        scripted.block.scale.fill_(2.0)
        after = flat(scripted(ids))
    expected = {
        "input": ids.flatten().tolist(),
        "input_shape": list(ids.shape),
        "outputs": before,
        "body": body,
        "outputs_scale2": after,
        "extra_files": extra,
        "buffers": [name for name, _ in model.named_buffers()],
    }
    with open(f"{out_dir}/expected.json", "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main(sys.argv[1])
