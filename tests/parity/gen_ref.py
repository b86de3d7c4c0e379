#!/usr/bin/python3
"""Reference outputs from PyTorch for the engine's parity check (tests/parity/parity.c).

Usage: /usr/bin/python3 tests/parity/gen_ref.py OUTDIR

For each model (resnet18, resnet50, resnet20, smallcnn) writes
  OUTDIR/<model>.weights.safetensors  the state dict (float tensors; BN statistics randomised)
  OUTDIR/<model>.ref.safetensors      eval logits/loss/gradients and one SGD training step,
                                      computed in float64 (saved as F32), with PyTorch's own
                                      float32 error of each tensor as "noise.<name>" metadata
Deterministic: seed 0, float32 weights and inputs, CPU. Needs only torch and torchvision
(Debian python3-torch); safetensors is written by hand.
"""

import copy
import json
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
# float32 runs that estimate the rounding noise (see generate): few flips are likely in the
# small models, so they get more runs; the 224-pixel ones have many and a stable total.
NOISE_RUNS_SMALL, NOISE_RUNS_224 = 8, 3


# ---------------------------------------------------------------- safetensors writer


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, float tensor); metadata: dict str -> str. Atomic rename."""
    header, blobs, off = {}, [], 0
    for name, t in tensors:
        if name in header:
            raise ValueError("duplicate tensor name " + name)
        data = t.detach().to(torch.float32).contiguous().cpu().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ---------------------------------------------------------------- models


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, attribute for attribute."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class ResNet20(nn.Module):
    """CIFAR ResNet-20 as the engine builds it: 3x3 stem, 3 stages of 3 BasicBlocks."""

    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        cin = 16
        for i, (c, s) in enumerate([(16, 1), (32, 2), (64, 2)]):
            blocks = []
            for j in range(3):
                blocks.append(BasicBlock(cin, c, s if j == 0 else 1))
                cin = c
            setattr(self, "layer%d" % (i + 1), nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SmallCNN(nn.Module):
    """The Madry et al. MNIST model."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 1024)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc(x)


class Normalized(nn.Module):
    """model(x) = net((x - mean[c]) / std[c]), x in [0,1]; parameter names stay the net's."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
MNIST = ((0.1307,), (0.3081,))

# name: (constructor, classes, in channels, size, mean/std, Ne, Nt, checked params, last BN)
# The parameter lists cover the stem, the head, the last convolution and one projection
# shortcut; in training the BN affine parameters of the first and last BN are added.
MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(), 1000, 3, 224, IMAGENET, 2, 4,
                 ["fc.weight", "fc.bias", "conv1.weight", "layer4.1.conv2.weight",
                  "layer2.0.downsample.0.weight"], "layer4.1.bn2"),
    "resnet50": (lambda: torchvision.models.resnet50(), 1000, 3, 224, IMAGENET, 2, 4,
                 ["fc.weight", "fc.bias", "conv1.weight", "layer4.2.conv3.weight",
                  "layer2.0.downsample.0.weight"], "layer4.2.bn3"),
    "resnet20": (lambda: ResNet20(10, 3), 10, 3, 32, CIFAR, 8, 16,
                 ["fc.weight", "fc.bias", "conv1.weight", "layer3.2.conv2.weight",
                  "layer2.0.downsample.0.weight"], "layer3.2.bn2"),
    "smallcnn": (lambda: SmallCNN(10, 1), 10, 1, 28, MNIST, 8, 16,
                 ["fc.weight", "fc.bias", "conv1.weight", "conv2.weight"], None),
}


def randomise_bn(net, gen, cin, size):
    """Non-trivial but sane BN: gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1^2); running statistics
    measured on a calibration batch (so eval-mode activations stay normalised through 50
    layers instead of growing), then perturbed: mean += N(0, 0.1^2) * sd, var *= U(0.7, 1.4)."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    for m in bns:
        c = m.num_features
        with torch.no_grad():
            m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, that batch's statistics
    net.train()
    with torch.no_grad():
        net(torch.randn(4, cin, size, size, generator=gen))
    for m in bns:
        c = m.num_features
        m.momentum = 0.1
        m.num_batches_tracked.zero_()
        with torch.no_grad():
            m.running_mean.add_(torch.randn(c, generator=gen) * 0.1 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(c, generator=gen) * 0.7 + 0.7)


def float_state(net):
    return [(k, v) for k, v in net.state_dict().items() if v.is_floating_point()]


def run_once(net, mean, std, dtype, batches, plist, tlist, after):
    """Eval pass and one training step on a copy of net in dtype; returns {key: float64 tensor}."""
    before = net.state_dict()
    net = copy.deepcopy(net).to(dtype)
    model = Normalized(net, mean, std).to(dtype)
    params = dict(net.named_parameters())
    (x, y), (xt, yt) = batches
    r = {}
    # eval: logits, mean CE, d loss / d x and parameter gradients
    model.eval()
    xe = x.detach().to(dtype).clone().requires_grad_(True)
    logits = model(xe)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    r["eval.logits"], r["eval.loss"], r["eval.grad_x"] = logits.detach(), loss.detach().reshape(1), xe.grad
    r.update(("eval.grad." + n, params[n].grad.clone()) for n in plist)
    # one training step: batch statistics, SGD with Nesterov momentum and weight decay
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(xt.to(dtype))
    loss = F.cross_entropy(logits, yt)
    loss.backward()
    r["train.logits"], r["train.loss"] = logits.detach(), loss.detach().reshape(1)
    r.update(("train.grad." + n, params[n].grad.clone()) for n in tlist)
    torch.optim.SGD(net.parameters(), **SGD).step()
    state = net.state_dict()
    r.update(("train.after." + n, state[n].clone()) for n in after)
    r = {k: v.detach().to(torch.float64) for k, v in r.items()}
    # the step itself (only its noise is saved; parity.c takes the old values from the weights)
    r.update(("train.change." + n, r["train.after." + n] - before[n].to(torch.float64)) for n in after)
    return r


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def generate(name, outdir):
    ctor, classes, cin, size, (mean, std), ne, nt, plist, last_bn = MODELS[name]
    t0 = time.time()
    torch.manual_seed(0)
    net = ctor()
    gen = torch.Generator().manual_seed(1)
    randomise_bn(net, gen, cin, size)
    meta = {"arch": name, "num_classes": str(classes), "in_channels": str(cin),
            "mean": ",".join(repr(v) for v in mean), "std": ",".join(repr(v) for v in std)}
    write_safetensors(os.path.join(outdir, name + ".weights.safetensors"), float_state(net), meta)

    tlist, after = list(plist), list(plist)
    if last_bn is not None:
        bnp = ["bn1.weight", "bn1.bias", last_bn + ".weight", last_bn + ".bias"]
        tlist += bnp
        after += bnp + ["bn1.running_mean", "bn1.running_var", last_bn + ".running_mean", last_bn + ".running_var"]
    x = torch.rand(ne, cin, size, size, generator=gen)
    y = torch.randint(0, classes, (ne,), generator=gen)
    xt = torch.rand(nt, cin, size, size, generator=gen)
    yt = torch.randint(0, classes, (nt,), generator=gen)

    # The reference is computed in float64 from the float32 weights and inputs. float32 runs
    # measure how far an exact-in-float32 implementation lands from it: one ReLU whose input
    # is within rounding of 0 flips, and in a gradient summed over M positions that moves it
    # by about 1/sqrt(M) (1e-3 to 1e-2 in the stems of the ImageNet ResNets). The largest
    # float32 error over the unperturbed inputs and ones nudged by 1e-6 goes to the metadata
    # as noise.<tensor>; parity.c widens its tolerance to a multiple of it.
    ref = run_once(net, mean, std, torch.float64, ((x, y), (xt, yt)), plist, tlist, after)
    noise = {k: 0.0 for k in ref}
    runs = NOISE_RUNS_224 if size >= 224 else NOISE_RUNS_SMALL
    for k in range(runs):
        if k == 0:
            b = ((x, y), (xt, yt))
        else:
            b = ((x * (1 + 1e-6 * torch.randn(x.shape, generator=gen)), y),
                 (xt * (1 + 1e-6 * torch.randn(xt.shape, generator=gen)), yt))
        r32 = run_once(net, mean, std, torch.float32, b, plist, tlist, after)
        for key in ref:
            noise[key] = max(noise[key], rel_err(r32[key], ref[key]))

    out = [("x", x), ("labels", y.float())]
    out += [(k, ref[k]) for k in ref if k.startswith("eval.")]
    out += [("train.x", xt), ("train.labels", yt.float())]
    out += [(k, ref[k]) for k in ref if k.startswith("train.") and not k.startswith("train.change.")]
    meta = {"arch": name, "lr": "0.1", "momentum": "0.9", "nesterov": "1", "weight_decay": "0.0005",
            "reference": "float64", "noise_runs": str(runs),
            "eval.params": ",".join(plist), "train.params": ",".join(tlist), "train.after": ",".join(after)}
    meta.update(("noise." + k, "%.3e" % v) for k, v in noise.items())
    write_safetensors(os.path.join(outdir, name + ".ref.safetensors"), out, meta)

    eval_std = ref["eval.logits"].std().item()
    worst = max(noise, key=noise.get)
    print("%-9s params %9d  eval logits std %6.3f loss %.4f  train loss %.4f  "
          "float32 noise max %.1e (%s)  %.1f s"
          % (name, sum(p.numel() for p in net.parameters()), eval_std, ref["eval.loss"].item(),
             ref["train.loss"].item(), noise[worst], worst, time.time() - t0))
    if not (0.1 <= eval_std <= 100):
        raise SystemExit("%s: eval logits std %.3g outside [0.1, 100]" % (name, eval_std))


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: gen_ref.py OUTDIR")
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.set_default_dtype(torch.float32)
    t0 = time.time()
    for name in MODELS:
        generate(name, outdir)
    print("gen_ref: %d models in %.1f s (torch %s, %d threads)"
          % (len(MODELS), time.time() - t0, torch.__version__, torch.get_num_threads()))


if __name__ == "__main__":
    main()
