"""Input checks shared by the aggregators, the layers and the losses (NumPy side)."""

import numpy as np

__all__ = [
    "check_answers",
    "check_long_format",
    "check_float_answers",
    "check_non_negative",
    "check_positive",
    "check_positive_int",
]


def check_answers(answers, num_classes=None, name="answers"):
    """Validates a dense ``(n_items, n_annotators)`` integer answer matrix, -1 for missing.

    Float arrays are accepted when every finite value is integral; NaN becomes -1.
    Returns an ``int64`` array. Raises ``ValueError`` naming ``name`` on any problem.
    """
    array = np.asarray(answers)
    if array.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array (n_items, n_annotators). Received: {name}.shape={array.shape}"
        )
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if np.any(array[finite] != np.round(array[finite])):
            raise ValueError(
                f"`{name}` must hold integer class indices (-1 for no answer); found "
                f"non-integer values such as {array[finite][array[finite] != np.round(array[finite])][:3].tolist()}. "
                f"Received: {name}.dtype={array.dtype}"
            )
        array = np.where(finite, array, -1)
    elif array.dtype.kind not in "iub":
        raise ValueError(
            f"`{name}` must be an integer array with -1 for no answer. Received: {name}.dtype={array.dtype}"
        )
    array = array.astype(np.int64)
    bad = (array < -1) | ((array >= num_classes) if num_classes is not None else False)
    if np.any(bad):
        upper = f"0..{num_classes - 1}" if num_classes is not None else "non-negative integers"
        raise ValueError(
            f"`{name}` must hold classes {upper} or -1 for no answer. "
            f"Received values {np.unique(array[bad])[:10].tolist()} at {int(bad.sum())} positions."
        )
    return array


def check_long_format(answers, num_classes=None, name="answers"):
    """Validates the long format ``(items, annotators, labels)``: three equal-length int arrays.

    Rows with label -1 are dropped (they are "no answer"). Returns three ``int64`` arrays.
    """
    if not (isinstance(answers, tuple | list) and len(answers) == 3):
        raise ValueError(
            f"`{name}` in long format must be a tuple (items, annotators, labels). "
            f"Received: type({name})={type(answers).__name__}"
        )
    arrays = []
    for part, values in zip(("items", "annotators", "labels"), answers):
        values = np.asarray(values)
        if values.ndim != 1:
            raise ValueError(f"`{name}` {part} must be 1-D. Received: {part}.shape={values.shape}")
        if values.dtype.kind == "f":
            if np.any(~np.isfinite(values)) or np.any(values != np.round(values)):
                raise ValueError(
                    f"`{name}` {part} must hold integers. Received: {part}.dtype={values.dtype}"
                )
        elif values.dtype.kind not in "iub":
            raise ValueError(
                f"`{name}` {part} must hold integers. Received: {part}.dtype={values.dtype}"
            )
        arrays.append(values.astype(np.int64, copy=False))
    items, annotators, labels = arrays
    if not len(items) == len(annotators) == len(labels):
        raise ValueError(
            f"`{name}` items, annotators and labels must have equal lengths. "
            f"Received: {len(items)}, {len(annotators)}, {len(labels)}"
        )
    keep = labels != -1
    if not keep.all():
        items, annotators, labels = items[keep], annotators[keep], labels[keep]
    for part, values in (("items", items), ("annotators", annotators)):
        if values.size and values.min() < 0:
            raise ValueError(
                f"`{name}` {part} must be non-negative. Received: min({part})={values.min()}"
            )
    if labels.size and (
        labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)
    ):
        upper = f"0..{num_classes - 1}" if num_classes is not None else "non-negative"
        raise ValueError(
            f"`{name}` labels must be {upper} (or -1 for no answer). "
            f"Received: min={labels.min()}, max={labels.max()}"
        )
    return items, annotators, labels


def check_float_answers(answers, name="answers"):
    """Validates a ``(n_items, n_annotators)`` float matrix with NaN for missing.

    The reference's sentinel 999999999 is also read as missing. Returns ``float64``.
    """
    array = np.asarray(answers)
    if array.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array (n_items, n_annotators). Received: {name}.shape={array.shape}"
        )
    if array.dtype.kind not in "iuf":
        raise ValueError(f"`{name}` must be numeric. Received: {name}.dtype={array.dtype}")
    array = array.astype(np.float64)
    array[array == 999999999] = np.nan
    if np.any(np.isinf(array)):
        raise ValueError(f"`{name}` must not contain infinite values.")
    return array


def check_non_negative(value, name):
    """A finite number >= 0, as a float; else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not np.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0. Received: {name}={value!r}")
    return float(value)


def check_positive(value, name):
    """A finite number > 0, as a float; else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
    return float(value)


def check_positive_int(value, name, minimum=1):
    """An integer >= ``minimum`` (not a bool), as an int; else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)
