"""A plain Keras baseline on a crowd_images folder: the package's ``compact_cnn_small`` network
trained by ``model.fit`` on the SAME train / selection / test photos as a package run.

The roles come from the package's own cut (:func:`affectnet_tf.training.config.data_roles` and
:func:`affectnet_tf.data.partition.subset_mask`, seeded and stratified by each photo's majority
vote): with the ``crowd_images`` builder installed, from the prepared dataset's label table,
exactly as the training command computes them; without it, from ``answers.csv`` (the same
table if the builder names each photo by its path under ``images/`` and keeps every photo).
With ``--run-dir`` the settings of the cut are read from a finished run's ``config.yaml`` and
the three sets are checked against the file-name hashes it recorded (``data_roles``).

Photos are read with Pillow (RGB, shrunk to ``--image-size`` with a box filter), trained on the
majority vote of their answers (the package's tie rule), with Adam (the training command's
cosine decay of the learning rate over all steps, or ``--schedule constant``) and sparse
categorical cross-entropy; the epoch with the lowest selection loss is kept (the package's default
``--monitor val_loss``). Printed and written as JSON (``--output``): accuracy, macro F1,
per-class F1 and the confusion matrix on the test photos (the package's metrics and
:func:`facial_expressions.scores`), the role sizes and the wall time. ``--roles-out`` writes
the photos of each role for ``facial_expressions_fer.py``.

Usage::

    python examples/facial_expressions_baseline.py /tmp/fe_crowd --output baseline.json \\
        --roles-out /tmp/fe_crowd_roles.json
    python examples/facial_expressions_baseline.py /tmp/fe_crowd --run-dir runs/fe_mv
"""

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):  # this folder (the converter) and a checkout of the package
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import facial_expressions  # noqa: E402

ROLES = ("train", "selection", "test")


def _builder_available(name="crowd_images"):
    """Whether the package registers a TFDS builder ``name``."""
    import tensorflow_datasets as tfds

    import tfds_affectnet  # noqa: F401  (registers the package's builders)

    return name in tfds.list_builders()


def run_settings(folder, run_dir=None, **settings):
    """The :class:`affectnet_tf.training.config.RunConfig` of the cut: a run's ``config.yaml``
    (``run_dir``), else ``crowd_images`` on ``folder`` with ``settings`` (None values left at
    the package's defaults), and the recorded role hashes (None without ``run_dir``)."""
    from affectnet_tf.training.config import RunConfig, load_config
    from affectnet_tf.training.run_folder import ROLES_KEY

    if run_dir is not None:
        saved = load_config(Path(run_dir) / "config.yaml")
        recorded = saved.pop(ROLES_KEY, None)
        saved["manual_dir"] = saved.get("manual_dir") or str(folder)
        return RunConfig.from_dict(saved), recorded
    given = {key: value for key, value in settings.items() if value is not None}
    return RunConfig.from_dict(
        {"dataset": "crowd_images", "manual_dir": str(folder), **given}
    ), None


def table_from_answers(folder):
    """The label table of ``answers.csv``: ``file_name`` (path under images/) and
    ``crowd_expression`` (``(N, A)`` class indices, -1 for no answer)."""
    names, answers = facial_expressions.answer_matrix(facial_expressions.read_answers(folder))
    return {"file_name": names, "crowd_expression": answers}


def data_roles(folder, config):
    """``({role: file names}, how)``: the photos of each role under ``config``'s cut, and
    where the label table came from."""
    from affectnet_tf.data.partition import subset_mask
    from affectnet_tf.data.tables import open_split
    from affectnet_tf.training.config import data_roles as package_roles

    if _builder_available(config.dataset.split("/")[0]):
        roles = package_roles(config)
        result = {}
        for name in ROLES:
            role = getattr(roles, name)
            table = open_split(
                roles.dataset_name,
                role.split,
                data_dir=config.data_dir,
                manual_dir=config.manual_dir,
                config=roles.builder_config,
            ).table
            mask = subset_mask(table, role.subset, roles.partition_of(role, config.partition))
            if "crowd_expression" in table:  # a photo without any answer has no target
                mask &= (np.asarray(table["crowd_expression"]) >= 0).any(axis=1)
            result[name] = [_text(n) for n in table["file_name"][mask]]
        return result, f"the {roles.dataset_name} builder's label table"
    table = table_from_answers(folder)
    cut = config.partition
    result = {name: list(table["file_name"][subset_mask(table, name, cut)]) for name in ROLES}
    return result, "answers.csv (no crowd_images builder installed): train:train/selection/test"


def _text(name):
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def check_recorded(roles, recorded):
    """Raises ``ValueError`` when a role's file-name hash differs from a run's record."""
    from affectnet_tf.data.tables import names_digest

    for name in ROLES:
        expected = (recorded or {}).get(name, {}).get("file_names_sha256")
        if expected and names_digest(roles[name]) != expected:
            raise ValueError(
                f"The {name} photos differ from the run's record ({len(roles[name])} photos, "
                f"{recorded[name].get('images')} recorded): another cut or another dataset."
            )


def load_images(folder, names, size):
    """``(N, size, size, 3)`` uint8 RGB arrays of ``folder/images/<name>``."""
    out = np.empty((len(names), size, size, 3), np.uint8)
    for i, name in enumerate(names):
        with Image.open(Path(folder) / "images" / name) as image:
            image = image.convert("RGB").resize((size, size), Image.Resampling.BOX)
            out[i] = np.asarray(image)
    return out


def majority_targets(folder, names):
    """The package's majority vote of each photo's answers (ties keyed by its file name)."""
    from tfds_affectnet import labels

    by_image = facial_expressions.read_answers(folder)
    all_names, answers = facial_expressions.answer_matrix(by_image)
    row = {name: i for i, name in enumerate(all_names)}
    picked = answers[[row[name] for name in names]]
    return labels.majority_labels(picked, list(names), 8)[0]


def test_targets(folder, names):
    """The labels the test photos are scored against, as the package does: ``truth.csv``
    where the folder has one, else the majority vote of the answers."""
    truth_path = Path(folder) / "truth.csv"
    if not truth_path.is_file():
        return majority_targets(folder, names), "the crowd's majority vote"
    with open(truth_path, newline="", encoding="utf-8") as stream:
        truth = {row["image"]: row["expression"] for row in csv.DictReader(stream)}
    names_lower = [name.lower() for name in facial_expressions.CLASS_NAMES]
    labels = [names_lower.index(truth[n].lower()) if n in truth else -1 for n in names]
    return np.array(labels, np.int64), "truth.csv"


def train_and_score(folder, roles, args):
    """Trains ``compact_cnn_small`` on the train photos and scores it on the test photos."""
    import keras

    from affectnet_tf.modeling import metrics
    from affectnet_tf.modeling.models import build_model

    keras.utils.set_random_seed(args.seed)
    data = {name: load_images(folder, roles[name], args.image_size) for name in ROLES}
    targets = {name: majority_targets(folder, roles[name]) for name in ("train", "selection")}
    targets["test"], reference = test_targets(folder, roles["test"])
    model = build_model(
        "compact_cnn_small", task="exp", num_classes=8, weights=None, image_size=args.image_size
    ).prediction_model
    learning_rate = args.learning_rate
    if args.schedule == "cosine":  # the package's default: cosine decay over all the steps
        steps = args.epochs * -(-len(roles["train"]) // args.batch_size)
        learning_rate = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    best = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=args.epochs, restore_best_weights=True
    )
    start = time.perf_counter()
    history = model.fit(
        data["train"],
        targets["train"],
        validation_data=(data["selection"], targets["selection"]),
        epochs=args.epochs,
        batch_size=args.batch_size,
        callbacks=[best],
        verbose=2 if args.verbose else 0,
    )
    train_seconds = time.perf_counter() - start
    probabilities = model.predict(data["test"], batch_size=256, verbose=0)
    truth, scored = targets["test"], targets["test"] >= 0
    truth, probabilities = truth[scored], probabilities[scored]
    result = {
        "scored_against": reference,
        "package_metrics": metrics.expression_metrics(truth, probabilities, 8),
        **facial_expressions.scores(truth, probabilities.argmax(axis=1)),
        "best_epoch": int(np.argmin(history.history["val_loss"])) + 1,
        "train_seconds": round(train_seconds, 1),
    }
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a crowd_images folder (facial_expressions.py's output)")
    parser.add_argument("--run-dir", help="a package run on that folder: its cut and checks")
    parser.add_argument("--data-dir", help="TFDS data folder of the crowd_images builder")
    parser.add_argument("--eval-split", help="the test role as SPLIT:SUBSET (package default)")
    parser.add_argument("--selection-fraction", type=float, help="(default: the package's 0.1)")
    parser.add_argument("--test-fraction", type=float, help="(default: the package's 0.2)")
    parser.add_argument("--split-seed", type=int, help="seed of the cut (default: 0)")
    parser.add_argument("--epochs", type=int, default=20, help="(default: 20)")
    parser.add_argument("--batch-size", type=int, default=64, help="(default: 64)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="(default: 0.003)")
    parser.add_argument("--image-size", type=int, default=64, help="(default: 64)")
    parser.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="learning-rate schedule, as the training command's (default: cosine)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights and order (default: 0)")
    parser.add_argument("--output", help="JSON file of the results")
    parser.add_argument("--roles-out", help="JSON file of each role's photos")
    parser.add_argument("--verbose", action="store_true", help="print each epoch")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config, recorded = run_settings(
        args.folder,
        args.run_dir,
        data_dir=args.data_dir,
        eval_split=args.eval_split,
        selection_fraction=args.selection_fraction,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
    )
    roles, source = data_roles(args.folder, config)
    check_recorded(roles, recorded)
    if args.roles_out:
        labels, reference = test_targets(args.folder, roles["test"])
        record = {"source": source, **roles, "test_labels": labels.tolist()}
        record["test_labels_from"] = reference
        Path(args.roles_out).write_text(json.dumps(record) + "\n")
    result = {"roles_from": source, "role_sizes": {name: len(roles[name]) for name in ROLES}}
    result.update(train_and_score(args.folder, roles, args))
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    facial_expressions.print_result(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
