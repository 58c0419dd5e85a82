"""Writes the PyTorch fixtures of the ResNet tests (tests/fixtures/), from torchvision itself.

- `torchvision_<arch>_<stem>.txt`: every parameter and BatchNorm running buffer of the
  encoder (no fc), as `name shape`, in torchvision's order, at the standard width 64.
- `resnet_<arch>_<stem>_w<width>.safetensors`: a small encoder (torchvision's blocks, every
  stage scaled to `width` channels) with fixed weights; an input batch; after one
  training-mode forward: the representation, the running statistics, and, for the loss
  `sum(representation * R)`, the gradients of every parameter and of the input; and the
  representation of a following evaluation-mode forward. Images are stored NHWC (the Rust
  layout); tensors keep PyTorch's names and layouts (conv weights OIHW).
- `byol_pytorch_sem_projector.safetensors`: byol-pytorch's default projector (its simplicial
  embedding, then its MLP), built by byol-pytorch's own `NetWrapper` at small sizes, with
  non-trivial BatchNorm parameters: the same kinds of tensors as above, for a batch of
  representations instead of images.

Needs torch, torchvision, safetensors and byol-pytorch==0.9.1 (installed by hand; CI never runs
this).
Usage: python3 scripts/torch/make_fixtures.py
"""
import pathlib

import torch
import torch.nn as nn
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3])}


class Encoder(ResNet):
    """torchvision's ResNet with every stage scaled to `width` and the chosen stem, no fc."""

    def __init__(self, arch: str, stem: str, width: int = 64):
        self._width = width
        block, layers = ARCHS[arch]
        super().__init__(block, layers)
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.fc = nn.Identity()

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # the first stage starts from the stem's width
            self.inplanes = self._width
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)


def names(arch: str, stem: str) -> None:
    net = Encoder(arch, stem)
    lines = [f"{n} {'x'.join(map(str, p.shape))}" for n, p in net.named_parameters()]
    lines += [f"{n} {'x'.join(map(str, b.shape))}" for n, b in net.named_buffers()
              if not n.endswith("num_batches_tracked")]
    (OUT / f"torchvision_{arch}_{stem}.txt").write_text("\n".join(lines) + "\n")


def non_trivial_batchnorm(net: nn.Module) -> None:
    """BatchNorm parameters and running statistics away from 1 and 0, so each is exercised."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


def record(net: nn.Module, x: torch.Tensor, names: dict, layout=lambda t: t) -> dict:
    """`net`'s parameters and running statistics; one training-mode forward of `x` and the
    backward of `sum(out * R)`: the output, R, every gradient and the running statistics after;
    then the evaluation-mode output. `names` gives the keys of the input, output, R, input
    gradient and evaluation output; `layout` turns the input and its gradient into the Rust
    layout."""
    t = {f"param.{n}": p.detach().clone() for n, p in net.named_parameters()}
    t |= {f"initial.{n}": b.clone() for n, b in net.named_buffers() if "running" in n}
    x.requires_grad_(True)
    out = net(x)
    r = torch.randn_like(out)
    (out * r).sum().backward()
    t |= {names["input"]: layout(x.detach()), names["output"]: out.detach(),
          names["weights"]: r, names["grad_input"]: layout(x.grad)}
    t |= {f"grad.{n}": p.grad for n, p in net.named_parameters()}
    t |= {f"running.{n}": b.clone() for n, b in net.named_buffers() if "running" in n}
    net.eval()
    with torch.no_grad():
        t[names["eval"]] = net(x)
    return {k: v.contiguous().float() for k, v in t.items()}


def values(arch: str, stem: str, width: int, batch: int, size: int, seed: int) -> None:
    torch.manual_seed(seed)
    net = Encoder(arch, stem, width).train()
    non_trivial_batchnorm(net)
    names = {"input": "input_nhwc", "output": "repr", "weights": "repr_weights",
             "grad_input": "grad_input_nhwc", "eval": "repr_eval"}
    t = record(net, torch.randn(batch, 3, size, size), names, lambda v: v.permute(0, 2, 3, 1))
    save_file(t, OUT / f"resnet_{arch}_{stem}_w{width}.safetensors")


def sem_projector(batch: int = 9, dim: int = 10, seed: int = 3) -> None:
    """byol-pytorch's projector with its simplicial embedding: 4 groups of 3 at temperature
    0.1, hidden 16, projection 6 (its last Linear has a bias)."""
    from byol_pytorch.byol_pytorch import NetWrapper

    torch.manual_seed(seed)
    wrapper = NetWrapper(nn.Identity(), projection_size=6, projection_hidden_size=16, layer=-1,
                         use_simplicial_embeddings=True, sem_num_simplices=4, sem_simplex_dim=3,
                         sem_temperature=0.1)
    net = wrapper._get_projector(torch.zeros(batch, dim)).train()
    non_trivial_batchnorm(net)
    names = {"input": "input", "output": "output", "weights": "output_weights",
             "grad_input": "grad_input", "eval": "output_eval"}
    save_file(record(net, torch.randn(batch, dim), names),
              OUT / "byol_pytorch_sem_projector.safetensors")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for arch in ARCHS:
        for stem in ("imagenet", "cifar"):
            names(arch, stem)
    values("resnet18", "cifar", width=4, batch=3, size=12, seed=1)
    values("resnet50", "imagenet", width=4, batch=2, size=64, seed=2)
    sem_projector()


if __name__ == "__main__":
    main()
