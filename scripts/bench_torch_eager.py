#!/usr/bin/env python3
"""The same optimisation work as `gramzoom bench`, as a plain PyTorch-eager loop: VGG16 conv
stack (all 13 conv layers, post-ReLU, max-pooling), Gram matrices of (F - 1) / (H W), loss
sum((G - Gs)^2) / C^2 per layer, a random circular roll, backward, an Adam step and a clamp to
[0, 1]. Prints seconds per iteration, to compare with `gramzoom bench` on the same machine and
thread count.

Needs a full PyTorch install (torch with its dependencies), so it is not part of CI:
    python3 scripts/bench_torch_eager.py --threads 2 --sizes 256,512
    python3 scripts/bench_torch_eager.py --device cuda --sizes 1920x1080,3840x2160 \
        --modes fp32,tf32,bf16,bf16-compile
"""
import argparse
import time

import torch
import torch.nn.functional as F

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def make_net(device):
    g = torch.Generator().manual_seed(0)
    layers, cin = [], 3
    for v in VGG16:
        if v == "M":
            layers.append("M")
            continue
        w = torch.randn(v, cin, 3, 3, generator=g) * (2.0 / (cin * 9)) ** 0.5
        layers.append((w.to(device), torch.zeros(v, device=device)))
        cin = v
    return layers


def features(net, x, mean, std):
    x = (x - mean) / std
    out = []
    for layer in net:
        if layer == "M":
            x = F.max_pool2d(x, 2)
        else:
            x = F.relu(F.conv2d(x, layer[0], layer[1], padding=1))
            out.append(x)
    return out


def gram(f):
    n, c, h, w = f.shape
    f = (f - 1.0).reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (h * w)


def parse_size(v):
    w, _, h = v.lower().partition("x")
    return int(w), int(h or w)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="256,512", help="WxH or S (square), comma-separated")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--modes",
        default="fp32",
        help="comma-separated: fp32 (strict), tf32 (TF32 convolutions and matmuls), bf16 "
        "(autocast, channels_last, cudnn.benchmark), bf16-compile (that plus torch.compile)",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    print(f"pytorch {torch.__version__} eager, {torch.get_num_threads()} threads, device {dev}")
    for mode in a.modes.split(","):
        tf32 = mode != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = mode.startswith("bf16")
        bf16 = mode.startswith("bf16")
        fmt = torch.channels_last if bf16 else torch.contiguous_format
        net = [l if l == "M" else (l[0].to(memory_format=fmt), l[1]) for l in make_net(dev)]

        def loss_of(x, targets):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                feats = features(net, x.contiguous(memory_format=fmt), mean, std)
            return sum(((gram(f.float()) - g) ** 2).sum() / f.shape[1] ** 2 for f, g in zip(feats, targets))

        step = torch.compile(loss_of) if mode == "bf16-compile" else loss_of
        for w, h in [parse_size(v) for v in a.sizes.split(",")]:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                style = torch.rand(1, 3, h, w, device=dev)
                targets = [gram(f.float()) for f in features(net, style.contiguous(memory_format=fmt), mean, std)]
            x = torch.rand(1, 3, h, w, device=dev)
            m, v, t = torch.zeros_like(x), torch.zeros_like(x), 0
            warm = 3 if mode == "bf16-compile" else 2
            for i in range(a.iters + warm):
                if i == warm:
                    # Timed without a sync per iteration, as gramzoom's frames are.
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                xv = x.detach().requires_grad_(True)
                rolled = torch.roll(xv, shifts=(i * 7 % h, i * 13 % w), dims=(2, 3))
                loss = step(rolled, targets)
                loss.backward()
                with torch.no_grad():
                    t += 1
                    gr = xv.grad
                    m = 0.9 * m + 0.1 * gr
                    v = 0.999 * v + 0.001 * gr * gr
                    x = x - 0.02 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
                    x.clamp_(0, 1)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            per_iter = (time.perf_counter() - start) / a.iters
            mem = f", peak {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB" if dev.type == "cuda" else ""
            print(f"{mode:>12} {w}x{h}: {per_iter * 1000:.1f} ms/iter{mem}")


if __name__ == "__main__":
    main()
