#!/usr/bin/env python3
"""Writes the small files the service suites upload: an IDX pair (gzip'd) and an .npz taken
from Debian's Fashion-MNIST when it is installed (else synthetic images with a class pattern),
a truncated IDX file, random garbage and a file over the upload limit.

usage: mkdata.py DIR [--per-class N] [--big-bytes B]"""
import argparse, gzip, io, os, struct, sys
import random
import zipfile

FM = os.environ.get("RTAAS_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")


def fashion(per_class, split="train"):
    """First per_class images of each class: (list of 784-byte images, labels), or None."""
    ip, lp = f"{FM}/{split}-images-idx3-ubyte.gz", f"{FM}/{split}-labels-idx1-ubyte.gz"
    if not (os.path.exists(ip) and os.path.exists(lp)):
        return None
    imgs, labs = gzip.open(ip).read(), gzip.open(lp).read()
    n = struct.unpack(">I", labs[4:8])[0]
    out_x, out_y, seen = [], [], [0] * 10
    for i in range(n):
        c = labs[8 + i]
        if seen[c] < per_class:
            seen[c] += 1
            out_x.append(imgs[16 + 784 * i:16 + 784 * (i + 1)])
            out_y.append(c)
        if min(seen) >= per_class:
            break
    return out_x, out_y


def synthetic(per_class, seed):
    """Images a small CNN can tell apart: class c lights up a band at rows 2c..2c+6, plus noise."""
    rng = random.Random(seed)
    xs, ys = [], []
    for i in range(per_class):
        for c in range(10):
            px = bytearray(rng.randrange(0, 60) for _ in range(784))
            for r in range(2 * c + 2, 2 * c + 8):
                for col in range(4, 24):
                    px[28 * r + col] = 200 + rng.randrange(0, 55)
            xs.append(bytes(px))
            ys.append(c)
    return xs, ys


def idx_images(xs):
    return struct.pack(">IIII", 0x803, len(xs), 28, 28) + b"".join(xs)


def idx_labels(ys):
    return struct.pack(">II", 0x801, len(ys)) + bytes(ys)


def npy(descr, shape, data):
    """One .npy file, version 1.0, C order (written by hand: no numpy needed)."""
    h = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else ""))
    pad = 64 - (10 + len(h) + 1) % 64
    h = h + " " * (pad % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + data


def npz(xs, ys):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, blob in (("x.npy", npy("|u1", (len(xs), 28, 28), b"".join(xs))),
                           ("y.npy", npy("<i8", (len(ys),), b"".join(struct.pack("<q", y) for y in ys)))):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, blob)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--npz-per-class", type=int, default=300)
    ap.add_argument("--big-bytes", type=int, default=17 * 1024 * 1024)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    d = lambda name: os.path.join(a.dir, name)

    src = fashion(a.per_class) or synthetic(a.per_class, 1)
    # gzip with a fixed mtime so that the same data gives the same bytes (and sha256)
    def gz(path, data):
        with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as g:
            g.write(data)
    gz(d("images-idx3-ubyte.gz"), idx_images(src[0]))
    gz(d("labels-idx1-ubyte.gz"), idx_labels(src[1]))

    big = fashion(a.npz_per_class, "t10k") or synthetic(a.npz_per_class, 2)
    with open(d("data.npz"), "wb") as f:
        f.write(npz(*big))

    # for the concurrent uploads: other bytes than any other file here (over 1 MiB: several chunks)
    with open(d("conc.npz"), "wb") as f:
        f.write(npz(*synthetic(200, 3)))

    # a valid IDX header that promises 1000 images, followed by the bytes of 10
    hdr = struct.pack(">IIII", 0x803, 1000, 28, 28)
    with open(d("trunc-images-idx3-ubyte"), "wb") as f:
        f.write(hdr + src[0][0] * 10)
    with open(d("trunc-labels-idx1-ubyte"), "wb") as f:
        f.write(idx_labels(src[1][:1000] + [0] * max(0, 1000 - len(src[1]))))

    rng = random.Random(7)
    with open(d("garbage.dat"), "wb") as f:
        # no format's magic: IDX starts 00 00 08, gzip 1f 8b, zip PK, npy \x93NUMPY; tar has ustar at 257
        f.write(b"rtaas-garbage\n" + bytes(rng.randrange(256) for _ in range(64 * 1024)))
    with open(d("big.dat"), "wb") as f:
        f.write(os.urandom(a.big_bytes))


if __name__ == "__main__":
    main()
