#!/usr/bin/python3
"""Builds the distilled IndexCache checkpoint from the bundled model plus its distilled indexers.

The training-aware (distilled) 1/4 model differs from models/glm-dsa-trained only in the indexers of its
Full layers, so the repository keeps just those tensors (models/glm-dsa-trained-distill-1of4/
indexers.safetensors, with the config that names the pattern) instead of a second 20 MB checkpoint.
This writes the complete Hugging Face checkpoint — every non-indexer tensor of the base model, the
distilled indexers of the Full layers, no indexer for Shared layers — which transformers 5.17 and
`indexcache` load. Standard library only (safetensors is a JSON header and raw bytes):

    /usr/bin/python3 tools/train/assemble_distilled.py --out /tmp/glm-dsa-trained-distill-1of4
    # or in place, as the repository ships it: a sharded checkpoint whose index takes the distilled
    # indexers from indexers.safetensors and everything else from the base model through a symlink
    /usr/bin/python3 tools/train/assemble_distilled.py --index
    # the other direction, after training (tools/train/train.py wrote a full distilled checkpoint):
    /usr/bin/python3 tools/train/assemble_distilled.py --extract-from RUN/glm-dsa-trained-distill-1of4
"""

import argparse
import json
import os
import shutil
import struct

BASE = "models/glm-dsa-trained"
DISTILLED = "models/glm-dsa-trained-distill-1of4"


def read_safetensors(path):
    """(metadata, {name: (dtype, shape, bytes)}) in file order."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    tensors = {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], data[start:end])
    return meta, tensors


def write_safetensors(path, tensors, meta):
    header, offset = {}, 0
    if meta:
        header["__metadata__"] = meta
    for name in sorted(tensors):
        dtype, shape, blob = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in sorted(tensors):
            f.write(tensors[name][2])


def layer_of(name):
    return int(name.split(".")[2])


# The names of a safetensors file's tensors, from its header alone.
def tensor_names(path):
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return [k for k in json.loads(f.read(size)) if k != "__metadata__"]


# The checkpoint the --out mode writes, as a Hugging Face sharded checkpoint in `distilled` itself: its
# weight_map lists the same tensors, the indexers in indexers.safetensors and the rest in the base
# model's file, reached through a symlink inside the folder (loaders refuse shard paths that leave
# it). The base file's own indexers are not listed, so no loader reads them.
def write_index(base, distilled):
    shard = "base-model.safetensors"
    for name, target in ((shard, "model.safetensors"), ("tokenizer.json", "tokenizer.json")):
        link = os.path.join(distilled, name)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.relpath(os.path.join(base, target), distilled), link)
    weight_map = {k: shard for k in tensor_names(os.path.join(base, "model.safetensors")) if ".self_attn.indexer." not in k}
    weight_map.update({k: "indexers.safetensors" for k in tensor_names(os.path.join(distilled, "indexers.safetensors"))})
    with open(os.path.join(distilled, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=1)
        f.write("\n")
    print(f"{distilled}: index of {len(weight_map)} tensors over {shard} and indexers.safetensors")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=BASE)
    parser.add_argument("--distilled", default=DISTILLED)
    parser.add_argument("--out", help="folder for the complete checkpoint")
    parser.add_argument("--extract-from", help="a complete distilled checkpoint: keep only its indexers")
    parser.add_argument("--index", action="store_true",
                        help="make --distilled loadable as it is: model.safetensors.index.json + symlinks to --base")
    args = parser.parse_args()

    if args.extract_from:
        meta, tensors = read_safetensors(os.path.join(args.extract_from, "model.safetensors"))
        indexers = {k: v for k, v in tensors.items() if ".self_attn.indexer." in k}
        os.makedirs(args.distilled, exist_ok=True)
        write_safetensors(os.path.join(args.distilled, "indexers.safetensors"), indexers, meta)
        shutil.copy(os.path.join(args.extract_from, "config.json"), os.path.join(args.distilled, "config.json"))
        print(f"{args.distilled}: {len(indexers)} indexer tensors of layers {sorted({layer_of(k) for k in indexers})}")
        return
    if args.index:
        write_index(args.base, args.distilled)
        return
    if not args.out:
        parser.error("--out, --index or --extract-from is required")

    with open(os.path.join(args.distilled, "config.json"), encoding="utf-8") as f:
        pattern = json.load(f)["index_topk_pattern"]
    full = {i for i, kind in enumerate(pattern) if kind == "F"}
    meta, base = read_safetensors(os.path.join(args.base, "model.safetensors"))
    _, indexers = read_safetensors(os.path.join(args.distilled, "indexers.safetensors"))
    if {layer_of(k) for k in indexers} != full:
        raise SystemExit(f"error: indexers.safetensors has layers {sorted({layer_of(k) for k in indexers})}, "
                         f"the pattern {pattern} has Full layers {sorted(full)}")
    merged = {k: v for k, v in base.items() if ".self_attn.indexer." not in k}
    merged.update(indexers)
    os.makedirs(args.out, exist_ok=True)
    write_safetensors(os.path.join(args.out, "model.safetensors"), merged, meta)
    shutil.copy(os.path.join(args.distilled, "config.json"), os.path.join(args.out, "config.json"))
    shutil.copy(os.path.join(args.base, "tokenizer.json"), os.path.join(args.out, "tokenizer.json"))
    print(f"{args.out}: {len(merged)} tensors, pattern {pattern}")


if __name__ == "__main__":
    main()
