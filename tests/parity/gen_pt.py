#!/usr/bin/python3
"""PyTorch checkpoints in every layout `rtaas import` recognises, with reference logits, for
tests/parity/pt_check.c (run by tests/suites/pt_import.sh).

Usage: /usr/bin/python3 tests/parity/gen_pt.py OUTDIR [--wide]

Writes into OUTDIR
  <case>.pt              torch.save files: zip and legacy (_use_new_zipfile_serialization=False)
  x.safetensors          "x": the fixed input, 2 images of 3x64x64, pixels in [0, 1]
  refs.safetensors       "<weights>/<norm>": eval-mode logits computed in float64
  manifest.json          per case: file, what the import must report, the reference to compare,
                         and whether to check it through the backbone file
  evil_system.pt         a checkpoint whose pickle calls os.system (must never run)
Random-weight torchvision ResNet-18/34/50 (--wide adds wide_resnet50_2) with randomised batch
norm (running statistics included); seed 0, CPU. One set of weights per architecture is shared
by all of its layouts.
"""

import argparse
import collections
import copy
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_ref import randomise_bn, write_safetensors  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
ROBUST = ((0.4, 0.5, 0.45), (0.2, 0.25, 0.22))       # the normaliser stored by robustness layouts
NORMALIZE = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))  # "normalize.mean/std" layout
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
SIZE, BATCH = 64, 2
# Cases also written as a backbone file and loaded back as `rtaas run` does (the others are
# checked on the model the import builds in memory: the same code up to the file).
BACKBONE_FILE = {"r18_plain_zip", "r18_nonorm", "r18_bf16_legacy", "r34_robust_legacy", "r50_robust_zip",
                 "w50_robust_zip"}


class InputNormalize(nn.Module):
    """robustness.helpers.InputNormalize: buffers of shape [3, 1, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("new_mean", torch.tensor(mean)[..., None, None])
        self.register_buffer("new_std", torch.tensor(std)[..., None, None])


class Attacker(nn.Module):
    def __init__(self, model, mean, std):
        super().__init__()
        self.normalize = InputNormalize(mean, std)
        self.model = model


class AttackerModel(nn.Module):
    """robustness.attacker.AttackerModel: the attacker holds the same model object, so the state
    dict names every tensor twice (module.model.* and module.attacker.model.*)."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.normalizer = InputNormalize(mean, std)
        self.model = model
        self.attacker = Attacker(model, mean, std)


class Evil:
    """What a hostile checkpoint does: unpickling calls os.system."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def make_net(arch, seed, x):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)()
    randomise_bn(net, gen, 3, SIZE)
    net.eval()
    with torch.no_grad():  # eval logits of standard deviation 1, so that 1e-4 means the same for every net
        scale = net((x - 0.45) / 0.225).std().item()
        net.fc.weight.div_(scale)
        net.fc.bias.div_(scale)
    return net


def logits(net, sd, norm, x):
    """float64 eval logits of net's architecture with the weights of sd (any dtype)."""
    ref = copy.deepcopy(net).double()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in sd.items()})
    mean = torch.tensor(norm[0], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(norm[1], dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        return ref((x.double() - mean) / std)


def prefixed(sd, prefix):
    return collections.OrderedDict((prefix + k, v) for k, v in sd.items())


def robust_sd(net, norm):
    wrapped = nn.DataParallel(AttackerModel(net, *norm))  # no GPU: keeps .module, prefixes "module."
    return wrapped.state_dict(), wrapped


def strided_sd(net):
    """channels-last convolutions, a transposed fc.weight at a storage offset and a stride-2 bias."""
    sd = copy.deepcopy(net).to(memory_format=torch.channels_last).state_dict()
    w = sd["fc.weight"]
    big = torch.zeros(w.shape[1] + 1, w.shape[0])
    big[1:] = w.t()
    sd["fc.weight"] = big[1:].t()
    b = sd["bn1.bias"]
    gap = torch.zeros(2 * b.numel())
    gap[::2] = b
    sd["bn1.bias"] = gap[::2]
    assert not sd["fc.weight"].is_contiguous() and not sd["conv1.weight"].is_contiguous()
    return sd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--wide", action="store_true", help="also wide_resnet50_2 (a 140 MB file)")
    args = ap.parse_args()
    out = args.outdir
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    x = torch.rand(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    write_safetensors(os.path.join(out, "x.safetensors"), [("x", x)], {})
    refs, cases = {}, []

    def ref(net, weights, sd, norm_name, norm):
        key = weights + "/" + norm_name
        if key not in refs:
            refs[key] = logits(net, sd, norm, x)
        return key

    def case(name, obj, legacy, net, weights, sd, expect, norm_name, norm, opts=None, file=None):
        """Saves obj (unless file names an existing case's file) and records what to expect."""
        path = file or name + ".pt"
        if not file:
            torch.save(obj, os.path.join(out, path), _use_new_zipfile_serialization=not legacy)
        n_params = sum(1 for k in net.state_dict() if not k.endswith("num_batches_tracked"))
        c = dict(name=name, file=path, ref=ref(net, weights, sd, norm_name, norm), used=n_params,
                 format="legacy" if legacy else "zip", backbone_file=name in BACKBONE_FILE, **expect)
        if opts:
            c["mean"], c["std"] = list(opts[0]), list(opts[1])
        cases.append(c)

    archs = [("resnet18", "r18"), ("resnet34", "r34"), ("resnet50", "r50")]
    if args.wide:
        archs.append(("wide_resnet50_2", "w50"))
    for seed, (arch, tag) in enumerate(archs):
        net = make_net(arch, seed, x)
        sd = net.state_dict()
        n_bn = sum(1 for k in sd if k.endswith("num_batches_tracked"))
        plain = dict(arch=arch, wrapper="", prefix="", norm="option", ignored=n_bn, dtype="F32")
        # Every layout on ResNet-18; the common ones on the bigger nets.
        if tag == "r18" or tag == "r34":
            case(f"{tag}_plain_zip", sd, False, net, tag, sd, plain, "imagenet", IMAGENET, IMAGENET)
            case(f"{tag}_plain_legacy", sd, True, net, tag, sd, plain, "imagenet", IMAGENET, IMAGENET)
        if tag == "r18":
            case("r18_nonorm", None, False, net, tag, sd, dict(plain, norm="missing"), "identity", IDENTITY,
                 file="r18_plain_zip.pt")
            for legacy in (False, True):
                fmt = "legacy" if legacy else "zip"
                # wrappers and prefixes, combined as people save them (DataParallel in a wrapper)
                case(f"r18_model_module_{fmt}", {"model": prefixed(sd, "module.")}, legacy, net, tag, sd,
                     dict(plain, wrapper="model", prefix="module."), "imagenet", IMAGENET, IMAGENET)
                case(f"r18_state_dict_model_{fmt}", {"state_dict": prefixed(sd, "model."), "epoch": 3}, legacy, net,
                     tag, sd, dict(plain, wrapper="state_dict", prefix="model."), "imagenet", IMAGENET, IMAGENET)
                case(f"r18_module_model_{fmt}", prefixed(sd, "module.model."), legacy, net, tag, sd,
                     dict(plain, prefix="module.model."), "imagenet", IMAGENET, IMAGENET)
                nsd = collections.OrderedDict([("normalize.mean", torch.tensor(NORMALIZE[0])),
                                               ("normalize.std", torch.tensor(NORMALIZE[1]))])
                nsd.update(prefixed(sd, "model."))
                case(f"r18_normalize_{fmt}", {"state_dict": nsd}, legacy, net, tag, sd,
                     dict(plain, wrapper="state_dict", prefix="model.", norm="file"), "normalize", NORMALIZE)
            case("r18_f16_zip", {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, False, net,
                 "r18_f16", {k: v.half() for k, v in sd.items()}, dict(plain, dtype="F16"), "imagenet", IMAGENET,
                 IMAGENET)
            case("r18_bf16_legacy", {k: v.bfloat16() if v.is_floating_point() else v for k, v in sd.items()}, True,
                 net, "r18_bf16", {k: v.bfloat16() for k, v in sd.items()}, dict(plain, dtype="BF16"), "imagenet",
                 IMAGENET, IMAGENET)
            case("r18_f64_zip", {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}, False, net,
                 tag, sd, dict(plain, dtype="F64"), "imagenet", IMAGENET, IMAGENET)
            case("r18_strided_zip", strided_sd(net), False, net, tag, sd, plain, "imagenet", IMAGENET, IMAGENET)
        if tag == "r50" or tag == "w50":
            case(f"{tag}_plain_legacy", sd, True, net, tag, sd, plain, "imagenet", IMAGENET, IMAGENET)
            case(f"{tag}_module_state_dict_zip", {"state_dict": prefixed(sd, "module.")}, False, net, tag, sd,
                 dict(plain, wrapper="state_dict", prefix="module."), "imagenet", IMAGENET, IMAGENET)
        # The robustness library's checkpoint: normaliser, attacker duplicate, optimizer, epoch.
        rsd, wrapped = robust_sd(net, ROBUST)
        n_model = len(sd)
        robust = dict(arch=arch, wrapper="model", prefix="module.model.", norm="file", dtype="F32",
                      ignored=n_bn + n_model + 2)  # + the attacker's model and normaliser copies
        ckpt = {"model": rsd, "optimizer": torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9).state_dict(),
                "schedule": None, "epoch": 90, "args": argparse.Namespace(arch=arch, eps=3.0, constraint="2")}
        for legacy in (False, True):
            if tag == "r18" or not legacy or tag == "r34":
                case(f"{tag}_robust_{'legacy' if legacy else 'zip'}", ckpt, legacy, net, tag, sd, robust, "robust",
                     ROBUST)
        if tag == "r18":
            case("r18_robust_override", None, False, net, tag, sd, dict(robust, norm="option"), "imagenet", IMAGENET,
                 IMAGENET, file="r18_robust_zip.pt")
        del net, sd, rsd, wrapped, ckpt

    torch.save(Evil("touch " + os.path.join(os.path.abspath(out), "EVIL_RAN")), os.path.join(out, "evil_system.pt"))
    write_safetensors(os.path.join(out, "refs.safetensors"), sorted(refs.items()), {})
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"cases": cases, "size": SIZE, "batch": BATCH}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(out, f)) for f in {c["file"] for c in cases})
    print("gen_pt: %d cases, %d references, %.0f MB of checkpoints in %.1f s (torch %s)"
          % (len(cases), len(refs), total / 2**20, time.time() - t0, torch.__version__))


if __name__ == "__main__":
    main()
