"""The C kernels of kvtorch.latent against PyTorch, side by side in one run:
one side of one layer in a decoding step (9 query rows against 16,384
stored tokens of rank 190, SmolLM2-135M's shape with a joint basis), for
each storage kind. PyTorch's way (KVTorchCache's before the kernels, and
still on other devices): convert the latents to float32 (4-bit: by nibble
plane), then matmul, the per-token scales applied to the scores and weights.

    python bench/latentbench.py [--tokens 16384] [--rank 190] [--rows 9] [--repeat 50]

Prints the median milliseconds of each and their ratio.
"""
import argparse
import statistics
import time

import torch

from kvtorch import latent
from kvtorch.preset import Latents, _quantize


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def torch_scores(q, z):
    if z.bits == 4:
        lo, hi = (z.data & 0x0F).float(), (z.data >> 4).float()
        q_lo, q_hi = q[..., 0::2], q[..., 1::2]
        out = (torch.matmul(q_lo, lo.transpose(-1, -2)) + torch.matmul(q_hi, hi.transpose(-1, -2)) -
               8 * (q_lo.sum(-1, keepdim=True) + q_hi.sum(-1, keepdim=True)))
    else:
        out = torch.matmul(q, z.data.float().transpose(-1, -2))
    return out if z.scale is None else out * z.scale.float().transpose(-1, -2)


def torch_weights(a, z):
    if z.scale is not None:
        a = a * z.scale.float().transpose(-1, -2)
    if z.bits == 4:
        return torch.matmul(a, (z.data & 0x0F).float()), torch.matmul(a, (z.data >> 4).float())
    return torch.matmul(a, z.data.float())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--rank", type=int, default=190)
    ap.add_argument("--rows", type=int, default=9)
    ap.add_argument("--repeat", type=int, default=50)
    a = ap.parse_args()
    if not latent.available:
        raise SystemExit("kvtorch was installed without its C kernels (no C compiler when pip built it)")
    t, r, m = a.tokens, a.rank, a.rows
    print(f"{t} tokens x rank {r} x {m} query rows, {torch.get_num_threads()} threads")
    print("| latents | scores: kernel | scores: convert + matmul | ratio | weights: kernel | weights: convert + matmul | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for bits in (8, 4, 16):
        x = torch.randn(1, 1, t, r, generator=gen)
        z = Latents(x.half(), None, 16, r) if bits == 16 else Latents(*_quantize(x, bits), bits, r)
        store = latent.write(None, z, 0)
        q = torch.randn(1, 1, m, r + (r % 2 if bits == 4 else 0), generator=gen)  # 4 bits: the pad nibble's column
        p = latent.layout(q, bits).contiguous()
        out = torch.empty(1, 1, m, t)
        w = torch.softmax(torch.randn(1, 1, m, t, generator=gen), dim=-1)
        acc = torch.empty(1, 1, m, p.shape[-1])
        k_s = median_ms(lambda: latent.scores(store, t, p, out), a.repeat)
        k_w = median_ms(lambda: latent.weigh(store, t, w, acc), a.repeat)
        t_s = median_ms(lambda: torch_scores(q, z), a.repeat)
        t_w = median_ms(lambda: torch_weights(w, z), a.repeat)
        print(f"| {bits}-bit | {k_s:.2f} ms | {t_s:.2f} ms | {t_s / k_s:.1f}x | {k_w:.2f} ms | {t_w:.2f} ms | {t_w / k_w:.1f}x |")


if __name__ == "__main__":
    main()
