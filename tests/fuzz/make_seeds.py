#!/usr/bin/env python3
# Writes the seed corpus of fuzz_safetensors (tests/fuzz/seeds/fuzz_safetensors/): small valid
# files of every dtype and one file for each kind of damage the reader must refuse.
import json
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "fuzz_safetensors")


def image(header, data=b"", pad=True, raw_header=None):
    h = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def ent(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def main():
    os.makedirs(OUT, exist_ok=True)
    f32 = struct.pack("<6f", 1.0, -2.0, 0.5, 3.0, -0.0, 1e-3)
    halves = struct.pack("<4H", 0x3C00, 0x0001, 0x7C00, 0x7E00)
    bf = struct.pack("<2H", 0x3F80, 0xFF80)
    f64 = struct.pack("<d", 0.1)
    i64 = struct.pack("<q", 7)
    seeds = {
        "valid_f32": image({"__metadata__": {"format": "pt"}, "w": ent("F32", [2, 2], 0, 16),
                            "b": ent("F32", [2], 16, 24)}, f32),
        "valid_mixed": image({"h": ent("F16", [4], 0, 8), "bf": ent("BF16", [2], 8, 12),
                              "d": ent("F64", [], 16, 24), "n": ent("I64", [1], 24, 32),
                              "u": ent("U8", [2], 12, 14), "z": ent("BOOL", [0], 14, 14),
                              "e": ent("F32", [0, 3], 32, 32)}, halves + bf + b"\1\0\0\0" + f64 + i64),
        "empty_header": image({}),
        "overlap": image({"a": ent("F32", [2], 0, 8), "b": ent("F32", [2], 4, 12)}, f32),
        "size_mismatch": image({"a": ent("F32", [3], 0, 8)}, f32),
        "past_end": image({"a": ent("F32", [8], 0, 32)}, f32),
        "bad_dtype": image({"a": ent("F8_E4M3", [2], 0, 2)}, f32),
        "huge_shape": image({"a": ent("F32", [4294967296, 4294967296], 0, 4)}, f32),
        "dup_names": image(None, f32, raw_header=b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                                  b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'),
        "not_json": image(None, f32, raw_header=b'{"a":{"dtype":F32}'),
        "claims_100mb": struct.pack("<Q", 100_000_000) + b"{}",
        "truncated": image({"w": ent("F32", [2, 2], 0, 16), "b": ent("F32", [2], 16, 24)}, f32)[:-5],
        "short": b"\x08\0\0",
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name + ".safetensors"), "wb") as fp:
            fp.write(data)


if __name__ == "__main__":
    main()
