"""Evaluation reports: a self-contained HTML / Markdown page of text, tables and figures.

A :class:`Report` collects sections of text, tables and figures; :meth:`Report.save` writes
every figure as a PNG, ``report.html`` (the PNGs embedded as base64 ``data:`` URIs, so the page
opens offline, alone) and ``report.md`` (the same content, linking the PNG files beside it).
:func:`evaluation_report` lays out the report of an evaluation from the figures that
:mod:`affectnet_tf.evaluation.evaluate` computed, drawn by :mod:`affectnet_tf.evaluation.plots`;
nothing is computed here but the layout.
"""

import base64
import html
import os

import numpy as np

from affectnet_tf.evaluation.plots import (
    DENSITY_THRESHOLD,
    plot_agreement,
    plot_annotator_confusions,
    plot_confusion_matrix,
    plot_examples,
    plot_history,
    plot_va,
    plot_va_errors,
    png_bytes,
)
from affectnet_tf.files import atomic_open

__all__ = ["Report", "evaluation_report"]


class Report:
    """Sections of paragraphs, tables and figures, saved as PNGs + ``report.html`` + ``report.md``.

    Examples:
        >>> report = Report("Evaluation")
        >>> report.section("Metrics")
        >>> report.table(["metric", "value"], [["accuracy", 0.5]])
        >>> report.figure("confusion_matrix", plot_confusion_matrix(cm, names), "Confusion")
        >>> report.save("runs/run/report")
    """

    def __init__(self, title):
        self.title = str(title)
        self._blocks = []

    def section(self, heading):
        self._blocks.append(("section", str(heading)))

    def text(self, paragraph):
        self._blocks.append(("text", str(paragraph)))

    def table(self, header, rows):
        """A table; cells are formatted (floats with 3 decimals, None as '-')."""
        self._blocks.append(("table", [str(h) for h in header], [list(r) for r in rows]))

    def figure(self, name, figure, caption=""):
        """Adds a Matplotlib figure, saved as ``<name>.png``; the figure is closed."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"`name` must be letters, digits and '_'. Received: name={name!r}")
        if any(block[0] == "figure" and block[1] == name for block in self._blocks):
            raise ValueError(f"A figure named {name!r} is already in the report.")
        self._blocks.append(("figure", name, png_bytes(figure), str(caption)))

    @property
    def figures(self):
        """``{name: PNG bytes}`` of the figures added so far."""
        return {block[1]: block[2] for block in self._blocks if block[0] == "figure"}

    def save(self, directory):
        """Writes ``<name>.png`` files, ``report.html`` and ``report.md`` into ``directory``.

        Returns:
            ``{"html": path, "markdown": path, "figures": {name: path}}``.
        """
        os.makedirs(directory, exist_ok=True)
        figures = {}
        for name, data in self.figures.items():
            figures[name] = os.path.join(directory, f"{name}.png")
            with atomic_open(figures[name], "wb") as stream:
                stream.write(data)
        paths = {
            "html": os.path.join(directory, "report.html"),
            "markdown": os.path.join(directory, "report.md"),
            "figures": figures,
        }
        with atomic_open(paths["html"]) as stream:
            stream.write(self.to_html())
        with atomic_open(paths["markdown"]) as stream:
            stream.write(self.to_markdown())
        return paths

    def to_html(self):
        escape = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
            "padding:.25em .6em;text-align:right}th{background:#eee}td:first-child,"
            "th:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}"
            "figcaption{color:#555}</style></head><body>",
            f"<h1>{escape(self.title)}</h1>",
        ]
        for block in self._blocks:
            kind = block[0]
            if kind == "section":
                parts.append(f"<h2>{escape(block[1])}</h2>")
            elif kind == "text":
                parts.append(f"<p>{escape(block[1])}</p>")
            elif kind == "table":
                header = "".join(f"<th>{escape(h)}</th>" for h in block[1])
                rows = "".join(
                    "<tr>" + "".join(f"<td>{escape(_cell(c))}</td>" for c in row) + "</tr>"
                    for row in block[2]
                )
                parts.append(
                    f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"
                )
            else:
                _, name, data, caption = block
                source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                parts.append(
                    f'<figure><img src="{source}" alt="{escape(name)}">'
                    f"<figcaption>{escape(caption)}</figcaption></figure>"
                )
        parts.append("</body></html>\n")
        return "\n".join(parts)

    def to_markdown(self):
        parts = [f"# {self.title}", ""]
        for block in self._blocks:
            kind = block[0]
            if kind == "section":
                parts += [f"## {block[1]}", ""]
            elif kind == "text":
                parts += [block[1], ""]
            elif kind == "table":
                parts.append("| " + " | ".join(block[1]) + " |")
                parts.append("|" + "|".join("---" for _ in block[1]) + "|")
                parts += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in block[2]]
                parts.append("")
            else:
                _, name, _, caption = block
                parts += [f"![{caption or name}]({name}.png)", ""]
        return "\n".join(parts)


def _cell(value):
    """A table cell as text: floats with 3 decimals, None and non-finite values as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float | np.floating):
        return "-" if not np.isfinite(value) else f"{value:.3f}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# The evaluation report


def _metric_rows(metrics):
    """The metric table's ``[head, metric, value]`` rows."""
    return [[head, key, value] for head, values in metrics.items() for key, value in values.items()]


def evaluation_report(
    *,
    title,
    metrics,
    class_names,
    notes=None,
    confusion=None,
    per_class=None,
    examples=None,
    va_truth=None,
    va_predictions=None,
    history=None,
    annotators=None,
    agreement=None,
):
    """The :class:`Report` of an evaluation; a section for each argument given.

    Args:
        title: the page title.
        metrics: ``{head: {metric: value}}``, the metric table.
        class_names: the expression classes, in output order.
        notes: ``{head: [message, ...]}``: undefined or partial values.
        confusion: ``(K, K)`` counts, rows the true class (:func:`plot_confusion_matrix`).
        per_class: ``{"precision", "recall", "f1", "support"}`` arrays of length ``K``.
        examples: ``{"images", "true", "predicted"}`` for :func:`plot_examples`.
        va_truth: ``{"valence": (N,), "arousal": (N,)}`` (either key may be absent).
        va_predictions: the same for the model's predictions.
        history: training curves (:func:`plot_history`).
        annotators: a crowd run's learned annotators: ``confusions`` ``(R, K, K)`` or None,
            ``true_confusions`` (the true simulated ones) or None, ``note`` (a sentence) or
            None, ``parameters`` (one dict per valence/arousal parameter: ``parameter``,
            ``mean``, ``min``, ``max``, ``annotator_of_min``, ``correlation``) and
            ``simulated`` (whether the true simulated annotators are known).
        agreement: :func:`affectnet_tf.evaluation.agreement.annotator_agreement`'s dict.
    """
    report = Report(title)
    report.section("Metrics")
    report.table(["head", "metric", "value"], _metric_rows(metrics))
    for head, messages in (notes or {}).items():
        for message in messages:
            report.text(f"Note ({head}): {message}")
    if confusion is not None:
        _expression_section(report, confusion, per_class, examples, class_names)
    if va_truth:
        _va_section(report, va_truth, va_predictions)
    if history is not None and len(history):
        report.section("Training curves")
        report.figure("history", plot_history(history), "From history.csv.")
    if annotators:
        _annotator_section(report, annotators, class_names)
    if agreement is not None:
        _agreement_section(report, agreement)
    return report


def _expression_section(report, confusion, per_class, examples, class_names):
    """The confusion matrix, the per-class table and the examples grid."""
    report.section("Expression")
    report.figure(
        "confusion_matrix",
        plot_confusion_matrix(confusion, class_names),
        "Normalised confusion matrix (each row sums to 1; counts beside the class names).",
    )
    report.table(
        ["class", "precision", "recall", "F1", "support"],
        [
            [
                name,
                per_class["precision"][k],
                per_class["recall"][k],
                per_class["f1"][k],
                int(per_class["support"][k]),
            ]
            for k, name in enumerate(class_names)
        ],
    )
    if examples is not None:
        report.figure(
            "examples",
            plot_examples(examples["images"], examples["true"], examples["predicted"], class_names),
            "Correctly (green) and incorrectly (red) classified images.",
        )


def _va_section(report, va_truth, va_predictions):
    """Predicted against true valence / arousal, and the error histograms."""
    report.section("Valence and arousal")
    report.figure(
        "valence_arousal",
        plot_va(va_truth, va_predictions),
        "Predicted against true (hexbin densities above "
        f"{DENSITY_THRESHOLD} images), and the circumplex.",
    )
    report.figure(
        "valence_arousal_errors",
        plot_va_errors(va_truth, va_predictions),
        "Prediction errors.",
    )


def _annotator_section(report, annotators, class_names):
    """The crowd layer's learned annotators: their confusion matrices and parameters."""
    report.section("Annotators (crowd layers)")
    if annotators.get("note"):
        report.text(annotators["note"])
    if annotators.get("confusions") is not None:
        true = annotators.get("true_confusions")
        report.figure(
            "annotator_confusions",
            plot_annotator_confusions(annotators["confusions"], class_names, true=true),
            "Learned annotator confusion matrices"
            + (" beside the true simulated ones" if true is not None else "")
            + " (colour: probability, 0 dark to 1 yellow).",
        )
    parameters = annotators.get("parameters") or []
    if parameters:
        keys = ["parameter", "mean", "min", "max", "annotator_of_min"]
        header = ["parameter", "mean", "min", "max", "annotator of min"]
        if annotators.get("simulated"):
            keys.append("correlation")
            header.append("correlation with the true simulated value")
        report.table(header, [[row.get(key) for key in keys] for row in parameters])


def _agreement_section(report, result):
    """The model against single annotators: the summary table and the figure."""
    report.section("The model against single annotators")
    crowd = result["crowd"]
    report.text(
        f"{result['n_items']} images, {result['n_annotators']} annotators. Each annotator is "
        "scored against the majority (mean for valence and arousal) of the other annotators; "
        "the model against the same references on the same images. Crowd agreement: "
        + ", ".join(f"{k} {_cell(v)}" for k, v in crowd.items())
    )
    rows = [
        [
            key,
            entry["mean"],
            entry["min"],
            entry["max"],
            entry.get("model"),
            entry.get("model_above"),
        ]
        for key, entry in result["summary"].items()
    ]
    report.table(
        ["figure", "annotators mean", "min", "max", "model", "share of annotators below"], rows
    )
    report.figure(
        "agreement", plot_agreement(result), "Annotators (dots, box) and the model (star)."
    )
