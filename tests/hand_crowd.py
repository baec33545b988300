"""The hand-built crowd of the crowd-layer tests, and a NumPy softmax to check layers against.

5 items, 4 annotators, 3 classes (-1: no answer): item 2 has one answer, item 3 none, item 4
is answered by all four.
"""

import numpy as np

__all__ = ["K", "R", "ANSWERS", "softmax"]

K, R = 3, 4

ANSWERS = np.array(
    [
        [0, 0, 1, -1],
        [2, -1, 2, 1],
        [-1, -1, 1, -1],
        [-1, -1, -1, -1],
        [1, 1, 1, 0],
    ]
)


def softmax(z, axis=-1):
    """The softmax of ``z`` along ``axis``, stable for large values."""
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)
