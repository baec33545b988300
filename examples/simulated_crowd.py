"""Crowd layers against label aggregation on a simulated AffectNetC25-like crowd.

A small MLP learns scikit-learn's bundled digits 0-7 (8 classes, like AffectNet's 8
expressions) from simulated annotators whose confusion matrices are Dawid-Skene estimates of
the real AffectNetC25 annotators (the expression CSVs, mapped to AffectNet's class order), or,
when the CSVs are absent, of a built-in generator of neutral-biased annotators. Two crowds:

- dense: every training item answered by the 25 annotators of AffectNetC25 set 1;
- sparse: every training item answered by 3 of the 50 annotators of both sets.

Methods (rows of the table, test accuracy of the base network): the truth, majority-vote
targets, Dawid-Skene posteriors as soft targets, and each crowd method of
``crowd_layers.CROWD_METHODS`` trained on the raw answers at the package's defaults: ``pooled``
(the default, ``CrowdsPooled``), ``confusion`` and ``geocrowdnet`` (``CrowdsConfusion`` with the
trace or the volume regulariser) and the reference layers MW, VW, VB, VW+B, SW.

Usage::

    python examples/simulated_crowd.py                 # full run, a few minutes on 2 CPUs
    python examples/simulated_crowd.py --quick         # seconds, for tests
    python examples/simulated_crowd.py --csv-dir DIR --seed 1 --output-dir runs/sim
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # running from a checkout without installing
    sys.path.insert(0, str(REPO_ROOT))

from crowd_layers.aggregation import DawidSkene, majority_vote  # noqa: E402
from crowd_layers.methods import CROWD_METHODS, DEFAULT_CROWD_METHOD, crowd_method  # noqa: E402
from crowd_layers.models import prediction_model  # noqa: E402

__all__ = [
    "CROWD_METHODS",
    "METHODS",
    "build_base_model",
    "load_c25_confusions",
    "load_digits8",
    "main",
    "parse_args",
    "run_experiment",
    "simulate_answers",
    "synthetic_confusions",
    "train_on_crowd",
    "train_on_targets",
]

NUM_CLASSES = 8
DEFAULT_CSV_DIR = REPO_ROOT.parent / "shared" / "data" / "affectnetc25"
METHODS = ("truth", "majority vote", "Dawid-Skene", *CROWD_METHODS)
CROWDS = ("dense", "sparse")
STEPS_PER_EXECUTION = 16  # small models: fewer Python round trips per epoch


# --------------------------------------------------------------------------------------------
# Annotators
# --------------------------------------------------------------------------------------------


def load_c25_confusions(csv_dir):
    """Dawid-Skene confusion matrices of the real AffectNetC25 annotators.

    Args:
        csv_dir: folder with ``expression_set1_C25.csv`` and ``expression_set2_C25.csv``.

    Returns:
        ``(set1, set2)``: two ``(25, 8, 8)`` arrays in AffectNet's class order, rows the true
        class, or None when the CSVs are absent.
    """
    import pandas as pd

    from tfds_affectnet.labels import c25_to_affectnet

    csv_dir = Path(csv_dir)
    paths = [csv_dir / f"expression_set{s}_C25.csv" for s in (1, 2)]
    if not all(path.exists() for path in paths):
        return None
    sets = []
    for path in paths:
        frame = pd.read_csv(path)
        columns = [c for c in frame.columns if c.startswith("participant")]
        answers = c25_to_affectnet(frame[columns].to_numpy())
        model = DawidSkene(max_iter=100, tol=1e-5, num_classes=NUM_CLASSES).fit(answers)
        sets.append(model.confusions_)
    return tuple(sets)


def synthetic_confusions(n_annotators, rng, num_classes=NUM_CLASSES, neutral=0):
    """Biased annotators like AffectNetC25's: hard classes pulled towards ``neutral``.

    Each annotator answers the true class with a class-dependent probability (0.25-0.65, about
    the range of the mean diagonal of the AffectNetC25 Dawid-Skene estimates, shifted by a
    per-annotator skill of +-0.1), sends 25-60% of the rest to ``neutral`` and spreads the
    remainder at random. For the hardest classes ``neutral`` is then about as frequent as the
    right answer, so a majority vote often says ``neutral``.

    Returns:
        ``(n_annotators, num_classes, num_classes)`` row-stochastic matrices.
    """
    base = np.array([0.45, 0.65, 0.55, 0.6, 0.35, 0.3, 0.5, 0.25])
    hardness = np.resize(base, num_classes)
    hardness[neutral] = base[0]
    skill = rng.uniform(-0.1, 0.1, size=(n_annotators, 1))
    bias = rng.uniform(0.25, 0.6, size=(n_annotators, 1))
    right = np.clip(hardness[None, :] + skill, 0.15, 0.95)  # (annotators, classes)
    spread = rng.dirichlet(np.ones(num_classes), size=(n_annotators, num_classes))
    out = spread * ((1 - right) * (1 - bias))[..., None]
    out[:, :, neutral] += (1 - right) * bias
    classes = np.arange(num_classes)
    out[:, classes, classes] += right
    return out / out.sum(axis=-1, keepdims=True)


def simulate_answers(labels, confusions, answers_per_item, rng):
    """Answers of simulated annotators.

    Args:
        labels: true classes ``(n_items,)``.
        confusions: ``(n_annotators, K, K)`` row-stochastic matrices.
        answers_per_item: how many distinct annotators (chosen at random) answer each item;
            all of them when it equals ``n_annotators``.
        rng: a NumPy generator.

    Returns:
        ``(n_items, n_annotators)`` int answers, -1 where the annotator did not answer.
    """
    n_items, (n_annotators, k, _) = len(labels), confusions.shape
    rows = confusions[:, labels, :].transpose(1, 0, 2)  # (items, annotators, K)
    cumulative = rows.cumsum(axis=-1)
    draws = rng.random((n_items, n_annotators, 1))
    answers = np.minimum((draws > cumulative).sum(axis=-1), k - 1)
    if answers_per_item < n_annotators:
        ranks = rng.random((n_items, n_annotators)).argsort(axis=1).argsort(axis=1)
        answers = np.where(ranks < answers_per_item, answers, -1)
    return answers.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Data and models
# --------------------------------------------------------------------------------------------


def load_digits8(seed, test_size=0.3):
    """scikit-learn's digits 0-7, pixels scaled to [0, 1], a stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    keep = digits.target < NUM_CLASSES
    x = (digits.data[keep] / 16.0).astype("float32")
    y = digits.target[keep].astype(np.int64)
    return train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)


def build_base_model(input_dim, hidden=32, num_classes=NUM_CLASSES):
    """The base network: one hidden ReLU layer and a softmax output."""
    inputs = keras.Input((input_dim,), name="pixels")
    hidden_out = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(
        hidden_out
    )
    return keras.Model(inputs, outputs, name="base")


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=512), axis=1) == y))


def train_on_targets(data, targets, settings, seed):
    """Trains the base network on (soft or hard) targets; returns its test accuracy."""
    x_train, x_test, _, y_test = data
    keras.utils.set_random_seed(seed)
    model = build_base_model(x_train.shape[1], settings["hidden"])
    targets = np.asarray(targets)
    if targets.ndim == 1:
        targets = np.eye(NUM_CLASSES)[targets]
    model.compile(
        keras.optimizers.Adam(settings["learning_rate"]),
        "categorical_crossentropy",
        steps_per_execution=STEPS_PER_EXECUTION,
        run_eagerly=settings.get("run_eagerly", False),
    )
    model.fit(
        x_train,
        targets.astype("float32"),
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        verbose=0,
    )
    return _accuracy(model, x_test, y_test)


def make_crowd_layer(method, num_annotators):
    """The crowd layer and loss of a method name in ``CROWD_METHODS`` (package defaults)."""
    return crowd_method(method, NUM_CLASSES, num_annotators, name="crowd")


def train_on_crowd(data, answers, method, settings, seed):
    """Trains base network + crowd layer on the raw answers; returns the base's test accuracy."""
    x_train, x_test, _, y_test = data
    keras.utils.set_random_seed(seed)
    base = build_base_model(x_train.shape[1], settings["hidden"])
    layer, loss = make_crowd_layer(method, answers.shape[1])
    model = keras.Model(base.inputs, layer(base.outputs[0]), name="crowd_model")
    model.compile(
        keras.optimizers.Adam(settings["learning_rate"]),
        loss,
        steps_per_execution=STEPS_PER_EXECUTION,
        run_eagerly=settings.get("run_eagerly", False),
    )
    model.fit(
        x_train,
        answers,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        verbose=0,
    )
    return _accuracy(prediction_model(model), x_test, y_test)


# --------------------------------------------------------------------------------------------
# Experiment
# --------------------------------------------------------------------------------------------


def make_crowds(labels, csv_dir, rng, sparse_answers=3):
    """The dense and sparse answer matrices and where their annotators come from."""
    confusions = load_c25_confusions(csv_dir) if csv_dir is not None else None
    if confusions is not None:
        source = f"AffectNetC25 Dawid-Skene estimates ({csv_dir})"
        dense_pool, sparse_pool = confusions[0], np.concatenate(confusions)
    else:
        source = "built-in biased annotators (AffectNetC25 CSVs not found)"
        dense_pool = synthetic_confusions(25, rng)
        sparse_pool = np.concatenate([dense_pool, synthetic_confusions(25, rng)])
    crowds = {
        "dense": simulate_answers(labels, dense_pool, len(dense_pool), rng),
        "sparse": simulate_answers(labels, sparse_pool, sparse_answers, rng),
    }
    return crowds, source


def run_experiment(
    csv_dir=DEFAULT_CSV_DIR,
    seed=0,
    quick=False,
    methods=METHODS,
    repeats=None,
    epochs=None,
    batch_size=64,
    learning_rate=None,
    log=print,
):
    """Runs every method on both crowds.

    Args:
        csv_dir: AffectNetC25 CSV folder (None or missing: the built-in annotators).
        seed: seeds the split, the crowds and the networks.
        quick: 3 epochs on 320 training items, eager, one repeat: a smoke test.
        methods: rows to run, a subset of ``METHODS``.
        repeats: simulated crowds (and network seeds) averaged over (default 3, quick 1).
        epochs: training epochs (default 50, quick 3).
        batch_size: training batch size.
        learning_rate: Adam's learning rate (default 5e-3, quick 1e-2).
        log: a print-like function for progress.

    Returns:
        ``(table, info)``: ``table[method][crowd]`` the mean test accuracy, ``info`` a dict
        with the annotator source, the answer statistics and the settings.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"`methods` must be among {METHODS}. Received: methods={unknown}")
    settings = {
        "epochs": epochs or (3 if quick else 50),
        "batch_size": batch_size,
        "learning_rate": learning_rate or (1e-2 if quick else 5e-3),
        "hidden": 32,
        # quick: a training subset and eager steps (no graph tracing per model)
        "max_train": 320 if quick else None,
        "run_eagerly": bool(quick),
    }
    repeats = repeats or (1 if quick else 3)
    scores = {m: {c: [] for c in CROWDS} for m in methods}
    info = {"settings": settings, "repeats": repeats, "seed": seed}
    for repeat in range(repeats):
        rng = np.random.default_rng([seed, repeat])
        data = load_digits8(seed + repeat)
        if settings["max_train"]:
            data = [
                data[0][: settings["max_train"]],
                data[1],
                data[2][: settings["max_train"]],
                data[3],
            ]
        crowds, info["annotators"] = make_crowds(data[2], csv_dir, rng)
        for crowd, answers in crowds.items():
            observed = answers >= 0
            info.setdefault("answers_per_item", {})[crowd] = float(observed.sum(1).mean())
            info.setdefault("answers_per_annotator", {})[crowd] = float(observed.sum(0).mean())
            info.setdefault("answer_accuracy", {})[crowd] = float(
                np.mean(
                    answers[observed] == np.broadcast_to(data[2][:, None], answers.shape)[observed]
                )
            )
            net_seed = seed * 1000 + repeat
            for method in methods:
                start = time.perf_counter()
                if method == "truth":  # the same for both crowds: trained once per repeat
                    if crowd == CROWDS[0]:
                        truth_accuracy = train_on_targets(data, data[2], settings, net_seed)
                    accuracy = truth_accuracy
                elif method == "majority vote":
                    labels = majority_vote(answers, NUM_CLASSES, tie_break="random", seed=net_seed)
                    accuracy = train_on_targets(data, labels, settings, net_seed)
                elif method == "Dawid-Skene":
                    probas = (
                        DawidSkene(max_iter=100, tol=1e-5, num_classes=NUM_CLASSES)
                        .fit(answers)
                        .probas_
                    )
                    accuracy = train_on_targets(data, probas, settings, net_seed)
                else:
                    accuracy = train_on_crowd(data, answers, method, settings, net_seed)
                scores[method][crowd].append(accuracy)
                log(
                    f"repeat {repeat + 1}/{repeats} {crowd:6s} {method:14s} "
                    f"accuracy {accuracy:.3f} ({time.perf_counter() - start:.1f}s)"
                )
    table = {m: {c: float(np.mean(v)) for c, v in row.items()} for m, row in scores.items()}
    info["scores"] = scores
    return table, info


def format_table(table, info=None):
    """The results as a Markdown table: rows methods, columns crowds."""
    lines = ["| method | dense | sparse |", "|---|---|---|"]
    for method, row in table.items():
        name = f"{method} (default)" if method == DEFAULT_CROWD_METHOD else method
        lines.append(f"| {name} | {row['dense']:.3f} | {row['sparse']:.3f} |")
    if info is not None and "answers_per_item" in info:
        per_item, per_annotator = info["answers_per_item"], info["answers_per_annotator"]
        accuracy = info["answer_accuracy"]
        lines.append("")
        lines.append(
            "answers per item: dense {:.1f}, sparse {:.1f}; answers per annotator: dense {:.0f},"
            " sparse {:.0f}; answers right: dense {:.3f}, sparse {:.3f}".format(
                per_item["dense"],
                per_item["sparse"],
                per_annotator["dense"],
                per_annotator["sparse"],
                accuracy["dense"],
                accuracy["sparse"],
            )
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    """Parses the command line; ``--config FILE.yaml`` values are overridden by flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="YAML file of flag values (default: none)")
    data = parser.add_argument_group("Dataset")
    data.add_argument(
        "--csv-dir",
        type=Path,
        default=DEFAULT_CSV_DIR,
        help="AffectNetC25 CSV folder; built-in annotators when absent "
        "(default: ../shared/data/affectnetc25 beside the repository)",
    )
    crowd = parser.add_argument_group("Crowd")
    crowd.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help="rows to run (default: all)",
    )
    crowd.add_argument(
        "--repeats", type=int, default=None, help="simulated crowds averaged (default: 3)"
    )
    optimization = parser.add_argument_group("Optimization")
    optimization.add_argument("--epochs", type=int, default=None, help="(default: 50)")
    optimization.add_argument("--seed", type=int, default=0, help="(default: 0)")
    optimization.add_argument(
        "--quick",
        action="store_true",
        help="3 epochs on 320 items, 1 repeat: a smoke test (default: off)",
    )
    output = parser.add_argument_group("Output")
    output.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="write table.md, results.json and args.json there (default: print only)",
    )
    args = parser.parse_args(argv)
    if args.config is not None:
        import yaml

        values = yaml.safe_load(args.config.read_text()) or {}
        defaults = {k.replace("-", "_"): v for k, v in values.items()}
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    return args


def main(argv=None):
    """Runs the experiment from the command line and prints the table."""
    args = parse_args(argv)
    keras.config.disable_interactive_logging()
    start = time.perf_counter()
    table, info = run_experiment(
        csv_dir=args.csv_dir,
        seed=args.seed,
        quick=args.quick,
        methods=tuple(args.methods),
        repeats=args.repeats,
        epochs=args.epochs,
    )
    seconds = time.perf_counter() - start
    text = format_table(table, info)
    print(f"\nAnnotators: {info['annotators']}")
    print(f"Test accuracy of the base network, mean of {info['repeats']} simulated crowd(s):\n")
    print(text)
    print(f"\n{seconds:.0f} s")
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "table.md").write_text(text + "\n")
        resolved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        (args.output_dir / "args.json").write_text(json.dumps(resolved, indent=2) + "\n")
        results = {"table": table, "seconds": seconds, **info}
        (args.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return table


if __name__ == "__main__":
    main()
