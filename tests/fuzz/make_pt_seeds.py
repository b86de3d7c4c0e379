#!/usr/bin/python3
# Writes the seed corpora of fuzz_ptzip (whole checkpoints, tests/fuzz/seeds/fuzz_ptzip/) and
# fuzz_pickle (bare pickles, tests/fuzz/seeds/fuzz_pickle/): small torch.save files in the zip
# and legacy formats and the layouts rtaas import recognises, and the hostile shapes the
# reader must refuse or leave inert. Needs Debian's python3-torch.
import collections
import io
import os
import pickle
import struct
import zipfile

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ZIP_OUT = os.path.join(HERE, "seeds", "fuzz_ptzip")
PKL_OUT = os.path.join(HERE, "seeds", "fuzz_pickle")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rtaas-fuzz-seed-ran",))


class EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


def small_sd():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    return m.state_dict()


def resnet_keys_sd(dtype=torch.float16):
    """The keys and shapes recognition looks at (a ResNet-18's stem, blocks and fc), all views
    of one small storage so that the file stays small."""
    base = torch.zeros(9408, dtype=dtype)
    sd = collections.OrderedDict()

    def add(name, *shape):
        n = 1
        for s in shape:
            n *= s
        sd[name] = base[:n].view(*shape)

    add("conv1.weight", 64, 3, 7, 7)
    add("bn1.running_var", 64)
    for li, blocks in enumerate((2, 2, 2, 2)):
        for bi in range(blocks):
            add("layer%d.%d.conv1.weight" % (li + 1, bi), 64, 64, 1, 1)
    add("fc.weight", 10, 512)
    add("normalize.mean", 3)
    add("normalize.std", 3)
    sd["bn1.num_batches_tracked"] = torch.tensor(3)
    return sd


def save(obj, legacy=False):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def rezip(data, rename=None, drop=None, deflate=False):
    """Rewrites a zip checkpoint: entries renamed or dropped, optionally deflated."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            name = info.filename
            if drop and drop in name:
                continue
            if rename and rename[0] in name:
                name = name.replace(rename[0], rename[1])
            dst.writestr(name, src.read(info.filename))
    return out.getvalue()


def data_pkl(data):
    z = zipfile.ZipFile(io.BytesIO(data))
    return z.read([n for n in z.namelist() if n.endswith("/data.pkl")][0])


def main():
    os.makedirs(ZIP_OUT, exist_ok=True)
    os.makedirs(PKL_OUT, exist_ok=True)
    sd = small_sd()
    robust = collections.OrderedDict()
    robust["module.normalizer.new_mean"] = torch.tensor([0.4, 0.5, 0.45])[..., None, None]
    robust["module.normalizer.new_std"] = torch.tensor([0.2, 0.25, 0.22])[..., None, None]
    for k, v in sd.items():
        robust["module.model." + k] = v
        robust["module.attacker.model." + k] = v
    transposed = {"w": torch.arange(6.0).view(2, 3).t(), "cl": torch.zeros(1, 3, 2, 2).to(memory_format=torch.channels_last)}
    zips = {
        "plain_zip": save(sd),
        "plain_legacy": save(sd, legacy=True),
        "wrapped_model": save({"model": sd, "epoch": 3}),
        "state_dict_module": save({"state_dict": collections.OrderedDict(("module." + k, v) for k, v in sd.items())}),
        "robust_zip": save({"model": robust, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
                            "schedule": None, "epoch": 90}),
        "robust_legacy": save({"model": robust, "epoch": 90}, legacy=True),
        "resnet_keys_f16": save(resnet_keys_sd()),
        "resnet_keys_legacy_bf16": save(resnet_keys_sd(torch.bfloat16), legacy=True),
        "dtypes": save({"h": torch.ones(3).half(), "b": torch.ones(2).bfloat16(), "d": torch.ones(2).double(),
                        "l": torch.arange(3), "u": torch.ones(2, dtype=torch.uint8)}),
        "strided": save(transposed),
        "deflated": rezip(save(sd), deflate=True),
        "evil_system": save(Evil()),
        "evil_eval_legacy": save(EvalEvil(), legacy=True),
        "dotdot": rezip(save(sd), rename=("/data/1", "/../../1")),
        "missing_storage": rezip(save(sd), drop="/data/2"),
        "truncated_zip": save(sd)[:-40],
        "truncated_legacy": save(sd, legacy=True)[:-10],
    }
    for name, data in zips.items():
        with open(os.path.join(ZIP_OUT, name + ".pt"), "wb") as f:
            f.write(data)

    lst = []
    lst.append(lst)
    pickles = {
        "state_dict": data_pkl(zips["plain_zip"]),
        "robust": data_pkl(zips["robust_zip"]),
        "strided": data_pkl(zips["strided"]),
        "dtypes": data_pkl(zips["dtypes"]),
        "evil_system": data_pkl(zips["evil_system"]),
        "values_p2": pickle.dumps({"a": [1, -2, 3.5, True, None, "s", b"b", 2 ** 70], "t": (1, (2, 3))}, protocol=2),
        "values_p4": pickle.dumps({"a": [1, -2, 3.5, True, None, "s", b"b", 2 ** 70], "f": frozenset([1])}, protocol=4),
        "values_p0": pickle.dumps({"a": [1, 2], "b": 3.5, "c": None}, protocol=0),
        "recursive": pickle.dumps(lst, protocol=2),
        "deep": b"\x80\x02" + b"]" * 80 + b"a" * 79 + b".",
        "memo_far": b"\x80\x02K\x01r\xff\xff\xff\xff.",
        "huge_string": b"\x80\x02X\xf0\xff\xff\xff",
    }
    for name, data in pickles.items():
        with open(os.path.join(PKL_OUT, name + ".pkl"), "wb") as f:
            f.write(data)
    print("make_pt_seeds: %d checkpoints, %d pickles" % (len(zips), len(pickles)))


if __name__ == "__main__":
    main()
