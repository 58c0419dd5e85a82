"""Tests of summarise_comparisons.py against figures worked out by hand (standard library only:
`python3 -m unittest discover -s scripts/torch -p 'test_*.py'`, run by .ci/run)."""

import contextlib
import io
import json
import math
import os
import tempfile
import unittest

import summarise_comparisons as summary


def write_comparison(root, name, seed, ours, theirs, batch=64, epochs=2, theirs_epochs=None,
                     data_dir="data/fashion", pixels=0.75):
    """A comparison folder as compare_byol_pytorch.sh leaves it; kNN figures as fractions."""
    folder = os.path.join(root, name)
    os.makedirs(os.path.join(folder, "ours"))
    config = {"seed": seed, "optim": {"batch_size": batch},
              "data": {"dataset": "mnist", "data_dir": data_dir, "train_size": 5000}}
    with open(os.path.join(folder, "ours", "config.json"), "w") as f:
        json.dump(config, f)
    lines = [{"epoch": 0, "kind": "epoch", "knn_top1": ours[0], "knn_top1_data_bn": ours[1]}]
    for epoch in range(1, epochs + 1):
        lines.append({"epoch": epoch, "kind": "step", "loss": 1.0})
        lines.append({"epoch": epoch, "kind": "epoch", "knn_top1": ours[2] if epoch == epochs
                      else 0.01})
    with open(os.path.join(folder, "ours", "metrics.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(line) for line in lines) + "\n")
    per_epoch = [{"epoch": e, "knn_top1": theirs[2] if e == epochs else 0.02}
                 for e in range(1, (theirs_epochs or epochs) + 1)]
    reference = {"byol_pytorch_knn_init": theirs[0], "byol_pytorch_knn_init_data_bn": theirs[1],
                 "byol_pytorch": per_epoch, "pixels_knn_top1": pixels}
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(reference, f)
    return folder


class Summary(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def run_main(self, folders):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = summary.main(folders)
        return code, out.getvalue(), err.getvalue()

    def test_paired_figures_match_a_hand_computation(self):
        # ours − theirs: +1, +3, +8 → mean 4, sample sd √13, standard error √(13/3).
        # ours − placeholder init: −1, +6, +7 → mean 4, sd √19, se √(19/3); data's init: +11, +16, +17.
        folders = [write_comparison(self.root, "c", 2, (0.60, 0.50, 0.67), (0.61, 0.52, 0.59)),
                   write_comparison(self.root, "a", 0, (0.62, 0.50, 0.61), (0.64, 0.50, 0.60)),
                   write_comparison(self.root, "b", 1, (0.58, 0.48, 0.64), (0.63, 0.51, 0.61))]
        code, out, err = self.run_main(folders)
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertIn("after 2 epochs of batch 64, 3 seeds", lines[0])
        self.assertEqual([line.split()[0] for line in lines[2:6]], ["0", "1", "2", "mean"])
        self.assertTrue(lines[2].endswith("+1.00"), lines[2])
        self.assertTrue(lines[4].endswith("+8.00"), lines[4])
        se = lambda var: f"{math.sqrt(var / 3):.2f}"
        self.assertIn(f"at equal epochs: +4.00 ± {se(13)} (standard error over 3 seeds); "
                      "above on 3, by 2 points or more on 2", out)
        self.assertIn(f"placeholder statistics: +4.00 ± {se(19)} (standard error over 3 seeds); "
                      "above on 2, by 5 points or more on 2", out)
        self.assertIn(f"the data's statistics: +14.67 ± {se(31 / 3)}", out)

    def test_standard_error_of_one_seed_is_zero(self):
        self.assertEqual(summary.mean_and_standard_error([3.5]), (3.5, 0.0))
        mean, se = summary.mean_and_standard_error([1.0, 2.0, 3.0, 6.0])
        self.assertAlmostEqual(mean, 3.0)
        self.assertAlmostEqual(se, math.sqrt((4 + 1 + 0 + 9) / 3 / 4))

    def test_runs_that_differ_in_more_than_the_seed_are_refused(self):
        a = write_comparison(self.root, "a", 0, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6))
        b = write_comparison(self.root, "b", 1, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6), batch=128)
        code, out, err = self.run_main([a, b])
        self.assertEqual((code, out), (1, ""))
        self.assertIn(f"{b}: batch 128, but {a} has 64", err)

    def test_the_same_data_under_another_path_is_accepted_and_other_data_refused(self):
        a = write_comparison(self.root, "a", 0, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6))
        b = write_comparison(self.root, "b", 1, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6),
                             data_dir="/home/me/data/fashion")
        c = write_comparison(self.root, "c", 2, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6), pixels=0.89)
        self.assertEqual(self.run_main([a, b])[0], 0)
        code, _, err = self.run_main([a, c])
        self.assertEqual(code, 1)
        self.assertIn(f"{c}: data", err)

    def test_the_same_seed_twice_is_refused(self):
        a = write_comparison(self.root, "a", 3, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6))
        b = write_comparison(self.root, "b", 3, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6))
        code, _, err = self.run_main([a, b])
        self.assertEqual(code, 1)
        self.assertIn("seed given twice", err)

    def test_unequal_epochs_are_refused(self):
        a = write_comparison(self.root, "a", 0, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6), theirs_epochs=3)
        code, _, err = self.run_main([a])
        self.assertEqual(code, 1)
        self.assertIn("byol-pytorch trained 3 epochs and ours 2", err)

    def test_a_missing_field_names_the_file_and_the_field(self):
        a = write_comparison(self.root, "a", 0, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6))
        path = os.path.join(a, "reference.json")
        with open(path) as f:
            reference = json.load(f)
        del reference["byol_pytorch_knn_init_data_bn"]
        with open(path, "w") as f:
            json.dump(reference, f)
        code, _, err = self.run_main([a])
        self.assertEqual(code, 1)
        self.assertIn(f"{path}: no field `byol_pytorch_knn_init_data_bn`", err)

    def test_a_missing_folder_names_the_file(self):
        missing = os.path.join(self.root, "nowhere")
        code, _, err = self.run_main([missing])
        self.assertEqual(code, 1)
        self.assertIn(os.path.join(missing, "ours", "config.json"), err)

    def test_no_folder_prints_the_usage(self):
        code, _, err = self.run_main([])
        self.assertEqual(code, 2)
        self.assertIn("usage:", err)


if __name__ == "__main__":
    unittest.main()
