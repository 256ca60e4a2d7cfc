"""Reading kvtorch's files in Python as strictly as kvtorch's Go code does.

Presets are checked against preset.schema.json — the same file the Go side
embeds (kvfile/preset.schema.json) — then by the rules that relate fields to
each other, as kvfile.LoadPreset checks them: no key twice, none unknown
(keys are case-sensitive), every value of its type and range, no NaN or
Infinity, layers that fit the shapes, byte accounting that matches the
layers. Calibrations are read with torch.load(weights_only=True) (never
running code from the file, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says:
an explicit weights_only wins over it) and checked: shapes, finite values,
orthonormal bases. Every input is opened as a regular file only (a FIFO
would block forever, /dev/zero never end).

Errors are KVTorchError (a ValueError) with a one-line message that names
the file and what is wrong.
"""
import json
import math
import os
import re
import stat

import torch

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preset.schema.json")
MAX_PRESET_BYTES = 16 << 20
MAX_DEPTH = 32
ELEMENT_BYTES = 2  # an uncompressed K or V element: 16-bit
SCALE_BYTES = 2  # a float16 quantization scale per token and group
VALID_BITS = (4, 8, 16)


class KVTorchError(ValueError):
    """A kvtorch file or argument that is not what it should be."""


def open_regular(path, mode="rb"):
    """Opens path for reading only when it is a regular file: the check and
    the read concern the same file, and opening never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise KVTorchError(f"{path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KVTorchError(f"{path}: not a regular file ({describe(st.st_mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def describe(mode):
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# -- JSON, strictly

def _pairs(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise KVTorchError(f"key {k!r} given twice")
        out[k] = v
    return out


def _no_constant(name):
    raise KVTorchError(f"{name} is not a JSON number")


def _depth(v, level=0):
    if level > MAX_DEPTH:
        raise KVTorchError(f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(v, dict):
        for x in v.values():
            _depth(x, level + 1)
    elif isinstance(v, list):
        for x in v:
            _depth(x, level + 1)


def loads_strict(text):
    """One JSON document: every key once, no NaN/Infinity, finite numbers,
    nesting at most MAX_DEPTH levels."""
    try:
        v = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except RecursionError:
        raise KVTorchError(f"nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as e:
        raise KVTorchError(f"not a JSON file: {e.msg} at line {e.lineno} column {e.colno}") from None
    _depth(v)
    return v


# -- the schema subset kvtorch uses (the Go side implements the same)

with open(SCHEMA_PATH, encoding="utf-8") as _f:
    PRESET_SCHEMA = json.load(_f)


def _kind(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _same(v, c):
    """The same JSON type (an integer is not a float, a bool not a number) and value."""
    return type(v) is type(c) and v == c


def _show(v):
    return json.dumps(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else _kind(v)


def _join(at, k):
    return k if not at else f"{at}.{k}"


def validate(schema, v, root=None, at=""):
    """Raises KVTorchError naming the first field of v that breaks schema."""
    root = root or schema
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].removeprefix("#/$defs/")]
    where = at or "the document"
    if "const" in schema and not _same(v, schema["const"]):
        raise KVTorchError(f"{where} is {_show(v)}, want {_show(schema['const'])}")
    if "enum" in schema and not any(_same(v, e) for e in schema["enum"]):
        raise KVTorchError(f"{where} is {_show(v)}, want one of {', '.join(_show(e) for e in schema['enum'])}")
    t = schema.get("type")
    if t == "object":
        if not isinstance(v, dict):
            raise KVTorchError(f"{where} is {_kind(v)}, want an object")
        for k in schema.get("required", []):
            if k not in v:
                raise KVTorchError(f"{where} has no {json.dumps(k)}")
        props = schema.get("properties", {})
        for k in sorted(v):
            if k not in props:
                if schema.get("additionalProperties", True) is False:
                    raise KVTorchError(f"{where} has an unknown key {json.dumps(k)}")
                continue
            validate(props[k], v[k], root, _join(at, k))
    elif t == "array":
        if not isinstance(v, list):
            raise KVTorchError(f"{where} is {_kind(v)}, want an array")
        for i, x in enumerate(v):
            if "items" in schema:
                validate(schema["items"], x, root, f"{at}[{i}]")
    elif t == "string":
        if not isinstance(v, str):
            raise KVTorchError(f"{where} is {_kind(v)}, want a string")
        if len(v) < schema.get("minLength", 0):
            raise KVTorchError(f"{where} is empty")
    elif t in ("integer", "number"):
        ok = isinstance(v, int) if t == "integer" else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            raise KVTorchError(f"{where} is {_kind(v)}, want {'an integer' if t == 'integer' else 'a number'}")
        if not math.isfinite(v):
            raise KVTorchError(f"{where} is {v}, out of range")
        if "minimum" in schema and v < schema["minimum"]:
            raise KVTorchError(f"{where} is {v}, want at least {schema['minimum']}")
        if "exclusiveMinimum" in schema and v <= schema["exclusiveMinimum"]:
            raise KVTorchError(f"{where} is {v}, want more than {schema['exclusiveMinimum']}")
        if "maximum" in schema and v > schema["maximum"]:
            raise KVTorchError(f"{where} is {v}, want at most {schema['maximum']}")
    elif t == "boolean":
        if not isinstance(v, bool):
            raise KVTorchError(f"{where} is {_kind(v)}, want true or false")


# -- presets

def side_max_rank(p, kind, basis):
    d = p[f"head_dim_{kind}"]
    return d * p["n_kv_heads"] if basis == "joint" else d


def side_compresses(p, kind, basis, rank, bits):
    return rank < side_max_rank(p, kind, basis) or bits < 16


def side_bytes(p, kind, basis, rank, bits, widths=None):
    """Cache bytes per compressed token of one side (compress.Side.Bytes);
    widths [(count, bits), ...] for latents split by bit width."""
    h, d = p["n_kv_heads"], p[f"head_dim_{kind}"]
    if not side_compresses(p, kind, basis, rank, bits):
        return h * d * ELEMENT_BYTES
    groups = 1 if basis == "joint" else h
    per = sum((n * b + 7) // 8 + (SCALE_BYTES if b < 16 else 0) for n, b in (widths or [(rank, bits)]))
    return groups * per


def side_widths(pl, kind):
    """A preset layer's groups_k / groups_v as [(count, bits), ...], widest
    first, or None (rank latents at bits)."""
    g = pl.get(f"groups_{kind}")
    return None if g is None else [(x["count"], x["bits"]) for x in g]


def check_widths(widths, basis, rank, bits, where):
    """Latents split by bit width: two or three widths of 16, 8, 4 in that
    order, summing to the rank, bits the narrowest (compress.Side.Validate)."""
    if widths is None:
        return
    w = [b for _, b in widths]
    if basis != "joint":
        raise KVTorchError(f"{where}: latents split by bit width need a joint basis, not {basis}")
    if len(widths) < 2 or w != sorted(set(w), reverse=True) or sum(n for n, _ in widths) != rank or w[-1] != bits:
        raise KVTorchError(f"{where}: groups {widths}: want two or three widths (16, 8, 4 in that order) summing "
                           f"to rank {rank}, bits {bits} the narrowest")


def check_preset(p):
    """The rules that relate a preset's fields (kvfile's Preset.check)."""
    validate(PRESET_SCHEMA, p)
    version = p["version"]
    if p["head_dim"] != p["head_dim_k"]:
        raise KVTorchError(f"head_dim {p['head_dim']} is not head_dim_k {p['head_dim_k']}")
    h = p["n_kv_heads"]
    if h * max(p["head_dim_k"], p["head_dim_v"]) > 1 << 16:
        raise KVTorchError(f"shapes out of range: {h} KV heads of {p['head_dim_k']}/{p['head_dim_v']}")
    if len(p["layers"]) != p["num_layers"]:
        raise KVTorchError(f"{len(p['layers'])} layers listed, num_layers {p['num_layers']}")
    sinks = p.get("sink_tokens", 0)
    if sinks >= p["eval"]["seq_len"]:
        raise KVTorchError(f"sink_tokens {sinks} (want 0 to seq_len - 1)")
    recent = p.get("recent_tokens", 0)
    if version < 4 and "recent_tokens" in p:
        raise KVTorchError(f"recent_tokens in a version {version} preset")
    if version == 1 and "context_length" in p:
        raise KVTorchError("context_length in a version 1 preset")
    if version >= 2 and "context_length" not in p:
        raise KVTorchError("no context_length")
    before = sum(h * (p["head_dim_k"] + p["head_dim_v"]) * ELEMENT_BYTES for _ in p["layers"])
    compressed, any_compressed = 0, False
    for i, pl in enumerate(p["layers"]):
        if pl["layer"] != i:
            raise KVTorchError(f"layer {i} is listed as layer {pl['layer']}")
        layer_bytes = 0
        for kind in ("k", "v"):
            basis, rank, bits = pl.get(f"basis_{kind}", "head"), pl[f"rank_{kind}"], pl[f"bits_{kind}"]
            widths = side_widths(pl, kind)
            if widths is not None and version < 5:
                raise KVTorchError(f"layer {i}: groups in a version {version} preset")
            check_widths(widths, basis, rank, bits, f"layer {i}: {kind.upper()}")
            top = side_max_rank(p, kind, basis)
            if not 1 <= rank <= top:
                raise KVTorchError(f"layer {i}: {kind.upper()} rank {rank} out of range 1..{top} for a {basis} basis")
            if basis == "none" and rank != p[f"head_dim_{kind}"]:
                raise KVTorchError(f"layer {i}: {kind.upper()} basis none keeps every dimension: rank {rank}, "
                                   f"want {p[f'head_dim_{kind}']}")
            any_compressed |= side_compresses(p, kind, basis, rank, bits)
            layer_bytes += side_bytes(p, kind, basis, rank, bits, widths)
        if pl["bytes_per_token_after"] != layer_bytes:
            raise KVTorchError(f"layer {i}: bytes_per_token_after {pl['bytes_per_token_after']} does not match its "
                               f"setting ({layer_bytes})")
        compressed += layer_bytes
    if p["bytes_per_token_before"] != before:
        raise KVTorchError(f"bytes_per_token_before {p['bytes_per_token_before']} does not match the shapes ({before})")
    if version >= 2:
        context = p["context_length"]
        s = min(sinks + recent, context) if any_compressed else context
        after = (s * before + (context - s) * compressed) / context
        if p.get("bytes_per_token_compressed") != compressed or abs(after - p["bytes_per_token_after"]) > 1e-6 * after:
            raise KVTorchError(f"bytes_per_token_compressed {p.get('bytes_per_token_compressed')} / after "
                               f"{p['bytes_per_token_after']} do not match its layers ({compressed} / {after})")
    return p


def load_preset(path):
    """A preset file, checked (KVTorchError otherwise)."""
    try:
        with open_regular(path) as f:
            raw = f.read(MAX_PRESET_BYTES + 1)
        if len(raw) > MAX_PRESET_BYTES:
            raise KVTorchError(f"larger than {MAX_PRESET_BYTES >> 20} MB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise KVTorchError("not UTF-8 text") from None
        return check_preset(loads_strict(text))
    except KVTorchError as e:
        msg = str(e)
        raise KVTorchError(msg if msg.startswith(f"{path}:") else f"preset {path}: {msg}") from None


# -- calibrations

def _tensor(d, key, shape, where):
    t = d.get(key) if isinstance(d, dict) else None
    if not isinstance(t, torch.Tensor):
        raise KVTorchError(f"{where}: {key} is not a tensor")
    if tuple(t.shape) != tuple(shape):
        raise KVTorchError(f"{where}: {key} has shape {list(t.shape)}, want {list(shape)}")
    if not t.dtype.is_floating_point:
        raise KVTorchError(f"{where}: {key} is {t.dtype}, want floating point")
    if not bool(torch.isfinite(t).all()):
        raise KVTorchError(f"{where}: {key} holds NaN or Inf")
    return t


def _orthonormal(u, where):
    """UᵀU v = v for random probes v, as kvfile's check (cheap where UᵀU = I
    is not)."""
    g = torch.Generator().manual_seed(1)
    u = u.double()
    v = torch.randn(*u.shape[:-1], 2, generator=g, dtype=torch.float64)
    back = u @ (u.transpose(-1, -2) @ v)
    err = ((back - v).norm(dim=-2) / v.norm(dim=-2)).max().item()
    if err > 1e-3:
        raise KVTorchError(f"{where}: the basis is not orthonormal (relative error {err:.2g})")


def load_calibration(path, preset=None):
    """A calibration file (docs/calibration-format.md), read without running
    code and checked: shapes (and, given a preset, the preset's shapes and
    keys), finite values, orthonormal bases."""
    try:
        with open_regular(path) as f:
            try:
                cal = torch.load(f, weights_only=True, map_location="cpu")
            except Exception as e:  # noqa: BLE001 - any failure to unpickle is a bad file
                text = str(e)
                found = re.search(r"(?i)(unsupported|trying to load unsupported) (global|operand)[^\n]*", text)
                why = found.group(0) if found else (text.strip().splitlines() or [type(e).__name__])[0][:200]
                raise KVTorchError(f"refused by torch.load(weights_only=True), which runs no code from a file: {why}") from None
        if not isinstance(cal, dict) or cal.get("format") != "kvtorch-calibration":
            raise KVTorchError("not a kvtorch calibration file")
        if type(cal.get("version")) is not int or cal["version"] not in (1, 2):
            raise KVTorchError(f"calibration version {cal.get('version')!r} (this kvtorch reads 1 and 2)")
        shape = {}
        for key in ("n_layers", "n_kv_heads", "head_dim_k", "head_dim_v"):
            v = cal.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1 << 16:
                raise KVTorchError(f"{key} is {v!r}, want a positive integer")
            shape[key] = v
        model = cal.get("model")
        if not isinstance(model, dict) or model.get("kv_source") not in ("pre_rope", "post_rope", "mla_latent"):
            raise KVTorchError("no model.kv_source")
        if preset is not None:
            for key, pkey in (("n_layers", "num_layers"), ("n_kv_heads", "n_kv_heads"), ("head_dim_k", "head_dim_k"),
                              ("head_dim_v", "head_dim_v")):
                if shape[key] != preset[pkey]:
                    raise KVTorchError(f"{key} is {shape[key]}, the preset's {pkey} is {preset[pkey]}")
            if model["kv_source"] != preset["kv_source"]:
                raise KVTorchError(f"the calibration is of {model['kv_source']} keys, the preset says "
                                   f"{preset['kv_source']}")
        layers = cal.get("layers")
        if not isinstance(layers, list) or len(layers) != shape["n_layers"]:
            raise KVTorchError(f"layers: want a list of {shape['n_layers']}")
        h = shape["n_kv_heads"]
        for i, layer in enumerate(layers):
            for kind in ("K", "V"):
                d = shape[f"head_dim_{kind.lower()}"]
                b = layer.get(kind) if isinstance(layer, dict) else None
                where = f"layer {i} {kind}"
                _orthonormal(_tensor(b, "U", (h, d, d), where), where)
                _tensor(b, "mean", (h, d), where)
                if (_tensor(b, "eigenvalues", (h, d), where) < 0).any():
                    raise KVTorchError(f"{where}: a negative eigenvalue")
                if cal["version"] >= 2:
                    j = b.get("joint")
                    where = f"layer {i} {kind} joint"
                    _orthonormal(_tensor(j, "U", (h * d, h * d), where), where)
                    _tensor(j, "mean", (h * d,), where)
                    _tensor(j, "latent_std", (h * d,), where)
                    if (_tensor(j, "eigenvalues", (h * d,), where) < 0).any():
                        raise KVTorchError(f"{where}: a negative eigenvalue")
        return cal
    except KVTorchError as e:
        msg = str(e)
        raise KVTorchError(msg if msg.startswith(f"{path}:") else f"calibration {path}: {msg}") from None
