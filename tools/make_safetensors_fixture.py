#!/usr/bin/env python3
"""Writes the safetensors fixtures under tests/data/safetensors/ with numpy only.

The C++ reader is tested against these bytes because they come from an independent writer: the
format is encoded by hand here (u64 little-endian header length, JSON header, raw data), and the
element bytes come from numpy's own casts. bf16 has no numpy dtype: the values chosen are exactly
representable in bf16, so the upper 16 bits of their float32 encoding are their bf16 encoding.

fixture.safetensors deliberately differs from what the C++ writer produces: header keys in
unsorted order, data laid out in another order than the names, and a header length that is NOT a
multiple of 8 (the data section starts at an odd offset), so tensor data is unaligned.

Run from anywhere: python3 tools/make_safetensors_fixture.py
"""
import json
import pathlib
import struct

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "safetensors"


def bf16_bytes(values):
    bits = np.asarray(values, dtype="<f4").view("<u4")
    assert np.all((bits & 0xFFFF) == 0), "bf16 fixture values must be exact in bf16"
    return (bits >> 16).astype("<u2").tobytes()


def write(path, tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype string, shape, raw bytes) in data-section order."""
    header = {}
    offset = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    # Reverse the key order so that neither key order nor data order is sorted by name.
    header = dict(reversed(list(header.items())))
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    else:
        text += b" " * ((3 - len(text)) % 8)  # data section at an odd offset: 8 + 8k + 3
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, raw in tensors:
            f.write(raw)


def main():
    tensors = [
        ("u8", "U8", [2], np.array([0, 255], dtype="u1").tobytes()),
        ("f32", "F32", [2, 3], (np.arange(6, dtype="<f4") * 0.25 - 0.5).tobytes()),
        ("bf16", "BF16", [2, 2], bf16_bytes([1.0, -2.5, 3.140625, 2.0 ** -133])),
        ("f16", "F16", [4], np.array([1.0, -2.5, 65504.0, 2.0 ** -24], dtype="<f2").tobytes()),
        ("f64", "F64", [3], np.array([1.5, -2.25, 1e300], dtype="<f8").tobytes()),
        ("i64", "I64", [3], np.array([-1, 2 ** 40, 7], dtype="<i8").tobytes()),
        ("i32", "I32", [2], np.array([-123456, 7], dtype="<i4").tobytes()),
        ("i16", "I16", [2], np.array([-300, 300], dtype="<i2").tobytes()),
        ("i8", "I8", [3], np.array([-128, 0, 127], dtype="i1").tobytes()),
        ("bool", "BOOL", [3], np.array([True, False, True], dtype="?").tobytes()),
        ("scalar", "F32", [], np.array(42.0, dtype="<f4").tobytes()),
        ("empty", "F32", [0, 4], b""),
    ]
    write(OUT / "fixture.safetensors", tensors,
          metadata={"format": "pt", "made_by": "make_safetensors_fixture.py"}, pad=False)

    # A two-shard model directory as Hugging Face lays it out. Shard 1 also carries a tensor the
    # index does not list, which the store must not expose.
    sharded = OUT / "sharded"
    shard1, shard2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    write(sharded / shard1, [
        ("model.layers.0.w", "F32", [2, 2], np.array([1, 2, 3, 4], dtype="<f4").tobytes()),
        ("unlisted", "F32", [1], np.array([9], dtype="<f4").tobytes()),
    ])
    write(sharded / shard2, [
        ("model.layers.1.w", "BF16", [3], bf16_bytes([0.5, -1.0, 256.0])),
        ("model.norm.w", "F16", [2], np.array([0.125, -4.0], dtype="<f2").tobytes()),
    ])
    index = {
        "metadata": {"total_size": 16 + 6 + 4},
        "weight_map": {"model.layers.0.w": shard1, "model.layers.1.w": shard2, "model.norm.w": shard2},
    }
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
