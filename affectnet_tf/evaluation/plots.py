"""Figures of the evaluation report, drawn with Matplotlib at known sizes.

Figures are ``matplotlib.figure.Figure`` objects on the Agg canvas: no pyplot, no display, and
no change to the global Matplotlib backend of the caller (a notebook keeps its own). They are
drawn at a fixed size (:data:`DPI` dots per inch, sizes from the ``figsize`` each
plotting function documents, no tight bounding box), so a PNG's pixel size is known in advance
(:func:`figure_size`). :class:`affectnet_tf.evaluation.reports.Report` saves them.
"""

import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.ticker import MaxNLocator

__all__ = [
    "DPI",
    "DENSITY_THRESHOLD",
    "figure_size",
    "png_bytes",
    "plot_confusion_matrix",
    "plot_va",
    "plot_va_errors",
    "plot_examples",
    "plot_history",
    "plot_annotator_confusions",
    "plot_agreement",
]

DPI = 100
DENSITY_THRESHOLD = 500  # more points than this: hexbin densities instead of single points


def figure_size(figure):
    """``(width, height)`` in pixels of the PNG that :class:`Report` writes for ``figure``."""
    width, height = figure.get_size_inches()
    return int(round(width * DPI)), int(round(height * DPI))


def _subplots(rows, columns, figsize):
    """A figure on the Agg canvas (no pyplot, no display, no global state) and its axes grid."""
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False)


def png_bytes(figure):
    """The PNG of ``figure`` at :data:`DPI` dots per inch (:func:`figure_size` pixels)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def plot_confusion_matrix(matrix, class_names, title="Confusion matrix (rows: true class)"):
    """Row-normalised confusion matrix with the share in each cell. figsize ``(7, 6)``."""
    matrix = np.asarray(matrix, np.float64)
    support = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, support, out=np.zeros_like(matrix), where=support > 0)
    figure, axes = _subplots(1, 1, (7, 6))
    axis = axes[0, 0]
    image = axis.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    k = len(class_names)
    axis.set_xticks(range(k), class_names, rotation=45, ha="right")
    axis.set_yticks(range(k), [f"{n} ({int(s)})" for n, s in zip(class_names, support[:, 0])])
    for i in range(k):
        for j in range(k):
            value = normalised[i, j]
            axis.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > 0.5 else "black",
            )
    axis.set_xlabel("predicted")
    axis.set_ylabel("true (count)")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.subplots_adjust(left=0.22, bottom=0.2, right=0.9, top=0.93)
    return figure


def _points(axis, x, y, label=None, color="C0", cmap="Blues"):
    """A scatter, or a hexbin density when there are more than DENSITY_THRESHOLD points."""
    if len(x) > DENSITY_THRESHOLD:
        axis.hexbin(x, y, gridsize=30, extent=(-1, 1, -1, 1), cmap=cmap, mincnt=1, bins="log")
    else:
        axis.scatter(x, y, s=10, alpha=0.6, color=color, label=label)


def _unit_axes(axis, xlabel, ylabel):
    axis.set_xlim(-1.05, 1.05)
    axis.set_ylim(-1.05, 1.05)
    axis.set_aspect("equal")
    axis.axhline(0, color="0.7", lw=0.8)
    axis.axvline(0, color="0.7", lw=0.8)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)


def plot_va(truth, predictions):
    """Predicted against true valence / arousal, and both on the circumplex.

    Args:
        truth: ``{"valence": (N,), "arousal": (N,)}`` (either key may be absent);
            non-finite targets are left out.
        predictions: the same for the model's predictions.

    figsize ``(5 * panels, 5)``: one panel per dimension, plus the circumplex (true and
    predicted valence-arousal points on the unit circle) when both dimensions are there.
    """
    dimensions = [d for d in ("valence", "arousal") if d in truth]
    both = len(dimensions) == 2
    panels = len(dimensions) + (2 if both else 0)
    figure, axes = _subplots(1, panels, (5 * panels, 5))
    axes = axes[0]
    for axis, dimension in zip(axes, dimensions):
        t = np.asarray(truth[dimension], np.float64).reshape(-1)
        p = np.asarray(predictions[dimension], np.float64).reshape(-1)
        keep = np.isfinite(t)
        _points(axis, t[keep], p[keep])
        axis.plot([-1, 1], [-1, 1], color="C3", lw=1)
        _unit_axes(axis, f"true {dimension}", f"predicted {dimension}")
        axis.set_title(f"{dimension} ({keep.sum()} images)")
    if both:
        tv, ta = (np.asarray(truth[d], np.float64).reshape(-1) for d in dimensions)
        pv, pa = (np.asarray(predictions[d], np.float64).reshape(-1) for d in dimensions)
        keep = np.isfinite(tv) & np.isfinite(ta)
        for axis, (v, a, name, cmap, color) in zip(
            axes[2:],
            ((tv, ta, "true", "Greys", "0.4"), (pv, pa, "predicted", "Blues", "C0")),
        ):
            axis.add_patch(Circle((0, 0), 1, fill=False, color="0.6", lw=0.8))
            _points(axis, v[keep], a[keep], color=color, cmap=cmap)
            _unit_axes(axis, "valence", "arousal")
            axis.set_title(f"{name} on the circumplex")
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.92, wspace=0.3)
    return figure


def plot_va_errors(truth, predictions):
    """Histograms of ``predicted - true`` per dimension. figsize ``(5 * dimensions, 4)``."""
    dimensions = [d for d in ("valence", "arousal") if d in truth]
    figure, axes = _subplots(1, len(dimensions), (5 * len(dimensions), 4))
    for axis, dimension in zip(axes[0], dimensions):
        t = np.asarray(truth[dimension], np.float64).reshape(-1)
        p = np.asarray(predictions[dimension], np.float64).reshape(-1)
        errors = (p - t)[np.isfinite(t)]
        axis.hist(errors, bins=np.linspace(-2, 2, 41), color="C0")
        axis.axvline(0, color="C3", lw=1)
        axis.set_xlabel(f"predicted - true {dimension}")
        axis.set_ylabel("images")
        mean = errors.mean() if len(errors) else float("nan")
        axis.set_title(f"{dimension}: mean error {mean:+.3f}")
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.15, top=0.9, wspace=0.3)
    return figure


def plot_examples(images, true_labels, predicted_labels, class_names, columns=8):
    """Grid of correctly and incorrectly classified images with their labels.

    Args:
        images: ``uint8`` ``(N, H, W, 3)``.
        true_labels: ``(N,)`` class indices.
        predicted_labels: ``(N,)`` class indices.
        columns: images per row.

    The correct ones come first (green titles), then the wrong ones (red). figsize
    ``(1.8 * columns, 2.1 * rows)``.
    """
    images = np.asarray(images)
    true_labels = np.asarray(true_labels).reshape(-1)
    predicted_labels = np.asarray(predicted_labels).reshape(-1)
    correct = true_labels == predicted_labels
    order = np.r_[np.flatnonzero(correct), np.flatnonzero(~correct)]
    rows = max(1, math.ceil(len(order) / columns))
    figure, axes = _subplots(rows, columns, (1.8 * columns, 2.1 * rows))
    for axis in axes.flat:
        axis.axis("off")
    for axis, k in zip(axes.flat, order):
        axis.imshow(images[k])
        good = correct[k]
        axis.set_title(
            f"true {class_names[true_labels[k]]}\npred {class_names[predicted_labels[k]]}",
            fontsize=8,
            color="green" if good else "red",
        )
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, hspace=0.45)
    return figure


def plot_history(history):
    """Training curves: each logged quantity and its ``val_`` twin against the epoch.

    Args:
        history: dict of lists (or a pandas DataFrame, as read from ``history.csv``), with an
            optional ``epoch`` column.

    figsize ``(4.5 * columns, 3.5 * rows)``, at most 3 columns.
    """
    columns_of = {key: np.asarray(history[key], np.float64) for key in history}
    epochs = columns_of.pop("epoch", None)
    names = [k for k in columns_of if not k.startswith("val_") and k != "learning_rate"]
    names += [k for k in columns_of if k.startswith("val_") and k[4:] not in columns_of]
    names.sort(key=lambda name: (name != "loss", name))  # the total loss first
    if not names:
        raise ValueError(f"`history` has no metric columns. Received: {list(history)}")
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = _subplots(rows, columns, (4.5 * columns, 3.5 * rows))
    for axis in axes.flat[len(names) :]:
        axis.axis("off")
    for axis, name in zip(axes.flat, names):
        values = columns_of[name]
        x = epochs + 1 if epochs is not None else np.arange(1, len(values) + 1)
        axis.plot(x, values, marker="o", label=name)
        if f"val_{name}" in columns_of:
            axis.plot(x, columns_of[f"val_{name}"], marker="o", label=f"val_{name}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(name)
        axis.legend(fontsize=8)
    figure.subplots_adjust(left=0.08, right=0.97, bottom=0.12, top=0.92, wspace=0.3, hspace=0.45)
    return figure


def plot_annotator_confusions(learned, class_names, true=None, columns=5):
    """Annotator confusion matrices in a grid (rows: true class, columns: answered class).

    Args:
        learned: ``(R, K, K)`` learned matrices (the crowd layer's).
        true: optional ``(R, K, K)`` true (simulated) matrices, drawn beside each learned one.
        columns: annotators per row.

    figsize ``(2.2 * panels per row, 2.4 * rows)`` with ``panels per row = columns`` (twice
    that with ``true``).
    """
    learned = np.asarray(learned, np.float64)
    if learned.ndim != 3 or learned.shape[1] != learned.shape[2]:
        raise ValueError(f"`learned` must be (R, K, K). Received: shape={learned.shape}")
    if true is not None:
        true = np.asarray(true, np.float64)
        if true.shape != learned.shape:
            raise ValueError(
                f"`true` must have the shape of `learned` {learned.shape}. Received: {true.shape}"
            )
    count = learned.shape[0]
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    per_row = columns * (2 if true is not None else 1)
    figure, axes = _subplots(rows, per_row, (2.2 * per_row, 2.4 * rows))
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    for r in range(count):
        row, column = divmod(r, columns)
        panels = [("learned", learned[r])] + ([("true", true[r])] if true is not None else [])
        for offset, (kind, matrix) in enumerate(panels):
            axis = axes[row, column * len(panels) + offset]
            axis.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
            axis.set_title(f"#{r} {kind}", fontsize=8)
    for index in range(count, rows * columns):
        row, column = divmod(index, columns)
        width = per_row // columns
        for offset in range(width):
            axes[row, column * width + offset].axis("off")
    figure.suptitle(
        "Annotator confusion matrices (rows: true " + "/".join(class_names[:3]) + "..., "
        "columns: answered)",
        fontsize=10,
    )
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88, wspace=0.15, hspace=0.4)
    return figure


_AGREEMENT_TITLES = {
    "accuracy": "accuracy\n(vs leave-one-out majority)",
    "f1_macro": "macro F1\n(vs leave-one-out majority)",
    "valence_ccc": "valence CCC\n(vs leave-one-out mean)",
    "arousal_ccc": "arousal CCC\n(vs leave-one-out mean)",
    "original_accuracy": "accuracy\n(vs AffectNet's label)",
}


def plot_agreement(result):
    """The annotators' figures as dots with a box, the model as a red star.

    Args:
        result: :func:`affectnet_tf.evaluation.agreement.annotator_agreement`'s dict.

    figsize ``(3.2 * figures, 4.2)``, one panel per figure in ``result["summary"]``.
    """
    keys = list(result["summary"])
    if not keys:
        raise ValueError("`result` has no agreement figures to plot.")
    figure, axes = _subplots(1, len(keys), (3.2 * len(keys), 4.2))
    jitter = np.random.default_rng(0)
    for axis, key in zip(axes[0], keys):
        values = np.array(
            [row[key] for row in result["annotators"] if row.get(key) is not None], np.float64
        )
        if len(values):
            axis.boxplot(values, positions=[0], widths=0.5, showfliers=False)
            axis.scatter(
                jitter.uniform(-0.15, 0.15, len(values)),
                values,
                s=14,
                color="C0",
                alpha=0.7,
                label="annotators",
            )
        model = result["summary"][key].get("model")
        if model is not None:
            axis.scatter([0], [model], marker="*", s=260, color="C3", zorder=3, label="model")
        axis.set_xticks([])
        axis.set_xlim(-0.6, 0.6)
        axis.set_title(_AGREEMENT_TITLES.get(key, key), fontsize=9)
        axis.legend(fontsize=7, loc="lower right")
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.05, top=0.85, wspace=0.45)
    return figure
