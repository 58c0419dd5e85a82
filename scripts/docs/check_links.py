"""Checks the Markdown files' links: every `[text](#anchor)` and `[text](file#anchor)` reaches a
heading, every relative file link reaches a file, and no heading marker stands in the middle of a
line (where a reflow merged a heading into the paragraph above it, which then renders as text).

Anchors are GitHub's: the heading lower-cased, every character that is not a letter, digit,
underscore, hyphen or space dropped (a code span's backticks too), spaces turned into hyphens
(so `±` between two spaces leaves `--`). Code spans and fenced blocks are not read for links.

    python3 scripts/docs/check_links.py README.md docs/*.md

prints one line per fault, naming the file and the line (or a file it cannot read), and exits 1
if there is any.
"""

import argparse
import functools
import os
import re
import sys

LINK = re.compile(r"\]\(([^)\s]*)\)")
MID_LINE_HEADING = re.compile(r"\S.* #{2,6} \S")


def anchor(heading):
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def prose_lines(text):
    """(line number, line) outside fenced blocks."""
    fenced = False
    for number, line in enumerate(text.split("\n"), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


@functools.cache  # a file is linked to many times (README → comparisons.md): parse it once
def anchors(path):
    with open(path, encoding="utf-8") as f:
        found = set()
        for _, line in prose_lines(f.read()):
            m = re.match(r"#{1,6} (.*)", line)
            if m:
                found.add(anchor(m.group(1)))
        return found


def faults(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        return [f"{path}: cannot read it ({e})"]
    out = []
    here = os.path.dirname(path)
    for number, line in prose_lines(text):
        line = re.sub(r"`[^`]*`", "``", line)
        if MID_LINE_HEADING.search(line) and not line.lstrip().startswith("|"):
            out.append(f"{path}:{number}: a heading marker in the middle of a line: {line.strip()}")
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked here
            file_part, _, fragment = target.partition("#")
            linked = os.path.normpath(os.path.join(here, file_part)) if file_part else path
            if not os.path.exists(linked):
                out.append(f"{path}:{number}: links to {file_part}, which is not there")
            elif fragment and linked.endswith(".md") and fragment not in anchors(linked):
                out.append(f"{path}:{number}: links to #{fragment}, which no heading of "
                           f"{linked} has")
    return out


def main(args):
    """The exit code: 0, 1 for any fault, 2 for a usage error (argparse's)."""
    what, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="python3 scripts/docs/check_links.py", description=what,
                                epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="FILE.md", help="the Markdown files to check")
    try:
        paths = p.parse_args(args).paths
    except SystemExit as e:
        return e.code
    found = [fault for path in paths for fault in faults(path)]
    files = f"{len(paths)} file{'s' * (len(paths) != 1)}"
    print("\n".join(found) if found else f"ok: every link of {files} reaches its place")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
