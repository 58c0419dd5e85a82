"""The reference run beside ours: `byol-pytorch` with its defaults, on the same data, encoder,
batch and epochs, scored with the same kNN protocol as `host train`'s monitor.

- Data: a file written by `host export-data` (the exact pixels and splits `host train` uses).
- Encoder: torchvision's ResNet with every stage scaled to `--width` and the CIFAR stem, no fc
  (the `Encoder` of make_fixtures.py, the same network as `host`'s `--arch resnet18 --stem
  cifar --width W`).
- Training: `byol_pytorch.BYOL(net, image_size, hidden_layer=-1)` with every default of the
  package (its augmentations, drawn once per batch; τ = 0.99 constant; target copied from the
  online network; projector and predictor 4096 → 256, each last Linear with a bias; and, in
  0.9.1, simplicial embeddings in the projector), Adam at 3e-4 as its README trains it,
  `update_moving_average()` after every step. Each epoch is one pass over a seeded shuffle in
  batches of `--batch` (the last partial batch dropped, as `host train` does).
- byol-pytorch 0.9.1 turns simplicial embeddings (Lavoie et al. 2022) on by default
  (`use_simplicial_embeddings=True`): its projector is `Linear(repr → 256) → BatchNorm1d →`
  a softmax at temperature 0.1 over each of 32 groups of 8 `→` the paper's MLP. That is not
  the paper's BYOL. `--simplicial-embeddings off` trains byol-pytorch without them, the
  paper's projector.
- kNN (as `host::eval::knn`): representations of unaugmented images in evaluation mode,
  ℓ2-normalised; the `k` most similar training images vote with weight exp(s / T); top-1 on
  the held-out split. Inputs are normalised as each encoder was trained: ImageNet statistics
  for byol-pytorch (its pipeline ends with them), the training split's channel statistics
  for ours.
- `--ours ENCODER.safetensors` (from `host export`) scores our encoder the same way, with its
  own BatchNorm statistics and with the data's (the untrained one: `host train
  --stop-after-epochs 0`, then `host export`).
- `--init-encoder ENCODER.safetensors` starts byol-pytorch's encoder from those weights (our
  untrained encoder of a seed, exported as above) instead of torch's draw, to tell a poor draw of
  weights from a poor recipe. Everything else is as without it: torch's draw is still made and
  then overwritten, so the projector, predictor and augmentations are the same as the unflagged
  run's (loading torch's own draw of the seed repeats the unflagged run bit for bit).
- `--augment per-image` draws byol-pytorch's augmentations once per image instead of once per
  batch. Its pipeline applied to a batch tensor crops, flips, jitters and blurs every image of
  a view alike (torchvision draws one set of parameters per call); the paper, and `host
  train`, draw them per image. Per image, the same transforms with the same probabilities are
  applied to each image alone, so only the independence of the draws changes.

- The random encoder is also read with BatchNorm statistics of the data (as `host train`'s
  first reading, `host::eval::batchnorm`): the mean of the training-mode batch statistics over
  up to 4,096 unaugmented training images in batches of `--batch` (PyTorch's cumulative
  average, `momentum=None`), in place of the placeholder mean 0, variance 1.

- `--seed` fixes byol-pytorch's run bit for bit (same thread count): torch's generator and
  Python's `random`, from which byol-pytorch's RandomApply draws (runs before 2026-11-29
  left it unseeded, so their byol-pytorch figures also varied with it).
- For scale, the same kNN on the pixels themselves (normalised by the training split's channel
  statistics, as our encoder receives them): on 28-px grayscale images a strong baseline.

Prints one JSON object: per-epoch kNN and cumulative training seconds of byol-pytorch, the
kNN at initialisation (both readings), the kNN of each `--ours` encoder (both readings) and
of the pixels.

Needs torch, torchvision, safetensors and byol-pytorch (0.9.1 measured; installed by hand,
CI never runs this):
    python3 scripts/torch/byol_pytorch_reference.py --data data/mnist.safetensors \\
        --epochs 10 --ours runs/x/encoder.safetensors
"""
import argparse
import json
import random
import sys
import time

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from make_fixtures import Encoder  # same folder

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class PerImage(torch.nn.Module):
    """A batch augmentation applied to each image of the batch on its own (one draw each)."""

    def __init__(self, augment):
        super().__init__()
        self.augment = augment

    def forward(self, images):
        return torch.stack([self.augment(image) for image in images])


def load(path):
    t = load_file(path)
    def images(key):  # u8 NHWC -> f32 NCHW in [0, 1]
        return t[key].permute(0, 3, 1, 2).float() / 255.0
    def labels(key):
        return t[key].to(torch.int64)
    return images("train.images"), labels("train.labels"), images("test.images"), labels("test.labels")


@torch.no_grad()
def features(net, x, mean, std, batch=256):
    net.eval()
    out = [net((x[i:i + batch] - mean) / std) for i in range(0, len(x), batch)]
    net.train()
    return torch.cat(out)


@torch.no_grad()
def with_data_statistics(net, x, mean, std, batch, seed, images=4096):
    """A copy of `net` whose BatchNorm running statistics are the mean of its batch statistics
    over a seeded sample of `x` (unaugmented, normalised) in batches of `batch`."""
    import copy
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    net.train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for s in range(max(1, min(len(x), images) // batch)):
        net((x[order[s * batch:(s + 1) * batch]] - mean) / std)
    return net


@torch.no_grad()
def knn_top1(bank, bank_labels, queries, query_labels, classes, k=200, t=0.1):
    bank, queries = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    sims = queries @ bank.T
    k = min(k, len(bank))
    top, idx = sims.topk(k, dim=1)
    votes = torch.zeros(len(queries), classes, dtype=torch.float64)
    votes.scatter_add_(1, bank_labels[idx], (top.double() / t).exp())
    return (votes.argmax(dim=1) == query_labels).double().mean().item()


def load_weights(net, path, width):
    """Loads an encoder from `host export` (torchvision's names) into `net`, refused unless it
    is all there; draws nothing from torch's generator."""
    try:
        weights = load_file(path)
    except (OSError, SafetensorError) as e:  # absent, unreadable, or not safetensors
        sys.exit(f"{path}: cannot read an encoder from it ({e})")
    try:
        missing, unexpected = net.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor of another shape: another width or architecture
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        sys.exit(f"{path}: not a resnet18 width {width} encoder ({first})")
    if unexpected or any(not m.endswith("num_batches_tracked") for m in missing):
        sys.exit(f"{path}: not a resnet18 width {width} encoder ({missing[:3]}, {unexpected[:3]})")
    return net


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a file from `host export-data`")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4, help="Adam's learning rate (byol-pytorch's README)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ours", action="append", default=[], help="an encoder from `host export` (repeatable)")
    ap.add_argument("--init-encoder", help="start byol-pytorch's encoder from these weights (an untrained "
                    "encoder from `host export`) instead of torch's draw")
    ap.add_argument("--simplicial-embeddings", choices=("on", "off"), default="on",
                    help="byol-pytorch 0.9.1's simplicial embeddings in the projector: on (its "
                    "default) or off (the paper's projector)")
    ap.add_argument("--augment", choices=("per-batch", "per-image"), default="per-batch",
                    help="draw byol-pytorch's augmentations once per batch (its default) or once "
                    "per image (the paper's, and ours)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    x, y, tx, ty = load(a.data)
    labelled = y != 65535  # STL-10's unlabelled images pre-train but are not in the kNN bank
    classes = int(max(y[labelled].max(), ty.max()).item()) + 1
    result = {"data": a.data, "epochs": a.epochs, "batch": a.batch, "width": a.width}

    mean = x.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
    std = x.std(dim=(0, 2, 3), unbiased=False).view(1, 3, 1, 1)
    # For scale: the same kNN on the pixels themselves, as our encoder receives them.
    result["pixels_knn_top1"] = knn_top1(((x[labelled] - mean) / std).flatten(1), y[labelled],
                                         ((tx - mean) / std).flatten(1), ty, classes)
    ours, ours_data_bn = {}, {}
    for path in a.ours:
        net = load_weights(Encoder("resnet18", "cifar", a.width), path, a.width)
        f, tf = features(net, x[labelled], mean, std), features(net, tx, mean, std)
        ours[path] = knn_top1(f, y[labelled], tf, ty, classes)
        calibrated = with_data_statistics(net, x, mean, std, a.batch, a.seed)
        f, tf = features(calibrated, x[labelled], mean, std), features(calibrated, tx, mean, std)
        ours_data_bn[path] = knn_top1(f, y[labelled], tf, ty, classes)
    result["ours_knn_top1"] = ours
    result["ours_knn_top1_data_bn"] = ours_data_bn

    from byol_pytorch import BYOL
    # Seeded here, after the `--ours` encoders drew from torch's generator, so that
    # byol-pytorch's run does not depend on them; its RandomApply (colour jitter, blur) draws
    # from Python's `random`, which torch.manual_seed leaves alone.
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    net = Encoder("resnet18", "cifar", a.width)
    if a.init_encoder:
        # Drawn above all the same, so that torch's generator reaches byol-pytorch's projector,
        # predictor and augmentations in the state it would without this flag: only the
        # encoder's starting weights differ.
        load_weights(net, a.init_encoder, a.width)
        result["init_encoder"] = a.init_encoder
    learner = BYOL(net, image_size=x.shape[-1], hidden_layer=-1,
                   use_simplicial_embeddings=a.simplicial_embeddings == "on")
    result["simplicial_embeddings"] = a.simplicial_embeddings
    result["augment"] = a.augment
    if a.augment == "per-image":
        # byol-pytorch uses one module for both views unless given two.
        learner.augment1 = learner.augment2 = PerImage(learner.augment1)
    opt = torch.optim.Adam(learner.parameters(), lr=a.lr)

    def score(net=net):
        return knn_top1(features(net, x[labelled], IMAGENET_MEAN, IMAGENET_STD), y[labelled],
                        features(net, tx, IMAGENET_MEAN, IMAGENET_STD), ty, classes)

    result["byol_pytorch_knn_init"] = score()
    result["byol_pytorch_knn_init_data_bn"] = score(
        with_data_statistics(net, x, IMAGENET_MEAN, IMAGENET_STD, a.batch, a.seed))
    print(f"byol-pytorch kNN at initialisation: {100 * result['byol_pytorch_knn_init']:.2f}% "
          f"({100 * result['byol_pytorch_knn_init_data_bn']:.2f}% with the data's BatchNorm statistics)",
          file=sys.stderr)
    g = torch.Generator().manual_seed(a.seed)
    steps = len(x) // a.batch
    seconds, per_epoch = 0.0, []
    for epoch in range(a.epochs):
        order = torch.randperm(len(x), generator=g)
        start, loss_sum = time.perf_counter(), 0.0
        for s in range(steps):
            loss = learner(x[order[s * a.batch:(s + 1) * a.batch]])
            opt.zero_grad()
            loss.backward()
            opt.step()
            learner.update_moving_average()
            loss_sum += loss.item()
        seconds += time.perf_counter() - start
        acc = score()
        per_epoch.append({"epoch": epoch + 1, "loss": loss_sum / steps, "knn_top1": acc, "train_seconds": seconds})
        print(f"byol-pytorch epoch {epoch + 1}: loss {loss_sum / steps:.4f}, kNN top-1 {100 * acc:.2f}%, {seconds:.0f} s",
              file=sys.stderr)
    result["byol_pytorch"] = per_epoch
    print(json.dumps(result))


if __name__ == "__main__":
    main()
