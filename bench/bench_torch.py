#!/usr/bin/python3
# The PyTorch side of `make bench` and `make bench-gpu`: the same cases as bench_rtaas.c, timed
# with PyTorch's best settings. On the CPU (see /work/shared/BENCH.md) in NCHW and
# channels_last; on CUDA in channels_last with cudnn.benchmark on, TF32 allowed for tf32 rows
# and torch.autocast(bfloat16) for bf16 rows. The attack and transfer cases are written as a
# PyTorch user would write them; one step is one whole attack, pipeline or epoch (or, for
# resnet50_lwf_step_b128, one training step), as on the rtaas side.
#
# Usage: bench_torch.py --case NAME --threads N [--warmup W] [--iters I] [--format both|nchw|cl]
# Prints one "torch <case> <format> median_ms=<ms> ..." line per format, then
# "torch_best <case> <format> <ms> <others_cpu_pct>" for the faster one; others_cpu_pct is the
# share of the machine that other processes used while it was timed. Run it under
# OPENBLAS_NUM_THREADS=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 (bench/run does).
#
# bench-gpu (bench/gpu): bench_torch.py --device cuda:0 [--peak tf32,bf16] [--case A,B]
#   [--math tf32,bf16] [--batch N] [--size S] [--warmup W] [--iters I]
# --peak measures the matrix-multiply peak first ("torch_peak <math> <TFLOP/s>": the median of
# 10 products of two random PEAK_N x PEAK_N matrices, in float32 with TF32 allowed, bfloat16, or
# float32 without TF32 for fp32). Each case and math mode then prints "torch <case> <math> ..."
# and "torch_row <case> <math> <ms per step> <images per step> <sanity>", or
# "torch_error <case> <math> <message>" and goes on with the next. A step's time ends with
# torch.cuda.synchronize(). --device cpu runs the same code on the CPU (to check it here).
import argparse
import contextlib
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


class ResNet50(torchvision.models.ResNet):
    """torchvision's ResNet-50 (the same modules, names and initialisation as
    torchvision.models.resnet50()) with the features/classify split of the transfer cases."""

    def __init__(self, num_classes=1000):
        super().__init__(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], num_classes=num_classes)

    def features(self, x):
        """The penultimate features: 2048 values after global average pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def classify(self, z):
        return self.fc(z)


def resnet50():
    return Normalized(torchvision.models.resnet50(), IMAGENET_MEAN, IMAGENET_STD)


def resnet50_split():
    return Normalized(ResNet50(), IMAGENET_MEAN, IMAGENET_STD)


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

# bench-gpu: ResNet-50 at 224 (bench_rtaas.c's R50_CASES and resnet50_pgd20_b128). The batch
# (--batch) and size (--size) can be overridden; a step of the feature case covers FEAT_BATCHES
# batches, the LwF case is timed over LWF_STEPS training steps and reported per step.
GPU_CASES = {
    "resnet50_feat_b256": (256, "feat"),
    "resnet50_pgd20_b128": (128, "pgd20"),
    "resnet50_lwf_step_b128": (128, "lwf_step"),
}
FEAT_BATCHES, LWF_STEPS, LWF_CLASSES, BN_CALIBRATION = 4, 8, 10, 10
GPU_PGD_EPS = 4 / 255
GPU_PGD_ALPHA = max(2.5 * GPU_PGD_EPS / 20, GPU_PGD_EPS / 4)  # eng_attack_defaults' step: 1/255
PEAK_N = 8192

PGD_STEPS, PGD_EPS, PGD_ALPHA = 20, 8 / 255, 2 / 255
FEATURE_BATCH, BATCH, LINEAR_EPOCHS, LWF_LAMBDA = 256, 128, 10, 0.01


def pgd(model, x, y, eps, alpha, steps, gen, amp=contextlib.nullcontext):
    """l_inf PGD with a random start on the summed cross-entropy; returns the last iterate.
    amp: the context the forward and the loss run in (autocast for bf16 rows)."""
    xa = (x + torch.empty_like(x).uniform_(-eps, eps, generator=gen)).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        with amp():
            loss = F.cross_entropy(model(xa), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        xa = xa.detach() + alpha * grad.sign()
        xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0, 1)
    return xa


def extract_features(model, x):
    model.eval()
    with torch.no_grad():
        return torch.cat([model.features(x[i:i + FEATURE_BATCH]) for i in range(0, x.shape[0], FEATURE_BATCH)])


def train_epoch(opt, y, gen, loss_fn, batch=BATCH):
    """One epoch of shuffled batches (the last incomplete one dropped); loss_fn(idx) gives
    (loss, logits) of the examples idx (a CPU index tensor). Returns the mean loss and the
    accuracy, tracked every step as a training loop does (and as rtaas's loop does)."""
    n = y.shape[0]
    perm = torch.randperm(n, generator=gen)
    loss_sum, correct, seen = 0.0, 0, 0
    for b in range(n // batch):
        idx = perm[b * batch:(b + 1) * batch]
        opt.zero_grad(set_to_none=True)
        loss, logits = loss_fn(idx)
        loss.backward()
        opt.step()
        loss_sum += loss.item()
        correct += (logits.argmax(1) == y[idx]).sum().item()
        seen += batch
    return loss_sum / (n // batch), correct / seen


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


# ---- bench-gpu: ResNet-50 at 224 on a CUDA device ----


def set_math(dev, math):
    """cudnn.benchmark on; TF32 for float32 convolutions and products except on fp32 rows (bf16
    rows keep it for what autocast leaves in float32)."""
    if dev.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    tf32 = math != "fp32"
    prec = "tf32" if tf32 else "ieee"
    try:  # PyTorch 2.9 on; the allow_tf32 flags are deprecated there
        torch.backends.cuda.matmul.fp32_precision = prec
    except (AttributeError, RuntimeError):
        torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        torch.backends.cudnn.conv.fp32_precision = prec
    except (AttributeError, RuntimeError):
        torch.backends.cudnn.allow_tf32 = tf32


def math_flags(dev):
    """What set_math left in force, read back, for the log."""
    if dev.type != "cuda":
        return "cpu"
    m = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    c = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if m is None:
        m = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    if c is None:
        c = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return f"matmul={m},conv={c},cudnn_benchmark={int(torch.backends.cudnn.benchmark)}"


def amp_for(dev, math):
    """The context a bf16 row's forward and loss run in: autocast to bfloat16."""
    if math == "bf16":
        return lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def fused_sgd(params, dev, **kw):
    """SGD with the fused CUDA kernel where this PyTorch has it (its fastest), else foreach."""
    if dev.type == "cuda":
        try:
            return torch.optim.SGD(params, fused=True, **kw)
        except (TypeError, RuntimeError, ValueError):
            pass
    return torch.optim.SGD(params, **kw)


def make_gpu_step(case, math, dev, batch, size):
    """The case's step as a dict: step() (the caller synchronizes after it), summary() ->
    (text, sanity), images (per reported step), per (timed calls are divided by this) and
    extra: (suffix, fn, images) rows timed after the case."""
    b0, kind = GPU_CASES[case]
    B, S = batch or b0, size or 224
    amp = amp_for(dev, math)
    cl = torch.channels_last
    pinned = dev.type == "cuda"
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)

    def host_data(n, classes):
        """n images in host memory, pinned for asynchronous copies as a DataLoader would pin them."""
        x = torch.rand(n, 3, S, S, generator=gen)
        y = torch.randint(0, classes, (n,), generator=gen)
        return (x.pin_memory() if pinned else x), y

    def to_dev(xb):
        return xb.to(dev, non_blocking=True).contiguous(memory_format=cl)

    if kind == "feat":
        # the features of n images in batches of B, from host memory into host memory
        n = FEAT_BATCHES * B
        x, _ = host_data(n, 1000)
        model = resnet50_split().to(dev, memory_format=cl).eval()
        last = {}

        def step():
            with torch.inference_mode(), amp():
                feats = [model.features(to_dev(x[i:i + B])).float() for i in range(0, n, B)]
            last["feats"] = torch.cat(feats).cpu()

        xd = to_dev(x[:B])

        def forward_only():
            with torch.inference_mode(), amp():
                return model.features(xd).float().cpu()

        def summary():
            f = last["feats"]
            ok = bool(torch.isfinite(f).all()) and f.min().item() >= 0 and f.abs().sum().item() > 0
            return (f"batch={B} size={S} feature_dim={f.shape[1]} checksum={f.sum().item():.6g}",
                    "ok" if ok else "BAD-features")

        return dict(step=step, summary=summary, images=n, per=1, extra=[("fwd", forward_only, B)])

    if kind == "pgd20":
        x, y = host_data(B, 1000)
        model = resnet50().to(dev, memory_format=cl).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        x, y = to_dev(x), y.to(dev)
        with torch.no_grad(), amp():
            logits = model(x).float()
        clean_acc = (logits.argmax(1) == y).float().mean().item()
        clean_loss = F.cross_entropy(logits, y).item()
        agen = torch.Generator(device=dev).manual_seed(7)
        last = {}

        def step():
            # the attack and what eng_attack_run also returns: fooled and the loss per example
            xa = pgd(model, x, y, GPU_PGD_EPS, GPU_PGD_ALPHA, PGD_STEPS, agen, amp)
            with torch.no_grad(), amp():
                logits = model(xa).float()
            last["xa"] = xa
            last["fooled"] = (logits.argmax(1) != y).cpu()
            last["loss"] = F.cross_entropy(logits, y, reduction="none").cpu()

        def summary():
            d = last["xa"] - x
            linf = d.abs().max().item()
            adv_loss = last["loss"].mean().item()
            inside = linf <= GPU_PGD_EPS + 1e-6 and last["xa"].min().item() >= 0 and last["xa"].max().item() <= 1
            sanity = "ok" if inside else "BAD-outside-the-eps-ball"
            if inside and not adv_loss > clean_loss:
                sanity = "BAD-loss-did-not-rise"
            return (f"attack=pgd{PGD_STEPS} eps={GPU_PGD_EPS * 255:.3g}/255 alpha={GPU_PGD_ALPHA * 255:.3g}/255 "
                    f"batch={B} size={S} clean_acc={clean_acc:.4f} "
                    f"adv_acc={1 - last['fooled'].float().mean().item():.4f} clean_loss={clean_loss:.4f} "
                    f"adv_loss={adv_loss:.4f} linf={linf:.5f}", sanity)

        return dict(step=step, summary=summary, images=B, per=1, extra=[])

    # lwf_step: LWF_STEPS steps of batch B over n images read from host memory
    n = LWF_STEPS * B
    x, y = host_data(n, LWF_CLASSES)
    y = y.to(dev)
    source = resnet50_split().to(dev, memory_format=cl)
    # untimed: the source's batch-norm statistics (bench_rtaas.c's calibrate_bn says why), its
    # features z0, then the target: its weights with a fresh classifier, batch norm frozen
    source.train()
    with torch.no_grad(), amp():
        for k in range(BN_CALIBRATION):
            first = k * B % (n - n % B)
            source(to_dev(x[first:first + B]))
    source.eval()
    with torch.no_grad(), amp():
        z0 = torch.cat([source.features(to_dev(x[i:i + B])).float() for i in range(0, n, B)])
    target = copy.deepcopy(source)
    del source
    target.net.fc = nn.Linear(target.net.fc.in_features, LWF_CLASSES).to(dev)
    target.train()
    for m in target.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
    opt = fused_sgd([p for p in target.parameters() if p.requires_grad], dev, lr=0.01, momentum=0.9,
                    weight_decay=5e-4)
    # two pinned staging batches, used in turn: each step's loss.item() has waited for the copy
    # out of the one the next step but one refills
    stage = [torch.empty((B, 3, S, S)).pin_memory() for _ in range(2)] if pinned else None
    count = [0]
    last = {}

    def loss_fn(idx):
        if stage:
            buf = stage[count[0] % 2]
            count[0] += 1
            xb = to_dev(torch.index_select(x, 0, idx, out=buf))
        else:
            xb = to_dev(x[idx])
        didx = idx.to(dev)
        with amp():
            z, logits = target.features_and_logits(xb)
            dist = (z.float() - z0[didx]).norm(dim=1).mean()
            loss = F.cross_entropy(logits.float(), y[didx]) + LWF_LAMBDA * dist
        return loss, logits

    def step():
        last["epoch"] = train_epoch(opt, y, gen, loss_fn, B)

    def summary():
        loss, acc = last["epoch"]
        return (f"steps_per_call={LWF_STEPS} batch={B} size={S} lambda={LWF_LAMBDA:g} loss={loss:.4f} acc={acc:.4f}",
                "ok" if finite(loss) else "BAD-loss")

    return dict(step=step, summary=summary, images=B, per=LWF_STEPS, extra=[])


def finite(v):
    return v == v and v not in (float("inf"), float("-inf"))


def timed(fn, dev, warmup, iters):
    """Times of iters calls of fn after warmup ones, each ending with a device synchronisation."""
    for _ in range(warmup):
        fn()
        sync(dev)
    ts = []
    for _ in range(iters):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def run_gpu_case(case, math, dev, a):
    set_math(dev, math)
    c = make_gpu_step(case, math, dev, a.batch, a.size)
    ts = [t / c["per"] for t in timed(c["step"], dev, a.warmup, a.iters)]
    med = statistics.median(ts)
    text, sanity = c["summary"]()
    print(f"torch {case} {math} median_ms={med:.2f} min_ms={min(ts):.2f} max_ms={max(ts):.2f} iters={len(ts)} "
          f"images={c['images']} images_per_s={c['images'] / med * 1e3:.1f} {text} flags={math_flags(dev)} "
          f"sanity={sanity}", flush=True)
    print(f"torch_row {case} {math} {med:.3f} {c['images']} {sanity}", flush=True)
    for suffix, fn, images in c["extra"]:
        m = statistics.median(timed(fn, dev, 1, a.iters))
        print(f"torch_row {case}.{suffix} {math} {m:.3f} {images} {sanity}", flush=True)
    return sanity == "ok"


def matmul_peak(dev, math, n):
    """TFLOP/s of an n x n x n product of random matrices in the math mode's precision: the
    median of 10 after 3 warm-up products, each timed with CUDA events."""
    set_math(dev, math)
    dtype = torch.bfloat16 if math == "bf16" else torch.float32
    g = torch.Generator(device=dev).manual_seed(3)
    a = torch.randn(n, n, device=dev, generator=g).to(dtype)
    b = torch.randn(n, n, device=dev, generator=g).to(dtype)
    for _ in range(3):
        a @ b
    sync(dev)
    ts = []
    for _ in range(10):
        if dev.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            a @ b
            e1.record()
            e1.synchronize()
            ts.append(e0.elapsed_time(e1))
        else:
            t0 = time.perf_counter()
            a @ b
            ts.append((time.perf_counter() - t0) * 1e3)
    return 2.0 * n**3 / (statistics.median(ts) * 1e-3) / 1e12


def gpu_main(a, cases):
    dev = torch.device(a.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print(f"torch_nogpu torch {torch.__version__} sees no CUDA device", flush=True)
            return 3
        print(f"torch_device {torch.cuda.get_device_name(dev)} | torch {torch.__version__} | CUDA {torch.version.cuda} "
              f"| cuDNN {torch.backends.cudnn.version()}", flush=True)
    ok = True
    for math in filter(None, a.peak.split(",")):
        print(f"torch_peak {math} {matmul_peak(dev, math, a.peak_n):.4g} n={a.peak_n}", flush=True)
    for case in cases:
        for math in a.math.split(","):
            try:
                ok &= run_gpu_case(case, math, dev, a)
            except Exception as e:  # one failing row must not lose the others
                msg = " ".join(str(e).split())[:300]
                print(f"torch_error {case} {math} {type(e).__name__}: {msg}", flush=True)
                ok = False
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return 0 if ok else 1


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
    ap.add_argument("--case", default="", help="a case, or for the GPU cases a comma-separated list")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (required for the CPU cases)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--format", default="both", choices=("both", "nchw", "cl"))
    ap.add_argument("--device", default="cpu", help="GPU cases: cpu or cuda[:N]")
    ap.add_argument("--math", default="tf32", help="GPU cases: comma-separated fp32, tf32, bf16")
    ap.add_argument("--batch", type=int, default=0, help="GPU cases: batch instead of the case's")
    ap.add_argument("--size", type=int, default=0, help="GPU cases: image size instead of 224")
    ap.add_argument("--peak", default="", help="comma-separated maths whose matmul peak to measure first")
    ap.add_argument("--peak-n", type=int, default=PEAK_N)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    cases = [c for c in a.case.split(",") if c]
    bad = [c for c in cases if c not in CASES and c not in GPU_CASES]
    bad_math = [m for m in a.math.split(",") + [m for m in a.peak.split(",") if m] if m not in ("fp32", "tf32", "bf16")]
    if bad or bad_math or (not cases and not a.peak):
        ap.error(f"unknown case or math {bad + bad_math} (cases: {' '.join(sorted(CASES) + sorted(GPU_CASES))})")
    if a.peak or all(c in GPU_CASES for c in cases):
        if not all(c in GPU_CASES for c in cases):
            ap.error("--peak goes with the GPU cases only")
        return gpu_main(a, cases)
    if len(cases) != 1 or a.threads < 1:
        ap.error("a CPU case runs alone and needs --threads")
    a.case = cases[0]
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
