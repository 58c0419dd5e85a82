"""PyTorch baseline for `cargo bench --bench resnet` (CPU) and `--bench gpu`: ResNet
forward+backward.

Same configuration as the Rust bench: torchvision ResNet with the CIFAR stem (3x3 stride-1
conv1, no max-pool) or its own ImageNet stem, no classifier, training mode, loss = sum of the
pooled representation times fixed random weights. On a GPU: `--precision f32` (TF32 off),
`tf32`, or `bf16` (autocast, channels_last: PyTorch's fast mixed-precision path). Prints one
line: `torch images_per_s=... peak_rss_mib=...` (on a GPU the peak is of device memory).

Usage: python3 scripts/torch/bench_resnet.py [--arch resnet18] [--batch 128] [--size 32]
       [--stem cifar|imagenet] [--device cpu|cuda] [--precision f32|tf32|bf16]
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


def median_seconds(step, iters: int, device: str = "cpu") -> float:
    """Median wall time of `iters` calls of `step` after warm-up calls (allocations, oneDNN
    primitive creation, cuDNN autotuning), waiting for the GPU after each."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(1 if device == "cpu" else 3):
        step()
    sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def peak_rss_mib(device: str = "cpu") -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_precision(device: str, precision: str) -> None:
    """f32 keeps TF32 off (PyTorch's default for convolutions is on); tf32 turns it on; bf16
    is autocast at the call sites."""
    if device == "cuda":
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True


def autocast(device: str, precision: str):
    import contextlib
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    set_precision(a.device, a.precision)
    net = cifar_resnet(a.arch) if a.stem == "cifar" else getattr(torchvision.models, a.arch)()
    if a.stem == "imagenet":
        net.fc = nn.Identity()
    net = net.to(a.device).train()
    x = torch.randn(a.batch, 3, a.size, a.size, device=a.device)
    w = torch.randn(a.batch, 512 if a.arch in ("resnet18", "resnet34") else 2048, device=a.device)
    if a.precision == "bf16":
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)

    def step() -> None:
        net.zero_grad(set_to_none=False)
        with autocast(a.device, a.precision):
            loss = (net(x).float() * w).sum()
        loss.backward()

    median = median_seconds(step, a.iters, a.device)
    rss = peak_rss_mib(a.device)
    print(f"torch {a.arch} batch={a.batch} size={a.size} device={a.device} precision={a.precision} "
          f"threads={a.threads} images_per_s={a.batch / median:.2f} step_s={median:.3f} peak_rss_mib={rss:.0f}")


if __name__ == "__main__":
    main()
