#!/usr/bin/env python3
"""A linear autoencoder trained by train_mnist against PCA on the same data.

Reads a checkpoint of `--autoencoder --activation linear --likelihood gaussian --hidden ""`
(latent k), computes PCA of the training images (pixel / 255) with numpy, and prints:
- the principal angles between the decoder's span (its k weight columns) and the top-k PCs;
- the squared reconstruction error per test image of the autoencoder and of PCA-k.
Writes a figure: the top k PCs (first row) over their projections onto the learned span
(second row), each image scaled to its own range.

Needs numpy only; not part of the crate's build or CI.
    python3 tools/pca_mnist.py RUN_DIR [--data data/mnist] [--figure FILE.png]
"""

import argparse
import gzip
import json
import struct
import zlib
from pathlib import Path

import numpy as np


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051:
            raise SystemExit(f"{path}: not an IDX image file (magic {magic})")
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(n, rows * cols)


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise SystemExit(f"{name}: dtype {t['dtype']}, expected F32")
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(t["shape"]).astype(np.float64)
    return out, header.get("__metadata__", {})


def write_png(path, gray):
    """An 8-bit greyscale PNG of `gray` (2-D, values in [0, 1])."""
    h, w = gray.shape
    rows = (np.clip(gray, 0, 1) * 255).round().astype(np.uint8)
    body = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind, payload):
        c = struct.pack(">I", len(payload)) + kind + payload
        return c + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(body, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run directory (or its checkpoint.safetensors)")
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--figure", help="PNG to write (default RUN/pca.png)")
    a = p.parse_args()
    run = Path(a.run)
    ckpt = run / "checkpoint.safetensors" if run.is_dir() else run
    t, meta = read_safetensors(ckpt)
    if meta.get("activation") != "identity" or meta.get("hidden", "") != "":
        raise SystemExit("the checkpoint is not a linear autoencoder without hidden layers")
    # PyTorch layout, Linear weight [out, in]; an autoencoder without hidden layers holds its
    # code layer and its output layer.
    we, be = t["code.weight"], t["code.bias"]  # [k, 784], [k]
    wd, bd = t["out.weight"], t["out.bias"]  # [784, k], [784]
    k = we.shape[0]
    train = read_idx_images(Path(a.data) / "train-images-idx3-ubyte.gz") / 255.0
    test = read_idx_images(Path(a.data) / "t10k-images-idx3-ubyte.gz") / 255.0

    mean = train.mean(0)
    cov = (train - mean).T @ (train - mean) / len(train)
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1], vec[:, ::-1]
    pcs = vec[:, :k]  # [784, k]

    q, _ = np.linalg.qr(wd)  # orthonormal basis of the decoder's span
    cosines = np.linalg.svd(q.T @ pcs, compute_uv=False)
    angles = np.degrees(np.arccos(np.clip(cosines, 0, 1)))[::-1]

    def ae(x):
        return (x @ we.T + be) @ wd.T + bd

    def pca(x):
        return (x - mean) @ pcs @ pcs.T + mean

    err_ae = ((ae(test) - test) ** 2).sum(1).mean()
    err_pca = ((pca(test) - test) ** 2).sum(1).mean()
    err_ae_train = ((ae(train) - train) ** 2).sum(1).mean()
    err_pca_train = ((pca(train) - train) ** 2).sum(1).mean()
    print(f"latent k = {k}; eigenvalues around k: " + ", ".join(f"{v:.4f}" for v in lam[k - 2 : k + 2]))
    print("principal angles (degrees, largest first): " + ", ".join(f"{v:.2f}" for v in angles))
    print(f"squared error per test image: autoencoder {err_ae:.4f}, PCA-{k} {err_pca:.4f} "
          f"({100 * (err_ae / err_pca - 1):+.2f} %)")
    print(f"squared error per training image: autoencoder {err_ae_train:.4f}, PCA-{k} {err_pca_train:.4f} "
          f"({100 * (err_ae_train / err_pca_train - 1):+.2f} %)")

    proj = q @ (q.T @ pcs)  # each PC projected onto the learned span

    def tile(v):
        img = v.reshape(28, 28)
        lo, hi = img.min(), img.max()
        return (img - lo) / (hi - lo + 1e-12)

    gap = 2
    fig = np.ones((2 * 28 + 3 * gap, k * 28 + (k + 1) * gap))
    for i in range(k):
        x0 = gap + i * (28 + gap)
        fig[gap : gap + 28, x0 : x0 + 28] = tile(pcs[:, i])
        fig[2 * gap + 28 : 2 * gap + 56, x0 : x0 + 28] = tile(proj[:, i])
    out = Path(a.figure) if a.figure else (run if run.is_dir() else run.parent) / "pca.png"
    write_png(out, fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
