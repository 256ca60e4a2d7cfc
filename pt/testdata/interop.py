"""Interop checks between kvtorch's Go .pt writer/reader and Python's torch.

Both sides describe a value tree with the same JSON encoding (see encode()),
so each can check what the other wrote, bit for bit.

  python interop.py check FILE.pt EXPECTED.json
      loads FILE.pt with torch.load(path) (default: weights_only=True since
      torch 2.6), with weights_only=True, and with mmap=True, and checks each
      against EXPECTED.json; also checks the storage sharing listed there.
  python interop.py make OUT_DIR
      writes Python-made files NAME.pt with NAME.json describing them.
"""
import collections
import json
import struct
import sys
import zipfile

import torch


def encode(v):
    if isinstance(v, dict):
        return {"dict": [[k, encode(x)] for k, x in v.items()]}
    if isinstance(v, list):
        return {"list": [encode(x) for x in v]}
    if isinstance(v, tuple):
        return {"tuple": [encode(x) for x in v]}
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        return {"float": struct.pack(">d", v).hex()}
    if isinstance(v, str):
        return {"str": v}
    if v is None:
        return {"none": None}
    if isinstance(v, torch.Tensor):
        flat = v.detach().cpu().contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        return {"tensor": {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape), "hex": raw.hex()}}
    raise TypeError(f"cannot encode {type(v)}")


def check(path, expected_path):
    with open(expected_path) as f:
        expected = json.load(f)
    shares = expected.pop("_shares", [])
    for how, kwargs in [("torch.load(path)", {}), ("weights_only=True", {"weights_only": True}),
                        ("mmap=True", {"mmap": True, "weights_only": True})]:
        value = torch.load(path, **kwargs)
        got = encode(value)
        if got != expected["value"]:
            print(f"{how}: values differ\n got:  {json.dumps(got)[:2000]}\n want: {json.dumps(expected['value'])[:2000]}")
            sys.exit(1)
        for a, b in shares:
            pa, pb = value[a].untyped_storage().data_ptr(), value[b].untyped_storage().data_ptr()
            if pa != pb:
                print(f"{how}: {a} and {b} do not share a storage")
                sys.exit(1)
    print(f"ok: {path} loads equal with torch {torch.__version__} (default, weights_only=True, mmap=True)")


def save(out_dir, name, value, **kwargs):
    torch.save(value, f"{out_dir}/{name}.pt", **kwargs)
    with open(f"{out_dir}/{name}.json", "w") as f:
        json.dump({"value": encode(value)}, f)


def make(out_dir):
    g = torch.Generator().manual_seed(7)
    base = torch.randn(4, 6, generator=g)
    every = collections.OrderedDict()
    for dt in [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
               torch.int8, torch.uint8, torch.bool]:
        name = str(dt).removeprefix("torch.")
        if dt == torch.bool:
            every[name] = base > 0
        elif dt.is_floating_point:
            every[name] = base.to(dt)
        else:
            every[name] = (base * 50).to(dt)
    value = {
        "every_dtype": every,
        "transposed": base.t(),                      # non-contiguous: strides (1, 6)
        "sliced": base[1:3, 2:5],                   # offset 8, strides (6, 1)
        "strided": base[:, ::2],                    # stride 2 in the last dim
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 5, dtype=torch.float16),
        "nested": [1, -2, 2**62, -(2**63), 0.1, float("inf"), -0.0, True, None, "héllo ✓ 日本", (1, (2, [3]))],
        "empty_containers": [{}, [], ()],
        "int_keys": {1: "one", 2: "two"},
    }
    save(out_dir, "python_values", value)
    # A state_dict (OrderedDict with a _metadata attribute), as users save models.
    save(out_dir, "state_dict", torch.nn.Linear(3, 2).state_dict())
    # The layout of torch 1.x files: folder "archive", records data.pkl, data/N
    # and version only, no alignment padding. Re-zipped from a torch.save file.
    src = zipfile.ZipFile(f"{out_dir}/python_values.pt")
    with zipfile.ZipFile(f"{out_dir}/torch1_layout.pt", "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            rest = info.filename.split("/", 1)[1]
            if rest in ("data.pkl", "version") or rest.startswith("data/"):
                dst.writestr("archive/" + rest, src.read(info.filename))
    with open(f"{out_dir}/torch1_layout.json", "w") as f:
        json.dump({"value": encode(value)}, f)
    # The legacy (pre-1.6) format, which kvtorch refuses.
    torch.save({"x": base}, f"{out_dir}/legacy.pt", _use_new_zipfile_serialization=False)


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
