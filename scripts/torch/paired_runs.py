"""Two settings of `host train` over seeds, paired by seed: each seed's kNN top-1 (or a figure
`host eval` recorded) under both, the difference, and its mean ± standard error. The README's τ
table rows for runs made by hand (the long CIFAR-10 pairs) are these figures; for example its
200-epoch row:

    python3 scripts/torch/paired_runs.py c200/tau0.9-seed*/ --against c200/tau0.99-seed*/

    python3 paired_runs.py RUN [RUN ...] --against RUN [RUN ...] [--at EPOCH] [--every N]
                           [--course] [--ranks]
                           [--evaluation linear|knn [--linear-epochs E]
                                                    [--knn-k K] [--knn-temperature T]]

Each RUN is a `host train --out RUN` folder (`config.json`, `metrics.jsonl`). The runs before
`--against` are setting A, those after it setting B. Within a setting the runs differ only in
the seed (and where the data lay); the fields in which A and B differ are printed first. Runs
pair by seed, and a seed that one setting lacks is an error. Each run is read after the epochs
it was configured for, so an unfinished run is an error that names it, unless `--at EPOCH`
reads every run after that epoch (pairs still under way compare where both have reached).
`--every N` adds each seed's readings every N epochs, as Markdown tables. `--course` adds, for
each seed, the epochs on which A's kNN is behind, level with and ahead of B's, the first epoch A
is ahead and the last it is behind, the least and the most A − B over the epochs from half-way
on, each run's mean over its last ten epochs and its best reading (the figures
`docs/comparisons.md` gives in each pair's first point). `--ranks` adds the collapse monitor's
effective rank of each run: its lowest over the run with the epoch, the epochs it spent below 5
(the representation folded to a few directions), and its last (the figures `docs/comparisons.md`
gives in brackets beside each kNN reading).

The figure compared is the training monitor's kNN top-1 (k = 200, T = 0.1), unless
`--evaluation` names one that `host eval` recorded in the run's `evaluations.jsonl`: `linear`
with the probe's training length `--linear-epochs` (default 80, `host eval linear RUN`; `host eval
linear RUN --epochs 240` for 240) or `knn` with `--knn-k` and `--knn-temperature` (default 200 and
0.1; `host eval knn RUN --knn-k 20 --knn-temperature 0.07`). The record read is the last of that
kind at the run's last checkpoint; a run without one is an error that gives the command that
adds it. Needs only the standard library.
"""

import argparse
import math
import os
import sys
from decimal import ROUND_HALF_UP, Decimal

from summarise_comparisons import (BadComparison, column_means, differing_fields, flatten,
                                   json_lines, mean_and_standard_error, mean_with_spread, read_run,
                                   read_text, refuse_repeated_seeds)

# The training monitor's kNN vote, which `host eval knn` also takes unless told otherwise.
MONITOR_K, MONITOR_TEMPERATURE = 200, 0.1
# The epochs `host eval linear` trains its classifier for unless told otherwise.
LINEAR_EPOCHS = 80


def setting_fields(runs, label):
    """The flattened configuration of the setting's first run; a run that differs from it in
    more than what pairs or places them (the seed, the data's folder) is an error."""
    shared, first = flatten(runs[0]["config"]), runs[0]["folder"]
    for run in runs[1:]:
        differ = differing_fields(shared, flatten(run["config"]))
        if differ:
            raise BadComparison(
                f"{run['folder']}: differs from {first} in {', '.join(differ)}; the runs of "
                f"setting {label} should differ only in the seed")
    return shared


def knn_fractions_by_epoch(run):
    """{epoch: kNN top-1 as the monitor wrote it, a fraction} of a run's epoch records (epoch 0:
    initialisation)."""
    return {r["epoch"]: r["knn_top1"] for r in run["epoch_records"] if "knn_top1" in r}


def knn_by_epoch(run):
    """{epoch: kNN top-1 in percent} of a run's epoch records (epoch 0: initialisation)."""
    return {e: 100.0 * knn for e, knn in knn_fractions_by_epoch(run).items()}


# An effective rank below this, out of the representation's 128 dimensions or more, is a
# representation folded onto a few directions: the fast target's runs fall there for an epoch
# or more early on and recover, which `--ranks` counts.
LOW_RANK = 5.0


def read_epoch(run, at):
    """The epoch a run is read after: `at` where given, else the epochs it was configured for."""
    return run["config"]["optim"]["epochs"] if at is None else at


def read_span(by_epoch, run, at):
    """The entries of `by_epoch` (one of the run's figures by epoch) for its trained epochs up to
    the one it is read after (`read_epoch`)."""
    last = read_epoch(run, at)
    return {e: value for e, value in by_epoch.items() if 1 <= e <= last}


def ranks_by_epoch(run):
    """{epoch: effective rank} of a run's trained epochs (the monitor measures none at 0)."""
    return {r["epoch"]: r["effective_rank"] for r in run["epoch_records"]
            if "effective_rank" in r}


def rank_table(a_by_seed, b_by_seed, at):
    """Markdown lines: each seed's lowest effective rank (its epoch), epochs below LOW_RANK and
    last rank under settings A and B, over the epochs up to the one the kNN is read after
    (`read_epoch`), then how many runs of each setting went below LOW_RANK."""
    lines = [f"effective rank: lowest over the run (epoch), epochs below {LOW_RANK:g}, last",
             "| seed | A lowest | A below | A last | B lowest | B below | B last |",
             "|---" * 7 + "|"]
    folded = {"A": 0, "B": 0}
    for seed in sorted(a_by_seed):
        cells = []
        for label, run in (("A", a_by_seed[seed]), ("B", b_by_seed[seed])):
            last = read_epoch(run, at)
            read = read_span(ranks_by_epoch(run), run, at)
            if last not in read:
                raise BadComparison(f"{run['folder']}: no effective rank after epoch {last} in "
                                    f"metrics.jsonl")
            lowest = min(read, key=lambda e: (read[e], e))
            below = sum(r < LOW_RANK for r in read.values())
            folded[label] += below > 0
            cells += [f"{read[lowest]:.1f} ({lowest})", str(below), f"{read[last]:.1f}"]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    runs = len(a_by_seed)
    lines.append(f"below {LOW_RANK:g} for an epoch or more: A on {folded['A']} of {runs} runs, "
                 f"B on {folded['B']} of {runs}")
    return lines


# The record reads a run's end over its last ten epochs as well as at its last: over those
# epochs the monitor's kNN still moves by 0.1–0.2 points from one epoch to the next (median; up
# to 0.45) on the long Fashion-MNIST and CIFAR-10 runs, as much as some seeds' gap between the
# two settings.
LAST_EPOCHS = 10


def percent_mean(fractions):
    """The mean of kNN fractions as the monitor wrote them (0.8055), in percent to two places,
    halves rounded up: in decimal, not binary, so that a mean of 80.355 reads 80.36 as the record
    writes it, where the binary sum gives 80.35499… and 80.35."""
    total = sum(Decimal(repr(f)) for f in fractions) * 100 / len(fractions)
    return str(total.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def percent_difference(a, b):
    """a − b for two kNN fractions as the monitor wrote them, in percent, exact in decimal as
    `percent_mean` reads them."""
    return (Decimal(repr(a)) - Decimal(repr(b))) * 100


def course_table(a_by_seed, b_by_seed, at):
    """Markdown lines: for each seed, over the trained epochs both runs have up to the epochs
    they are read after (`read_epoch`), how many have A's kNN below, equal to and above B's,
    the first on which A is above and the last on which it is below, the least and the most
    A − B from half-way on (epochs from the last one halved, rounded down); then each run's mean
    over its last LAST_EPOCHS epochs and its best reading with the first epoch it came."""
    lines = [f"kNN course: epochs A is behind, level, ahead; the first A is ahead and the last "
             f"it is behind; least to most A − B from half-way (epochs); mean over the last "
             f"{LAST_EPOCHS} epochs; best (first epoch)",
             "| seed | A behind | level | A ahead | A first ahead | A last behind "
             f"| A − B from half-way | A last {LAST_EPOCHS} | B last {LAST_EPOCHS} | A best "
             "| B best |",
             "|---" * 11 + "|"]
    for seed in sorted(a_by_seed):
        # Fractions, not percent: `percent_mean` takes their decimal digits as written.
        trained = [read_span(knn_fractions_by_epoch(run), run, at)
                   for run in (a_by_seed[seed], b_by_seed[seed])]
        a, b = trained
        both = sorted(set(a) & set(b))
        behind = [e for e in both if a[e] < b[e]]
        ahead = [e for e in both if a[e] > b[e]]
        cells = [str(len(behind)), str(len(both) - len(behind) - len(ahead)), str(len(ahead)),
                 str(ahead[0]) if ahead else "none", str(behind[-1]) if behind else "none"]
        late = [e for e in both if e >= both[-1] // 2]
        gaps = [percent_difference(a[e], b[e]) for e in late]
        cells.append(f"{min(gaps):+.2f} to {max(gaps):+.2f} ({late[0]}–{late[-1]})")
        for readings in trained:
            cells.append(percent_mean([readings[e] for e in sorted(readings)[-LAST_EPOCHS:]]))
        for readings in trained:
            best = min(readings, key=lambda e: (-readings[e], e))
            cells.append(f"{100 * readings[best]:.2f} ({best})")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return lines


def reading(run, at, evaluation=None):
    """The run's kNN top-1 (percent) after epoch `at`, or after its configured epochs; with
    `evaluation`, that evaluation's figure for the checkpoint the finished run ended with."""
    readings = knn_by_epoch(run)
    planned = run["config"]["optim"]["epochs"]
    epoch = read_epoch(run, at)
    if epoch not in readings:
        reached = max(readings)
        hint = "" if at is not None else f"; --at {reached} reads every run there"
        raise BadComparison(f"{run['folder']}: at epoch {reached} of {planned}, so no reading "
                            f"after epoch {epoch}{hint}")
    if evaluation is None:
        return readings[epoch]
    return evaluated(run, evaluation)


class Evaluation:
    """Which `host eval` record to read: `linear` with the epochs its classifier trained for,
    or `knn` with its k and temperature. Records of another probe length or vote are other
    figures, never read in their place."""

    def __init__(self, kind, k=MONITOR_K, temperature=MONITOR_TEMPERATURE, epochs=LINEAR_EPOCHS):
        self.kind, self.k, self.temperature, self.epochs = kind, k, temperature, epochs

    def matches(self, record):
        if record.get("kind") != self.kind:
            return False
        if self.kind == "linear":
            return record.get("epochs") == self.epochs
        return record.get("k") == self.k and record.get("temperature") == self.temperature

    def figure(self, record):
        return record["linear_top1" if self.kind == "linear" else "knn_top1"]

    def title(self):
        if self.kind == "linear":
            return f"linear top-1 ({self.epochs}-epoch classifier)"
        return f"kNN top-1 (k = {self.k}, T = {self.temperature:g})"

    def command(self, folder):
        if self.kind == "linear":
            flags = "" if self.epochs == LINEAR_EPOCHS else f" --epochs {self.epochs}"
        elif (self.k, self.temperature) == (MONITOR_K, MONITOR_TEMPERATURE):
            flags = ""
        else:
            flags = f" --knn-k {self.k} --knn-temperature {self.temperature:g}"
        return f"host eval {self.kind} {folder}{flags}"


def evaluated(run, evaluation):
    """The figure (percent) of the last record of `evaluation` in the run's evaluations.jsonl
    made at its last checkpoint (a record of an earlier checkpoint, before a resume, is not
    this run's end)."""
    path = os.path.join(run["folder"], "evaluations.jsonl")
    step = run["last_step"]
    found = None
    if os.path.exists(path):
        for record in json_lines(path, enumerate(read_text(path).splitlines(), start=1)):
            if evaluation.matches(record) and record.get("step") == step:
                found = record
    if found is None:
        raise BadComparison(f"{run['folder']}: no {evaluation.title()} of its last checkpoint "
                            f"(step {step}) in evaluations.jsonl; "
                            f"`{evaluation.command(run['folder'])}` adds it")
    return 100.0 * evaluation.figure(found)


def difference_table(rows):
    """The lines for rows (seed, A, B): each seed's A − B, the means, A − B's mean ± standard
    error and the seeds A is ahead and behind on. `paired_figures.py` prints the same lines of
    figures typed in as decimals, whose means round as the decimal context says."""
    lines = [f"{'seed':>5}  {'A':>6}  {'B':>6}  {'A − B':>6}"]
    for seed, a, b in rows:
        lines.append(f"{seed:>5}  {a:6.2f}  {b:6.2f}  {a - b:+6.2f}")
    mean_a, mean_b = column_means((a, b) for _, a, b in rows)
    differences = [a - b for _, a, b in rows]
    mean = mean_and_standard_error(differences)[0]
    lines.append(f"{'mean':>5}  {mean_a:6.2f}  {mean_b:6.2f}  {mean:+6.2f}")
    lines.append(f"A − B: {mean_with_spread(differences)}; "
                 f"A ahead on {sum(d > 0 for d in differences)}, "
                 f"behind on {sum(d < 0 for d in differences)}")
    return lines


def summarise_pairs(a_runs, b_runs, at=None, every=None, evaluation=None, ranks=False,
                    course=False):
    """The lines for settings A and B (runs read by `read_run`), paired by seed; the figure is
    the monitor's kNN unless `evaluation` (an `Evaluation`) names a recorded one; `ranks` adds
    the effective-rank table, `course` the table of the kNN's course."""
    a_fields, b_fields = setting_fields(a_runs, "A"), setting_fields(b_runs, "B")
    for runs, label in ((a_runs, "A"), (b_runs, "B")):
        refuse_repeated_seeds([r["seed"] for r in runs], f"setting {label}'s seed", "run")
    a_by_seed = {r["seed"]: r for r in a_runs}
    b_by_seed = {r["seed"]: r for r in b_runs}
    if set(a_by_seed) != set(b_by_seed):
        raise BadComparison(f"setting A has seeds {sorted(a_by_seed)} and setting B "
                            f"{sorted(b_by_seed)}; each seed should have a run of both")
    differ = differing_fields(a_fields, b_fields)
    described = "; ".join(f"{k} {a_fields.get(k)!r} / {b_fields.get(k)!r}" for k in differ)
    epochs = sorted({r["config"]["optim"]["epochs"] for r in a_runs + b_runs})
    when = f"epoch {at}" if at is not None else f"{'/'.join(map(str, epochs))} epochs"
    seeds = sorted(a_by_seed)
    rows = [(s, reading(a_by_seed[s], at, evaluation), reading(b_by_seed[s], at, evaluation))
            for s in seeds]
    what = ("kNN top-1 (%)" if evaluation is None
            else f"{evaluation.title()} (%) of the checkpoint")

    lines = [f"A / B: {described or 'no field differs'}",
             f"{what} after {when}, {len(rows)} seed{'s' * (len(rows) != 1)}"]
    lines += difference_table(rows)
    if every:
        for seed in seeds:
            a, b = knn_by_epoch(a_by_seed[seed]), knn_by_epoch(b_by_seed[seed])
            last = at if at is not None else max(epochs)
            marks = [e for e in range(every, last + 1, every) if e in a and e in b]
            lines += ["", f"seed {seed}, kNN top-1 (%) every {every} epochs (at "
                          f"initialisation A {a[0]:.2f}, B {b[0]:.2f})",
                      "| setting | " + " | ".join(map(str, marks)) + " |",
                      "|---" * (len(marks) + 1) + "|"]
            for label, readings in (("A", a), ("B", b)):
                lines.append(f"| {label} | "
                             + " | ".join(f"{readings[e]:.2f}" for e in marks) + " |")
    if course:
        lines += [""] + course_table(a_by_seed, b_by_seed, at)
    if ranks:
        lines += [""] + rank_table(a_by_seed, b_by_seed, at)
    return lines


def whole_number(expected, least=1):
    """An argparse type: a whole number ≥ `least`, or an error that says `expected`."""
    def parse(text):
        if not text.isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return int(text)
    return parse


def positive_number(text):
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def docstring_parser(doc, prog):
    """An argparse parser whose help is a script's docstring `doc` in four paragraphs: what it
    prints, an example, the usage (put on one line, as argparse prints it), then how it reads
    its input."""
    what, example, usage, reading = doc.split("\n\n", 3)
    return argparse.ArgumentParser(prog=prog, usage=" ".join(usage.split()),
                                   description=f"{what}\n\n{example}", epilog=reading,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def parser():
    p = docstring_parser(__doc__, "python3 paired_runs.py")
    p.add_argument("a_runs", nargs="+", metavar="RUN", help="setting A's run folders")
    p.add_argument("--against", nargs="+", required=True, metavar="RUN",
                   help="setting B's run folders")
    p.add_argument("--at", type=whole_number("a whole number of epochs ≥ 1"), metavar="EPOCH",
                   help="read every run after this epoch (pairs still under way)")
    p.add_argument("--every", type=whole_number("a whole number of epochs ≥ 1"), metavar="N",
                   help="add each seed's readings every N epochs, as Markdown tables")
    p.add_argument("--course", action="store_true",
                   help="add each seed's epochs behind, level and ahead, least and most A − B "
                        "from half-way, last ten epochs and best readings")
    p.add_argument("--ranks", action="store_true",
                   help="add each run's lowest, time below 5 and last effective rank")
    p.add_argument("--evaluation", choices=("linear", "knn"),
                   help="compare a figure `host eval` recorded instead of the monitor's kNN")
    p.add_argument("--linear-epochs", type=whole_number("a whole number of epochs ≥ 1"),
                   metavar="E", help="with --evaluation linear: the epochs its classifier "
                                     f"trained for (`host eval linear --epochs`; default "
                                     f"{LINEAR_EPOCHS})")
    p.add_argument("--knn-k", type=whole_number("a whole number ≥ 1"), metavar="K",
                   help=f"with --evaluation knn: the vote's k (default {MONITOR_K})")
    p.add_argument("--knn-temperature", type=positive_number, metavar="T",
                   help=f"with --evaluation knn: its temperature (default {MONITOR_TEMPERATURE})")
    return p


def evaluation_of(p, flags):
    """The `Evaluation` the flags name, or None for the monitor's kNN; a flag that does not
    fit the others is a usage error."""
    vote = flags.knn_k is not None or flags.knn_temperature is not None
    probe = flags.linear_epochs is not None
    if flags.evaluation is None:
        if vote:
            p.error("--knn-k and --knn-temperature choose among `host eval knn` records: give "
                    "them with --evaluation knn")
        if probe:
            p.error("--linear-epochs chooses among `host eval linear` records: give it with "
                    "--evaluation linear")
        return None
    if flags.at is not None:
        p.error("--at reads the monitor of a run under way; an evaluation is of the checkpoint "
                "a finished run ended with")
    if flags.evaluation == "linear":
        if vote:
            p.error("--knn-k and --knn-temperature: a linear evaluation has no k or temperature")
        return Evaluation("linear", epochs=LINEAR_EPOCHS if flags.linear_epochs is None
                          else flags.linear_epochs)
    if probe:
        p.error("--linear-epochs: a kNN evaluation trains no classifier")
    return Evaluation("knn", MONITOR_K if flags.knn_k is None else flags.knn_k,
                      MONITOR_TEMPERATURE if flags.knn_temperature is None
                      else flags.knn_temperature)


def main(args):
    """The exit code: 0, 1 for runs that cannot be compared, 2 for a usage error (argparse's)."""
    p = parser()
    try:
        flags = p.parse_args(args)
        evaluation = evaluation_of(p, flags)
    except SystemExit as e:
        return e.code
    try:
        lines = summarise_pairs([read_run(f) for f in flags.a_runs],
                                [read_run(f) for f in flags.against], flags.at, flags.every,
                                evaluation, flags.ranks, flags.course)
        print("\n".join(lines))
    except BadComparison as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
