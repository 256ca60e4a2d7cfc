"""Builds the reference model's mixed text corpus from Debian packages.

Sources (Debian bookworm packages, fetched with `apt-get download`, so a fresh
machine gets them from its package registry; versions and hashes are recorded):
  prose and dialogue  fortunes (quotations, literature, poems, jokes, dialogue)
  technical text      python3.11-doc (the Python documentation, reStructuredText)
  code                golang-1.19-src (Go's source tree), libpython3.11-stdlib (Python's)

Documents are split whole into train / calibration / evaluation by a seeded
hash of their names, so evaluation text is never trained or calibrated on.

Usage: python corpus.py --out DIR [--seed N]
Writes DIR/train.jsonl, DIR/calib.jsonl, DIR/eval.jsonl ({"id", "kind", "text"})
and DIR/sources.json.
"""
import argparse
import glob
import hashlib
import json
import os
import random
import subprocess

PACKAGES = ["fortunes", "python3.11-doc", "golang-1.19-src", "libpython3.11-stdlib"]
MAX_DOC_CHARS = 24_000


def fetch(cache):
    """Downloads and unpacks the packages into cache; returns {package: version}."""
    os.makedirs(cache, exist_ok=True)
    versions = {}
    for pkg in PACKAGES:
        debs = glob.glob(os.path.join(cache, f"{pkg}_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", "-qq", pkg], cwd=cache, check=True)
            debs = glob.glob(os.path.join(cache, f"{pkg}_*.deb"))
        deb = sorted(debs)[-1]
        root = os.path.join(cache, "root")
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
        with open(deb, "rb") as f:
            versions[pkg] = {"deb": os.path.basename(deb), "sha256": hashlib.sha256(f.read()).hexdigest()}
    return versions, os.path.join(cache, "root")


def read(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def chunks(text, size):
    """Splits text at line boundaries into pieces of about size characters."""
    out, cur = [], []
    n = 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        n += len(line)
        if n >= size:
            out.append("".join(cur))
            cur, n = [], 0
    if n > 200:
        out.append("".join(cur))
    return out


def documents(root):
    docs = []
    fdir = os.path.join(root, "usr/share/games/fortunes")
    for path in sorted(glob.glob(os.path.join(fdir, "*"))):
        name = os.path.basename(path)
        if "." in name or os.path.islink(path) or os.path.isdir(path):
            continue
        text = read(path).replace("\n%\n", "\n\n")
        for i, c in enumerate(chunks(text, 6000)):
            docs.append({"id": f"fortunes/{name}/{i}", "kind": "prose", "text": c})
    for path in sorted(glob.glob(os.path.join(root, "usr/share/doc/python3.11/html/_sources/**/*.rst.txt"), recursive=True)):
        rel = os.path.relpath(path, root)
        for i, c in enumerate(chunks(read(path), MAX_DOC_CHARS)[:4]):
            docs.append({"id": f"{rel}/{i}", "kind": "technical", "text": c})
    gosrc = os.path.join(root, "usr/share/go-1.19/src")
    for path in sorted(glob.glob(os.path.join(gosrc, "**/*.go"), recursive=True)):
        rel = os.path.relpath(path, gosrc)
        if "testdata" in rel or "vendor" in rel or rel.endswith("_test.go") or os.path.getsize(path) > 60_000:
            continue
        docs.append({"id": f"go/{rel}", "kind": "code-go", "text": read(path)[:MAX_DOC_CHARS]})
    for path in sorted(glob.glob(os.path.join(root, "usr/lib/python3.11/**/*.py"), recursive=True)):
        if not os.path.isfile(path):  # dangling symlinks into other packages
            continue
        rel = os.path.relpath(path, root)
        docs.append({"id": rel, "kind": "code-python", "text": read(path)[:MAX_DOC_CHARS]})
    return [d for d in docs if len(d["text"].strip()) > 200]


def split_key(seed, doc_id):
    return int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big") / 2**64


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=os.path.join(os.environ.get("KVTORCH_HOME", os.path.expanduser("~/.cache/kvtorch")), "debs"))
    ap.add_argument("--train-chars", type=int, default=16_000_000, help="cap on training text")
    args = ap.parse_args()

    versions, root = fetch(args.cache)
    docs = documents(root)
    # Balance the kinds: cap code so prose and technical text are not drowned.
    rng = random.Random(args.seed)
    rng.shuffle(docs)
    splits = {"train": [], "calib": [], "eval": []}
    budget = {"prose": 0.25, "technical": 0.35, "code-go": 0.2, "code-python": 0.2}
    used = {k: 0 for k in budget}
    for d in sorted(docs, key=lambda d: split_key(args.seed, d["id"])):
        u = split_key(args.seed + 1, d["id"])
        if u < 0.04:
            splits["eval"].append(d)
        elif u < 0.06:
            splits["calib"].append(d)
        elif used[d["kind"]] + len(d["text"]) <= budget[d["kind"]] * args.train_chars:
            used[d["kind"]] += len(d["text"])
            splits["train"].append(d)
    os.makedirs(args.out, exist_ok=True)
    for name, ds in splits.items():
        with open(os.path.join(args.out, f"{name}.jsonl"), "w") as f:
            for d in ds:
                f.write(json.dumps(d) + "\n")
    summary = {name: {"documents": len(ds), "chars": sum(len(d["text"]) for d in ds)} for name, ds in splits.items()}
    with open(os.path.join(args.out, "sources.json"), "w") as f:
        json.dump({"packages": versions, "seed": args.seed, "splits": summary}, f, indent=2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
