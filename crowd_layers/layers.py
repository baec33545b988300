"""Crowd layers: a Keras 3 port of Rodrigues & Pereira's CrowdLayer, plus a confusion layer.

``CrowdsClassification`` and ``CrowdsRegression`` follow the reference implementation
(github.com/fmpr/CrowdLayer, ``crowd_layer/crowd_layers.py``): same connection types, same
initialisation, same output layout, with every annotator computed at once (no Python loop).
``CrowdsConfusion`` is new: per-annotator row-stochastic confusion matrices with the trace
regulariser of Tanno et al. (CVPR 2019).
"""

import numpy as np
from keras import initializers, layers, ops, saving

from crowd_layers.checks import check_non_negative, check_positive_int
from crowd_layers.confusions import (  # noqa: F401  (ConfusionTraceRegularizer: its old home)
    ConfusionTraceRegularizer,
    check_confusions,
    confusion_regularizer,
    initial_confusion_logits,
)

__all__ = [
    "CLASSIFICATION_CONN_TYPES",
    "REGRESSION_CONN_TYPES",
    "CrowdsClassification",
    "CrowdsConfusion",
    "CrowdsRegression",
    "ConfusionTraceRegularizer",
]

CLASSIFICATION_CONN_TYPES = ("MW", "VW", "VB", "VW+B", "SW")
REGRESSION_CONN_TYPES = ("S", "B", "S+B", "B+S")

_EPSILON = 1e-7


def _check_conn_type(conn_type, allowed):
    if conn_type not in allowed:
        raise ValueError(
            f"`conn_type` must be one of {', '.join(repr(c) for c in allowed)}. "
            f"Received: conn_type={conn_type!r}"
        )
    return conn_type


def _check_class_input_shape(input_shape, num_classes, layer_name):
    if len(input_shape) not in (2, 3):
        raise ValueError(
            f"`{layer_name}` expects inputs of shape (batch, num_classes) or "
            f"(batch, time, num_classes). Received: input_shape={tuple(input_shape)}"
        )
    if input_shape[-1] is not None and input_shape[-1] != num_classes:
        raise ValueError(
            f"The last axis of the input of `{layer_name}` must have num_classes={num_classes} "
            f"entries. Received: input_shape={tuple(input_shape)}"
        )


def _annotator_identities(num_classes, num_annotators):
    """The reference's ``init_identities``: one identity matrix per annotator, (K, K, R)."""

    def initializer(shape, dtype=None):
        eye = ops.eye(num_classes, dtype=dtype)
        return ops.tile(ops.expand_dims(eye, -1), (1, 1, num_annotators))

    return initializer


class _CrowdsClassificationBase(layers.Layer):
    """Shared by the classification crowd layers: the answer-model read-out."""

    def _forward(self, inputs):
        raise NotImplementedError

    def confusion_matrices(self):
        """Each annotator's confusion matrix implied by the layer, as a NumPy array.

        Row ``k`` of annotator ``r`` is the distribution of ``r``'s answers that the layer
        predicts when the base network is certain of class ``k``: the softmax (over the
        answered class) of the layer's output for the one-hot input ``e_k``. This is the
        distribution that :class:`~crowd_layers.losses.MaskedMultiCrossEntropy` scores, so it
        is defined the same way for every connection type.

        Returns:
            Array of shape ``(num_annotators, num_classes, num_classes)``; rows (true class)
            sum to one, columns are the answered class.
        """
        if not self.built:
            self.build((None, self.num_classes))
        outputs = self._forward(ops.eye(self.num_classes, dtype=self.compute_dtype))
        matrices = ops.transpose(ops.softmax(outputs, axis=1), (2, 0, 1))
        return np.asarray(ops.convert_to_numpy(matrices), dtype=np.float64)


@saving.register_keras_serializable(package="crowd_layers")
class CrowdsClassification(_CrowdsClassificationBase):
    """Crowd layer for classification (Rodrigues & Pereira, AAAI 2018).

    Placed on top of a network's softmax output, it maps the estimated class probabilities
    ``x`` to one vector of scores per annotator. The scores are treated as logits by
    :class:`~crowd_layers.losses.MaskedMultiCrossEntropy` (as in the reference, whose loss
    applies a softmax), and after training the layer is dropped to predict
    (:func:`~crowd_layers.models.prediction_model`).

    Connection types, for annotator ``r`` (``x`` has ``num_classes`` entries):

    - ``"MW"`` (matrix of weights): ``out_r = x @ W_r``, ``W_r`` of shape ``(K, K)``,
      initialised to the identity.
    - ``"VW"`` (vector of weights): ``out_r = x * w_r``, initialised to ones.
    - ``"VB"`` (vector of biases): ``out_r = x + b_r``, initialised to zeros.
    - ``"VW+B"``: ``out_r = x * w_r + b_r``, ones and zeros.
    - ``"SW"`` (scalar weight): ``out_r = x * s_r``, initialised to one.

    Reference: F. Rodrigues and F. Pereira, "Deep Learning from Crowds", AAAI 2018;
    github.com/fmpr/CrowdLayer (there the first argument is called ``output_dim``).

    Args:
        num_classes: Number of classes ``K``.
        num_annotators: Number of annotators ``R``.
        conn_type: One of ``"MW"``, ``"VW"``, ``"VB"``, ``"VW+B"``, ``"SW"``.
        **kwargs: Base layer arguments (``name``, ``dtype``, ...).

    Input shape:
        ``(batch, num_classes)`` or ``(batch, time, num_classes)``: class probabilities.

    Output shape:
        ``(batch, num_classes, num_annotators)`` or
        ``(batch, time, num_classes, num_annotators)``: per-annotator logits.

    Examples:
        >>> inputs = keras.Input((16,))
        >>> probs = keras.layers.Dense(4, activation="softmax")(inputs)
        >>> crowd = CrowdsClassification(4, num_annotators=10, conn_type="MW")(probs)
        >>> model = keras.Model(inputs, crowd)
        >>> model.compile("adam", loss=MaskedMultiCrossEntropy())
    """

    def __init__(self, num_classes, num_annotators, conn_type="MW", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.num_annotators = check_positive_int(num_annotators, "num_annotators")
        self.conn_type = _check_conn_type(conn_type, CLASSIFICATION_CONN_TYPES)
        self.kernel = None
        self.bias = None

    def build(self, input_shape):
        _check_class_input_shape(input_shape, self.num_classes, "CrowdsClassification")
        k, r = self.num_classes, self.num_annotators
        if self.conn_type == "MW":
            self.kernel = self.add_weight(
                name="kernel", shape=(k, k, r), initializer=_annotator_identities(k, r)
            )
        elif self.conn_type in ("VW", "VW+B"):
            self.kernel = self.add_weight(name="kernel", shape=(k, r), initializer="ones")
        elif self.conn_type == "SW":
            self.kernel = self.add_weight(name="kernel", shape=(r, 1), initializer="ones")
        if self.conn_type in ("VB", "VW+B"):
            self.bias = self.add_weight(name="bias", shape=(k, r), initializer="zeros")

    def call(self, inputs):
        return self._forward(inputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes, self.num_annotators)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "num_annotators": self.num_annotators,
                "conn_type": self.conn_type,
            }
        )
        return config

    def confusion_matrices(self, normalization="softmax"):
        """Each annotator's estimated confusion matrix, as a NumPy array.

        Args:
            normalization: ``"softmax"`` (default, every connection type): row ``k`` is the
                softmax of the layer's output for the one-hot input ``e_k``, the answer
                distribution the layer and loss actually model. ``"kernel"`` (``"MW"`` only):
                the kernel ``W_r`` with negative entries clipped to zero and rows normalised
                to sum to one (a row without positive entry becomes uniform); this reads the
                identity initialisation as "perfect annotator".

        Returns:
            Array ``(num_annotators, num_classes, num_classes)``: rows are the true class,
            columns the answered class, rows sum to one.
        """
        if normalization == "softmax":
            return super().confusion_matrices()
        if normalization != "kernel" or self.conn_type != "MW":
            raise ValueError(
                "`normalization` must be 'softmax', or 'kernel' for conn_type 'MW'. "
                f"Received: normalization={normalization!r} with conn_type={self.conn_type!r}"
            )
        if not self.built:
            self.build((None, self.num_classes))
        kernel = np.transpose(ops.convert_to_numpy(self.kernel).astype(np.float64), (2, 0, 1))
        kernel = np.clip(kernel, 0.0, None)
        sums = kernel.sum(axis=-1, keepdims=True)
        uniform = np.full_like(kernel, 1.0 / self.num_classes)
        return np.where(sums > 0, kernel / np.where(sums > 0, sums, 1.0), uniform)

    def _forward(self, inputs):
        if self.conn_type == "MW":
            # tensordot is one matmul; einsum with "..." is several times slower in TF
            return ops.tensordot(inputs, self.kernel, axes=[[-1], [0]])
        x = ops.expand_dims(inputs, -1)
        if self.conn_type == "VW":
            return x * self.kernel
        if self.conn_type == "VB":
            return x + self.bias
        if self.conn_type == "VW+B":
            return x * self.kernel + self.bias
        return x * ops.reshape(self.kernel, (self.num_annotators,))  # "SW"


@saving.register_keras_serializable(package="crowd_layers")
class CrowdsConfusion(_CrowdsClassificationBase):
    """Per-annotator confusion matrices with a trace regulariser (Tanno et al., CVPR 2019).

    Each annotator ``r`` has a row-stochastic confusion matrix ``A_r = softmax(L_r, axis=-1)``
    of free logits ``L_r`` (rows: true class, columns: answered class). Given the base
    network's class probabilities ``x``, the layer outputs the log-probability of each answer:

        out[..., j, r] = log(sum_k x[..., k] * A_r[k, j])

    and adds the penalty ``trace_weight * mean_r trace(A_r) / K`` (the mean diagonal entry;
    Tanno et al.'s trace, divided by ``K`` so that a weight means the same for any number of
    classes). Minimising it makes the annotators explain as little of their answers as they
    can, so the base network has to explain the rest: without it, biased annotators (many
    answering "neutral") let the confusion matrices absorb the answers while the base network
    learns the bias. Log-probabilities are valid logits (their softmax is the distribution
    itself), so :class:`~crowd_layers.losses.MaskedMultiCrossEntropy` with its default
    ``from_logits=True`` scores this output exactly, as it scores the reference layers'.

    The penalty is a weight regulariser (:class:`ConfusionTraceRegularizer`), so each replica
    of a ``tf.distribute`` strategy computes it from its own copy of the weights (an
    ``add_loss`` in ``call`` lost part of its gradient under ``MirroredStrategy``, Keras 3.15).

    The penalty pulls each estimated diagonal entry down by about
    ``trace_weight * A_kk * (1 - A_kk) / (K * share_of_class_k)``: too large a weight can
    collapse rare or hard classes, so lower it when some classes are rare, and read calibrated
    annotator estimates from Dawid-Skene rather than from this layer. Which crowd method to use,
    with measured comparisons: the documentation's "Crowd learning" and "Benchmarks" pages.

    Initialisation: ``init_confusions`` (e.g. Dawid-Skene's ``confusions_``), else every
    annotator answers the true class with probability ``init_diagonal`` and spreads the rest
    evenly. The logits are stored divided by ``logit_scale`` and multiplied back in the
    forward pass, so with Adam-like optimizers they move ``logit_scale`` times faster than
    the base network's weights.

    Reference: R. Tanno, A. Saeedi, S. Sankaranarayanan, D. C. Alexander, N. Silberman,
    "Learning From Noisy Labels By Regularized Estimation Of Annotator Confusion", CVPR 2019.

    Args:
        num_classes: Number of classes ``K`` (``>= 2``).
        num_annotators: Number of annotators ``R``.
        trace_weight: Weight ``>= 0`` of the mean diagonal entry ``mean_r trace(A_r) / K``
            added as a loss (0 disables it).
        init_diagonal: Initial probability of answering the true class, in ``(1/K, 1)``.
            Ignored when ``init_confusions`` is given.
        init_confusions: Optional array ``(num_annotators, K, K)`` of row-stochastic
            matrices to start from; the logits become their logarithm.
        logit_scale: Positive multiplier of the stored logits (a learning-rate multiplier
            for Adam-like optimizers).
        volume_weight: Weight ``>= 0`` of GeoCrowdNet's (W) volume term
            (:class:`~crowd_layers.confusions.ConfusionVolumeRegularizer`; Ibrahim et al., ICLR
            2023) instead of the trace term: set ``trace_weight=0`` to use it.
        **kwargs: Base layer arguments (``name``, ``dtype``, ...).

    Input shape:
        ``(batch, num_classes)`` or ``(batch, time, num_classes)``: class probabilities.

    Output shape:
        ``(batch, num_classes, num_annotators)`` or
        ``(batch, time, num_classes, num_annotators)``: per-annotator answer
        log-probabilities.

    Examples:
        >>> inputs = keras.Input((16,))
        >>> probs = keras.layers.Dense(4, activation="softmax")(inputs)
        >>> crowd = CrowdsConfusion(4, num_annotators=10)(probs)
        >>> model = keras.Model(inputs, crowd)
        >>> model.compile("adam", loss=MaskedMultiCrossEntropy())
    """

    def __init__(
        self,
        num_classes,
        num_annotators,
        trace_weight=0.5,
        init_diagonal=0.9,
        init_confusions=None,
        logit_scale=1.0,
        volume_weight=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.num_annotators = check_positive_int(num_annotators, "num_annotators")
        if not np.isfinite(trace_weight) or trace_weight < 0:
            raise ValueError(
                f"`trace_weight` must be a finite number >= 0. Received: trace_weight={trace_weight!r}"
            )
        self.trace_weight = float(trace_weight)
        if not 1.0 / self.num_classes < init_diagonal < 1.0:
            raise ValueError(
                f"`init_diagonal` must lie strictly between 1/num_classes={1 / self.num_classes:.4g} "
                f"and 1. Received: init_diagonal={init_diagonal!r}"
            )
        self.init_diagonal = float(init_diagonal)
        if not np.isfinite(logit_scale) or logit_scale <= 0:
            raise ValueError(
                f"`logit_scale` must be a positive number. Received: logit_scale={logit_scale!r}"
            )
        self.logit_scale = float(logit_scale)
        self.volume_weight = check_non_negative(volume_weight, "volume_weight")
        confusion_regularizer(self.trace_weight, self.volume_weight, self.logit_scale)  # checks
        self.init_confusions = None
        if init_confusions is not None:
            self.init_confusions = check_confusions(
                init_confusions, self.num_annotators, self.num_classes
            )
        self.confusion_logits = None

    def build(self, input_shape):
        _check_class_input_shape(input_shape, self.num_classes, "CrowdsConfusion")
        self.confusion_logits = self.add_weight(
            name="confusion_logits",
            shape=(self.num_annotators, self.num_classes, self.num_classes),
            initializer=initializers.Constant(self._initial_logits()),
            regularizer=self._regularizer(),
        )

    def call(self, inputs):
        return self._forward(inputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes, self.num_annotators)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "num_annotators": self.num_annotators,
                "trace_weight": self.trace_weight,
                "init_diagonal": self.init_diagonal,
                "init_confusions": (
                    None if self.init_confusions is None else self.init_confusions.tolist()
                ),
                "logit_scale": self.logit_scale,
                "volume_weight": self.volume_weight,
            }
        )
        return config

    def confusion_matrices(self):
        """The learned confusion matrices ``softmax(L_r)``, as a NumPy array.

        Returns:
            Array ``(num_annotators, num_classes, num_classes)``: rows are the true class,
            columns the answered class, rows sum to one.
        """
        if not self.built:
            self.build((None, self.num_classes))
        return np.asarray(ops.convert_to_numpy(self._confusions()), dtype=np.float64)

    def _initial_logits(self):
        logits = initial_confusion_logits(
            self.num_annotators, self.num_classes, self.init_diagonal, self.init_confusions
        )
        return logits / self.logit_scale

    def _regularizer(self):
        return confusion_regularizer(self.trace_weight, self.volume_weight, self.logit_scale)

    def _confusions(self):
        return ops.softmax(self.confusion_logits * self.logit_scale, axis=-1)

    def _forward(self, inputs):
        # (R, K, J) -> (K, J, R), then one matmul: p(answer j | x, r) = sum_k p(k | x) A_r[k, j]
        confusions = ops.transpose(self._confusions(), (1, 2, 0))
        answers = ops.tensordot(inputs, confusions, axes=[[-1], [0]])
        return ops.log(ops.maximum(answers, _EPSILON))


@saving.register_keras_serializable(package="crowd_layers")
class CrowdsRegression(layers.Layer):
    """Crowd layer for regression (Rodrigues & Pereira, AAAI 2018).

    Maps the base network's single output ``x`` to one output per annotator, modelling each
    annotator's scale ``s_r`` and bias ``b_r``:

    - ``"S"``: ``out_r = x * s_r``
    - ``"B"``: ``out_r = x + b_r``
    - ``"S+B"``: ``out_r = x * s_r + b_r``
    - ``"B+S"``: ``out_r = (x + b_r) * s_r``

    with ``s`` initialised to ones and ``b`` to zeros, as in the reference. Train with
    :class:`~crowd_layers.losses.MaskedMultiMSE`.

    Reference: F. Rodrigues and F. Pereira, "Deep Learning from Crowds", AAAI 2018;
    github.com/fmpr/CrowdLayer.

    Args:
        num_annotators: Number of annotators ``R``.
        conn_type: One of ``"S"``, ``"B"``, ``"S+B"``, ``"B+S"``.
        **kwargs: Base layer arguments (``name``, ``dtype``, ...).

    Input shape:
        ``(batch, 1)``.

    Output shape:
        ``(batch, num_annotators)``.

    Examples:
        >>> inputs = keras.Input((16,))
        >>> value = keras.layers.Dense(1)(inputs)
        >>> crowd = CrowdsRegression(num_annotators=10, conn_type="S+B")(value)
        >>> model = keras.Model(inputs, crowd)
        >>> model.compile("adam", loss=MaskedMultiMSE())
    """

    def __init__(self, num_annotators, conn_type="B", **kwargs):
        super().__init__(**kwargs)
        self.num_annotators = check_positive_int(num_annotators, "num_annotators")
        self.conn_type = _check_conn_type(conn_type, REGRESSION_CONN_TYPES)
        self.scale = None
        self.bias = None

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] not in (1, None):
            raise ValueError(
                "`CrowdsRegression` expects inputs of shape (batch, 1). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        if "S" in self.conn_type:
            self.scale = self.add_weight(
                name="scale", shape=(1, self.num_annotators), initializer="ones"
            )
        if "B" in self.conn_type:
            self.bias = self.add_weight(
                name="bias", shape=(1, self.num_annotators), initializer="zeros"
            )

    def call(self, inputs):
        if self.conn_type == "S":
            return inputs * self.scale
        if self.conn_type == "B":
            return inputs + self.bias
        if self.conn_type == "S+B":
            return inputs * self.scale + self.bias
        return (inputs + self.bias) * self.scale  # "B+S"

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_annotators)

    def get_config(self):
        config = super().get_config()
        config.update({"num_annotators": self.num_annotators, "conn_type": self.conn_type})
        return config
