"""Benchmark: aggregators on the real AffectNetC25 answers, checked against the other half.

Usage::

    python benchmarks/bench_c25_halves.py [--data-dir DIR] [--repetitions N] [--seed S]
        [--json FILE]

A truth-free check (there is no true label of these images): in each repetition the 25
annotators of a set are split at random into two halves of 12 (A) and 13 (B); each method
aggregates half A's answers, and is scored against a plain reference made of half B's answers
alone:

- valence and arousal: Lin's CCC (and Pearson's r) of each method's value on half A against half
  B's mean answer; methods: the mean, the median, :class:`crowd_layers.LatentTruthRegression`
  with its prior of the truths (``truth_prior=True``) and without (``truth_prior=False``, its
  default);
- expression: the accuracy of each method's label on half A against half B's majority vote;
  items where half B's vote is tied or absent are skipped (and counted); methods: majority vote
  (ties broken by the image's file name, as the package's training does) and
  :class:`crowd_layers.DawidSkene`.

An item without any answer in half A, or (valence, arousal) without any in half B, is skipped
and counted too. The split is the same for the three tasks of a set in a repetition; the
repetitions use ``numpy.random.default_rng([seed, set, repetition])``.

Data (default ``--data-dir``: ``../shared/data/affectnetc25`` beside the repository): the six
CSVs ``{expression,valence,arousal}_set{1,2}_C25.csv``, read by
:func:`affectnet_tf.evaluation.c25.read_c25_csvs` as the package's builder reads them: expression
codes outside 0..7 (8-10: not a label) and valence or arousal off the -1..1 grid (-2: not a
label) are no answer, and counted.

Prints a table of mean ± s.d. over the repetitions, with the data, seed, repetitions, machine
and command line; ``--json`` writes ``{"results": {set: {task: {method: {metric: {"mean",
"sd"}}}}}, "latent_vs_mean": ..., "cleaned": ..., ...}``.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import crowd_layers  # noqa: E402
from affectnet_tf.evaluation.c25 import read_c25_csvs  # noqa: E402
from affectnet_tf.modeling.metrics import ccc, pearson  # noqa: E402
from tfds_affectnet import labels  # noqa: E402

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "affectnetc25"
VA_METHODS = ("mean", "median", "latent", "latent_no_prior")
EXPRESSION_METHODS = ("mv", "ds")
METHOD_NAMES = {
    "mean": "mean",
    "median": "median",
    "latent": "LatentTruthRegression(truth_prior=True)",
    "latent_no_prior": "LatentTruthRegression(truth_prior=False)",
    "mv": "majority vote",
    "ds": "DawidSkene",
}
TASKS = ("valence", "arousal", "expression")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data = parser.add_argument_group("Dataset")
    data.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder of the six AffectNetC25 CSVs (default: ../shared/data/affectnetc25)",
    )
    crowd = parser.add_argument_group("Crowd")
    crowd.add_argument(
        "--repetitions", type=int, default=200, help="random splits per set (default: 200)"
    )
    crowd.add_argument("--seed", type=int, default=0, help="seed of the splits (default: 0)")
    output = parser.add_argument_group("Output")
    output.add_argument("--json", type=Path, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.repetitions < 1:
        parser.error(f"--repetitions must be >= 1 (got {args.repetitions})")
    return args


def load_c25(data_dir):
    """``({set: {"file_name", "expression", "valence", "arousal"}}, cleaned)`` of the CSVs.

    Expression ``(n, 25)`` int64 in the canonical order, -1 = no answer; valence and arousal
    float64, NaN = no answer; ``cleaned``: the values read as no answer, per reason."""
    read, cleaned = read_c25_csvs(data_dir)
    sets = {
        set_name: {
            "file_name": list(table["file_name"]),
            "expression": table["crowd_expression"].astype(np.int64),
            "valence": table["crowd_valence"].astype(np.float64),
            "arousal": table["crowd_arousal"].astype(np.float64),
        }
        for set_name, table in read.items()
    }
    return sets, dict(cleaned)


def va_methods(answers):
    """Each valence/arousal method's value per item of ``answers`` (NaN: no answer)."""
    return {
        "mean": crowd_layers.mean_answer(answers),
        "median": crowd_layers.median_answer(answers),
        "latent": crowd_layers.LatentTruthRegression(truth_prior=True).fit(answers).truth_,
        "latent_no_prior": crowd_layers.LatentTruthRegression(truth_prior=False)
        .fit(answers)
        .truth_,
    }


def score_va(answers, half_a, half_b):
    """One split of a valence or arousal matrix: ``{method: {"ccc", "pearson"}}``, skipped."""
    reference = crowd_layers.mean_answer(answers[:, half_b])
    estimates = va_methods(answers[:, half_a])
    kept = np.isfinite(reference) & np.isfinite(estimates["mean"])
    scores = {
        method: {
            "ccc": ccc(reference[kept], value[kept]),
            "pearson": pearson(reference[kept], value[kept]),
        }
        for method, value in estimates.items()
    }
    return scores, int((~kept).sum())


def score_expression(answers, file_names, half_a, half_b):
    """One split of the expression matrix: ``{method: {"accuracy"}}``, skipped items."""
    reference, tied = labels.majority_labels(answers[:, half_b], file_names)
    votes, _ = labels.majority_labels(answers[:, half_a], file_names)
    answered_a = (answers[:, half_a] >= 0).any(axis=1)
    kept = (reference >= 0) & ~tied & answered_a
    ds = crowd_layers.DawidSkene(num_classes=8).fit(answers[:, half_a]).labels_
    estimates = {"mv": votes, "ds": ds}
    scores = {
        method: {"accuracy": float(np.mean(value[kept] == reference[kept]))}
        for method, value in estimates.items()
    }
    return scores, int((~kept).sum())


def split_halves(rng, num_annotators):
    """A random split of the annotators: ``(half_a, half_b)``, ``num_annotators // 2`` (12 of
    25) and the rest."""
    order = rng.permutation(num_annotators)
    half = num_annotators // 2
    return np.sort(order[:half]), np.sort(order[half:])


def run_set(table, set_number, repetitions, seed):
    """Every repetition of one set: ``{task: {"scores": [per-rep dicts], "skipped": [...]}}``."""
    runs = {task: {"scores": [], "skipped": []} for task in TASKS}
    num_annotators = table["expression"].shape[1]
    with crowd_layers.quiet_aggregation():
        for repetition in range(repetitions):
            rng = np.random.default_rng([seed, set_number, repetition])
            half_a, half_b = split_halves(rng, num_annotators)
            for task in TASKS:
                if task == "expression":
                    scores, skipped = score_expression(
                        table["expression"], table["file_name"], half_a, half_b
                    )
                else:
                    scores, skipped = score_va(table[task], half_a, half_b)
                runs[task]["scores"].append(scores)
                runs[task]["skipped"].append(skipped)
    return runs


def summarise(runs):
    """``{task: {method: {metric: {"mean", "sd"}}, "skipped_items": {"mean", "max"}}}``."""
    summary = {}
    for task, run in runs.items():
        methods = {}
        for method in run["scores"][0]:
            methods[method] = {}
            for metric in run["scores"][0][method]:
                values = np.array([rep[method][metric] for rep in run["scores"]])
                sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
                methods[method][metric] = {"mean": float(values.mean()), "sd": sd}
        skipped = np.array(run["skipped"])
        methods["skipped_items"] = {"mean": float(skipped.mean()), "max": int(skipped.max())}
        summary[task] = methods
    return summary


def latent_vs_mean(runs_by_set, results):
    """The issue's target per prior setting: latent CCC >= the mean's (means over the
    repetitions) on valence and arousal of every set; with the share of repetitions where so."""
    verdict = {}
    for method in ("latent", "latent_no_prior"):
        cases = {}
        for set_name, runs in runs_by_set.items():
            for task in ("valence", "arousal"):
                reps = runs[task]["scores"]
                wins = np.mean([rep[method]["ccc"] >= rep["mean"]["ccc"] for rep in reps])
                row = results[set_name][task]
                cases[f"{set_name}/{task}"] = {
                    "latent_ccc": row[method]["ccc"]["mean"],
                    "mean_ccc": row["mean"]["ccc"]["mean"],
                    "met": row[method]["ccc"]["mean"] >= row["mean"]["ccc"]["mean"],
                    "share_of_repetitions": float(wins),
                }
        verdict[method] = {"met": all(c["met"] for c in cases.values()), "cases": cases}
    return verdict


def print_set(set_name, table, summary):
    n_items = len(table["file_name"])
    print(f"\n{set_name}: {n_items} images, {table['expression'].shape[1]} annotators")
    for task in TASKS:
        rows = summary[task]
        skipped = rows["skipped_items"]
        what = "tied/absent in B or unanswered in A" if task == "expression" else "unanswered"
        print(
            f"  {task} (items skipped per repetition: mean {skipped['mean']:.1f}, max "
            f"{skipped['max']}, {what})"
        )
        for method, metrics in rows.items():
            if method == "skipped_items":
                continue
            cells = "   ".join(
                f"{metric} {m['mean']:.4f} ± {m['sd']:.4f}" for metric, m in metrics.items()
            )
            print(f"    {METHOD_NAMES[method]:<42} {cells}")


def print_verdict(verdict):
    print("\ntarget: latent-truth CCC against the other half >= the plain mean's (valence and")
    print("arousal of both sets; mean over repetitions, [share of repetitions where so]):")
    for method, result in verdict.items():
        cases = ", ".join(
            f"{name} {c['latent_ccc']:.4f} vs {c['mean_ccc']:.4f} [{c['share_of_repetitions']:.2f}]"
            for name, c in result["cases"].items()
        )
        print(f"  {METHOD_NAMES[method]}: {'met' if result['met'] else 'NOT met'}: {cases}")


def main(argv=None):
    args = parse_args(argv)
    try:
        sets, cleaned = load_c25(args.data_dir)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    shown = sys.argv[1:] if argv is None else argv
    print(f"data: {args.data_dir.resolve()}")
    print(f"cleaned (read as no answer): {cleaned or 'none'}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; seed {args.seed}, {args.repetitions} repetitions, "
        "halves of 12 (A, aggregated) and 13 (B, reference) of 25 annotators"
    )
    print(f"command: python benchmarks/bench_c25_halves.py {' '.join(map(str, shown))}")
    start = time.perf_counter()
    runs_by_set, results = {}, {}
    for number, set_name in enumerate(sets, start=1):
        runs_by_set[set_name] = run_set(sets[set_name], number, args.repetitions, args.seed)
        results[set_name] = summarise(runs_by_set[set_name])
        print_set(set_name, sets[set_name], results[set_name])
    verdict = latent_vs_mean(runs_by_set, results)
    print_verdict(verdict)
    print(f"total {time.perf_counter() - start:.1f} s")
    if args.json:
        summary = {
            "results": results,
            "latent_vs_mean": verdict,
            "cleaned": cleaned,
            "seed": args.seed,
            "repetitions": args.repetitions,
            "data_dir": str(args.data_dir),
        }
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
