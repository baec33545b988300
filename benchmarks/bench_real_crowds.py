"""Benchmark: crowd methods against aggregating the answers first, on a real crowd.

Usage::

    python benchmarks/bench_real_crowds.py [--data-dir DIR] [--task {classification,regression}]
        [--features RULE] [--seeds N] [--epochs E] [--methods a,b,...] [--json FILE]

Data, in a plain layout (default ``--data-dir``: ``../shared/data/labelme``, the LabelMe crowd of
Rodrigues & Pereira, AAAI 2018):

- ``answers.txt``: items x annotators, whitespace-separated; classification: integers, ``-1`` =
  no answer; regression (``--task regression``): floats, ``nan`` = no answer;
- ``labels_train.txt``, ``labels_test.txt``: the truth of each item, one per line (a class, or a
  float in regression);
- ``features_train.npy``, ``features_test.npy``: float ``(items, features)``;
- optional ``labels_valid.txt`` + ``features_valid.npy``: reported, never used for training or
  model selection.

Every method trains the same base network on the training features: ``Dense(128, relu)``,
dropout 0.5, ``Dense(K, softmax)`` (regression: a linear ``Dense(1)``), Adam (learning rate
1e-3), ``--epochs`` epochs (default 50) with batch 64, and is scored on the test items after the
last epoch: no true label of a training or validation item is used for training or for model
selection (there is none).

Features (``--features``, fitted on the training items only, then applied to every split; see
:func:`fit_feature_rule`): ``standardize`` (default: each column minus its training mean,
divided by its training s.d.; a column constant on the training items is centred and left
unscaled), ``standardize+l2`` (then each item divided by its Euclidean norm), ``l2`` (each item
divided by its norm, nothing fitted: the rule before standardisation became the default) or
``none``. Standardisation matters where the columns have very different scales (descriptors of
audio, counts); on LabelMe's VGG16 features the two rules are within a point or so.

Classification methods:

- ``truth``: the true training labels (the ceiling); ``mv``: majority vote, ties broken by a
  fixed rule: ``tie_break="keyed"`` with each item's row number in ``answers.txt`` as its key
  (an item's label depends on its own answers and row only, never on a seed; the package's
  training command keys the same rule by the image's file name); ``ds``: Dawid-Skene posteriors
  as soft targets (what ``--target ds`` of the training command trains on);
- the reference crowd layers ``MW``, ``VW``, ``VB``, ``VW+B``, ``SW``
  (:class:`crowd_layers.CrowdsClassification`, per-answer cross-entropy);
- ``confusion``: :class:`crowd_layers.CrowdsConfusion` with its defaults (per-answer, trace
  regulariser);
- ``geocrowdnet``: GeoCrowdNet (W) of Ibrahim et al. (ICLR 2023): per-answer cross-entropy
  with per-annotator confusion matrices and the volume regulariser (weight 0.01);
- ``pooled``: :class:`crowd_layers.CrowdsPooled` with its defaults (the package's default);
  ``pooled_ds`` and ``pooled_mv``: the same started from Dawid-Skene's and from the majority
  vote's confusion matrices;
- ``conal``: :class:`crowd_layers.CrowdsCoNAL` (Chu et al., AAAI 2021) at its authors' settings,
  its mixing weight computed from the item's features;
- ``annot_mix``: Annot-Mix (Herde et al., ECAI 2024): :func:`crowd_layers.annot_mix_model` fitted
  on :class:`crowd_layers.AnnotMixBatches` of mixed (item, annotator, answer) triples.

Prints a table of test accuracy (mean and s.d. over seeds 0..N-1); ``--json`` writes
``{"methods": {name: mean}, "std": {name: s.d.}, "default": "pooled", "seeds": N, ...}``.

Regression methods (``--task regression``; see ``benchmarks/real_crowds_regression.py``):
``truth``, the target methods ``mean``, ``median``, ``latent_target`` and the crowd heads
``latent`` (the default), ``gaussian``, ``S+B``; Pearson r and CCC against the test truth, and
the aggregators scored against the training truth. ``--json`` then writes
``{"methods": {name: {"pearson", "ccc"}}, "std": ..., "per_seed": ..., "valid": ...,
"aggregators_train": {name: {"pearson", "ccc", "items"}}, "default": "latent", ...}``; both
tasks add ``"task"`` and ``"features"``.
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

import keras  # noqa: E402

import crowd_layers  # noqa: E402
from benchmarks import real_crowds_regression as regression  # noqa: E402
from crowd_layers.checks import check_answers  # noqa: E402

DEFAULT_METHOD = crowd_layers.DEFAULT_CROWD_METHOD
REFERENCE_LAYERS = crowd_layers.layers.CLASSIFICATION_CONN_TYPES
METHODS = (
    "truth",
    "mv",
    "ds",
    *REFERENCE_LAYERS,
    "confusion",
    "geocrowdnet",
    "pooled",
    "pooled_ds",
    "pooled_mv",
    "conal",
    "annot_mix",
)
TASK_METHODS = {"classification": METHODS, "regression": regression.METHODS}
FEATURE_RULES = ("standardize", "standardize+l2", "l2", "none")
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "labelme"
REQUIRED_FILES = (
    "answers.txt",
    "labels_train.txt",
    "labels_test.txt",
    "features_train.npy",
    "features_test.npy",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data = parser.add_argument_group("Dataset")
    data.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder in the plain layout (default: ../shared/data/labelme)",
    )
    data.add_argument(
        "--task",
        choices=tuple(TASK_METHODS),
        default="classification",
        help="integer classes or continuous answers (default: classification)",
    )
    data.add_argument(
        "--features",
        choices=FEATURE_RULES,
        default="standardize",
        help="feature rule, fitted on the training items only (default: standardize)",
    )
    crowd = parser.add_argument_group("Crowd")
    crowd.add_argument(
        "--methods",
        help="comma-separated subset of the task's methods (default: all); classification: "
        f"{', '.join(METHODS)}; regression: {', '.join(regression.METHODS)}",
    )
    optimization = parser.add_argument_group("Optimization")
    optimization.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: 5)")
    optimization.add_argument(
        "--epochs", type=int, default=50, help="training epochs (default: 50)"
    )
    optimization.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    output = parser.add_argument_group("Output")
    output.add_argument("--json", type=Path, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    known = TASK_METHODS[args.task]
    methods = args.methods if args.methods is not None else ",".join(known)
    args.methods = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in known]
    if unknown or not args.methods:
        parser.error(
            f"unknown method(s) {unknown} for --task {args.task}; choose from {', '.join(known)}"
        )
    if args.seeds < 1 or args.epochs < 1:
        parser.error(f"--seeds and --epochs must be >= 1 (got {args.seeds}, {args.epochs})")
    return args


def _read_labels(path):
    try:
        labels = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as error:
        raise ValueError(
            f"{path}: expected one integer class per line ({error}; for continuous labels use "
            "--task regression)"
        ) from error
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path}: true labels must be >= 0; found {labels.min()}")
    return labels


def _read_answers(path):
    try:
        answers = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as error:
        raise ValueError(
            f"{path}: expected whitespace-separated integers, -1 = no answer ({error}; for "
            "continuous answers use --task regression)"
        ) from error
    try:
        return check_answers(answers)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _read_features(path, n_items, labels_name):
    features = np.load(path)
    if features.ndim != 2 or features.shape[0] != n_items:
        raise ValueError(
            f"{path}: expected a float array (items, features) with {n_items} items (the lines "
            f"of {labels_name}); found shape {features.shape}"
        )
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{path}: {int((~np.isfinite(features)).sum())} non-finite values")
    return features.astype(np.float32)


def l2_normalise(features):
    """Each item's feature vector divided by its Euclidean norm (zero vectors stay zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


def fit_feature_rule(train, rule="standardize"):
    """The feature transform of ``rule``, fitted on the training features only.

    - ``"standardize"``: each column minus its mean over ``train``, divided by its standard
      deviation over ``train``; a column constant on the training items (s.d. 0) is centred
      and left unscaled (divided by 1);
    - ``"standardize+l2"``: standardised as above, then each item divided by its Euclidean
      norm;
    - ``"l2"``: each item divided by its Euclidean norm (nothing fitted; zero vectors stay
      zero);
    - ``"none"``: the features unchanged.

    Args:
        train: float ``(items, features)``, the training features.
        rule: one of ``"standardize"``, ``"standardize+l2"``, ``"l2"``, ``"none"``.

    Returns:
        A function of a float ``(items, features)`` array (any split) that returns it
        transformed with the training statistics, as float32; its ``mean`` and ``scale``
        attributes are the fitted column statistics (0 and 1 without standardisation).

    Example:
        >>> transform = fit_feature_rule(np.array([[0.0, 1e-3], [2.0, 3e-3]]))
        >>> transform(np.array([[1.0, 5e-3]]))
        array([[0., 3.]], dtype=float32)
    """
    if rule not in FEATURE_RULES:
        raise ValueError(f"`rule` must be one of {FEATURE_RULES}. Received: rule={rule!r}")
    train = np.asarray(train, np.float64)
    if train.ndim != 2 or len(train) == 0:
        raise ValueError(
            f"`train` must be a non-empty (items, features) array. Received: shape {train.shape}"
        )
    standardize = rule.startswith("standardize")
    mean = train.mean(axis=0) if standardize else np.zeros(train.shape[1])
    constant = train.max(axis=0) == train.min(axis=0)
    scale = np.where(constant, 1.0, train.std(axis=0)) if standardize else np.ones(len(mean))

    def transform(features):
        features = (np.asarray(features, np.float64) - mean) / scale
        if rule.endswith("l2"):
            features = l2_normalise(features)
        return features.astype(np.float32)

    transform.mean, transform.scale = mean, scale
    return transform


def apply_feature_rule(data, rule):
    """Replaces every split's features by ``rule``'s transform fitted on ``x_train``."""
    transform = fit_feature_rule(data["x_train"], rule)
    for key in [k for k in data if k.startswith("x_")]:
        data[key] = transform(data[key])
    return data


def load_plain_layout(data_dir, task="classification"):
    """Reads a crowd dataset in the plain layout; returns a dict of arrays (see the module doc).

    The features are returned as stored: :func:`apply_feature_rule` transforms them."""
    data_dir = Path(data_dir)
    missing = [name for name in REQUIRED_FILES if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{data_dir}: missing {', '.join(missing)} (the plain layout needs "
            f"{', '.join(REQUIRED_FILES)}; labels_valid.txt + features_valid.npy are optional)"
        )
    if task == "regression":
        read_answers, read_labels = regression.read_float_answers, regression.read_float_labels
    else:
        read_answers, read_labels = _read_answers, _read_labels
    answers = read_answers(data_dir / "answers.txt")
    data = {"answers": answers}
    for split in ("train", "test", "valid"):
        labels_path = data_dir / f"labels_{split}.txt"
        features_path = data_dir / f"features_{split}.npy"
        if split == "valid" and not (labels_path.is_file() and features_path.is_file()):
            continue
        labels = read_labels(labels_path)
        if split == "train" and len(labels) != answers.shape[0]:
            raise ValueError(
                f"{labels_path}: {len(labels)} lines, but answers.txt has {answers.shape[0]} "
                "items (rows); expected one training label per row"
            )
        data[f"y_{split}"] = labels
        data[f"x_{split}"] = _read_features(features_path, len(labels), labels_path.name)
        if data[f"x_{split}"].shape[1] != data["x_train"].shape[1]:
            raise ValueError(
                f"{features_path}: {data[f'x_{split}'].shape[1]} features per item, but "
                f"features_train.npy has {data['x_train'].shape[1]}"
            )
    if task != "regression":
        labels = np.concatenate([data[k] for k in data if k.startswith("y_")])
        data["num_classes"] = int(max(labels.max(), answers.max()) + 1)
    return data


def base_network(num_features, num_outputs, seed, activation="softmax"):
    """``Dense(128, relu)``, dropout 0.5, ``Dense(num_outputs, activation)``, seeded."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((num_features,))
    hidden = keras.layers.Dense(128, activation="relu")(inputs)
    hidden = keras.layers.Dropout(0.5)(hidden)
    outputs = keras.layers.Dense(num_outputs, activation=activation)(hidden)
    return keras.Model(inputs, outputs)


def crowd_head(method, num_classes, answers):
    """The crowd layer and loss of a method, every setting at the package's defaults."""
    if method in crowd_layers.CROWD_METHODS:
        return crowd_layers.crowd_method(method, num_classes, answers.shape[1])
    if method == "pooled_ds":
        init = crowd_layers.DawidSkene(num_classes=num_classes).fit(answers).confusions_
    else:  # "pooled_mv"
        init = crowd_layers.majority_vote_confusions(answers, num_classes=num_classes)
    return crowd_layers.crowd_method("pooled", num_classes, answers.shape[1], init)


def run_method(method, data, seed, epochs, batch_size, targets):
    """Trains one method with one seed; returns the test (and validation) accuracy."""
    k = data["num_classes"]
    answers = data["answers"]
    model = base_network(data["x_train"].shape[1], k, seed)
    fit = {"epochs": epochs, "batch_size": batch_size, "verbose": 0}
    if method in ("truth", "mv", "ds"):
        model.compile(keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
        model.fit(data["x_train"], targets[method], **fit)
    elif method == "conal":
        layer = crowd_layers.CrowdsCoNAL(k, answers.shape[1])
        training = keras.Model(model.inputs, layer([model.outputs[0], model.inputs[0]]))
        training.compile(keras.optimizers.Adam(1e-3), loss=crowd_layers.MaskedMultiCrossEntropy())
        training.fit(data["x_train"], answers, **fit)
    elif method == "annot_mix":
        fit_annot_mix(model, data, seed, epochs, batch_size)
    else:
        layer, loss = crowd_head(method, k, answers)
        training = keras.Model(model.inputs, layer(model.outputs[0]))
        training.compile(keras.optimizers.Adam(1e-3), loss=loss)
        training.fit(data["x_train"], answers, **fit)
    scores = {}
    for split in ("test", "valid"):
        if f"x_{split}" in data:
            predicted = model.predict(data[f"x_{split}"], batch_size=1024, verbose=0).argmax(1)
            scores[split] = float(np.mean(predicted == data[f"y_{split}"]))
    return scores


def fit_annot_mix(model, data, seed, epochs, batch_size):
    """Annot-Mix (Herde et al., ECAI 2024) at its authors' settings on ``model``.

    A batch holds the answers of ``batch_size`` items on average (``batch_size`` times the mean
    answers per item, in mixed triples), so an epoch takes as many steps as the other methods'.
    """
    answers = data["answers"]
    per_item = float(np.mean(np.sum(answers >= 0, axis=1)))
    triples = max(1, round(batch_size * per_item))
    batches = crowd_layers.AnnotMixBatches(
        data["x_train"], answers, data["num_classes"], batch_size=triples, epochs=epochs, seed=seed
    )
    training = crowd_layers.annot_mix_model(model, answers.shape[1], seed=seed)
    training.compile(keras.optimizers.Adam(1e-3), loss=crowd_layers.AnnotMixCrossEntropy())
    training.fit(
        batches, epochs=epochs, steps_per_epoch=batches.steps_per_epoch, shuffle=False, verbose=0
    )


def majority_targets(answers, num_classes):
    """Majority vote with the fixed tie rule of the module doc (keyed by the row number)."""
    keys = np.arange(answers.shape[0], dtype=np.int64)
    return crowd_layers.majority_vote(
        answers, num_classes=num_classes, tie_break="keyed", keys=keys
    )


def baseline_targets(data):
    """Soft targets of the baselines: truth and majority vote one-hot, Dawid-Skene posteriors."""
    k = data["num_classes"]
    eye = np.eye(k, dtype=np.float32)
    mv = majority_targets(data["answers"], k)
    ds = crowd_layers.DawidSkene(num_classes=k).fit(data["answers"])
    return {
        "truth": eye[data["y_train"]],
        # an item without answers has no majority (-1): uniform target
        "mv": np.where((mv >= 0)[:, None], eye[np.maximum(mv, 0)], 1.0 / k).astype(np.float32),
        "ds": ds.probas_.astype(np.float32),
    }


def describe(data):
    answers = data["answers"]
    observed = answers >= 0
    per_item = observed.sum(axis=1)
    per_annotator = observed.sum(axis=0)
    return (
        f"{answers.shape[0]} training items, {answers.shape[1]} annotators, "
        f"{data['num_classes']} classes, {int(observed.sum())} answers "
        f"({per_item.mean():.2f} per item, {per_item.min()}-{per_item.max()}; "
        f"{per_annotator.mean():.1f} per annotator), {len(data['y_test'])} test items, "
        f"{data['x_train'].shape[1]} features"
    )


def _sd(values):
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def run_classification(args, data):
    """Every method over the seeds, a table row each; returns the JSON summary."""
    targets = baseline_targets(data)
    results = {}
    for method in args.methods:
        runs = [
            run_method(method, data, seed, args.epochs, args.batch_size, targets)
            for seed in range(args.seeds)
        ]
        results[method] = {
            split: [run[split] for run in runs] for split in runs[0]
        }  # split -> per-seed accuracies
        test = np.array(results[method]["test"])
        marker = "  (default)" if method == DEFAULT_METHOD else ""
        print(
            f"{method:<12} test {test.mean():.4f} ± {_sd(test):.4f}"
            f"   [{' '.join(f'{a:.3f}' for a in test)}]{marker}",
            flush=True,
        )
    return {
        "methods": {m: float(np.mean(r["test"])) for m, r in results.items()},
        "std": {m: _sd(r["test"]) for m, r in results.items()},
        "per_seed": {m: r["test"] for m, r in results.items()},
        "valid": {m: float(np.mean(r["valid"])) for m, r in results.items() if "valid" in r},
        "default": DEFAULT_METHOD,
    }


def main(argv=None):
    args = parse_args(argv)
    try:
        data = load_plain_layout(args.data_dir, task=args.task)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    apply_feature_rule(data, args.features)
    regressing = args.task == "regression"
    print(
        f"data: {args.data_dir.resolve()}: "
        f"{regression.describe(data) if regressing else describe(data)}"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, Keras {keras.__version__}; seeds 0..{args.seeds - 1}, "
        f"{args.epochs} epochs, batch {args.batch_size}, features {args.features}"
    )
    shown = sys.argv[1:] if argv is None else argv
    print(f"command: python benchmarks/bench_real_crowds.py {' '.join(map(str, shown))}")
    start = time.perf_counter()
    if regressing:
        summary = regression.run_regression(args, data, base_network)
    else:
        summary = run_classification(args, data)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        summary.update(
            seeds=args.seeds,
            epochs=args.epochs,
            data_dir=str(args.data_dir),
            task=args.task,
            features=args.features,
        )
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
