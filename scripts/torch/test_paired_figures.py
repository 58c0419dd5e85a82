"""Tests of paired_figures.py against figures worked out by hand (standard library only:
`python3 -m unittest discover -s scripts/torch -p 'test_*.py'`, run by .ci/run)."""

import contextlib
import io
import unittest

import paired_figures


def main(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = paired_figures.main(list(args))
    return code, out.getvalue(), err.getvalue()


class PairedFigures(unittest.TestCase):
    def test_typed_figures_should_give_each_seed_the_means_and_the_standard_error(self):
        code, out, err = main("79.90/79.90", "79.75/79.50", "80.90/79.95", "81.00/80.40")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0], "figures typed in, 4 seeds")
        self.assertEqual(lines[2].split(), ["0", "79.90", "79.90", "+0.00"])
        self.assertEqual(lines[5].split(), ["3", "81.00", "80.40", "+0.60"])
        # A: 321.55 / 4 = 80.3875; B: 319.75 / 4 = 79.9375. Differences 0, 0.25, 0.95, 0.60:
        # mean 0.45, squared deviations 0.2025 + 0.04 + 0.25 + 0.0225 = 0.515, standard error
        # √(0.515 / 3 / 4) = 0.2072.
        self.assertEqual(lines[6].split(), ["mean", "80.39", "79.94", "+0.45"])
        self.assertEqual(lines[7], "A − B: +0.45 ± 0.21 (standard error over 4 seeds); "
                                   "A ahead on 3, behind on 0")

    def test_means_should_round_halves_up_in_decimal(self):
        # 80.355 and 0.005 exactly: halves up gives 80.36 and 0.01, where a binary sum of
        # 80.36 and 80.35 gives 80.35499… (80.35) and half-even rounding 0.00.
        code, out, err = main("80.36/80.36", "80.35/80.34", "--first-seed", "4")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual([line.split()[0] for line in lines[2:4]], ["4", "5"])
        self.assertEqual(lines[4].split(), ["mean", "80.36", "80.35", "+0.01"])
        self.assertTrue(lines[5].startswith("A − B: +0.01 ± "), lines[5])

    def test_one_pair_should_say_it_has_no_standard_error(self):
        code, out, _ = main("50/45.5")
        self.assertEqual(code, 0)
        self.assertIn("A − B: +4.50 (one seed: no standard error); A ahead on 1, behind on 0",
                      out)

    def test_bad_figures_should_say_what_was_expected(self):
        for args, got in ((["79.9"], "'79.9'"), (["79.9/"], "'79.9/'"),
                          (["a/1"], "'a/1'"), (["101/50"], "'101/50'"),
                          (["50/-1"], "'50/-1'"), (["nan/50"], "'nan/50'"),
                          (["1/2/3"], "'1/2/3'")):
            code, out, err = main(*args)
            self.assertEqual(code, 2, args)
            self.assertIn("argument A/B: expected A/B, two figures in percent from 0 to 100", err)
            self.assertIn(f"got {got}", err)
            self.assertEqual(out, "")
        code, _, err = main("50/40", "--first-seed", "-1")
        self.assertEqual(code, 2)
        self.assertIn("argument --first-seed: expected a whole number ≥ 0, got '-1'", err)
        code, _, err = main()
        self.assertEqual(code, 2)
        self.assertIn("the following arguments are required: A/B", err)
        code, out, _ = main("--help")
        self.assertEqual(code, 0)
        self.assertIn("The pairs are seeds S, S + 1", out)


if __name__ == "__main__":
    unittest.main()
