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


def write_run(folder, seed, knn, batch=64, epochs=2, data_dir="data/fashion",
              optimizer="lars", train_size=5000):
    """A `host train --out` folder: config.json and metrics.jsonl, kNN figures as fractions."""
    os.makedirs(folder)
    config = {"seed": seed, "optim": {"batch_size": batch, "epochs": epochs,
                                      "optimizer": optimizer},
              "data": {"dataset": "mnist", "data_dir": data_dir, "train_size": train_size}}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    lines = [{"epoch": 0, "kind": "epoch", "knn_top1": knn[0], "knn_top1_data_bn": knn[1]}]
    for epoch in range(1, epochs + 1):
        lines.append({"epoch": epoch, "kind": "step", "loss": 1.0})
        lines.append({"epoch": epoch, "kind": "epoch", "knn_top1": knn[2] if epoch == epochs
                      else 0.01})
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(line) for line in lines) + "\n")
    return folder


def write_comparison(root, name, seed, ours, theirs, batch=64, epochs=2, theirs_epochs=None,
                     data_dir="data/fashion", pixels=0.75, init_encoder=None, augment=None,
                     simplicial_embeddings=None):
    """A comparison folder as compare_byol_pytorch.sh leaves it; kNN figures as fractions."""
    folder = os.path.join(root, name)
    write_run(os.path.join(folder, "ours"), seed, ours, batch, epochs, data_dir)
    per_epoch = [{"epoch": e, "knn_top1": theirs[2] if e == epochs else 0.02}
                 for e in range(1, (theirs_epochs or epochs) + 1)]
    reference = {"byol_pytorch_knn_init": theirs[0], "byol_pytorch_knn_init_data_bn": theirs[1],
                 "byol_pytorch": per_epoch, "pixels_knn_top1": pixels}
    if init_encoder:
        reference["init_encoder"] = init_encoder
    if augment:
        reference["augment"] = augment
    if simplicial_embeddings:
        reference["simplicial_embeddings"] = simplicial_embeddings
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

    def test_one_seed_should_be_said_to_have_no_standard_error(self):
        self.assertEqual(summary.mean_with_spread([2.5]), "+2.50 (one seed: no standard error)")
        # −1 and +3: mean +1, sample sd √8, standard error √(8/2) = 2.
        self.assertEqual(summary.mean_with_spread([-1.0, 3.0]),
                         "+1.00 ± 2.00 (standard error over 2 seeds)")

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

    def test_a_shared_start_is_said_and_not_mixed_with_torchs_draw(self):
        a = write_comparison(self.root, "a", 0, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6),
                             init_encoder="a/ours-init-encoder.safetensors")
        b = write_comparison(self.root, "b", 1, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6),
                             init_encoder="b/ours-init-encoder.safetensors")
        c = write_comparison(self.root, "c", 2, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6))
        code, out, _ = self.run_main([a, b])
        self.assertEqual(code, 0)
        self.assertIn("2 seeds; byol-pytorch started from our initial encoders;",
                      out.splitlines()[0])
        self.assertNotIn("started from", self.run_main([c])[1])
        code, out, err = self.run_main([a, c])
        self.assertEqual((code, out), (1, ""))
        self.assertIn(f"{c}: theirs_start \"torch's draw\", but {a} has 'ours'", err)

    def test_byol_pytorch_options_are_said_and_not_mixed_with_its_defaults(self):
        # (reference.json field, the flagged value, its default, the header's words, the key
        # the refusal names): a file without the field is byol-pytorch's default.
        options = [("augment", "per-image", "per-batch",
                    "byol-pytorch's augmentations drawn per image", "theirs_augment"),
                   ("simplicial_embeddings", "off", "on",
                    "byol-pytorch without simplicial embeddings", "theirs_simplicial_embeddings")]
        for field, flagged, default, said, key in options:
            with self.subTest(field=field):
                root = os.path.join(self.root, field)
                a = write_comparison(root, "a", 0, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6),
                                     **{field: flagged})
                b = write_comparison(root, "b", 1, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6),
                                     **{field: default})
                c = write_comparison(root, "c", 2, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6))
                code, out, _ = self.run_main([a])
                self.assertEqual(code, 0)
                self.assertIn(f"1 seeds; {said};", out.splitlines()[0])
                code, out, _ = self.run_main([b, c])
                self.assertEqual(code, 0)
                self.assertNotIn(said, out)
                code, out, err = self.run_main([a, c])
                self.assertEqual((code, out), (1, ""))
                self.assertIn(f"{c}: {key} '{default}', but {a} has '{flagged}'", err)

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

    def test_a_log_file_matched_by_a_pattern_is_named(self):
        log = os.path.join(self.root, "seed-0.log")
        with open(log, "w") as f:
            f.write("a log\n")
        code, _, err = self.run_main([log])
        self.assertEqual(code, 1)
        self.assertIn(f"{log}: a file, not a run's folder", err)

    def test_no_folder_prints_the_usage(self):
        code, _, err = self.run_main([])
        self.assertEqual(code, 2)
        self.assertIn("usage:", err)
        a = write_comparison(self.root, "a", 0, (0.6, 0.5, 0.6), (0.6, 0.5, 0.6))
        self.assertEqual(self.run_main([a, "--variant"])[0], 2)
        self.assertEqual(self.run_main(["--variant", a])[0], 2)
        code, out, _ = self.run_main(["--help"])
        self.assertEqual(code, 0)
        self.assertIn("--variant RUN [RUN ...]", out)
        self.assertIn("A single seed says little here", out)


class Variant(unittest.TestCase):
    """`--variant`: one change's runs judged against the comparisons of the same seeds."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name
        # ours trained 61 / 64 / 67, byol-pytorch 60 / 61 / 59 on seeds 0 / 1 / 2.
        self.comparisons = [
            write_comparison(self.root, "a", 0, (0.62, 0.50, 0.61), (0.64, 0.50, 0.60)),
            write_comparison(self.root, "b", 1, (0.58, 0.48, 0.64), (0.63, 0.51, 0.61)),
            write_comparison(self.root, "c", 2, (0.60, 0.50, 0.67), (0.61, 0.52, 0.59))]

    def tearDown(self):
        self.tmp.cleanup()

    def variant(self, name, seed, knn, **changes):
        return write_run(os.path.join(self.root, name), seed, knn,
                         **{"optimizer": "adamw", **changes})

    def run_main(self, variants):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = summary.main(self.comparisons + ["--variant"] + variants)
        return code, out.getvalue(), err.getvalue()

    def test_paired_figures_match_a_hand_computation(self):
        # Seeds 1 and 0 (given out of order): trained 63 and 66 against ours 64 / 61 and
        # byol-pytorch 61 / 60. variant − ours: +5, −1 → mean 2, sd √18, se 3; − theirs: +6, +2
        # → 4 ± 2; − placeholder init (62, 58): +4, +5 → 4.5 ± 0.5; − data's (50, 48): +16, +15.
        variants = [self.variant("v1", 1, (0.58, 0.48, 0.63)),
                    self.variant("v0", 0, (0.62, 0.50, 0.66))]
        code, out, err = self.run_main(variants)
        self.assertEqual((code, err), (0, ""))
        block = out.split("\n\n")[1].splitlines()
        self.assertEqual(block[0], f"variant ({variants[0]} …): optim.optimizer 'lars' → 'adamw'")
        self.assertIn("after 2 epochs, 2 seeds", block[1])
        self.assertEqual([line.split()[0] for line in block[3:5]], ["0", "1"])
        self.assertTrue(block[3].endswith("+5.00             +6.00"), block[3])
        self.assertEqual(block[5].split(), ["mean", "60.00", "/", "49.00", "→", "64.50", "62.50",
                                            "60.50", "+2.00", "+4.00"])
        self.assertIn("variant − ours at equal epochs: +2.00 ± 3.00 (standard error over 2 "
                      "seeds); above on 1, by 2 points or more on 1", out)
        self.assertIn("variant − byol-pytorch at equal epochs: +4.00 ± 2.00 (standard error "
                      "over 2 seeds); above on 2, by 2 points or more on 2", out)
        self.assertIn("variant − its initialisation, placeholder statistics: +4.50 ± 0.50 "
                      "(standard error over 2 seeds); above on 2, by 5 points or more on 1", out)
        self.assertIn("variant − its initialisation, the data's statistics: +15.50 ± 0.50", out)

    def test_a_seed_no_comparison_holds_is_refused(self):
        v = self.variant("v", 7, (0.6, 0.5, 0.6))
        code, out, err = self.run_main([v])
        self.assertEqual((code, out), (1, ""))
        self.assertIn(f"{v}: seed 7, which no comparison given holds (seeds [0, 1, 2])", err)

    def test_runs_that_make_different_changes_are_refused(self):
        a = self.variant("v0", 0, (0.6, 0.5, 0.6))
        b = self.variant("v1", 1, (0.6, 0.5, 0.6), batch=128)
        code, _, err = self.run_main([a, b])
        self.assertEqual(code, 1)
        self.assertIn(f"{b} differs from ours in", err)
        self.assertIn("should make one change on every seed", err)

    def test_other_epochs_or_data_are_refused_and_another_path_accepted(self):
        code, out, _ = self.run_main([self.variant("moved", 0, (0.6, 0.5, 0.6),
                                                   data_dir="/elsewhere/fashion")])
        self.assertEqual(code, 0)
        self.assertIn("optim.optimizer 'lars' → 'adamw'", out)
        self.assertNotIn("data_dir", out)
        longer = self.variant("longer", 0, (0.6, 0.5, 0.6), epochs=3)
        code, _, err = self.run_main([longer])
        self.assertEqual(code, 1)
        self.assertIn(f"{longer}: epochs 3, but its seed's comparison", err)
        other = self.variant("other", 1, (0.6, 0.5, 0.6), train_size=1000)
        code, _, err = self.run_main([other])
        self.assertEqual(code, 1)
        self.assertIn(f"{other}: data", err)

    def test_the_same_variant_seed_twice_is_refused(self):
        a = self.variant("v0", 0, (0.6, 0.5, 0.6))
        b = self.variant("w0", 0, (0.6, 0.5, 0.6))
        code, _, err = self.run_main([a, b])
        self.assertEqual(code, 1)
        self.assertIn("variant seed given twice", err)


if __name__ == "__main__":
    unittest.main()
