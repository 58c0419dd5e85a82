"""Paired figures typed in from the record, for pairs whose run folders are gone: each seed's A
and B as `A/B` in percent, as `docs/comparisons.md` writes them, and the lines `paired_runs.py`
prints of run folders: each seed's A − B, the means, A − B's mean ± standard error and the seeds
A is ahead and behind on. The record's means over seeds whose folders went with a machine come
from here; for example the monitor's kNN of the first four two-hundred-epoch pairs on
Fashion-MNIST (τ from 0.9 against 0.99, seeds 0 to 3):

    python3 scripts/torch/paired_figures.py 79.90/79.90 79.75/79.50 80.90/79.95 81.00/80.40

    python3 paired_figures.py A/B [A/B ...] [--first-seed S]

The pairs are seeds S, S + 1, … in the order given (S = 0 unless told). Sums are worked in
decimal and means rounded halves up, as the record writes them: 80.36 and 80.35 have the mean
80.36, where a binary sum gives 80.35499… and 80.35. Needs only the standard library.
"""

import argparse
import sys
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext

from paired_runs import difference_table, docstring_parser, whole_number


def percent(text):
    """A figure in percent: a decimal number from 0 to 100."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() and 0 <= value <= 100 else None


def pair(text):
    """An argparse type: `A/B`, two percentages, or an error that says so."""
    a, slash, b = text.partition("/")
    figures = (percent(a), percent(b)) if slash else (None, None)
    if None in figures:
        raise argparse.ArgumentTypeError(
            f"expected A/B, two figures in percent from 0 to 100 such as 79.90/79.50, got "
            f"{text!r}")
    return figures


def parser():
    p = docstring_parser(__doc__, "python3 paired_figures.py")
    p.add_argument("pairs", nargs="+", type=pair, metavar="A/B",
                   help="one seed's figures under settings A and B, in percent")
    p.add_argument("--first-seed", type=whole_number("a whole number ≥ 0", least=0), default=0,
                   metavar="S", help="the seed of the first pair (default 0)")
    return p


def figure_lines(pairs, seed=0):
    """`difference_table`'s lines for pairs (A, B) of decimals, seeds from `seed` on, means
    rounded halves up."""
    rows = [(seed + i, a, b) for i, (a, b) in enumerate(pairs)]
    with localcontext() as context:
        context.rounding = ROUND_HALF_UP
        return [f"figures typed in, {len(rows)} seed{'s' * (len(rows) != 1)}"] + \
            difference_table(rows)


def main(args):
    """The exit code: 0, or 2 for a usage error (argparse's)."""
    try:
        flags = parser().parse_args(args)
    except SystemExit as e:
        return e.code
    print("\n".join(figure_lines(flags.pairs, flags.first_seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
