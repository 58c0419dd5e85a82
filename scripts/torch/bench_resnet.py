"""PyTorch baseline for `cargo bench --bench resnet`: ResNet forward+backward on the CPU.

Same configuration as the Rust bench: torchvision ResNet with the CIFAR stem (3x3 stride-1
conv1, no max-pool), no classifier, training mode, loss = sum of the pooled representation
times fixed random weights. Prints one line: `torch images_per_s=... peak_rss_mib=...`.

Usage: python3 scripts/torch/bench_resnet.py [--arch resnet18] [--batch 128] [--size 32]
       [--threads 2] [--iters 5]
"""
import argparse
import resource
import time

import torch
import torch.nn as nn
import torchvision


def cifar_resnet(arch: str) -> nn.Module:
    net = getattr(torchvision.models, arch)()
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def median_seconds(step, iters: int) -> float:
    """Median wall time of `iters` calls of `step` after one warm-up call (allocations, oneDNN
    primitive creation)."""
    step()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = cifar_resnet(a.arch).train()
    x = torch.randn(a.batch, 3, a.size, a.size)
    w = torch.randn(a.batch, 512 if a.arch in ("resnet18", "resnet34") else 2048)

    def step() -> None:
        net.zero_grad(set_to_none=False)
        (net(x) * w).sum().backward()

    median = median_seconds(step, a.iters)
    rss = peak_rss_mib()
    print(f"torch {a.arch} batch={a.batch} size={a.size} threads={a.threads} "
          f"images_per_s={a.batch / median:.2f} step_s={median:.3f} peak_rss_mib={rss:.0f}")


if __name__ == "__main__":
    main()
