#!/usr/bin/python3
# The PyTorch side of `make bench`: the same cases as bench_rtaas.c, timed with PyTorch's
# best CPU settings (see /work/shared/BENCH.md), in NCHW and channels_last. The attack and
# transfer cases are written as a PyTorch user would write them; one step is one whole attack,
# pipeline or epoch, as on the rtaas side.
#
# Usage: bench_torch.py --case NAME --threads N [--warmup W] [--iters I] [--format both|nchw|cl]
# Prints one "torch <case> <format> median_ms=<ms> ..." line per format, then
# "torch_best <case> <format> <ms> <others_cpu_pct>" for the faster one; others_cpu_pct is the
# share of the machine that other processes used while it was timed. Run it under
# OPENBLAS_NUM_THREADS=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 (bench/run does).
import argparse
import copy
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

    def features(self, x):
        return self.net.features((x - self.mean) / self.std)

    def features_and_logits(self, x):
        z = self.features(x)
        return z, self.net.classify(z)


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

    def features(self, x):
        """The penultimate features: the 1024 units after fc1's relu."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        # flatten in NCHW order whatever the memory format (reshape copies if it must)
        x = x.reshape(x.shape[0], -1)
        return F.relu(self.fc1(x))

    def classify(self, z):
        return self.fc2(z)

    def forward(self, x):
        return self.classify(self.features(x))


def resnet50():
    return Normalized(torchvision.models.resnet50(), IMAGENET_MEAN, IMAGENET_STD)


def torchvision_init(model):
    """torchvision's ResNet initialisation, which rtaas's eng_model_init uses for every model:
    with PyTorch's default conv init ResNet-20's logits stay near zero in eval mode, with this
    one they are large, and an attack's loss and accuracy are only comparable under the same
    one."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def resnet20():
    return Normalized(torchvision_init(ResNet20()), CIFAR_MEAN, CIFAR_STD)


def smallcnn():
    return Normalized(SmallCNN(), MNIST_MEAN, MNIST_STD)


# case: (model factory, batch (or images for the transfer cases), channels, size, classes, kind)
CASES = {
    "resnet50_fwd_b8": (lambda: Normalized(torchvision.models.resnet50(), IMAGENET_MEAN, IMAGENET_STD),
                        8, 3, 224, 1000, "fwd"),
    "resnet50_pgd_step_b8": (lambda: Normalized(torchvision.models.resnet50(), IMAGENET_MEAN, IMAGENET_STD),
                             8, 3, 224, 1000, "pgd"),
    "resnet20_train_b128": (lambda: Normalized(ResNet20(), CIFAR_MEAN, CIFAR_STD), 128, 3, 32, 10, "train"),
    "smallcnn_train_b128": (lambda: Normalized(SmallCNN(), MNIST_MEAN, MNIST_STD), 128, 1, 28, 10, "train"),
    "resnet20_pgd20_b128": (resnet20, 128, 3, 32, 10, "pgd20"),
    "resnet50_pgd20_b8": (resnet50, 8, 3, 224, 1000, "pgd20"),
    "smallcnn_linear_pipeline": (smallcnn, 10000, 1, 28, 10, "linear"),
    "smallcnn_lwf_epoch": (smallcnn, 10000, 1, 28, 10, "lwf"),
}

PGD_STEPS, PGD_EPS, PGD_ALPHA = 20, 8 / 255, 2 / 255
FEATURE_BATCH, BATCH, LINEAR_EPOCHS, LWF_LAMBDA = 256, 128, 10, 0.01


def pgd(model, x, y, eps, alpha, steps, gen):
    """l_inf PGD with a random start on the summed cross-entropy; returns the last iterate."""
    xa = (x + torch.empty_like(x).uniform_(-eps, eps, generator=gen)).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(model(xa), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        xa = xa.detach() + alpha * grad.sign()
        xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0, 1)
    return xa


def extract_features(model, x):
    model.eval()
    with torch.no_grad():
        return torch.cat([model.features(x[i:i + FEATURE_BATCH]) for i in range(0, x.shape[0], FEATURE_BATCH)])


def train_epoch(opt, y, gen, loss_fn):
    """One epoch of shuffled batches of BATCH (the last incomplete one dropped); loss_fn(idx)
    gives (loss, logits) of the examples idx. Returns the mean loss and the accuracy, tracked
    every step as a training loop does (and as rtaas's loop does)."""
    n = y.shape[0]
    perm = torch.randperm(n, generator=gen)
    loss_sum, correct, seen = 0.0, 0, 0
    for b in range(n // BATCH):
        idx = perm[b * BATCH:(b + 1) * BATCH]
        opt.zero_grad(set_to_none=True)
        loss, logits = loss_fn(idx)
        loss.backward()
        opt.step()
        loss_sum += loss.item()
        correct += (logits.argmax(1) == y[idx]).sum().item()
        seen += BATCH
    return loss_sum / (n // BATCH), correct / seen


def make_step(case, fmt):
    """Returns the case's step and summary(iters), a line on the work the last iters steps did."""
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

    elif kind == "pgd20":
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        logits = model(x)
        clean_acc = (logits.argmax(1) == y).float().mean().item()
        clean_loss = F.cross_entropy(logits, y).item()
        agen = torch.Generator().manual_seed(7)
        last = {}

        def step():
            # the attack and what eng_attack_run also returns: fooled and the loss per example
            xa = pgd(model, x, y, PGD_EPS, PGD_ALPHA, PGD_STEPS, agen)
            logits = model(xa)
            last["xa"] = xa
            last["fooled"] = logits.argmax(1) != y
            last["loss"] = F.cross_entropy(logits, y, reduction="none")

        def summary(iters):
            linf = (last["xa"] - x).abs().max().item()
            return (f"attack=pgd{PGD_STEPS} eps=8/255 alpha=2/255 clean_acc={clean_acc:.4f} "
                    f"adv_acc={1 - last['fooled'].float().mean().item():.4f} clean_loss={clean_loss:.4f} "
                    f"adv_loss={last['loss'].mean().item():.4f} linf={linf:.5f}")

        return step, summary

    elif kind == "linear":
        # the frozen backbone's features of every image, then a fresh linear head
        times = {"features": [], "head": []}
        last = {}

        def step():
            t0 = time.perf_counter()
            feats = extract_features(model, x)
            t1 = time.perf_counter()
            head = nn.Linear(feats.shape[1], classes)
            opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

            def loss_fn(idx):
                logits = head(feats[idx])
                return F.cross_entropy(logits, y[idx]), logits

            losses = [train_epoch(opt, y, gen, loss_fn) for _ in range(LINEAR_EPOCHS)]
            t2 = time.perf_counter()
            times["features"].append((t1 - t0) * 1e3)
            times["head"].append((t2 - t1) * 1e3)
            last["losses"] = losses

        def summary(iters):
            k = len(times["features"]) - iters
            ls = last["losses"]
            return (f"features_ms={statistics.median(times['features'][k:]):.2f} "
                    f"head_ms={statistics.median(times['head'][k:]):.2f} epochs={LINEAR_EPOCHS} "
                    f"loss_epoch1={ls[0][0]:.4f} loss_last={ls[-1][0]:.4f} acc_last={ls[-1][1]:.4f}")

        return step, summary

    elif kind == "lwf":
        # untimed: the source's features, then the target: its weights with a fresh classifier
        z0 = extract_features(model, x)
        target = copy.deepcopy(model)
        target.net.fc2.reset_parameters()
        target.train()
        for m in target.modules():  # batch norm frozen (the small CNN has none)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
                for p in m.parameters():
                    p.requires_grad_(False)
        opt = torch.optim.SGD([p for p in target.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                              weight_decay=5e-4)
        last = {}

        def loss_fn(idx):
            z, logits = target.features_and_logits(x[idx])
            dist = (z - z0[idx]).norm(dim=1).mean()
            return F.cross_entropy(logits, y[idx]) + LWF_LAMBDA * dist, logits

        def step():
            last["epoch"] = train_epoch(opt, y, gen, loss_fn)

        def summary(iters):
            loss, acc = last["epoch"]
            return f"lambda={LWF_LAMBDA:g} loss={loss:.4f} acc={acc:.4f}"

        return step, summary

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

    return step, lambda iters: ""


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
    step, summary = make_step(case, fmt)
    for _ in range(warmup):
        step()
    ts = []
    m0 = cpu_mark()
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts, others_pct(m0, cpu_mark()), summary(iters)


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
        ts, others, summary = time_case(a.case, fmt, a.warmup, a.iters)
        med = statistics.median(ts)
        print(f"torch {a.case} {fmt} median_ms={med:.2f} min_ms={min(ts):.2f} max_ms={max(ts):.2f} "
              f"iters={len(ts)} threads={torch.get_num_threads()} {summary + ' ' if summary else ''}"
              f"others_cpu_pct={others:.1f}", flush=True)
        if best is None or med < best[1]:
            best = (fmt, med, others)
    print(f"torch_best {a.case} {best[0]} {best[1]:.2f} {best[2]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
