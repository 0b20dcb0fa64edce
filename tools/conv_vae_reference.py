#!/usr/bin/env python3
"""PyTorch reference for the crate's convolutional VAE (numbers to compare against).

Trains (or evaluates) a convolutional VAE on MNIST or Fashion-MNIST with plain PyTorch on
the CPU, so that the crate's WGSL implementation can be checked against an independent one:
same architecture, same loss, same optimiser, same parameter names and layouts. It is a
developer tool: it is NOT run in CI and nothing in the crate depends on it.

Install its environment outside the repository (PyPI only; the default torch wheel is the
CUDA build, several GB, but it runs on the CPU):

    python3 -m venv ../torchenv
    ../torchenv/bin/pip install torch numpy safetensors

Examples:

    PY=../torchenv/bin/python
    $PY tools/conv_vae_reference.py --dataset mnist --epochs 10 --seed 1 --iwae 100 --out mnist-seed1.jsonl
    $PY tools/conv_vae_reference.py --dataset fashion --epochs 1 --limit 3000          # smoke test
    $PY tools/conv_vae_reference.py --throughput 50                                   # training speed
    $PY tools/conv_vae_reference.py --check model.safetensors --dataset mnist --iwae 100

Model (attribute names are the crate's checkpoint keys; strict loading must work):

    enc_conv  ModuleList of Conv2d(c_in, c_out, 4, stride=2, padding=1), ReLU after each
    enc_fc    ModuleList of Linear over --hidden, starting from x.flatten(1) (NCHW), ReLU after each
    mu, logvar  Linear(last, Z)
    dec_fc    ModuleList: Linear(Z -> hidden reversed ...) then -> C_last*H'*W', ReLU after EVERY one
    dec_conv  ModuleList of ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1) through the
              channel list reversed down to the input channels, ReLU between, none after the
              last (it outputs Bernoulli logits)

Loss: BCE-with-logits summed over pixels plus the closed-form KL(N(mu, exp(logvar)) || N(0, I))
summed over latent dims, summed over the batch for the gradient, reported per example in nats.
Pixels are byte/255 grey levels used directly as Bernoulli targets (no binarisation). One
reparameterised draw per example. Adam(lr 1e-3), batch 128, reshuffled every epoch with a
torch.Generator seeded from --seed, last partial batch kept, default PyTorch initialisation.

"train_elbo" is the per-example mean of -ELBO over all training examples of the epoch (sum of
the batch losses divided by the number of examples), measured while training. "test_elbo" is
-ELBO on the 10,000 test images, one z draw per image, in batches of 1000, in eval mode. The
evaluation noise comes from its own generator seeded from --seed, so evaluating the same
weights twice (e.g. after training and again with --check) gives the same number.

Output: one JSON line per epoch,
    {"epoch", "train_elbo", "test_elbo", "test_recon", "test_kl", "seconds"}
then {"iwae_k", "test_iwae"} with --iwae K; printed and appended to --out FILE if given.
"""

import argparse
import gzip
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# MNIST as committed in the repository; Fashion-MNIST as Debian's dataset-fashion-mnist installs it.
DATA_DIRS = {
    "mnist": os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mnist"),
    "fashion": "/usr/share/datasets/fashion-mnist",
}

# Offset added to --seed for the evaluation noise generator, so it never shares a stream
# with the shuffling generator.
EVAL_SEED_OFFSET = 7919
IWAE_SEED_OFFSET = 104729


# ----------------------------------------------------------------------------- data


def read_idx_images(path):
    """Gzipped IDX3 file -> float32 array (N, 1, rows, cols) of byte/255."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != 2051:
        raise ValueError(f"{path}: not an IDX3 image file (magic {magic})")
    pix = np.frombuffer(raw, dtype=np.uint8, count=n * rows * cols, offset=16)
    return (pix.astype(np.float32) / 255.0).reshape(n, 1, rows, cols)


def load_dataset(name, data_dir=None):
    d = data_dir or DATA_DIRS[name]
    train = read_idx_images(os.path.join(d, "train-images-idx3-ubyte.gz"))
    test = read_idx_images(os.path.join(d, "t10k-images-idx3-ubyte.gz"))
    return torch.from_numpy(train), torch.from_numpy(test)


# ----------------------------------------------------------------------------- model


def parse_list(s):
    s = (s or "").strip()
    return [int(v) for v in s.split(",") if v.strip()] if s else []


class ConvVAE(nn.Module):
    def __init__(self, conv=(32, 64), hidden=(256,), latent=20, input_shape=(1, 28, 28)):
        super().__init__()
        c, h, w = input_shape
        self.input_shape = (c, h, w)
        self.latent = latent

        self.enc_conv = nn.ModuleList()
        c_in = c
        for c_out in conv:
            if h % 2 or w % 2:
                raise ValueError(f"map {h}x{w} is not divisible by 2 at every conv layer")
            self.enc_conv.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            c_in, h, w = c_out, h // 2, w // 2
        self.map_shape = (c_in, h, w)
        flat = c_in * h * w

        self.enc_fc = nn.ModuleList()
        last = flat
        for width in hidden:
            self.enc_fc.append(nn.Linear(last, width))
            last = width
        self.mu = nn.Linear(last, latent)
        self.logvar = nn.Linear(last, latent)

        self.dec_fc = nn.ModuleList()
        last = latent
        for width in list(reversed(hidden)) + [flat]:
            self.dec_fc.append(nn.Linear(last, width))
            last = width

        self.dec_conv = nn.ModuleList()
        chans = list(reversed(conv)) + [c]
        for c_a, c_b in zip(chans[:-1], chans[1:]):
            self.dec_conv.append(nn.ConvTranspose2d(c_a, c_b, 4, stride=2, padding=1))

    def encode(self, x):
        h = x
        for layer in self.enc_conv:
            h = F.relu(layer(h))
        h = h.flatten(1)
        for layer in self.enc_fc:
            h = F.relu(layer(h))
        return self.mu(h), self.logvar(h)

    def decode(self, z):
        h = z
        for layer in self.dec_fc:
            h = F.relu(layer(h))
        h = h.view(-1, *self.map_shape)
        n = len(self.dec_conv)
        for i, layer in enumerate(self.dec_conv):
            h = layer(h)
            if i + 1 < n:
                h = F.relu(h)
        return h  # Bernoulli logits, (B, C, H, W)

    def forward(self, x, generator=None):
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


def loss_parts(model, x, generator=None):
    """Per-example reconstruction (BCE) and KL, each of shape (B,)."""
    logits, mu, logvar = model(x, generator)
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return recon, kl


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, test, seed, batch=1000):
    """Test -ELBO, recon and KL per example (one z draw per image)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    tot_r = tot_k = 0.0
    for i in range(0, test.shape[0], batch):
        r, k = loss_parts(model, test[i : i + batch], gen)
        tot_r += r.double().sum().item()
        tot_k += k.double().sum().item()
    model.train(was_training)
    n = test.shape[0]
    return (tot_r + tot_k) / n, tot_r / n, tot_k / n


@torch.no_grad()
def evaluate_iwae(model, test, k, seed, batch=100):
    """-log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), averaged over the test set."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed + IWAE_SEED_OFFSET)
    log2pi = math.log(2.0 * math.pi)
    total = 0.0
    for i in range(0, test.shape[0], batch):
        x = test[i : i + batch]
        b = x.shape[0]
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((k, b, mu.shape[1]), generator=gen, dtype=mu.dtype)
        z = mu.unsqueeze(0) + std.unsqueeze(0) * eps  # (K, B, Z)
        logits = model.decode(z.reshape(k * b, -1))
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        log_px = -F.binary_cross_entropy_with_logits(logits, xk, reduction="none")
        log_px = log_px.flatten(1).sum(1).view(k, b)
        log_pz = (-0.5 * (z.pow(2) + log2pi)).sum(2)
        log_qz = (-0.5 * (eps.pow(2) + log2pi) - 0.5 * logvar.unsqueeze(0)).sum(2)
        log_w = (log_px + log_pz - log_qz).double()
        bound = torch.logsumexp(log_w, dim=0) - math.log(k)
        total += (-bound).sum().item()
    model.train(was_training)
    return total / test.shape[0]


# ----------------------------------------------------------------------------- output


def emit(record, out):
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def rounded(v, places=6):
    return round(float(v), places)


# ----------------------------------------------------------------------------- modes


def train(args, train_x, test_x, input_shape):
    torch.manual_seed(args.seed)
    model = ConvVAE(parse_list(args.conv), parse_list(args.hidden), args.latent, input_shape)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    shuffle = torch.Generator().manual_seed(args.seed)
    n = train_x.shape[0]
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=shuffle)
        total = 0.0
        for i in range(0, n, args.batch):
            x = train_x[perm[i : i + args.batch]]
            r, k = loss_parts(model, x)
            loss = (r + k).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        train_elbo = total / n
        test_elbo, test_recon, test_kl = evaluate(model, test_x, args.seed)
        emit(
            {
                "epoch": epoch,
                "train_elbo": rounded(train_elbo),
                "test_elbo": rounded(test_elbo),
                "test_recon": rounded(test_recon),
                "test_kl": rounded(test_kl),
                "seconds": rounded(time.perf_counter() - t0, 3),
            },
            args.out,
        )
    if args.iwae > 0:
        t0 = time.perf_counter()
        v = evaluate_iwae(model, test_x, args.iwae, args.seed)
        emit(
            {"iwae_k": args.iwae, "test_iwae": rounded(v), "seconds": rounded(time.perf_counter() - t0, 3)},
            args.out,
        )
    if args.save:
        from safetensors.torch import save_file

        meta = {
            "conv": ",".join(str(c) for c in parse_list(args.conv)),
            "hidden": ",".join(str(h) for h in parse_list(args.hidden)),
            "latent": str(args.latent),
            "input_shape": ",".join(str(s) for s in input_shape),
        }
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, args.save, metadata=meta)
        print(f"saved {args.save}", file=sys.stderr)


def throughput(args, train_x, input_shape):
    torch.manual_seed(args.seed)
    model = ConvVAE(parse_list(args.conv), parse_list(args.hidden), args.latent, input_shape)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    warm = 5
    idx = [torch.randint(0, train_x.shape[0], (args.batch,), generator=gen) for _ in range(warm + args.throughput)]
    batches = [train_x[i] for i in idx]

    def step(x):
        r, k = loss_parts(model, x)
        loss = (r + k).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for x in batches[:warm]:
        step(x)
    t0 = time.perf_counter()
    for x in batches[warm:]:
        loss = step(x)
    loss.item()
    dt = time.perf_counter() - t0
    emit(
        {
            "samples_per_s": rounded(args.batch * args.throughput / dt, 1),
            "ms_per_step": rounded(1000.0 * dt / args.throughput, 3),
            "steps": args.throughput,
            "batch": args.batch,
            "threads": torch.get_num_threads(),
        },
        args.out,
    )


def check(args, test_x):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(args.check, framework="pt") as f:
        meta = f.metadata() or {}
    conv = parse_list(meta.get("conv", "32,64"))
    hidden = parse_list(meta.get("hidden", "256"))
    latent = int(meta.get("latent", "20"))
    shape = tuple(parse_list(meta.get("input_shape", "1,28,28")))
    if shape != tuple(test_x.shape[1:]):
        raise SystemExit(f"checkpoint input_shape {shape} does not match the data {tuple(test_x.shape[1:])}")
    model = ConvVAE(conv, hidden, latent, shape)
    model.load_state_dict(load_file(args.check), strict=True)
    t0 = time.perf_counter()
    test_elbo, test_recon, test_kl = evaluate(model, test_x, args.seed)
    emit(
        {
            "checkpoint": args.check,
            "conv": conv,
            "hidden": hidden,
            "latent": latent,
            "test_elbo": rounded(test_elbo),
            "test_recon": rounded(test_recon),
            "test_kl": rounded(test_kl),
            "seconds": rounded(time.perf_counter() - t0, 3),
        },
        args.out,
    )
    if args.iwae > 0:
        v = evaluate_iwae(model, test_x, args.iwae, args.seed)
        emit({"iwae_k": args.iwae, "test_iwae": rounded(v)}, args.out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=sorted(DATA_DIRS), default="mnist")
    p.add_argument("--data", metavar="DIR", help="directory with the four gzipped IDX files")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--conv", default="32,64", help="encoder conv channels, comma separated")
    p.add_argument("--hidden", default="256", help="fully connected widths, comma separated ('' for none)")
    p.add_argument("--latent", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--limit", type=int, default=0, help="use only the first N training images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iwae", type=int, default=0, metavar="K", help="importance-weighted bound with K samples at the end")
    p.add_argument("--out", metavar="FILE", help="append the JSON lines to FILE")
    p.add_argument("--save", metavar="FILE", help="after training, save the state_dict as safetensors with metadata")
    p.add_argument("--throughput", type=int, default=0, metavar="N", help="time N training steps instead of training")
    p.add_argument("--check", metavar="CKPT", help="evaluate a safetensors checkpoint instead of training")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    train_x, test_x = load_dataset(args.dataset, args.data)
    if args.limit:
        train_x = train_x[: args.limit]
    input_shape = tuple(train_x.shape[1:])

    if args.check:
        check(args, test_x)
    elif args.throughput:
        throughput(args, train_x, input_shape)
    else:
        train(args, train_x, test_x, input_shape)


if __name__ == "__main__":
    main()
