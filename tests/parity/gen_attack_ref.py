#!/usr/bin/python3
"""PyTorch reference for the attacks (tests/parity/attack_check.c), written from the
definitions in engine/attack.h and the papers, not from the engine's code.

Usage: /usr/bin/python3 tests/parity/gen_attack_ref.py OUTDIR

Trains the Madry et al. small CNN naturally on Fashion-MNIST for a short while (seeded, CPU,
float32), then attacks the first N_EVAL test images four ways: PGD-20 (cross-entropy) and
CW-20 (margin loss, kappa 50), each without and with a random start, l_inf eps 0.1, step
alpha = max(2.5 eps / 20, eps / 4) = 0.025, sign steps, projection onto the eps-ball and
[0,1], last iterate. Writes
  OUTDIR/smallcnn_fmnist.weights.safetensors  the trained model (torchvision-style names)
  OUTDIR/attack.ref.safetensors               x, labels, clean logits, per run the robust
                                              (not fooled) flags, and without random start
                                              the adversarial images
The random starts use torch's generator, so the engine's differ: attack_check.c compares
those runs by robust accuracy only. Needs only torch (Debian python3-torch) and numpy;
safetensors is written by hand.
"""

import gzip
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = os.environ.get("RTAAS_FMNIST", "/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
TRAIN_STEPS, BATCH, LR = 150, 128, 1e-3
N_EVAL, CHUNK = 1000, 250
EPS, STEPS, KAPPA = 0.1, 20, 50.0
ALPHA = max(2.5 * EPS / STEPS, EPS / 4)


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, float tensor); metadata: dict str -> str. Atomic rename."""
    header, blobs, off = {}, [], 0
    for name, t in tensors:
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


def read_idx(images, labels):
    """IDX (LeCun's format), gzip: uint8 images [n, 1, h, w] scaled to [0,1] and int64 labels."""
    with gzip.open(images, "rb") as f:
        magic, n, h, w = struct.unpack(">IIII", f.read(16))
        assert magic == 0x803, images
        x = np.frombuffer(f.read(n * h * w), dtype=np.uint8).reshape(n, 1, h, w)
    with gzip.open(labels, "rb") as f:
        magic, m = struct.unpack(">II", f.read(8))
        assert magic == 0x801 and m == n, labels
        y = np.frombuffer(f.read(n), dtype=np.uint8)
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))


class SmallCNN(nn.Module):
    """Madry et al.'s MNIST model; the input is normalised inside, so attacks see pixels."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 1024)
        self.fc = nn.Linear(1024, 10)

    def forward(self, x):
        x = (x - MEAN) / STD
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc(x)


def train(model, x, y, gen):
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for step in range(TRAIN_STEPS):
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


# ---------------------------------------------------------------- the attacks, from their definitions


def ce_loss(z, y):
    """Cross-entropy per example (the attacker ascends it)."""
    return F.cross_entropy(z, y, reduction="none")


def cw_loss(z, y):
    """Carlini-Wagner margin -relu(z_y - max_{j != y} z_j + kappa); the true class is masked
    out of the maximum (not multiplied by 1 - onehot, which would let a negative z_j lose to 0)."""
    zy = z.gather(1, y[:, None])[:, 0]
    zo = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).max(1).values
    return -F.relu(zy - zo + KAPPA)


def pgd(model, loss_fn, x, y, random_start, gen):
    """l_inf PGD: x_{t+1} = clip_[0,1](clip_{x +- eps}(x_t + alpha sign(grad loss))), STEPS steps,
    the last iterate returned. Random start: x + U[-eps, eps], clipped to [0,1]. CHUNK examples
    at a time: activations of 1,000 images exceed glibc's mmap threshold, and the page faults
    of fresh mappings at every step cost more than the arithmetic."""
    out = [pgd_chunk(model, loss_fn, x[i:i + CHUNK], y[i:i + CHUNK], random_start, gen)
           for i in range(0, x.shape[0], CHUNK)]
    return torch.cat([a for a, _ in out]), torch.cat([r for _, r in out])


def pgd_chunk(model, loss_fn, x, y, random_start, gen):
    if random_start:
        xa = (x + EPS * (2 * torch.rand(x.shape, generator=gen) - 1)).clamp(0, 1)
    else:
        xa = x.clone()
    lo, hi = x - EPS, x + EPS
    for _ in range(STEPS):
        xa.requires_grad_(True)
        loss = loss_fn(model(xa), y).sum()
        (g,) = torch.autograd.grad(loss, [xa])
        xa = xa.detach() + ALPHA * g.sign()
        xa = torch.min(torch.max(xa, lo), hi).clamp(0, 1)
    with torch.no_grad():
        robust = model(xa).argmax(1) == y
    return xa.detach(), robust


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: gen_attack_ref.py OUTDIR")
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    t0 = time.time()
    xtr, ytr = read_idx(DATA + "/train-images-idx3-ubyte.gz", DATA + "/train-labels-idx1-ubyte.gz")
    xte, yte = read_idx(DATA + "/t10k-images-idx3-ubyte.gz", DATA + "/t10k-labels-idx1-ubyte.gz")
    model = SmallCNN()
    last_loss = train(model, xtr, ytr, gen)
    for p in model.parameters():
        p.requires_grad_(False)
    t_train = time.time() - t0
    x, y = xte[:N_EVAL].contiguous(), yte[:N_EVAL].contiguous()
    with torch.no_grad():
        logits = model(x)
        test_acc = (model(xte).argmax(1) == yte).float().mean().item()
    clean = (logits.argmax(1) == y).float().mean().item()

    meta = {"arch": "smallcnn", "num_classes": "10", "in_channels": "1", "mean": repr(MEAN), "std": repr(STD),
            "trained": "natural, Adam lr %g, %d steps of %d, seed 0" % (LR, TRAIN_STEPS, BATCH)}
    write_safetensors(os.path.join(outdir, "smallcnn_fmnist.weights.safetensors"),
                      [(k, v) for k, v in model.state_dict().items()], meta)

    out = [("x", x), ("labels", y.float()), ("logits", logits)]
    meta = {"eps": repr(EPS), "alpha": repr(ALPHA), "steps": str(STEPS), "kappa": repr(KAPPA), "n": str(N_EVAL),
            "clean_acc": "%.4f" % clean, "test_acc": "%.4f" % test_acc, "torch": torch.__version__}
    line = []
    for name, loss_fn in (("pgd20", ce_loss), ("cw20", cw_loss)):
        for rs in (False, True):
            t1 = time.time()
            key = name + ("_rs" if rs else "")
            xa, robust = pgd(model, loss_fn, x, y, rs, gen)
            out.append((key + ".robust", robust.float()))
            if not rs:
                out.append((key + ".x_adv", xa))
            d = (xa - x).abs().max().item()
            assert d <= EPS + 1e-6 and xa.min().item() >= 0 and xa.max().item() <= 1, key
            meta[key + ".robust_acc"] = "%.4f" % robust.float().mean().item()
            line.append("%s %.1f%% (%.1f s)" % (key, 100 * robust.float().mean().item(), time.time() - t1))
    write_safetensors(os.path.join(outdir, "attack.ref.safetensors"), out, meta)
    print("gen_attack_ref: smallcnn trained %d steps in %.1f s (last loss %.3f), test accuracy %.2f%%, "
          "first %d: clean %.1f%%" % (TRAIN_STEPS, t_train, last_loss, 100 * test_acc, N_EVAL, 100 * clean))
    print("gen_attack_ref: eps %g alpha %g: %s" % (EPS, ALPHA, ", ".join(line)))
    print("gen_attack_ref: %.1f s in all (torch %s, %d threads)" % (time.time() - t0, torch.__version__,
                                                                     torch.get_num_threads()))


if __name__ == "__main__":
    main()
