"""PyTorch baseline for `cargo bench --bench byol`: one BYOL training step on the CPU.

The same computation as the Rust step: target encoder+projector on both views (no gradient),
online encoder+projector+predictor on each view, the symmetric normalised-MSE loss (the two
directions summed), backward, an optimiser step, and the EMA of the target. Networks:
torchvision's ResNet with the CIFAR stem and no fc; projector Linear(repr, 4096) → BN → ReLU →
Linear(4096, 256, no bias); predictor the same from 256. PyTorch has no LARS; SGD with momentum
stands in (the optimiser is one pass over the parameters, negligible beside the networks).
On a GPU (`--device cuda`) `--precision` is f32 (TF32 off), tf32, or bf16 (autocast and
channels_last). Prints `torch images_per_s=... step_s=... peak_rss_mib=...`.

Usage: python3 scripts/torch/bench_byol_step.py [--batch 128] [--width 64] [--threads 2] [--iters 3]
       [--device cpu|cuda] [--precision f32|tf32|bf16]
"""
import argparse
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_resnet import autocast, cifar_resnet, median_seconds, peak_rss_mib, set_precision  # same folder


def mlp(inp: int, hidden: int = 4096, out: int = 256) -> nn.Module:
    return nn.Sequential(nn.Linear(inp, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out, bias=False))


def loss_fn(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return 2 - 2 * (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    set_precision(a.device, a.precision)
    if a.width != 64:
        raise SystemExit("this baseline runs torchvision's width 64 only")
    encoder = cifar_resnet("resnet18").to(a.device).train()
    online = nn.Sequential(encoder, mlp(512).to(a.device))
    predictor = mlp(256).to(a.device)
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    params = list(online.parameters()) + list(predictor.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    v1, v2 = (torch.randn(a.batch, 3, 32, 32, device=a.device) for _ in range(2))
    if a.precision == "bf16":
        online, target = online.to(memory_format=torch.channels_last), target.to(memory_format=torch.channels_last)
        v1, v2 = v1.to(memory_format=torch.channels_last), v2.to(memory_format=torch.channels_last)

    def step() -> None:
        with torch.no_grad(), autocast(a.device, a.precision):
            t1, t2 = target(v1).float(), target(v2).float()
        with autocast(a.device, a.precision):
            p1, p2 = predictor(online(v1)).float(), predictor(online(v2)).float()
        loss = loss_fn(p1, t2).mean() + loss_fn(p2, t1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pt, po in zip(target.parameters(), online.parameters()):
                pt.mul_(0.99).add_(po, alpha=0.01)

    median = median_seconds(step, a.iters, a.device)
    rss = peak_rss_mib(a.device)
    print(f"torch byol-step batch={a.batch} device={a.device} precision={a.precision} threads={a.threads} images_per_s={a.batch / median:.2f} "
          f"step_s={median:.3f} peak_rss_mib={rss:.0f}")


if __name__ == "__main__":
    main()
