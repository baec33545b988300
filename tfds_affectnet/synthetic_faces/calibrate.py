"""Calibration of the simulated annotators on the real AffectNetC25 crowd.

Writes the small file of derived numbers that ``synthetic_faces`` ships (``calibration.json``)
from the six AffectNetC25 CSVs:

```bash
python -m tfds_affectnet.synthetic_faces.calibrate --csv-dir ../shared/data/affectnetc25
python -m tfds_affectnet.synthetic_faces.calibrate --csv-dir DIR --output FILE
```

The two C25 sets were labelled by two different groups of 25 people, so the file holds
50 annotator profiles: ``set1/participant0`` .. ``set2/participant24``.

Expression (per set, in AffectNet's canonical class order, C25 codes remapped with
:func:`tfds_affectnet.labels.c25_to_affectnet`): the package's Dawid-Skene is run to
convergence of the log-likelihood; each annotator's confusion row ``c`` is then its expected
answer counts over the items (``n^w_cl = sum_{i: y_iw = l} q_ic``, the Dawid-Skene M-step) shrunk
towards the set's pooled row with a weight of ``SHRINKAGE`` items, so that the rows of classes
an annotator rarely saw (contempt, fear, disgust in the random set 2) are not made of two or
three answers. Rows sum to 1.

Valence and arousal (each annotator against the consensus of the others): ``consensus_i`` is
the mean answer of the other 24 annotators on image ``i``; a least-squares line
``answer = scale * consensus + bias`` gives the annotator's scale and bias, and the residual
standard deviation, less the variance of the 9-level quantisation (``0.25**2 / 12``), its
noise. Answers are on the grid -1, -0.75, ..., 1 (``quantisation_levels``); missing answers
(NaN) are left out and counted (``missing_answers``).

Numbers are rounded to 3 decimals (expression rows re-normalised after rounding), so that the
file is a few tens of kilobytes and reproduces exactly from the CSVs.
"""

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

from crowd_layers.aggregation import DawidSkene
from tfds_affectnet import labels

__all__ = [
    "CALIBRATION_FILE",
    "SHRINKAGE",
    "calibrate",
    "expression_profiles",
    "va_profiles",
    "read_answers",
    "write_calibration",
    "main",
]

CALIBRATION_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibration.json")
SHRINKAGE = 5.0  # prior weight, in items, of the set's pooled confusion row
SETS = ("set1", "set2")
NUM_PARTICIPANTS = 25
VA_GRID = np.linspace(-1.0, 1.0, 9)
DECIMALS = 3


def read_answers(csv_dir, kind, set_name):
    """The ``(800, 25)`` answer matrix of one C25 CSV.

    Expression codes are mapped to the canonical order (-1 = no answer); valence / arousal
    stay floats (NaN = no answer). Values off the 0..7 codes or the 9-level grid raise a
    ``ValueError`` naming the file.
    """
    path = os.path.join(csv_dir, f"{kind}_{set_name}_C25.csv")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"AffectNetC25 CSV not found: {path}. --csv-dir must hold the six files "
            "expression|valence|arousal_set1|set2_C25.csv."
        )
    frame = pd.read_csv(path)
    columns = [f"participant{i}" for i in range(NUM_PARTICIPANTS)]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}. Received: {list(frame.columns)}")
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    if kind == "expression":
        filled = np.where(np.isfinite(values), values, -1.0)
        bad = (filled != -1) & ~np.isin(filled, np.arange(8))
        if bad.any():
            raise ValueError(
                f"{path}: expression codes must be 0..7. Received: {np.unique(filled[bad])[:5]}"
            )
        return labels.c25_to_affectnet(filled.astype(np.int64))
    finite = np.isfinite(values)
    on_grid = (np.abs(values[..., None] - VA_GRID) < 1e-6).any(-1)
    if (finite & ~on_grid).any():
        raise ValueError(
            f"{path}: {kind} answers must be on the grid -1, -0.75, ..., 1. "
            f"Received: {np.unique(values[finite & ~on_grid])[:5]}"
        )
    return values


def expression_profiles(answers, num_classes=8, shrinkage=SHRINKAGE):
    """Per-annotator confusion matrices ``(R, K, K)`` of one set (rows: true class).

    Dawid-Skene (run until the log-likelihood per answer improves by less than 1e-9) gives the
    posteriors ``q``; the expected counts ``n^w_cl`` are shrunk towards the set's pooled counts.
    """
    model = DawidSkene(
        max_iter=500, tol=1e-9, num_classes=num_classes, convergence="log_likelihood"
    ).fit(answers)
    q = model.probas_
    counts = np.zeros((answers.shape[1], num_classes, num_classes))
    for w in range(answers.shape[1]):
        answered = answers[:, w] >= 0
        for label in range(num_classes):
            counts[w, :, label] = q[answered & (answers[:, w] == label)].sum(axis=0)
    pooled = counts.sum(axis=0)
    pooled = pooled / np.maximum(pooled.sum(axis=1, keepdims=True), 1e-12)
    shrunk = counts + shrinkage * pooled[None]
    return shrunk / shrunk.sum(axis=2, keepdims=True), model


def va_profiles(answers):
    """Per-annotator ``scale``, ``bias`` and ``noise`` ``(R,)`` of one set and dimension."""
    observed = np.isfinite(answers)
    totals = np.where(observed, answers, 0.0).sum(axis=1, keepdims=True)
    counts = observed.sum(axis=1, keepdims=True)
    scale, bias, noise = [], [], []
    for w in range(answers.shape[1]):
        others = counts[:, 0] - observed[:, w]
        rows = observed[:, w] & (others > 0)
        consensus = (totals[rows, 0] - answers[rows, w]) / others[rows]
        y = answers[rows, w]
        slope, intercept = np.polyfit(consensus, y, 1)
        residual = y - (slope * consensus + intercept)
        variance = max(residual.var() - 0.25**2 / 12.0, 0.0)
        scale.append(slope)
        bias.append(intercept)
        noise.append(np.sqrt(variance))
    return np.array(scale), np.array(bias), np.array(noise)


def _rounded_rows(matrix):
    """Rounds stochastic rows to ``DECIMALS`` and puts the rounding error on the largest entry."""
    rounded = np.round(matrix, DECIMALS)
    largest = rounded.argmax(axis=-1)
    error = 1.0 - rounded.sum(axis=-1)
    np.put_along_axis(
        rounded,
        largest[..., None],
        np.take_along_axis(rounded, largest[..., None], -1) + error[..., None],
        -1,
    )
    return np.round(rounded, DECIMALS)


def calibrate(csv_dir):
    """The calibration as a JSON-ready dict (see the module docstring)."""
    profiles = {"annotator": [], "expression_confusion": []}
    missing = {}
    iterations = {}
    for set_name in SETS:
        answers = read_answers(csv_dir, "expression", set_name)
        missing[f"expression_{set_name}"] = int((answers < 0).sum())
        confusions, model = expression_profiles(answers)
        iterations[set_name] = int(model.n_iter_)
        profiles["annotator"] += [f"{set_name}/participant{w}" for w in range(NUM_PARTICIPANTS)]
        profiles["expression_confusion"] += _rounded_rows(confusions).tolist()
        for dimension in ("valence", "arousal"):
            values = read_answers(csv_dir, dimension, set_name)
            missing[f"{dimension}_{set_name}"] = int((~np.isfinite(values)).sum())
            for key, numbers in zip(("scale", "bias", "noise"), va_profiles(values)):
                profiles.setdefault(f"{dimension}_{key}", []).extend(
                    np.round(numbers, DECIMALS).tolist()
                )
    return {
        "description": (
            "Simulated-annotator profiles of synthetic_faces, derived from the AffectNetC25 "
            "CSVs by python -m tfds_affectnet.synthetic_faces.calibrate (see its docstring)."
        ),
        "class_names": list(labels.EXPRESSION_NAMES),
        "quantisation_levels": VA_GRID.round(2).tolist(),
        "shrinkage_items": SHRINKAGE,
        "dawid_skene_iterations": iterations,
        "missing_answers": missing,
        **profiles,
    }


def write_calibration(calibration, path):
    """Writes the calibration as compact JSON (one annotator per line for diffs)."""
    lines = ["{"]
    items = list(calibration.items())
    for n, (key, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if isinstance(value, list) and value and isinstance(value[0], list):
            rows = ",\n    ".join(json.dumps(row, separators=(",", ":")) for row in value)
            lines.append(f'  "{key}": [\n    {rows}\n  ]{comma}')
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    with open(path, "w") as stream:
        stream.write("\n".join(lines) + "\n")


def main(argv=None):
    """Command line: ``--csv-dir DIR [--output FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m tfds_affectnet.synthetic_faces.calibrate",
        description="Calibrate synthetic_faces' simulated annotators on the AffectNetC25 CSVs.",
    )
    parser.add_argument("--csv-dir", required=True, help="folder of the six AffectNetC25 CSVs")
    parser.add_argument(
        "--output",
        default=CALIBRATION_FILE,
        help=f"file to write (default: the package's {CALIBRATION_FILE})",
    )
    args = parser.parse_args(argv)
    try:
        calibration = calibrate(args.csv_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_calibration(calibration, args.output)
    print(f"Wrote {len(calibration['annotator'])} annotator profiles to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
