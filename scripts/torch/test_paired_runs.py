"""Tests of paired_runs.py against figures worked out by hand (standard library only:
`python3 -m unittest discover -s scripts/torch -p 'test_*.py'`, run by .ci/run)."""

import contextlib
import io
import json
import os
import tempfile
import unittest

import paired_runs


def write_run(folder, seed, readings, epochs=None, tau_base=0.9, batch=128, ranks=None):
    """A `host train --out` folder whose kNN top-1 after epoch e is readings[e] (a fraction;
    readings[0] is the initialisation), configured for `epochs` (default: as many as read);
    with `ranks`, the effective rank after epoch e is ranks[e - 1]."""
    os.makedirs(folder)
    epochs = len(readings) - 1 if epochs is None else epochs
    config = {"seed": seed, "optim": {"epochs": epochs, "tau_base": tau_base,
                                      "batch_size": batch},
              "data": {"dataset": "cifar10", "data_dir": f"data/elsewhere-{seed}"}}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    lines = [{"epoch": 0, "kind": "epoch", "knn_top1": readings[0], "knn_top1_data_bn": 0.2}]
    for epoch, knn in enumerate(readings[1:], start=1):
        # One step an epoch; steps count from 0, so the last checkpoint's step is `epochs`.
        lines.append({"epoch": epoch, "kind": "step", "step": epoch - 1, "loss": 1.0})
        lines.append({"epoch": epoch, "kind": "epoch", "knn_top1": knn})
        if ranks is not None:
            lines[-1]["effective_rank"] = ranks[epoch - 1]
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(line) for line in lines) + "\n")
    return folder


def write_evaluations(folder, *records):
    """`host eval`'s evaluations.jsonl beside the run's checkpoint."""
    with open(os.path.join(folder, "evaluations.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def linear(top1, step, epochs=80):
    return {"kind": "linear", "linear_top1": top1, "lr": 0.4, "step": step, "device": "cpu",
            "epochs": epochs}


def knn(top1, step, k, temperature):
    return {"kind": "knn", "knn_top1": top1, "k": k, "temperature": temperature, "step": step,
            "device": "cpu"}


class PairedRuns(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.TemporaryDirectory()
        self.addCleanup(self.root.cleanup)

    def run_folder(self, name, *args, **kwargs):
        return write_run(os.path.join(self.root.name, name), *args, **kwargs)

    def main(self, *args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = paired_runs.main(list(args))
        return code, out.getvalue(), err.getvalue()

    def three_seeds(self):
        # Final readings: A 50, 60, 55; B 45, 62, 50 → A − B = +5, −2, +5.
        a = [self.run_folder(f"a{s}", s, [0.25, 0.40, f], tau_base=0.9)
             for s, f in ((2, 0.55), (0, 0.50), (1, 0.60))]
        b = [self.run_folder(f"b{s}", s, [0.25, 0.35, f], tau_base=0.99)
             for s, f in ((0, 0.45), (1, 0.62), (2, 0.50))]
        return a, b

    def test_the_pairs_should_give_each_seed_the_means_and_the_standard_error(self):
        a, b = self.three_seeds()
        code, out, err = self.main(*a, "--against", *b)
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        # Where the data lay is not a difference; τ_base is the one.
        self.assertEqual(lines[0], "A / B: optim.tau_base 0.9 / 0.99")
        self.assertEqual(lines[1], "kNN top-1 (%) after 2 epochs, 3 seeds")
        # Rows by seed, whatever the order given.
        self.assertEqual(lines[3].split(), ["0", "50.00", "45.00", "+5.00"])
        self.assertEqual(lines[4].split(), ["1", "60.00", "62.00", "-2.00"])
        self.assertEqual(lines[5].split(), ["2", "55.00", "50.00", "+5.00"])
        self.assertEqual(lines[6].split(), ["mean", "55.00", "52.33", "+2.67"])
        # Differences 5, −2, 5: mean 8/3, sample sd √(((7/3)² · 2 + (14/3)²) / 2) = √(49/3),
        # standard error √(49/9) = 7/3.
        self.assertEqual(lines[7], "A − B: +2.67 ± 2.33 (standard error over 3 seeds); "
                                   "A ahead on 2, behind on 1")

    def test_every_n_epochs_should_tabulate_each_seeds_readings(self):
        a, b = self.three_seeds()
        code, out, err = self.main(*a, "--against", *b, "--every", "1")
        self.assertEqual(code, 0, err)
        blocks = out.split("\n\n")
        self.assertEqual(len(blocks), 4)
        self.assertEqual(blocks[2].splitlines(), [
            "seed 1, kNN top-1 (%) every 1 epochs (at initialisation A 25.00, B 25.00)",
            "| setting | 1 | 2 |",
            "|---|---|---|",
            "| A | 40.00 | 60.00 |",
            "| B | 35.00 | 62.00 |"])

    def test_ranks_should_give_each_runs_lowest_time_below_five_and_last(self):
        knn = [0.2, 0.3, 0.4, 0.5, 0.6]
        a = [self.run_folder("a1", 1, knn, ranks=[30.0, 4.2, 4.99, 3.1]),
             self.run_folder("a0", 0, knn, ranks=[12.0, 2.5, 2.5, 40.04])]
        b = [self.run_folder("b0", 0, knn, tau_base=0.99, ranks=[5.0, 8.0, 6.0, 7.0]),
             self.run_folder("b1", 1, knn, tau_base=0.99, ranks=[9.0, 4.0, 20.0, 21.0])]
        code, out, err = self.main(*a, "--against", *b, "--ranks")
        self.assertEqual(code, 0, err)
        # Seed 0, A: 2.5 at epochs 2 and 3, the first given; two epochs below 5, last 40.0. B: a
        # rank of exactly 5 is not below it.
        self.assertEqual(out.split("\n\n")[1].splitlines(), [
            "effective rank: lowest over the run (epoch), epochs below 5, last",
            "| seed | A lowest | A below | A last | B lowest | B below | B last |",
            "|---|---|---|---|---|---|---|",
            "| 0 | 2.5 (2) | 2 | 40.0 | 5.0 (1) | 0 | 7.0 |",
            "| 1 | 3.1 (4) | 3 | 3.1 | 4.0 (2) | 1 | 21.0 |",
            "below 5 for an epoch or more: A on 2 of 2 runs, B on 1 of 2"])
        # --at reads the ranks up to that epoch only.
        code, out, err = self.main(*a, "--against", *b, "--ranks", "--at", "1")
        self.assertEqual(code, 0, err)
        self.assertIn("| 1 | 30.0 (1) | 0 | 30.0 | 9.0 (1) | 0 | 9.0 |", out)
        self.assertIn("A on 0 of 2 runs, B on 0 of 2", out)
        # A run whose monitor recorded no rank (an older metrics.jsonl) is named.
        plain = [self.run_folder(f"c{s}", s, knn) for s in (0, 1)]
        code, _, err = self.main(*plain, "--against", *b, "--ranks")
        self.assertEqual(code, 1)
        self.assertIn(f"{plain[0]}: no effective rank after epoch", err)

    def test_course_should_count_epochs_behind_level_ahead_and_give_late_gaps_and_best(self):
        # Seed 0, epochs 1-5 (A against B): behind, level, ahead, behind, ahead; then level.
        a0 = [0.2, 0.3, 0.5, 0.4, 0.6, 0.6] + [0.5] * 7
        b0 = [0.2, 0.4, 0.5, 0.3, 0.7, 0.5] + [0.5] * 7
        # Seed 1: behind on the first two epochs, then ahead; the last ten average 80.355 and
        # 78.055 exactly, where a binary sum of A's comes to 80.35499… and would round down.
        a1 = [0.2, 0.1, 0.1, 0.801, 0.8055, 0.803, 0.8045, 0.8025, 0.8045, 0.8035, 0.803, 0.803,
              0.805]
        b1 = [0.2, 0.9, 0.9, 0.781, 0.78, 0.783, 0.7795, 0.779, 0.78, 0.781, 0.7815, 0.7805, 0.78]
        a = [self.run_folder("a0", 0, a0), self.run_folder("a1", 1, a1)]
        b = [self.run_folder("b0", 0, b0, tau_base=0.99),
             self.run_folder("b1", 1, b1, tau_base=0.99)]
        code, out, err = self.main(*a, "--against", *b, "--course")
        self.assertEqual(code, 0, err)
        # From half-way (epoch 6 of 12): seed 0 level throughout; seed 1's A − B 2.50, 2.35,
        # 2.45, 2.25, 2.15, 2.25, 2.50. Last ten of seed 0: epochs 3-12, (0.4 + 0.6 + 0.6 +
        # 7 × 0.5) / 10 and (0.3 + 0.7 + 0.5 + 7 × 0.5) / 10. Best: the first epoch of a tie
        # (A's 0.6 at 4 and 5, B's 0.9).
        self.assertEqual(out.split("\n\n")[1].splitlines()[1:], [
            "| seed | A behind | level | A ahead | A first ahead | A last behind "
            "| A − B from half-way | A last 10 | B last 10 | A best | B best |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            "| 0 | 2 | 8 | 2 | 3 | 4 | +0.00 to +0.00 (6–12) | 51.00 | 50.00 | 60.00 (4) "
            "| 70.00 (4) |",
            "| 1 | 2 | 0 | 10 | 3 | 2 | +2.15 to +2.50 (6–12) | 80.36 | 78.06 | 80.55 (4) "
            "| 90.00 (1) |"])
        # --at reads the epochs up to it only; A never ahead there.
        code, out, err = self.main(*a, "--against", *b, "--course", "--at", "2")
        self.assertEqual(code, 0, err)
        self.assertIn("| 0 | 1 | 1 | 0 | none | 1 | -10.00 to +0.00 (1–2) | 40.00 | 45.00 "
                      "| 50.00 (2) | 50.00 (2) |", out)
        self.assertIn("| 1 | 2 | 0 | 0 | none | 2 | -80.00 to -80.00 (1–2) | 10.00 | 90.00 "
                      "| 10.00 (1) | 90.00 (1) |", out)
        # Without the flag, no such table.
        code, out, _ = self.main(*a, "--against", *b)
        self.assertEqual(code, 0)
        self.assertNotIn("A behind", out)

    def test_an_unfinished_run_should_be_named_unless_at_reads_every_run_there(self):
        a = [self.run_folder("a0", 0, [0.2, 0.3, 0.4]),
             self.run_folder("a1", 1, [0.2, 0.5], epochs=2)]
        b = [self.run_folder("b0", 0, [0.2, 0.1, 0.3], tau_base=0.99),
             self.run_folder("b1", 1, [0.2, 0.45], epochs=2, tau_base=0.99)]
        code, _, err = self.main(*a, "--against", *b)
        self.assertEqual(code, 1)
        self.assertIn("a1: at epoch 1 of 2, so no reading after epoch 2; --at 1 reads every "
                      "run there", err)
        code, out, err = self.main(*a, "--against", *b, "--at", "1")
        self.assertEqual(code, 0, err)
        self.assertIn("kNN top-1 (%) after epoch 1, 2 seeds", out)
        self.assertIn("A − B: +12.50 ± 7.50 (standard error over 2 seeds)", out)

    def test_a_record_cut_short_should_be_left_out_and_a_broken_line_named(self):
        # A run under way, read while it writes its next record.
        a = self.run_folder("a0", 0, [0.2, 0.3, 0.4], epochs=4)
        b = self.run_folder("b0", 0, [0.2, 0.1, 0.3], epochs=4, tau_base=0.99)
        with open(os.path.join(a, "metrics.jsonl"), "a") as f:
            f.write('{"epoch": 3, "kind": "ep')
        code, out, err = self.main(a, "--against", b, "--at", "2")
        self.assertEqual(code, 0, err)
        self.assertIn("A − B: +10.00 (one seed: no standard error); A ahead on 1", out)
        # A broken line that is not the last is an error that names it.
        with open(os.path.join(a, "metrics.jsonl"), "a") as f:
            f.write('\n{"epoch": 3, "kind": "epoch", "knn_top1": 0.5}\n')
        code, _, err = self.main(a, "--against", b, "--at", "2")
        self.assertEqual(code, 1)
        self.assertIn("metrics.jsonl: line 6 is not JSON", err)

    def test_a_setting_whose_runs_differ_beyond_the_seed_should_be_refused(self):
        a = [self.run_folder("a0", 0, [0.2, 0.3]),
             self.run_folder("a1", 1, [0.2, 0.3], batch=256)]
        b = [self.run_folder(f"b{s}", s, [0.2, 0.3], tau_base=0.99) for s in (0, 1)]
        code, _, err = self.main(*a, "--against", *b)
        self.assertEqual(code, 1)
        self.assertIn("differs from", err)
        self.assertIn("in optim.batch_size; the runs of setting A should differ only in the seed",
                      err)

    def test_a_seed_one_setting_lacks_should_be_refused(self):
        a = [self.run_folder(f"a{s}", s, [0.2, 0.3]) for s in (0, 1)]
        b = [self.run_folder("b0", 0, [0.2, 0.3], tau_base=0.99)]
        code, _, err = self.main(*a, "--against", *b)
        self.assertEqual(code, 1)
        self.assertIn("setting A has seeds [0, 1] and setting B [0]", err)
        code, _, err = self.main(a[0], a[0], "--against", b[0], b[0])
        self.assertEqual(code, 1)
        self.assertIn("given twice", err)

    def test_an_evaluation_should_be_read_at_each_runs_last_checkpoint(self):
        a, b = self.three_seeds()  # two epochs each: the last checkpoint's step is 2
        # Linear: A 70, 66, 61 and B 64, 67, 60 by seed → +6, −1, +1. The records of step 1 (a
        # checkpoint before a resume), of another kNN vote and of a classifier trained longer
        # must not be read.
        for folder, final, earlier in ((a[1], 0.70, 0.10), (a[2], 0.66, 0.10),
                                       (a[0], 0.61, 0.10), (b[0], 0.64, 0.90),
                                       (b[1], 0.67, 0.90), (b[2], 0.60, 0.90)):
            write_evaluations(folder, linear(earlier, 1), linear(0.0, 2), knn(0.5, 2, 20, 0.07),
                              linear(final, 2), linear(earlier, 1), linear(earlier, 2, 240))
        code, out, err = self.main(*a, "--against", *b, "--evaluation", "linear")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[1], "linear top-1 (80-epoch classifier) (%) of the checkpoint "
                                   "after 2 epochs, 3 seeds")
        self.assertEqual(lines[3].split(), ["0", "70.00", "64.00", "+6.00"])
        self.assertEqual(lines[4].split(), ["1", "66.00", "67.00", "-1.00"])
        self.assertEqual(lines[5].split(), ["2", "61.00", "60.00", "+1.00"])
        # Differences 6, −1, 1: mean 2, sample variance (16 + 9 + 1) / 2 = 13, se √(13/3).
        self.assertEqual(lines[7], "A − B: +2.00 ± 2.08 (standard error over 3 seeds); "
                                   "A ahead on 2, behind on 1")
        # --linear-epochs reads the longer classifier's records: A 10 against B 90 on each seed.
        code, out, err = self.main(*a, "--against", *b, "--evaluation", "linear",
                                   "--linear-epochs", "240")
        self.assertEqual(code, 0, err)
        self.assertIn("linear top-1 (240-epoch classifier) (%)", out)
        self.assertIn("A − B: -80.00 ± 0.00", out)
        # A length no run was probed for is named with the command that adds it.
        code, _, err = self.main(*a, "--against", *b, "--evaluation", "linear",
                                 "--linear-epochs", "40")
        self.assertEqual(code, 1)
        self.assertIn(f"{a[1]}: no linear top-1 (40-epoch classifier) of its last checkpoint "
                      f"(step 2) in evaluations.jsonl; `host eval linear {a[1]} --epochs 40` "
                      "adds it", err)
        # The kNN vote is chosen by k and temperature; the default (200, 0.1) has no record.
        code, out, err = self.main(*a, "--against", *b, "--evaluation", "knn", "--knn-k", "20",
                                   "--knn-temperature", "0.07")
        self.assertEqual(code, 0, err)
        self.assertIn("kNN top-1 (k = 20, T = 0.07) (%) of the checkpoint after 2 epochs", out)
        self.assertIn("A − B: +0.00 ± 0.00", out)
        code, _, err = self.main(*a, "--against", *b, "--evaluation", "knn")
        self.assertEqual(code, 1)
        self.assertIn(f"{a[1]}: no kNN top-1 (k = 200, T = 0.1) of its last checkpoint (step 2) "
                      f"in evaluations.jsonl; `host eval knn {a[1]}` adds it", err)
        # A run without the file at all, and a broken line, are named.
        os.remove(os.path.join(b[2], "evaluations.jsonl"))
        code, _, err = self.main(*a, "--against", *b, "--evaluation", "linear")
        self.assertEqual(code, 1)
        self.assertIn(f"{b[2]}: no linear top-1 (80-epoch classifier) of its last checkpoint "
                      "(step 2)", err)
        with open(os.path.join(b[2], "evaluations.jsonl"), "w") as f:
            f.write(json.dumps(linear(0.6, 2)) + "\n{broken\n")
        code, _, err = self.main(*a, "--against", *b, "--evaluation", "linear")
        self.assertEqual(code, 1)
        self.assertIn("evaluations.jsonl: line 2 is not JSON", err)

    def test_bad_arguments_should_say_what_was_expected(self):
        # Usage errors exit 2 (argparse's convention) and name the flag; runs that cannot be
        # compared exit 1.
        a, b = self.three_seeds()
        for flags, expected in (
                ([], "the following arguments are required: --against"),
                (["--against"], "argument --against: expected at least one argument"),
                (["--against", *b, "--at", "0"],
                 "argument --at: expected a whole number of epochs ≥ 1, got '0'"),
                (["--against", *b, "--evaluation", "probe"],
                 "argument --evaluation: invalid choice: 'probe'"),
                (["--against", *b, "--knn-k", "20"], "give them with --evaluation knn"),
                (["--against", *b, "--evaluation", "linear", "--knn-k", "20"],
                 "a linear evaluation has no k"),
                (["--against", *b, "--linear-epochs", "240"],
                 "give it with --evaluation linear"),
                (["--against", *b, "--evaluation", "knn", "--linear-epochs", "240"],
                 "a kNN evaluation trains no classifier"),
                (["--against", *b, "--evaluation", "linear", "--linear-epochs", "0"],
                 "argument --linear-epochs: expected a whole number of epochs ≥ 1, got '0'"),
                (["--against", *b, "--evaluation", "knn", "--knn-k", "0"],
                 "argument --knn-k: expected a whole number ≥ 1, got '0'"),
                (["--against", *b, "--evaluation", "knn", "--knn-temperature", "-1"],
                 "argument --knn-temperature: expected a positive number, got '-1'"),
                (["--against", *b, "--evaluation", "knn", "--knn-temperature", "inf"],
                 "argument --knn-temperature: expected a positive number, got 'inf'"),
                (["--against", *b, "--evaluation", "knn", "--knn-temperature"],
                 "argument --knn-temperature: expected one argument"),
                (["--against", *b, "--evaluation", "linear", "--at", "1"],
                 "--at reads the monitor")):
            code, out, err = self.main(*a, *flags)
            self.assertEqual(code, 2, flags)
            self.assertIn(expected, err)
            self.assertEqual(out, "", flags)
        code, out, _ = self.main("--help")
        self.assertEqual(code, 0)
        self.assertIn("--knn-temperature T", out)
        self.assertIn("The figure compared is the training monitor's kNN top-1", out)
        code, _, err = self.main(os.path.join(self.root.name, "none"), "--against", *b)
        self.assertEqual(code, 1)
        self.assertIn("config.json: cannot read it", err)


if __name__ == "__main__":
    unittest.main()
