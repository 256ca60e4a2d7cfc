"""Directions for compressing a real model's KV cache, measured against each
other with an implementation independent of kvtorch's (HuggingFace eager
model, forward hooks on k_proj / v_proj: pre-RoPE keys and the values).

    python scripts/explore_kv.py HF_FOLDER [CALIB_TOKENS] [all|sinks|joint|quant]

HF_FOLDER: e.g. the real model's ($KVTORCH_HOME/models/smollm2-135m-instruct-q4_1/hf,
made by `make real-model`). Statistics from testdata/calib (the first
CALIB_TOKENS tokens in 512-token windows, default 16384), perplexity on
4,096 tokens of testdata/eval and of testdata/legal (Apache-2.0 and GPL-3),
deltas against the uncompressed model. Compares: attention sinks kept exact
or not, and left out of the statistics or not; a basis per KV head against
one joint basis over the heads; output-aware metrics (values weighted by the
output projection, keys by the queries' rotation-averaged energy); latent
quantization per token by absmax of the raw latents or of the latents
divided by their standard deviation; plain per-token and KIVI-style
(per-channel keys) quantization without projection. docs/BENCHMARKS.md
records its output and which directions kvtorch kept.
"""
import glob
import math
import os
import sys
import time

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

torch.set_num_threads(2)
torch.manual_seed(0)
HF = sys.argv[1]
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
M = AutoModelForCausalLM.from_pretrained(HF, dtype=torch.float32).eval()
tok = Tokenizer.from_file(os.path.join(HF, "tokenizer.json"))
cfg = M.config; L = cfg.num_hidden_layers; H = cfg.num_key_value_heads; D = cfg.head_dim; HQ = cfg.num_attention_heads; E = H*D
def windows(paths, seq=512, maxtok=4096):
    ids=[]
    for p in paths: ids += tok.encode(open(p, encoding="utf-8").read()).ids + [2]
    w=[ids[i:i+seq] for i in range(0, len(ids)-seq+1, seq)]
    return w[:maxtok//(seq-1)] if maxtok else w
CAL = windows(sorted(glob.glob(os.path.join(ROOT, "testdata/calib/*.txt"))), maxtok=int(sys.argv[2]) if len(sys.argv) > 2 else 16384)
EV = windows(sorted(glob.glob(os.path.join(ROOT, "testdata/eval/*.txt"))), maxtok=4096)
LEG = windows([os.path.join(ROOT, "testdata/legal", f) for f in ("Apache-2.0.txt", "GPL-3.txt")], maxtok=4096)
atts = [l.self_attn for l in M.model.layers]
# ---- statistics
S = 4  # sinks excluded from statistics
stats = {}
def acc(key, x):  # x [N, E]
    n, s, xx = stats.get(key, (0, 0, 0))
    stats[key] = (n + x.shape[0], s + x.double().sum(0), xx + x.double().T @ x.double())
cap = {}
hooks = []
for i, a in enumerate(atts):
    hooks.append(a.k_proj.register_forward_hook(lambda m, inp, out, i=i: cap.__setitem__(("k", i), out)))
    hooks.append(a.v_proj.register_forward_hook(lambda m, inp, out, i=i: cap.__setitem__(("v", i), out)))
    hooks.append(a.q_proj.register_forward_hook(lambda m, inp, out, i=i: cap.__setitem__(("q", i), out)))
t = time.time()
with torch.no_grad():
    for w in range(0, len(CAL), 4):
        x = torch.tensor(CAL[w:w+4]); M(input_ids=x)
        for i in range(L):
            for kind in "kv":
                y = cap[(kind, i)]  # [B, T, E]
                acc((kind, i, "nosink"), y[:, S:].reshape(-1, E))
                acc((kind, i, "all"), y.reshape(-1, E))
            q = cap[("q", i)][:, S:]  # [B,T,HQ*D]
            qe = (q.reshape(-1, HQ, D).double()**2).sum(0)  # [HQ, D]
            stats[("qe", i)] = stats.get(("qe", i), 0) + qe
            stats[("qn", i)] = stats.get(("qn", i), 0) + q.shape[0]*q.shape[1]
for h in hooks: h.remove()
print(f"calibration {len(CAL)} windows in {time.time()-t:.0f}s", flush=True)
def cov(kind, i, which):
    n, s, xx = stats[(kind, i, which)]
    mu = s / n
    return mu, xx / n - torch.outer(mu, mu), (xx / n)
# ---- bases
def basis(kind, i, which="nosink", joint=True, metric=None):
    """Returns (mu [E], down [E,E] (cols), up [E,E] (rows), eig [E]) ordered by decreasing eigenvalue.
    metric: [E,E] SPD weight (output-aware)."""
    mu, C, _ = cov(kind, i, which)
    blocks = [(0, E)] if joint else [(h*D, (h+1)*D) for h in range(H)]
    down = torch.zeros(E, E, dtype=torch.float64); up = torch.zeros(E, E, dtype=torch.float64); eig = torch.zeros(E, dtype=torch.float64)
    cols = []
    for (a, b) in blocks:
        Cb = C[a:b, a:b]
        if metric is not None:
            Mb = metric[a:b, a:b]
            w, V = torch.linalg.eigh(Mb); w = w.clamp_min(1e-12 * w.max())
            Ms, Mis = V @ torch.diag(w.sqrt()) @ V.T, V @ torch.diag(1/w.sqrt()) @ V.T
            ev, U = torch.linalg.eigh(Ms @ Cb @ Ms)
            ev, U = ev.flip(0), U.flip(1)
            dn, upb = Ms @ U, U.T @ Mis  # z = dn^T (x-mu); xhat = mu + upb^T z
        else:
            ev, U = torch.linalg.eigh(Cb); ev, U = ev.flip(0), U.flip(1)
            dn, upb = U, U.T
        cols.append((a, b, dn, upb, ev))
    return mu, cols
# projection applied: z = (x-mu) @ dn[:, :r]; quant; xhat = mu + z @ upb[:r]
def quantize(z, bits, mode, std):
    if bits >= 16: return z
    lev = 2**(bits-1)-1
    if mode == "raw":
        s = z.abs().amax(-1, keepdim=True).clamp_min(1e-30)/lev
        return torch.round(z/s)*s
    if mode == "norm":  # per-coordinate normalisation by latent std, then per-token absmax
        zn = z/std
        s = zn.abs().amax(-1, keepdim=True).clamp_min(1e-30)/lev
        return torch.round(zn/s)*s*std
    raise ValueError(mode)
class Proj:
    def __init__(self, mu, parts, bits=16, qmode="raw", sinks=S):
        # parts: list of (a, b, dn[:, :r], up[:r], std[r])
        self.mu, self.parts, self.bits, self.qmode, self.sinks = mu.float(), [(a, b, dn.float(), up.float(), st.float()) for a, b, dn, up, st in parts], bits, qmode, sinks
    def __call__(self, y):  # y [B, T, E]
        out = y.clone()
        x = y - self.mu
        for a, b, dn, up, st in self.parts:
            z = x[..., a:b] @ dn
            z = quantize(z, self.bits, self.qmode, st)
            out[..., a:b] = self.mu[a:b] + z @ up
        if self.sinks: out[:, :self.sinks] = y[:, :self.sinks]
        return out
def make(kind, i, rank, joint, which="nosink", metric=None, bits=16, qmode="raw", sinks=S):
    mu, cols = basis(kind, i, which, joint, metric)
    parts = []
    for (a, b, dn, upb, ev) in cols:
        r = rank if joint else rank  # rank per block
        parts.append((a, b, dn[:, :r], upb[:r], ev[:r].clamp_min(1e-12).sqrt()))
    return Proj(mu, parts, bits, qmode, sinks)
def plainquant(bits, per="token", sinks=S):
    class Q:
        def __call__(self, y):
            B, T, _ = y.shape; x = y.view(B, T, H, D)
            lev = 2**(bits-1)-1
            if per == "token": s = x.abs().amax(-1, keepdim=True)
            else: s = x.abs().amax(1, keepdim=True)  # per channel over the window (KIVI keys)
            s = s.clamp_min(1e-30)/lev
            out = (torch.round(x/s)*s).view(B, T, E).clone()
            if sinks: out[:, :sinks] = y[:, :sinks]
            return out
    return Q()
def evaluate(projs, sets=("eval", "legal")):
    hs = []
    for (kind, i), p in projs.items():
        mod = atts[i].k_proj if kind == "k" else atts[i].v_proj
        hs.append(mod.register_forward_hook(lambda m, inp, out, p=p: p(out)))
    res = {}
    try:
        for name in sets:
            wins = {"eval": EV, "legal": LEG}[name]
            nll = n = 0
            with torch.no_grad():
                for w in range(0, len(wins), 4):
                    x = torch.tensor(wins[w:w+4]); lg = M(input_ids=x).logits[:, :-1]
                    nll += torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]).double(), x[:, 1:].reshape(-1), reduction="sum").item(); n += x[:, 1:].numel()
            res[name] = math.exp(nll/n)
    finally:
        for h in hs: h.remove()
    return res
BASE = evaluate({})
print("baseline", BASE, flush=True)
def report(label, projs):
    t = time.time(); r = evaluate(projs)
    print(f"{label:58s} eval {100*(r['eval']/BASE['eval']-1):+7.2f}%  legal {100*(r['legal']/BASE['legal']-1):+7.2f}%  ({time.time()-t:.0f}s)", flush=True)
    return r
# output metrics
def wo_metric(i):  # V: for each KV head g, sum over its query heads of W_o,h^T W_o,h
    W = M.model.layers[i].self_attn.o_proj.weight.double()  # [hidden, HQ*D]
    Mt = torch.zeros(E, E, dtype=torch.float64); g = HQ // H
    for h in range(HQ):
        kv = h // g; Wh = W[:, h*D:(h+1)*D]
        Mt[kv*D:(kv+1)*D, kv*D:(kv+1)*D] += Wh.T @ Wh
    return Mt
def q_metric(i):  # K pre-RoPE: rotation-averaged query energy: pairs (j, j+D/2) averaged
    qe = stats[("qe", i)] / stats[("qn", i)]  # [HQ, D]
    g = HQ // H; m = torch.zeros(E, dtype=torch.float64)
    for h in range(HQ):
        kv = h // g; e = qe[h].clone(); half = D//2
        p = (e[:half] + e[half:]) / 2; e = torch.cat([p, p])
        m[kv*D:(kv+1)*D] += e
    return torch.diag(m)
EXP = sys.argv[3] if len(sys.argv) > 3 else "all"
if EXP in ("all", "sinks"):
    report("V per-head r48, NO sinks, stats all", {("v", i): make("v", i, 48, False, "all", sinks=0) for i in range(L)})
    report("V per-head r48, sinks 4, stats all", {("v", i): make("v", i, 48, False, "all") for i in range(L)})
    report("V per-head r48, sinks 4, stats nosink", {("v", i): make("v", i, 48, False) for i in range(L)})
if EXP in ("all", "joint"):
    report("V joint r144, sinks 4", {("v", i): make("v", i, 144, True) for i in range(L)})
    report("V joint r144, sinks 4, W_o metric", {("v", i): make("v", i, 144, True, metric=wo_metric(i)) for i in range(L)})
    report("V per-head r48, W_o metric", {("v", i): make("v", i, 48, False, metric=wo_metric(i)) for i in range(L)})
    report("K per-head r32, sinks 4", {("k", i): make("k", i, 32, False) for i in range(L)})
    report("K joint r96, sinks 4", {("k", i): make("k", i, 96, True) for i in range(L)})
    report("K joint r96, q metric", {("k", i): make("k", i, 96, True, metric=q_metric(i)) for i in range(L)})
    report("K joint r72, q metric", {("k", i): make("k", i, 72, True, metric=q_metric(i)) for i in range(L)})
    report("K joint r72", {("k", i): make("k", i, 72, True) for i in range(L)})
if EXP in ("all", "quant"):
    for bits in (8, 4):
        report(f"plain per-token {bits}-bit K+V (per head), sinks 4", {(kd, i): plainquant(bits) for i in range(L) for kd in "kv"})
        report(f"plain per-token {bits}-bit K+V, no sinks", {(kd, i): plainquant(bits, sinks=0) for i in range(L) for kd in "kv"})
        report(f"KIVI {bits}-bit: K per-channel, V per-token", {**{("k", i): plainquant(bits, "channel") for i in range(L)}, **{("v", i): plainquant(bits) for i in range(L)}})
        for qm in ("raw", "norm"):
            report(f"joint full rank {bits}-bit latents {qm}", {(kd, i): make(kd, i, E, True, bits=bits, qmode=qm) for i in range(L) for kd in "kv"})
