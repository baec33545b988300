"""Label definitions of AffectNet and AffectNetC25, shared by every package.

The datasets define the labels, so they live here; ``affectnet_tf`` imports them.

AffectNet's canonical expression order (the full release's ``expression`` column and the
8-label release's ``<n>_exp.npy``):

```text
0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt
```

plus the non-labels 8 none, 9 uncertain, 10 no-face. AffectNetC25's CSVs use another order:

```text
0 happiness, 1 sadness, 2 surprise, 3 fear, 4 disgust, 5 anger, 6 contempt, 7 neutral
```

so that ``affectnet = (c25 + 1) % 8``. The 7-class variant drops contempt and keeps the others'
indices (contempt is the last canonical class).

Majority-vote ties (:func:`majority_labels`): where two or more classes share the most answers,
the label is chosen among them by the image's file name (the first 8 bytes of its MD5 hash,
modulo the number of tied classes, over the tied classes in canonical order). The same image
gets the same label in training, evaluation, the agreement report and every run, whatever the
seed, the subset or the order of the files, and ties spread evenly over the tied classes.
"""

import hashlib

import numpy as np

import crowd_layers

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
    "class_set",
    "canonical_order",
    "c25_to_affectnet",
    "affectnet_to_c25",
    "to_seven_classes",
    "tie_keys",
    "majority_labels",
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


def class_set(dataset_classes=None, num_classes=None):
    """The classes a model of a dataset learns, in output order.

    Args:
        dataset_classes: the dataset's (or a model's) own class names (a ``crowd_images``
            folder's ``classes.txt``), or None for AffectNet's (every other dataset).
            AffectNet's 8 in the package's order (case aside) count as AffectNet's.
        num_classes: None (all of the dataset's classes), 8, or 7 to drop contempt from
            AffectNet's; a dataset with another class set takes its own count only.

    Returns:
        A tuple of names: :func:`expression_names` for AffectNet's classes, else
        ``dataset_classes`` as given.

    Raises:
        ValueError: a ``num_classes`` the dataset's classes cannot give, or fewer than two
            distinct classes.
    """
    own = None if dataset_classes is None else tuple(str(name) for name in dataset_classes)
    if own is None or tuple(name.lower() for name in own) == EXPRESSION_NAMES:
        chosen = 8 if num_classes is None else int(num_classes)
        if chosen not in (7, 8):
            raise ValueError(
                "A dataset of AffectNet's classes has 8 classes, or 7 without contempt. "
                f"Received: num_classes={num_classes}"
            )
        return expression_names(chosen)
    if len(own) < 2 or len({name.lower() for name in own}) != len(own):
        raise ValueError(
            f"A class set needs at least two distinct names. Received: class_names={list(own)}"
        )
    if num_classes is not None and int(num_classes) != len(own):
        raise ValueError(
            f"A class set of its own, {len(own)} classes ({', '.join(own)}), takes "
            f"num_classes={len(own)} or None (7 drops contempt from AffectNet's 8 only). "
            f"Received: num_classes={num_classes}"
        )
    return own


def canonical_order(class_names):
    """``(order, names)``: the indices that put ``class_names`` (a model's outputs, in its own
    order) into the package's order, and those names in that order. Raises ``ValueError`` on a
    name that is not an expression of :data:`EXPRESSION_NAMES` or a repeated one."""
    unknown = [n for n in class_names if n not in EXPRESSION_NAMES]
    if unknown or len(set(class_names)) != len(class_names):
        raise ValueError(
            f"`class_names` must be distinct names of {EXPRESSION_NAMES}. "
            f"Received: class_names={tuple(class_names)!r}"
        )
    canonical = [n for n in EXPRESSION_NAMES if n in class_names]
    return [list(class_names).index(n) for n in canonical], canonical


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


def tie_keys(file_names):
    """The tie-break key of each file name: the first 8 bytes of its MD5 hash, ``uint64``."""
    keys = np.empty(len(file_names), np.uint64)
    for i, name in enumerate(file_names):
        raw = name if isinstance(name, bytes) else str(name).encode("utf-8")
        keys[i] = int.from_bytes(hashlib.md5(raw).digest()[:8], "big")
    return keys


def majority_labels(answers, file_names, num_classes=8):
    """The package's majority-vote labels: ties broken by the file name (module docstring).

    Args:
        answers: ``(N, R)`` integer answers in the canonical order, -1 for no answer (answers
            outside ``0..num_classes-1`` must already be -1).
        file_names: the ``N`` images' file names (``str`` or ``bytes``).
        num_classes: number of classes.

    Returns:
        ``(labels, tied)``: int64 labels (-1 for an image without answers) and the boolean
        mask of the images whose vote was tied.
    """
    answers = np.asarray(answers, np.int64)
    if len(file_names) != len(answers):
        raise ValueError(
            f"`file_names` must have one name per row of `answers`. Received: "
            f"{len(file_names)} names for {len(answers)} rows"
        )
    mask = np.zeros(len(answers), bool)
    if len(answers):
        # ties and unanswered images are counted by the callers and reported once
        with crowd_layers.quiet_aggregation():
            votes, info = crowd_layers.majority_vote(
                answers,
                num_classes,
                tie_break="keyed",
                keys=tie_keys(file_names),
                return_info=True,
            )
        mask[info["tied_items"]] = True
    else:
        votes = np.zeros(0, np.int64)
    return votes, mask
