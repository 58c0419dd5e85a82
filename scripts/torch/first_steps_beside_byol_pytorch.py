"""Our first BYOL steps beside byol-pytorch's, from the same weights on the same views.

Checks that the two programs compute the same step when given the same recipe, so that a gap
between their trained encoders is read as a difference of recipe or luck, not of arithmetic:

1. `host train` runs `--steps` steps of one batch each (`--limit-train BATCH --batch-size
   BATCH`, one step per epoch) with byol-pytorch's recipe where the flags can say it (AdamW at
   3e-4 without weight decay or warm-up, τ = 0.99 constant, target copied, 4096-wide MLPs,
   256 outputs) and views that are the images themselves (`--augmentations crop-only
   --crop-min-scale 1`: a full-image crop, resized to its own size, is the image), and keeps
   the checkpoints after 0, 1 and `--steps` steps;
2. byol-pytorch (0.9.1: `BYOL(net, hidden_layer=-1, use_simplicial_embeddings=False)`, the
   paper's projector; with `--simplicial-embeddings on` its default projector, and ours built
   the same with `--simplicial-embedding 32x8`) is given our untrained networks (online and
   target), the same images
   normalised as ours (the batch's channel statistics), its MLPs' last Linear layers without a
   bias (the official code's and ours), and takes the same steps with Adam at our learning
   rates, in float32 and again in float64;
3. it prints each step's loss three ways, the first step's gradient of every parameter
   tensor (ours read from the AdamW first moment, `m = 0.1·g` after one step) against
   float64 byol-pytorch next to float32 byol-pytorch's, and the parameters after the last
   step (median and largest over the tensors: Adam's first steps move every weight by about
   ±lr whatever the size of its gradient, so a component whose gradient is near zero may step
   either way in either program, and the largest difference is such a tensor).

The Linear biases in front of a BatchNorm have a zero gradient in exact arithmetic (the
BatchNorm removes any constant), so their computed gradients are rounding noise (1e-8 here),
and AdamW, which divides by the gradient's own size, turns noise into full steps of ±lr. They
are listed, and left out of the summary lines.

Needs torch, torchvision, safetensors and byol-pytorch (as byol_pytorch_reference.py); CI
never runs it. Usage (about a minute; the embedded data set needs no files):

    cargo build --release -p host
    python3 scripts/torch/first_steps_beside_byol_pytorch.py --out /tmp/first-steps
"""
import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file

from make_fixtures import Encoder  # same folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BYOL_PYTORCH_RECIPE = ["--optimizer", "adamw", "--base-lr", "0.0006", "--weight-decay", "0",
                       "--warmup-epochs", "0", "--tau-constant", "0.99", "--target-init", "copy",
                       "--projector-hidden", "4096", "--predictor-hidden", "4096",
                       "--projection-dim", "256", "--augmentations", "crop-only",
                       "--crop-min-scale", "1"]
PRE_BATCHNORM_BIASES = ("projector.embed.linear.bias", "projector.linear1.bias",
                        "predictor.linear1.bias")


def run_host(*args):
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr}")


def run_ours(host, out, data_flags, batch, steps, seed, simplicial):
    embedding = ["--simplicial-embedding", "32x8"] if simplicial else []
    flags = data_flags + BYOL_PYTORCH_RECIPE + embedding + [
        "--limit-train", str(batch), "--batch-size", str(batch), "--epochs", str(steps),
        "--threads", "1", "--seed", str(seed)]
    for k in sorted({0, 1, steps}):
        run_host(host, "train", "--out", f"{out}/after-{k}", *flags, "--stop-after-epochs", str(k))
    run_host(host, "export-data", f"{out}/data.safetensors",
             "--config", f"{out}/after-{steps}/config.json")
    records = [json.loads(line) for line in open(f"{out}/after-{steps}/metrics.jsonl")]
    steps_run = [(r["loss"], r["lr"]) for r in records if r.get("kind") == "step"]
    config = json.load(open(f"{out}/after-{steps}/config.json"))
    return steps_run, config["model"]["width"]


def mlp_tensors(prefix, mlp):
    return {f"{prefix}.linear1.weight": mlp[0].weight, f"{prefix}.linear1.bias": mlp[0].bias,
            f"{prefix}.bn.weight": mlp[1].weight, f"{prefix}.bn.bias": mlp[1].bias,
            f"{prefix}.linear2.weight": mlp[3].weight}


def projector_tensors(projector, simplicial):
    """Our names of byol-pytorch's projector: with simplicial embeddings it is
    `Sequential(Sequential(Linear, BatchNorm1d), SEM, MLP)`."""
    if not simplicial:
        return mlp_tensors("projector", projector)
    linear, bn = projector[0]
    return {"projector.embed.linear.weight": linear.weight,
            "projector.embed.linear.bias": linear.bias, "projector.embed.bn.weight": bn.weight,
            "projector.embed.bn.bias": bn.bias} | mlp_tensors("projector", projector[2])


def byol_pytorch_steps(images, start, steps_run, width, dtype, simplicial):
    """byol-pytorch's losses, first-step gradients and final parameters, from our start
    (`start`: our untrained checkpoint's tensors) on `images` (u8 NCHW)."""
    from byol_pytorch import BYOL
    torch.manual_seed(0)
    x = images.to(dtype) / 255.0
    stats = images.double() / 255.0
    mean = stats.mean(dim=(0, 2, 3)).view(1, 3, 1, 1).to(dtype)
    std = stats.std(dim=(0, 2, 3), unbiased=False).view(1, 3, 1, 1).to(dtype)

    class Normalise(nn.Module):  # the views: the images themselves, normalised as ours
        def forward(self, v):
            return (v - mean) / std

    learner = BYOL(Encoder("resnet18", "cifar", width), image_size=x.shape[-1], hidden_layer=-1,
                   use_simplicial_embeddings=simplicial)
    projectors = (learner.online_encoder.projector, learner.target_encoder.projector)
    mlps = [p[2] if simplicial else p for p in projectors] + [learner.online_predictor]
    for mlp in mlps:
        mlp[3] = nn.Linear(mlp[3].in_features, mlp[3].out_features, bias=False)
    learner.augment1 = learner.augment2 = Normalise()
    learner.to(dtype)

    def online():
        t = {f"encoder.{n}": v for n, v in learner.online_encoder.net.named_parameters()}
        t |= projector_tensors(learner.online_encoder.projector, simplicial)
        return t | mlp_tensors("predictor", learner.online_predictor)

    def target():
        t = {f"encoder.{n}": v for n, v in learner.target_encoder.net.named_parameters()}
        return t | projector_tensors(learner.target_encoder.projector, simplicial)

    with torch.no_grad():
        for prefix, tensors in (("online", online()), ("target", target())):
            for name, v in tensors.items():
                v.copy_(start[f"{prefix}.{name}"])
    opt = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad])
    losses, grads = [], None
    for _, lr in steps_run:
        for group in opt.param_groups:
            group["lr"] = lr
        loss = learner(x)
        opt.zero_grad()
        loss.backward()
        if grads is None:
            grads = {n: v.grad.detach().double().clone() for n, v in online().items()}
        opt.step()
        learner.update_moving_average()
        losses.append(loss.item())
    params = {n: v.detach().double().clone() for n, v in online().items()}
    return losses, grads, params


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="a folder for our runs and the data")
    ap.add_argument("--host", default=os.path.join(ROOT, "target", "release", "host"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--simplicial-embeddings", choices=["on", "off"], default="off",
                    help="byol-pytorch's default projector, on both sides (default: the paper's)")
    ap.add_argument("data_flags", nargs="*", default=[],
                    help="host train's data flags after `--` (default: the embedded set)")
    a = ap.parse_args()
    if not os.path.exists(a.host):
        sys.exit(f"{a.host}: no host binary (cargo build --release -p host)")
    torch.set_num_threads(1)
    simplicial = a.simplicial_embeddings == "on"
    steps_run, width = run_ours(a.host, a.out, a.data_flags, a.batch, a.steps, a.seed, simplicial)
    images = load_file(f"{a.out}/data.safetensors")["train.images"].permute(0, 3, 1, 2)
    start = load_file(f"{a.out}/after-0/checkpoint.safetensors")
    f32 = byol_pytorch_steps(images, start, steps_run, width, torch.float32, simplicial)
    f64 = byol_pytorch_steps(images, start, steps_run, width, torch.float64, simplicial)

    print(f"{'step':>4}  {'ours':>10}  {'byol-pytorch f32':>16}  {'byol-pytorch f64':>16}")
    for k, ((ours, _), theirs, exact) in enumerate(zip(steps_run, f32[0], f64[0]), 1):
        print(f"{k:>4}  {ours:10.6f}  {theirs:16.6f}  {exact:16.6f}")

    after1 = load_file(f"{a.out}/after-1/checkpoint.safetensors")
    rows = []
    for name, exact in f64[1].items():
        ours = after1[f"momentum.{name}"].double() / 0.1
        rows.append((relative(ours, exact), relative(f32[1][name], exact), name))
    print("\nfirst step's gradient, ‖x − byol-pytorch f64‖ / ‖byol-pytorch f64‖ per tensor:")
    print(f"{'ours':>9}  {'byol-pytorch f32':>16}  tensor")
    for ours, theirs, name in sorted(rows):
        note = "  (zero in exact arithmetic: rounding noise)" if name in PRE_BATCHNORM_BIASES else ""
        print(f"{ours:9.2e}  {theirs:16.2e}  {name}{note}")
    kept = [r for r in rows if r[2] not in PRE_BATCHNORM_BIASES]
    print(f"largest over the {len(kept)} other tensors: ours {max(r[0] for r in kept):.2e}, "
          f"byol-pytorch f32 {max(r[1] for r in kept):.2e}")

    last = load_file(f"{a.out}/after-{a.steps}/checkpoint.safetensors")
    rows = sorted((relative(last[f"online.{n}"].double(), exact), relative(f32[2][n], exact), n)
                  for n, exact in f64[2].items() if n not in PRE_BATCHNORM_BIASES)
    median = rows[len(rows) // 2]
    print(f"\nonline parameters after {a.steps} steps against byol-pytorch f64, over "
          f"{len(rows)} tensors: median ours {median[0]:.2e} (byol-pytorch f32 "
          f"{sorted(r[1] for r in rows)[len(rows) // 2]:.2e}); largest ours {rows[-1][0]:.2e} "
          f"({rows[-1][2]}), byol-pytorch f32 {max(r[1] for r in rows):.2e}")


if __name__ == "__main__":
    main()
