"""The comparison shell scripts' usage paths: `--help` prints the script's header comment, and
a missing OUT (or a flag where OUT goes) is a usage line with exit 2, before any build or run
(standard library and bash only; run by .ci/run)."""

import os
import subprocess
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def run(script, *args):
    return subprocess.run(["bash", os.path.join(HERE, script), *args], capture_output=True,
                          text=True, timeout=60)


class ScriptUsage(unittest.TestCase):
    def test_help_should_print_the_header_comment(self):
        for script, first_line in (
                ("compare_byol_pytorch.sh", "Ours beside byol-pytorch on one data set"),
                ("compare_seeds.sh", "compare_byol_pytorch.sh over several seeds")):
            for flag in ("--help", "-h"):
                r = run(script, flag)
                self.assertEqual(r.returncode, 0, (script, r.stderr))
                self.assertTrue(r.stdout.startswith(first_line), (script, r.stdout[:80]))
                self.assertNotIn("set -euo pipefail", r.stdout)

    def test_a_missing_out_should_be_a_usage_error(self):
        for script, args in (("compare_byol_pytorch.sh", []),
                             ("compare_byol_pytorch.sh", ["--epochs", "3"]),
                             ("compare_seeds.sh", []),
                             ("compare_seeds.sh", ["runs/x"]),
                             ("compare_seeds.sh", ["--epochs", "3"])):
            r = run(script, *args)
            self.assertEqual(r.returncode, 2, (script, args, r.stderr))
            self.assertIn(f"usage: {os.path.join(HERE, script)} OUT", r.stderr)
            self.assertEqual(r.stdout, "")


if __name__ == "__main__":
    unittest.main()
