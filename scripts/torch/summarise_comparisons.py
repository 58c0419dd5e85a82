"""Several seeds of `compare_byol_pytorch.sh` in one table, with means and standard errors.

    python3 summarise_comparisons.py DIR [DIR ...] [--variant RUN [RUN ...]]

Each DIR is one comparison's output folder (`ours/config.json`, `ours/metrics.jsonl`,
`reference.json`). Prints one row per seed (kNN top-1 at initialisation, read with BatchNorm's
placeholder statistics and with the data's, and after training, for ours and byol-pytorch),
then the paired figures the small recipe's bar is stated in: ours − byol-pytorch at equal
epochs, and ours − its own initialisation under each reading, each as mean ± standard error
over the seeds with the count of seeds that clear the bar's margin (2 and 5 points).

With `--variant`, each RUN is a `host train --out RUN` folder (`config.json`, `metrics.jsonl`)
of one change to the recipe, on a seed that one DIR holds: the same data and epochs, anything
else may differ. The variant's block names the fields in which its runs differ from ours (the
same in every seed, or the runs are refused), then pairs each run with its seed's comparison:
variant − ours and variant − byol-pytorch at equal epochs, and variant − its own
initialisation, so one change is judged over seeds without running byol-pytorch again.

A single seed says little here: on Fashion-MNIST the seed moves a 10-epoch run by 6 points
and, on a bad draw, by 18 (README, "Beside byol-pytorch"). Needs only the standard library.
"""

import argparse
import json
import math
import os
import sys

# The bar the small recipe is held to (README, "Beside byol-pytorch"): ahead of byol-pytorch by
# 2 points, above the encoder's own initialisation by 5.
LEAD_OVER_REFERENCE = 2.0
GAIN_OVER_INIT = 5.0


class BadComparison(Exception):
    pass


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise BadComparison(f"{path}: cannot read it ({e.strerror})") from e


def read_json(path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise BadComparison(f"{path}: not JSON ({e})") from e


def json_lines(path, numbered_lines):
    """The records of a JSON-lines file's (number, line) pairs; a line that is not JSON is an
    error that names the file and the line's number."""
    records = []
    for number, line in numbered_lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BadComparison(f"{path}: line {number} is not JSON ({e})") from e
    return records


def field(record, path, *keys):
    value = record
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise BadComparison(f"{path}: no field `{'.'.join(keys)}`")
        value = value[key]
    return value


def refuse_a_file(folder):
    # A shell pattern such as seed-* also matches compare_seeds.sh's seed-S.log files.
    if os.path.isfile(folder):
        raise BadComparison(f"{folder}: a file, not a run's folder (seed-*/ matches folders only)")


def read_run(folder):
    """One `host train --out` folder: its configuration, and its kNN top-1 at initialisation
    (placeholder and data's BatchNorm statistics) and after its last epoch, as fractions."""
    refuse_a_file(folder)
    config_path = os.path.join(folder, "config.json")
    metrics_path = os.path.join(folder, "metrics.jsonl")
    config = read_json(config_path)
    lines = read_text(metrics_path).split("\n")
    # A run under way (or killed) may have its last record cut short, with no newline after
    # it: left out, as `host train --resume` and `host plot` leave it out.
    cut_short = lines.pop()
    records = json_lines(metrics_path,
                         ((n, line) for n, line in enumerate(lines, start=1) if line.strip()))
    try:
        if cut_short.strip():
            records.append(json.loads(cut_short))
    except json.JSONDecodeError:
        pass
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = [r["step"] for r in records if r.get("kind") == "step" and "step" in r]
    if len(epochs) < 2 or epochs[0].get("epoch") != 0:
        raise BadComparison(f"{metrics_path}: expected the initial reading (epoch 0) and at "
                            f"least one trained epoch, found {len(epochs)} epoch records")
    return {
        "folder": folder,
        "config": config,
        "seed": field(config, config_path, "seed"),
        "epochs": epochs[-1]["epoch"],
        "batch": field(config, config_path, "optim", "batch_size"),
        # Where the data lay may be written differently (relative, absolute, another
        # machine); what they are shows in the data set's other fields.
        "data": {k: v for k, v in field(config, config_path, "data").items() if k != "data_dir"},
        "knn": (field(epochs[0], metrics_path, "knn_top1"),
                field(epochs[0], metrics_path, "knn_top1_data_bn"),
                field(epochs[-1], metrics_path, "knn_top1")),
        "epoch_records": epochs,
        # The step its last checkpoint was written at (steps count from 0 in the records), which
        # `host eval` records beside each evaluation.
        "last_step": max(steps) + 1 if steps else None,
    }


def read_comparison(folder):
    """One seed's figures from a comparison folder, kNN top-1 as fractions as the files hold
    them; also its epoch records and reference.json, for compare_byol_pytorch.sh's report."""
    refuse_a_file(folder)
    ours = read_run(os.path.join(folder, "ours"))
    reference_path = os.path.join(folder, "reference.json")
    reference = read_json(reference_path)
    theirs = field(reference, reference_path, "byol_pytorch")
    if not isinstance(theirs, list) or not theirs:
        raise BadComparison(f"{reference_path}: field `byol_pytorch` should list its epochs")
    return {
        "folder": folder,
        "config": ours["config"],
        "seed": ours["seed"],
        "epochs": ours["epochs"],
        "batch": ours["batch"],
        # The same data under another path is the same data; the pixels' own kNN confirms it.
        "data": (ours["data"], field(reference, reference_path, "pixels_knn_top1")),
        "ours": ours["knn"],
        "theirs": (field(reference, reference_path, "byol_pytorch_knn_init"),
                   field(reference, reference_path, "byol_pytorch_knn_init_data_bn"),
                   field(theirs[-1], reference_path, "knn_top1")),
        "theirs_epochs": field(theirs[-1], reference_path, "epoch"),
        # byol-pytorch's starting encoder: torch's draw, or ours (SHARED_INIT=1).
        "theirs_start": "ours" if reference.get("init_encoder") else "torch's draw",
        # byol-pytorch's augmentation draws: per batch (its default; files from before the
        # option have no field) or per image (`byol_pytorch_reference.py --augment per-image`).
        "theirs_augment": reference.get("augment", "per-batch"),
        # byol-pytorch 0.9.1's simplicial embeddings in the projector: on (its default; files
        # from before the option have no field) or off (the paper's projector,
        # `byol_pytorch_reference.py --simplicial-embeddings off`).
        "theirs_simplicial_embeddings": reference.get("simplicial_embeddings", "on"),
        "ours_epochs": ours["epoch_records"],
        "reference": reference,
    }


def mean_and_standard_error(values):
    """Mean and standard error of the mean (sample standard deviation / √n; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def mean_with_spread(differences):
    """`+M ± SE (standard error over N seeds)`, or, of one seed, the mean and that it has no
    spread: a standard error needs two values, and "± 0.00" would read as a certain one."""
    mean, se = mean_and_standard_error(differences)
    if len(differences) == 1:
        return f"{mean:+.2f} (one seed: no standard error)"
    return f"{mean:+.2f} ± {se:.2f} (standard error over {len(differences)} seeds)"


def percent(fractions):
    return tuple(100.0 * v for v in fractions)


def number(value):
    return f"{value:5.2f}"


def reading_cell(init, init_bn, trained):
    """One encoder's kNN readings (percent) as the tables print them."""
    return f"{number(init)} / {number(init_bn)} → {number(trained)}".ljust(28)


def column_means(readings):
    """The mean of each position over equal-length tuples of readings."""
    return [mean_and_standard_error(column)[0] for column in zip(*readings)]


def epochs_phrase(epochs):
    return f"{epochs} epoch{'s' * (epochs != 1)}"


def refuse_repeated_seeds(seeds, label, item):
    if len(set(seeds)) != len(seeds):
        raise BadComparison(f"{label} given twice among {seeds}; each {item} should be "
                            "another seed")


def summarise(runs):
    """The summary's lines for runs read by `read_comparison`, ordered by seed."""
    first = runs[0]
    for run in runs:
        for key in ("epochs", "batch", "data", "theirs_start", "theirs_augment",
                    "theirs_simplicial_embeddings"):
            if run[key] != first[key]:
                raise BadComparison(
                    f"{run['folder']}: {key} {run[key]!r}, but {first['folder']} has "
                    f"{first[key]!r}; a summary pairs runs that differ only in the seed")
        if run["theirs_epochs"] != run["epochs"]:
            raise BadComparison(f"{run['folder']}: byol-pytorch trained {run['theirs_epochs']} "
                                f"epochs and ours {run['epochs']}; expected equal epochs")
    refuse_repeated_seeds([run["seed"] for run in runs], "seed", "folder")
    rows = [(r["seed"], percent(r["ours"]), percent(r["theirs"]))
            for r in sorted(runs, key=lambda r: r["seed"])]

    shared = ("; byol-pytorch started from our initial encoders"
              if first["theirs_start"] == "ours" else "")
    per_image = ("; byol-pytorch's augmentations drawn per image"
                 if first["theirs_augment"] == "per-image" else "")
    no_sem = ("; byol-pytorch without simplicial embeddings"
              if first["theirs_simplicial_embeddings"] == "off" else "")
    lines = [f"kNN top-1 (%) after {epochs_phrase(first['epochs'])} of batch {first['batch']}, "
             f"{len(rows)} seeds{shared}{per_image}{no_sem}; initialisation read with BatchNorm's "
             "placeholder statistics / the data's",
             f"{'seed':>5}  {'ours: init → trained':28}  {'byol-pytorch: init → trained':28}"
             f"  {'ours − theirs':>13}"]
    for seed, ours, theirs in rows:
        lines.append(f"{seed:>5}  {reading_cell(*ours)}  {reading_cell(*theirs)}  "
                     f"{ours[2] - theirs[2]:+13.2f}")
    ours_mean = column_means(ours for _, ours, _ in rows)
    theirs_mean = column_means(theirs for _, _, theirs in rows)
    lines.append(f"{'mean':>5}  {reading_cell(*ours_mean)}  {reading_cell(*theirs_mean)}  "
                 f"{ours_mean[2] - theirs_mean[2]:+13.2f}")

    lines.append(paired("ours − byol-pytorch at equal epochs",
                        [ours[2] - theirs[2] for _, ours, theirs in rows], LEAD_OVER_REFERENCE))
    lines += gains_over_init("ours", [ours for _, ours, _ in rows])
    return lines


def paired(label, differences, margin):
    """One paired figure over seeds: mean ± standard error, and how many seeds clear `margin`."""
    ahead = sum(d > 0 for d in differences)
    clear = sum(d >= margin for d in differences)
    return (f"{label}: {mean_with_spread(differences)}; above on {ahead}, "
            f"by {margin:g} points or more on {clear}")


def gains_over_init(name, readings):
    """The bar's second half for (placeholder init, data's init, trained) readings in percent."""
    return [paired(f"{name} − its initialisation, placeholder statistics",
                   [r[2] - r[0] for r in readings], GAIN_OVER_INIT),
            paired(f"{name} − its initialisation, the data's statistics",
                   [r[2] - r[1] for r in readings], GAIN_OVER_INIT)]


def flatten(config, prefix=""):
    """A nested configuration as {"optim.base_lr": 1.0, ...}."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Fields in which a variant's run may differ from its seed's comparison without being a change
# to the recipe: the seed pairs them, and where the data lay is not what they are.
NOT_A_CHANGE = ("seed", "data.data_dir")


def differing_fields(a, b):
    """The fields (of flattened configurations) whose values differ, NOT_A_CHANGE left out,
    sorted."""
    return sorted(k for k in set(a) | set(b) if k not in NOT_A_CHANGE and a.get(k) != b.get(k))


def summarise_variant(runs, variants):
    """The lines that judge one change over seeds: `variants` (read by `read_run`) against the
    comparisons `runs` (read by `read_comparison`) of the same seeds."""
    by_seed = {run["seed"]: run for run in runs}
    refuse_repeated_seeds([v["seed"] for v in variants], "variant seed", "run")
    changes = None
    rows = []
    for variant in sorted(variants, key=lambda v: v["seed"]):
        run = by_seed.get(variant["seed"])
        if run is None:
            raise BadComparison(f"{variant['folder']}: seed {variant['seed']}, which no "
                                f"comparison given holds (seeds {sorted(by_seed)})")
        for key, theirs in (("epochs", run["epochs"]), ("data", run["data"][0])):
            if variant[key] != theirs:
                raise BadComparison(f"{variant['folder']}: {key} {variant[key]!r}, but its "
                                    f"seed's comparison {run['folder']} has {theirs!r}; a "
                                    "variant is compared at equal epochs on the same data")
        ours, mine = flatten(run["config"]), flatten(variant["config"])
        differ = {k: (ours.get(k), mine.get(k)) for k in differing_fields(ours, mine)}
        if changes is None:
            changes, first = differ, variant["folder"]
        elif differ != changes:
            raise BadComparison(f"{variant['folder']} differs from ours in {differ}, but "
                                f"{first} in {changes}; a variant's runs should make one "
                                "change on every seed")
        rows.append((variant["seed"], percent(variant["knn"]),
                     100.0 * run["ours"][2], 100.0 * run["theirs"][2]))

    described = "; ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in changes.items())
    lines = [f"variant ({variants[0]['folder']} …): {described or 'no field differs from ours'}",
             f"kNN top-1 (%) after {epochs_phrase(runs[0]['epochs'])}, {len(rows)} seeds",
             f"{'seed':>5}  {'variant: init → trained':28}  {'ours':>6}  {'byol-pytorch':>12}  "
             f"{'variant − ours':>14}  {'variant − theirs':>16}"]
    mean_ours, mean_theirs = column_means((ours, theirs) for _, _, ours, theirs in rows)
    means = ("mean", tuple(column_means(mine for _, mine, _, _ in rows)), mean_ours, mean_theirs)
    for seed, mine, ours, theirs in rows + [means]:
        lines.append(f"{seed:>5}  {reading_cell(*mine)}  {number(ours):>6}  {number(theirs):>12}  "
                     f"{mine[2] - ours:+14.2f}  {mine[2] - theirs:+16.2f}")
    lines.append(paired("variant − ours at equal epochs",
                        [mine[2] - ours for _, mine, ours, _ in rows], LEAD_OVER_REFERENCE))
    lines.append(paired("variant − byol-pytorch at equal epochs",
                        [mine[2] - theirs for _, mine, _, theirs in rows], LEAD_OVER_REFERENCE))
    lines += gains_over_init("variant", [mine for _, mine, _, _ in rows])
    return lines


def parser():
    # The docstring's paragraphs: what it prints, the usage (on one line, as argparse prints
    # it), then the rest.
    what, usage, rest = __doc__.split("\n\n", 2)
    p = argparse.ArgumentParser(prog="python3 summarise_comparisons.py",
                                usage=" ".join(usage.split()), description=what, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", metavar="DIR",
                   help="`compare_byol_pytorch.sh` output folders, one per seed")
    p.add_argument("--variant", nargs="+", default=[], metavar="RUN",
                   help="`host train` folders of one change to the recipe, paired by seed")
    return p


def main(args):
    """The exit code: 0, 1 for folders that cannot be summarised, 2 for a usage error."""
    try:
        flags = parser().parse_args(args)
    except SystemExit as e:
        return e.code
    try:
        runs = [read_comparison(folder) for folder in flags.folders]
        lines = summarise(runs)
        if flags.variant:
            lines += [""] + summarise_variant(runs, [read_run(v) for v in flags.variant])
        print("\n".join(lines))
    except BadComparison as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
