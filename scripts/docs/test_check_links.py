"""Tests of check_links.py on small Markdown files written for each case."""

import contextlib
import io
import os
import tempfile
import unittest

from check_links import anchor, faults, main


class CheckLinksTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.dir.cleanup()

    def write(self, name, text):
        path = os.path.join(self.dir.name, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_anchors_should_follow_githubs_rule(self):
        self.assertEqual(anchor("Data-parallel training (MPI)"), "data-parallel-training-mpi")
        self.assertEqual(anchor("A hundred epochs (+1.99 ± 0.94, on six)"),
                         "a-hundred-epochs-199--094-on-six")
        self.assertEqual(anchor("Sixty epochs: τ from 0.9"), "sixty-epochs-τ-from-09")
        self.assertEqual(anchor("In our `small` recipe"), "in-our-small-recipe")

    def test_links_that_reach_their_place_should_pass(self):
        self.write("other.md", "# Other\n\n## Far section: ± here\n")
        path = self.write("a.md", "# Top\n\nSee [top](#top), [there](other.md#far-section--here)\n"
                          "and [a file](other.md), [the web](https://example.org/#x).\n")
        self.assertEqual(faults(path), [])

    def test_each_fault_should_be_named_with_its_line(self):
        path = self.write("a.md", "# Top\n\n"
                          "A [broken](#nowhere) anchor.\n"
                          "A [missing](gone.md) file.\n"
                          "A paragraph. ### Merged heading\n")
        found = faults(path)
        self.assertEqual(len(found), 3, found)
        self.assertIn(":3: links to #nowhere", found[0])
        self.assertIn(":4: links to gone.md, which is not there", found[1])
        self.assertIn(":5: a heading marker in the middle of a line", found[2])

    def test_code_should_be_neither_a_link_nor_a_heading(self):
        path = self.write("a.md", "# Top\n\n"
                          "`x](#nowhere)` and `a ### b` in code spans.\n"
                          "```\n## Not a heading\nf(x](#nowhere))\n```\n"
                          "[link](#not-a-heading)\n")
        found = faults(path)
        self.assertEqual(len(found), 1, found)
        self.assertIn(":8: links to #not-a-heading", found[0])

    def run_main(self, *args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        return code, out.getvalue(), err.getvalue()

    def test_a_file_it_cannot_read_should_be_a_fault_and_no_file_a_usage_error(self):
        good = self.write("a.md", "# Top\n\n[top](#top)\n")
        self.assertEqual(self.run_main(good)[:2],
                         (0, "ok: every link of 1 file reaches its place\n"))
        gone = os.path.join(self.dir.name, "gone.md")
        code, out, _ = self.run_main(good, gone)
        self.assertEqual(code, 1)
        self.assertIn(f"{gone}: cannot read it", out)
        code, _, err = self.run_main()
        self.assertEqual(code, 2)
        self.assertIn("the following arguments are required: FILE.md", err)
        code, out, _ = self.run_main("--help")
        self.assertEqual(code, 0)
        self.assertIn("Anchors are GitHub's", out)


if __name__ == "__main__":
    unittest.main()
