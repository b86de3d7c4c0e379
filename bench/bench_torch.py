#!/usr/bin/python3
# The PyTorch side of `make bench`: the same four cases as bench_rtaas.c, timed with
# PyTorch's best CPU settings (see /work/shared/BENCH.md), in NCHW and channels_last.
#
# Usage: bench_torch.py --case NAME --threads N [--warmup W] [--iters I] [--format both|nchw|cl]
# Prints one "torch <case> <format> median_ms=<ms> ..." line per format, then
# "torch_best <case> <format> <ms> <others_cpu_pct>" for the faster one; others_cpu_pct is the
# share of the machine that other processes used while it was timed. Run it under
# OPENBLAS_NUM_THREADS=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 (bench/run does).
import argparse
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


class Normalized(nn.Module):
    """(x - mean) / std in front of the network, as rtaas does inside its models."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idn = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idn)


class ResNet20(nn.Module):
    """CIFAR ResNet-20: 3 stages of 3 BasicBlocks, 16/32/64 channels, strides 1/2/2."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(3):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class SmallCNN(nn.Module):
    """The Madry et al. MNIST CNN."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(7 * 7 * 64, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        # flatten in NCHW order whatever the memory format (reshape copies if it must)
        x = x.reshape(x.shape[0], -1)
        return self.fc2(F.relu(self.fc1(x)))


# case: (model factory, batch, channels, size, classes, kind)
CASES = {
    "resnet50_fwd_b8": (lambda: Normalized(torchvision.models.resnet50(), IMAGENET_MEAN, IMAGENET_STD),
                        8, 3, 224, 1000, "fwd"),
    "resnet50_pgd_step_b8": (lambda: Normalized(torchvision.models.resnet50(), IMAGENET_MEAN, IMAGENET_STD),
                             8, 3, 224, 1000, "pgd"),
    "resnet20_train_b128": (lambda: Normalized(ResNet20(), CIFAR_MEAN, CIFAR_STD), 128, 3, 32, 10, "train"),
    "smallcnn_train_b128": (lambda: Normalized(SmallCNN(), MNIST_MEAN, MNIST_STD), 128, 1, 28, 10, "train"),
}


def make_step(case, fmt):
    factory, n, c, size, classes, kind = CASES[case]
    torch.manual_seed(0)
    model = factory()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, c, size, size, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    if fmt == "cl":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    if kind == "fwd":
        model.eval()

        def step():
            with torch.no_grad():
                return model(x)

    elif kind == "pgd":
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        def step():
            xa = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(xa), y)
            loss.backward()
            return xa.grad

    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

    return step


def cpu_mark():
    """(machine busy, machine total, this process) CPU seconds so far: the machine is shared."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) * tick
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return busy, busy + (v[3] + v[4]) * tick, ru.ru_utime + ru.ru_stime


def others_pct(a, b):
    """Percent of the machine's CPU capacity other processes used between marks a and b."""
    total, others = b[1] - a[1], (b[0] - a[0]) - (b[2] - a[2])
    return 100.0 * max(others, 0.0) / total if total > 0 else 0.0


def time_case(case, fmt, warmup, iters):
    step = make_step(case, fmt)
    for _ in range(warmup):
        step()
    ts = []
    m0 = cpu_mark()
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts, others_pct(m0, cpu_mark())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--format", default="both", choices=("both", "nchw", "cl"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    fmts = ("nchw", "cl") if a.format == "both" else (a.format,)
    best = None
    for fmt in fmts:
        ts, others = time_case(a.case, fmt, a.warmup, a.iters)
        med = statistics.median(ts)
        print(f"torch {a.case} {fmt} median_ms={med:.2f} min_ms={min(ts):.2f} max_ms={max(ts):.2f} "
              f"iters={len(ts)} threads={torch.get_num_threads()} others_cpu_pct={others:.1f}", flush=True)
        if best is None or med < best[1]:
            best = (fmt, med, others)
    print(f"torch_best {a.case} {best[0]} {best[1]:.2f} {best[2]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
