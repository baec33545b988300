"""Crowd methods by name: the layer and the loss of each, at the package's defaults.

One place that the training command, the benchmarks and the examples build crowd heads from:

- ``"pooled"`` (the default, :data:`DEFAULT_CROWD_METHOD`): :class:`~crowd_layers.CrowdsPooled`
  with :class:`~crowd_layers.PooledCrowdLikelihood`, an item's answers pooled in Dawid-Skene's
  likelihood with the network as the class prior;
- ``"confusion"``: :class:`~crowd_layers.CrowdsConfusion` (per-answer cross-entropy, Tanno et
  al.'s trace regulariser);
- ``"geocrowdnet"``: the same per-answer confusion layer with GeoCrowdNet's (W) volume
  regulariser, weight :data:`GEOCROWDNET_WEIGHT` (Ibrahim et al., ICLR 2023), and the pooled
  method's start and learning-rate multiplier (diagonal 0.7, ``logit_scale=30``, instead of
  ``CrowdsConfusion``'s own 0.9 and 1);
- ``"MW"``, ``"VW"``, ``"VB"``, ``"VW+B"``, ``"SW"``: the reference crowd layers
  (:class:`~crowd_layers.CrowdsClassification`, Rodrigues & Pereira, AAAI 2018).
"""

from crowd_layers.layers import CLASSIFICATION_CONN_TYPES, CrowdsClassification, CrowdsConfusion
from crowd_layers.losses import MaskedMultiCrossEntropy
from crowd_layers.pooled import CrowdsPooled, PooledCrowdLikelihood

__all__ = [
    "CONFUSION_METHODS",
    "CROWD_METHODS",
    "DEFAULT_CROWD_METHOD",
    "GEOCROWDNET_WEIGHT",
    "crowd_loss",
    "crowd_method",
]

#: The method the package recommends (chosen by ``benchmarks/bench_real_crowds.py`` on LabelMe
#: and by ``examples/demo.py``): the pooled Dawid-Skene likelihood.
DEFAULT_CROWD_METHOD = "pooled"
#: Methods that hold confusion matrices and so accept ``init_confusions``.
CONFUSION_METHODS = ("pooled", "confusion", "geocrowdnet")
CROWD_METHODS = (*CONFUSION_METHODS, *CLASSIFICATION_CONN_TYPES)
#: GeoCrowdNet's regulariser weight (its authors' code and the ECAI 2024 benchmark: 0.01).
GEOCROWDNET_WEIGHT = 0.01


def _check_method(method):
    if method not in CROWD_METHODS:
        raise ValueError(f"`method` must be one of {CROWD_METHODS}. Received: method={method!r}")


def crowd_loss(method):
    """The loss of a method in :data:`CROWD_METHODS`: the pooled likelihood or the per-answer one."""
    _check_method(method)
    return PooledCrowdLikelihood() if method == "pooled" else MaskedMultiCrossEntropy()


def crowd_method(method, num_classes, num_annotators, init_confusions=None, **layer_kwargs):
    """The crowd layer and the loss of a method name in :data:`CROWD_METHODS`.

    Args:
        method: A name in :data:`CROWD_METHODS`.
        num_classes: Number of classes ``K``.
        num_annotators: Number of annotators ``R``.
        init_confusions: Optional ``(R, K, K)`` start of a method in
            :data:`CONFUSION_METHODS` (e.g. ``DawidSkene(...).fit(answers).confusions_``).
        **layer_kwargs: Base layer arguments (``name``, ``dtype``).

    Returns:
        ``(layer, loss)``: put ``layer`` on the network's class probabilities and compile the
        model with ``loss``.

    Raises:
        ValueError: for an unknown method, or ``init_confusions`` with a method that has no
            confusion matrices.

    Examples:
        >>> layer, loss = crowd_method("pooled", num_classes=8, num_annotators=25)
    """
    _check_method(method)
    if init_confusions is not None and method not in CONFUSION_METHODS:
        raise ValueError(
            f"`init_confusions` starts a confusion crowd layer ({', '.join(CONFUSION_METHODS)}) "
            f"only. Received: method={method!r}"
        )
    common = {"num_classes": num_classes, "num_annotators": num_annotators, **layer_kwargs}
    if method == "pooled":
        return CrowdsPooled(init_confusions=init_confusions, **common), crowd_loss(method)
    if method == "confusion":
        layer = CrowdsConfusion(init_confusions=init_confusions, **common)
    elif method == "geocrowdnet":
        layer = CrowdsConfusion(
            init_confusions=init_confusions,
            trace_weight=0.0,
            volume_weight=GEOCROWDNET_WEIGHT,
            init_diagonal=0.7,
            logit_scale=30.0,  # the annotators' own, faster learning rate, as for "pooled"
            **common,
        )
    else:
        layer = CrowdsClassification(conn_type=method, **common)
    return layer, crowd_loss(method)
