"""kvtorch presets for PyTorch users: plain torch, no Go binary needed.

    from kvtorch import Preset
    p = Preset("preset.json")                 # finds the calibration it names, checks its sha256
    z = p.compress(layer, "k", k)             # k: [B, H, T, D] -> Latents (what a cache stores)
    k_hat = p.expand(layer, "k", z)           # back to [B, H, T, D]

With transformers installed, KVTorchCache stores the latents (quantized when
the preset says so) instead of full K/V, for real memory savings in generate:

    from kvtorch import KVTorchCache
    cache = KVTorchCache(p, model)
    model.generate(ids, past_key_values=cache, max_new_tokens=50)
    cache.nbytes()                            # bytes actually stored

A side of a layer uses a basis per KV head ("head": latents [B, H, T, r]),
one joint basis over the heads joined ("joint": latents [B, 1, T, r], r
counting all heads), or none ("none": the elements themselves, quantized).
Storage: 16-bit latents as float16; 8-bit as int8 with one float16 absmax
scale per token and quantization group (per head for a per-head basis or
none; for a joint basis one per token, of the latents divided by their
standard deviation first); 4-bit as two values per uint8 with the same
scale; sides the preset leaves uncompressed, and the first sink_tokens
tokens of every sequence, as float16. A joint side whose latents are split
by bit width (the preset's groups_k / groups_v: the leading components at
16 or 8 bits, the rest at 4) stores each width so, with its own scale
(SplitLatents: one Latents per width). This is exactly the accounting of the
preset's bytes (docs/preset-format.md), and exactly what kvtorch eval
measured.

The quantization rule, stated here once. For the latents z of one token and
group (float32) and bits b in {8, 4}:

    levels = 2^(b-1) - 1                            127 or 7
    step   = max(max_i |z_i|, 1e-30) / levels      in float32
    q      = clamp(round_half_even(z / step), -levels, levels)
    stored: q as int8 (8 bits), or q + 8 in a nibble (4 bits: even
            coordinates low, odd ones high, an odd rank padded with 8),
            and step as float16
    read:   q * float16(step)

Its copies choose the same levels (python/tests/test_latent.py:
test_hook_quantizes_as_compress, test_store_quantizes_as_compress): the hook
of exported models, which kvtorch eval measures (kvtorch.hook.KVHook, and
its eager twin project_eager: fake quantization, read back with the float32
step), and the C kernel that quantizes as it stores (kvt_store in
_latent.c, through latent.store).
"""
import hashlib
import os
from dataclasses import dataclass

import torch

from kvtorch.files import KVTorchError, load_calibration, load_preset, open_regular, side_widths

KINDS = {"k": "K", "v": "V"}


@dataclass
class SideSetting:
    """How a preset stores one side (K or V) of one layer."""

    rank: int  # latents per token (per KV head for a per-head basis, for all heads for a joint one)
    bits: int  # 16, 8 or 4
    dim: int  # the head dimension D
    basis: str  # "head", "joint" or "none" (the elements themselves)
    compressed: bool  # False: stored as it is (full rank at 16 bits)
    U: torch.Tensor | None = None  # [H, D, rank] per head, or [H*D, rank] joint
    mean: torch.Tensor | None = None  # [H, D], or [H*D] joint
    qscale: torch.Tensor | None = None  # joint: the latents' standard deviations [rank], divided out before quantizing
    widths: list | None = None  # joint latents split by bit width: [(count, bits), ...], leading components first


@dataclass
class Latents:
    """What a compressed cache stores for one side of one layer."""

    data: torch.Tensor  # float16 [B, G, T, r], int8 [B, G, T, r], or uint8 [B, G, T, ceil(r/2)] (4-bit); G = heads or 1
    scale: torch.Tensor | None  # float16 [B, G, T, 1] for 8/4 bits
    bits: int
    rank: int

    @property
    def nbytes(self):
        n = self.data.numel() * self.data.element_size()
        if self.scale is not None:
            n += self.scale.numel() * self.scale.element_size()
        return n


@dataclass
class SplitLatents:
    """What a compressed cache stores for a side whose latents are split by
    bit width: one Latents per width, leading components first."""

    parts: list  # of Latents

    @property
    def nbytes(self):
        return sum(z.nbytes for z in self.parts)

    @property
    def rank(self):
        return sum(z.rank for z in self.parts)


def _sha256(path):
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resolve(path, near):
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(near)), path)


def _quantize(z: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The quantization rule (the module's docs) of z [..., r], a group per
    row -> (data, float16 scale)."""
    levels = 2 ** (bits - 1) - 1
    step = z.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / levels
    # Rounded with the float32 step, as kvtorch's hook rounds (so the same
    # levels are chosen); the step is stored as float16.
    q = torch.round(z / step).clamp(-levels, levels).to(torch.int8)
    scale = step.to(torch.float16)
    if bits == 8:
        return q, scale
    u = (q + 8).to(torch.uint8)  # 1..15
    if z.shape[-1] % 2:
        u = torch.cat([u, torch.full_like(u[..., :1], 8)], dim=-1)
    return u[..., 0::2] | (u[..., 1::2] << 4), scale


def stored(z: torch.Tensor, bits: int) -> Latents:
    """Float latents z [..., r] as a cache stores them at bits: float16, or
    quantized by the rule above."""
    if bits == 16:
        return Latents(z.to(torch.float16), None, 16, z.shape[-1])
    return Latents(*_quantize(z, bits), bits, z.shape[-1])


def split_latents(z: torch.Tensor, widths) -> list:
    """Latents z [..., r] (a joint side's, divided by their standard
    deviations) split by bit width: one Latents per (count, bits)."""
    out, at = [], 0
    for n, b in widths:
        out.append(stored(z[..., at:at + n], b))
        at += n
    return out


def dequantize(z: Latents) -> torch.Tensor:
    """The float32 latents [..., rank] z stores (for a joint basis still
    divided by their standard deviations when quantized)."""
    if isinstance(z, SplitLatents):
        return torch.cat([dequantize(x) for x in z.parts], dim=-1)
    if z.bits == 16:
        return z.data.float()
    if z.bits == 8:
        return z.data.float() * z.scale.float()
    lo, hi = (z.data & 0x0F).to(torch.int16) - 8, (z.data >> 4).to(torch.int16) - 8
    return torch.stack([lo, hi], dim=-1).flatten(-2)[..., : z.rank].float() * z.scale.float()


class Preset:
    """A kvtorch preset (docs/preset-format.md) with its calibration.

    Both files are checked as strictly as kvtorch's Go code checks them
    (kvtorch.files); a bad one raises KVTorchError (a ValueError) with a
    one-line message."""

    def __init__(self, preset_path, calibration_path=None, device="cpu"):
        self.preset = p = load_preset(preset_path)
        cal_path = calibration_path or _resolve(p["calibration_file"], preset_path)
        if _sha256(cal_path) != p["calibration_sha256"]:
            raise KVTorchError(f"{cal_path} is not the calibration the preset was made with (sha256 differs)")
        cal = load_calibration(cal_path, p)  # torch.load(weights_only=True), checked
        self.calibration_model = cal["model"]
        self.kv_source = p["kv_source"]
        self.heads = p["n_kv_heads"]
        self.sinks = p.get("sink_tokens", 0)
        self.recent = p.get("recent_tokens", 0)  # every query's last positions taken exact
        self.layers = []
        for l, pl in enumerate(p["layers"]):
            sides = {}
            for kind, name in KINDS.items():
                rank, bits = pl[f"rank_{kind}"], pl[f"bits_{kind}"]
                basis = pl.get(f"basis_{kind}", "head")
                d = p[f"head_dim_{kind}"]
                full = d * (self.heads if basis == "joint" else 1)
                side = SideSetting(rank, bits, d, basis, compressed=rank < full or bits < 16, widths=side_widths(pl, kind))
                b = cal["layers"][l][name]
                if basis == "none":
                    pass  # quantization of the elements themselves
                elif basis == "joint":
                    if "joint" not in b:
                        raise KVTorchError(f"{cal_path}: no joint bases (made by an older kvtorch): calibrate again")
                    j = b["joint"]
                    std = j["latent_std"][:rank].double()
                    side.U, side.mean = j["U"][:, :rank].to(device), j["mean"].to(device)
                    side.qscale = torch.where(std > 0, std, torch.ones_like(std)).float().to(device)
                else:
                    side.U, side.mean = b["U"][:, :, :rank].to(device), b["mean"].to(device)
                sides[kind] = side
            self.layers.append(sides)

    def side(self, layer: int, kind: str) -> SideSetting:
        """The setting of side kind ("k" or "v") of layer."""
        if kind not in KINDS:
            raise ValueError(f"kind must be 'k' or 'v', not {kind!r}")
        return self.layers[layer][kind]

    def project(self, layer, kind, x):
        """x [B, H, T, D] -> (z, bits, rank): the float32 latents [B, G, T,
        rank] that compress stores in bits (rounded to float16, or quantized
        per token: for a joint basis already divided by the latents'
        standard deviations)."""
        s = self.side(layer, kind)
        if not s.compressed:
            return x.float(), 16, s.dim
        bits, rank = s.bits, s.rank
        if s.basis == "none":
            return x.float(), bits, rank
        if s.basis == "joint":
            xf = x.float().transpose(1, 2).flatten(2)[:, None]  # [B, 1, T, E]
            z = torch.matmul(xf - s.mean.to(x.device), s.U.to(x.device))
            return (z if bits == 16 else z / s.qscale.to(x.device)), bits, rank
        return torch.matmul(x.float() - s.mean[:, None, :].to(x.device), s.U.to(x.device)), bits, rank

    def compress(self, layer, kind, x):
        """x [B, H, T, D] -> Latents (SplitLatents for latents split by bit
        width: each width quantized with its own per-token scale)."""
        z, bits, _ = self.project(layer, kind, x)
        widths = self.side(layer, kind).widths
        if widths:
            return SplitLatents(split_latents(z, widths))
        return stored(z, bits)

    def expand(self, layer, kind, z, dtype=torch.float32):
        """Latents -> [B, H, T, D] in dtype."""
        s = self.side(layer, kind)
        if not s.compressed:
            return z.data.to(dtype)
        lat = dequantize(z)
        if s.basis == "none":
            return lat.to(dtype)
        U = s.U.to(lat.device)
        if s.basis == "joint":
            if s.bits < 16:
                lat = lat * s.qscale.to(lat.device)
            xf = torch.matmul(lat, U.transpose(-1, -2)) + s.mean.to(lat.device)  # [B, 1, T, E]
            b, _, t, _ = xf.shape
            return xf[:, 0].view(b, t, self.heads, s.dim).transpose(1, 2).to(dtype)
        return (torch.matmul(lat, U.transpose(-1, -2)) + s.mean[:, None, :].to(lat.device)).to(dtype)

    def hook_buffers(self, layer, kind, format_version=3):
        """The KVHook buffers (kvtorch.hook, of format_version 3 or 2) that
        make an exported model compute this side as kvtorch eval measured
        it: float32 tensors by buffer name. Sides the preset leaves alone
        get the identity."""
        s = self.side(layer, kind)
        h, d = self.heads, s.dim
        e = h * d
        down, mean, qscale, qhead = torch.eye(e), torch.zeros(e), torch.ones(e), 1.0
        bits = torch.full((e,), float(s.bits))
        group = torch.div(torch.arange(e), d, rounding_mode="floor").float()  # per head
        if s.compressed and s.basis != "none":
            down = torch.zeros(e, e)
            r = s.rank
            if s.basis == "joint":
                down[:, :r] = s.U.float().cpu()
                qscale[:r] = s.qscale.cpu()
                qhead = 0.0
                group.zero_()
                at = 0
                for i, (n, b) in enumerate(s.widths or [(r, s.bits)]):  # a group per width, the dropped in the last
                    bits[at:], group[at:] = float(b), float(i)
                    at += n
            else:  # block diagonal: head i's latents at columns i*D ..
                for i in range(h):
                    down[i * d:(i + 1) * d, i * d:i * d + r] = s.U[i].float().cpu()
            mean = s.mean.float().cpu().flatten()
        out = {"down": down, "up": down.T.contiguous(), "mean": mean, "qscale": qscale,
               "sink": torch.tensor(float(self.sinks if s.compressed else 0))}
        if format_version < 3:
            if s.widths:
                raise ValueError("latents split by bit width need hooks of format 3: export the model again "
                                 "with python -m kvtorch.export")
            return {**out, "bits": torch.tensor(float(s.bits)), "qhead": torch.tensor(qhead)}
        return {**out, "bits": bits, "group": group}

    def apply(self, model, meta):
        """Sets the hooks of an exported model (torch.jit.load of a kvtorch
        export; meta: its kvtorch.json as a dict) to this preset, in place,
        and its recent_tokens buffer to the preset's recent window (which
        model.recent(ids) applies; body and forward have none)."""
        version = meta.get("format_version")
        if version not in (2, 3):
            raise ValueError(f"the model's hooks are of format {version}, not 2 or 3: export it again with "
                             "python -m kvtorch.export")
        if meta["n_layers"] != len(self.layers) or meta["n_kv_heads"] != self.heads:
            raise ValueError("the preset was made for a model of another shape")
        if self.recent and "recent" not in meta.get("methods", []):
            raise ValueError("the preset keeps a recent window, which needs the model's recent method: "
                             "export it again with python -m kvtorch.export")
        with torch.no_grad():
            for l in range(len(self.layers)):
                for kind in KINDS:
                    hook = model
                    for part in meta["hook"][kind].format(layer=l).split("."):
                        hook = getattr(hook, part)
                    for name, t in self.hook_buffers(l, kind, version).items():
                        getattr(hook, name).copy_(t)
            if "recent" in meta.get("methods", []):  # model.recent(ids) computes the window
                model.recent_tokens.fill_(float(self.recent))

    def bytes_per_token(self, layer):
        """The preset's accounting for a layer (both sides), per compressed token."""
        return self.preset["layers"][layer]["bytes_per_token_after"]
