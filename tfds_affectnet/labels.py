"""Label definitions of AffectNet and AffectNetC25, shared by every package.

The datasets define the labels, so they live here; ``affectnet_tf`` imports them.

AffectNet's canonical expression order (the full release's ``expression`` column and the
8-label release's ``<n>_exp.npy``)::

    0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt

plus the non-labels 8 none, 9 uncertain, 10 no-face. AffectNetC25's CSVs use another order::

    0 happiness, 1 sadness, 2 surprise, 3 fear, 4 disgust, 5 anger, 6 contempt, 7 neutral

so that ``affectnet = (c25 + 1) % 8``. The 7-class variant drops contempt and keeps the others'
indices (contempt is the last canonical class).
"""

import numpy as np

__all__ = [
    "EXPRESSION_NAMES",
    "EXPRESSION_NAMES_7",
    "ALL_CATEGORY_NAMES",
    "C25_EXPRESSION_NAMES",
    "NON_LABEL_CODES",
    "VA_MISSING",
    "CONTEMPT",
    "NEUTRAL",
    "expression_names",
    "c25_to_affectnet",
    "affectnet_to_c25",
    "to_seven_classes",
]

EXPRESSION_NAMES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
EXPRESSION_NAMES_7 = EXPRESSION_NAMES[:7]
ALL_CATEGORY_NAMES = EXPRESSION_NAMES + ("none", "uncertain", "no_face")
C25_EXPRESSION_NAMES = (
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
    "neutral",
)
NON_LABEL_CODES = (8, 9, 10)
VA_MISSING = -2.0
NEUTRAL = 0
CONTEMPT = 7


def expression_names(num_classes=8):
    """Class names in the canonical order for 8 or 7 classes (7 drops contempt)."""
    if num_classes == 8:
        return EXPRESSION_NAMES
    if num_classes == 7:
        return EXPRESSION_NAMES_7
    if num_classes == 11:
        return ALL_CATEGORY_NAMES
    raise ValueError(f"`num_classes` must be 8, 7 or 11. Received: num_classes={num_classes}")


def _as_int_codes(codes, name):
    array = np.asarray(codes)
    if array.dtype.kind == "f":
        finite = array[np.isfinite(array)]
        if np.any(finite != np.round(finite)):
            raise ValueError(f"`{name}` must hold integer codes. Received: {name}={codes!r}")
    elif array.dtype.kind not in "iub":
        raise ValueError(f"`{name}` must hold integer codes. Received dtype {array.dtype}.")
    return array


def c25_to_affectnet(codes):
    """Maps AffectNetC25 expression codes to AffectNet's canonical order.

    Missing answers (-1 or NaN) stay -1. Codes outside 0..7 raise ``ValueError``.
    """
    array = _as_int_codes(codes, "codes")
    missing = ~np.isfinite(array) if array.dtype.kind == "f" else np.zeros(array.shape, bool)
    filled = np.where(missing, -1, array).astype(np.int64)
    missing |= filled == -1
    bad = ~missing & ((filled < 0) | (filled > 7))
    if np.any(bad):
        raise ValueError(
            "AffectNetC25 expression codes must be 0..7 (or -1 for no answer). "
            f"Received: codes={np.unique(filled[bad]).tolist()}"
        )
    return np.where(missing, -1, (filled + 1) % 8)


def affectnet_to_c25(codes):
    """Inverse of :func:`c25_to_affectnet`; -1 stays -1."""
    array = np.asarray(codes).astype(np.int64)
    bad = (array < -1) | (array > 7)
    if np.any(bad):
        raise ValueError(
            f"AffectNet expression codes must be 0..7 or -1. Received: codes={np.unique(array[bad]).tolist()}"
        )
    return np.where(array == -1, -1, (array + 7) % 8)


def to_seven_classes(codes):
    """Drops contempt: returns (codes with contempt set to -1, mask of kept entries).

    The other classes keep their index, since contempt is the last canonical class.
    """
    array = np.asarray(codes).astype(np.int64)
    kept = array != CONTEMPT
    return np.where(kept, array, -1), kept
