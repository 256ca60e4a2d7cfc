"""Times torch.save / torch.load of the same tensors that bench/ptbench writes.

Usage: python pt_bench.py DIR N_TENSORS NUMEL ROUND
Prints one JSON line: {"save_s": ..., "load_s": ...}.
"""
import json
import os
import sys
import time

import torch


def main(d, n, numel, rnd):
    g = torch.Generator().manual_seed(rnd)
    value = {f"t{i}": torch.randn(numel, generator=g) for i in range(n)}
    path = os.path.join(d, "py.pt")
    t0 = time.perf_counter()
    torch.save(value, path)
    t1 = time.perf_counter()
    back = torch.load(path)
    t2 = time.perf_counter()
    assert back["t0"].shape == (numel,)
    os.remove(path)
    print(json.dumps({"save_s": t1 - t0, "load_s": t2 - t1}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
