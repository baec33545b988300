"""CoNAL: common and individual confusions, mixed per item and annotator (Chu et al., AAAI 2021).

Chu, Ma and Wang split an annotator's noise in two: confusions that every annotator makes on
hard items (one *common* confusion matrix ``W_c``, shared by the crowd) and the annotator's own
confusions (an *individual* matrix ``W_r``). Which of the two produced an answer depends on the
item and on the annotator, through a mixing weight

    omega_ir = sigmoid(<u(x_i) / |u(x_i)|, v_r / |v_r|>)

of an item embedding ``u`` (a small network on the item's features) and an annotator embedding
``v_r``. The crowd is fitted with the per-answer cross-entropy of the observed answers, and a
regulariser ``-lambda * sum_r |W_r - W_c|_F`` keeps the individual matrices away from the
common one (its sign is negative: the term rewards the difference).

What came from where:

- the paper (Z. Chu, J. Ma, H. Wang, "Learning from Crowds by Modeling Common Confusions",
  AAAI 2021, doi:10.1609/aaai.v35i7.16730): the decomposition, the mixing weight as a sigmoid
  of the product of an item and an annotator embedding, the loss with the difference
  regulariser;
- the authors' code (github.com/zdchu/CoNAL, ``conal.py``, ``workflow.py``): the details the
  paper leaves open, taken as they are there: both matrices start at ``2 * I`` and are
  unnormalised, the mixture is taken of the scores ``p @ W`` and the softmax comes after it
  (inside the cross-entropy); the item embedding is ``Dense(128)`` then ``Dense(20)`` with no
  activation between, on the item's raw (flattened) input; the annotator embedding is a
  ``Linear`` layer on the annotator's one-hot vector (an embedding plus a shared bias); both
  embeddings are L2-normalised before the product, so ``omega`` lies in
  ``[sigmoid(-1), sigmoid(1)] = [0.27, 0.73]``; ``lambda = 1e-5`` and the Frobenius norms are
  summed over the annotators. M. Herde et al.'s re-implementation
  (github.com/ies-research/multi-annotator-machine-learning, ``maml/classifiers/_conal.py``)
  agrees on these; crowd-kit's ``crowdkit.learning.CoNAL`` normalises the individual
  matrices but not the common one, a hybrid of the two readings that is not followed here;
- new here: ``mixture="probabilities"``, which reads the two matrices as row-stochastic
  (``softmax`` of their logits) and mixes the two *answer distributions*, the generative
  reading of the paper's mixture (and the natural home of ``init_confusions``); the
  ``init_confusions`` start (the common matrix starts at the mean of the given matrices); the
  package's ``logit_scale`` learning-rate multiplier; the gradient of the norm at zero is set
  to 0 (PyTorch's convention; TensorFlow's would be NaN at the common ``2 * I`` start).

The layer outputs per-annotator answer scores ``(batch, K, R)`` whose softmax over the class
axis is the modelled answer distribution (log-probabilities in the ``"probabilities"`` mode), so
:class:`~crowd_layers.losses.MaskedMultiCrossEntropy` with its default ``from_logits=True``
scores it, with the package's missing answers (-1) and reduction rule.
"""

import numpy as np
from keras import initializers, layers, ops, regularizers, saving

from crowd_layers.checks import check_non_negative, check_positive, check_positive_int
from crowd_layers.confusions import check_confusions, initial_confusion_logits

__all__ = ["CONAL_MIXTURES", "ConfusionDifferenceRegularizer", "CrowdsCoNAL"]

#: How :class:`CrowdsCoNAL` mixes the common and the individual confusions.
CONAL_MIXTURES = ("logits", "probabilities")

_EPSILON = 1e-7
_NORM_FLOOR = 1e-12
#: The authors' start: 2 on the diagonal of every matrix, 0 elsewhere (unnormalised).
_CODE_DIAGONAL = 2.0


def _check_mixture(mixture):
    if mixture not in CONAL_MIXTURES:
        raise ValueError(
            f"`mixture` must be one of {CONAL_MIXTURES}. Received: mixture={mixture!r}"
        )
    return mixture


def _matrices(scaled_logits, mixture):
    """The matrices that are mixed: the raw scores, or their row softmax."""
    if mixture == "probabilities":
        return ops.softmax(scaled_logits, axis=-1)
    return scaled_logits


def _l2_normalize(x):
    """``x / |x|`` along the last axis, with PyTorch's floor of the norm (1e-12)."""
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), _NORM_FLOOR**2))
    return x / norm


@saving.register_keras_serializable(package="crowd_layers")
class ConfusionDifferenceRegularizer(regularizers.Regularizer):
    """CoNAL's regulariser: ``-difference_weight * sum_r |M_r - M_c|_F``.

    Applied to the stacked logits ``L`` of :class:`CrowdsCoNAL`, shape
    ``(num_annotators + 1, K, K)``: the first ``R`` are the annotators' individual matrices, the
    last the common one. ``M = logit_scale * L`` (``mixture="logits"``, the authors' code) or
    ``M = softmax(logit_scale * L, axis=-1)`` (``"probabilities"``). The value is negative:
    minimising it pulls every individual matrix away from the common one (Chu et al., AAAI 2021;
    weight 1e-5 in their code). Where ``M_r = M_c`` the norm's gradient is taken as 0.

    Args:
        difference_weight: Weight ``>= 0`` (``lambda``).
        mixture: ``"logits"`` or ``"probabilities"``, as the layer.
        logit_scale: Multiplier of the stored logits, as the layer.

    Examples:
        >>> regularizer = ConfusionDifferenceRegularizer(0.5, mixture="logits")
        >>> logits = np.stack([np.eye(2), np.zeros((2, 2))])  # one annotator, then common
        >>> float(regularizer(logits))  # -0.5 * |I - 0|_F = -0.5 * sqrt(2)
        -0.7071...
    """

    def __init__(self, difference_weight=1e-5, mixture="logits", logit_scale=1.0):
        self.difference_weight = check_non_negative(difference_weight, "difference_weight")
        self.mixture = _check_mixture(mixture)
        self.logit_scale = check_positive(logit_scale, "logit_scale")

    def __call__(self, logits):
        logits = ops.convert_to_tensor(logits)
        matrices = _matrices(logits * self.logit_scale, self.mixture)
        squared = ops.sum(ops.square(matrices[:-1] - matrices[-1:]), axis=(1, 2))
        positive = squared > 0
        norms = ops.where(positive, ops.sqrt(ops.where(positive, squared, 1.0)), 0.0)
        return -self.difference_weight * ops.sum(norms)

    def get_config(self):
        return {
            "difference_weight": self.difference_weight,
            "mixture": self.mixture,
            "logit_scale": self.logit_scale,
        }


@saving.register_keras_serializable(package="crowd_layers")
class CrowdsCoNAL(layers.Layer):
    """CoNAL crowd layer: a common and an individual confusion, mixed per item and annotator.

    Chu, Ma and Wang, "Learning from Crowds by Modeling Common Confusions", AAAI 2021 (code:
    github.com/zdchu/CoNAL); the module docstring says which detail comes from where.

    Inputs: the base network's class probabilities ``p`` and the item features ``x`` that
    decide the mixing weight (the authors feed the network's input). With
    ``u(x) = Dense_2(Dense_1(flatten(x)))`` (no activation, as in their code) and an annotator
    embedding ``v_r`` (plus a shared bias), both L2-normalised,

        omega_ir = sigmoid(<u(x_i) / |u(x_i)|, v_r / |v_r|>)

    and, with ``M = logit_scale * L`` the stored logits of the common (``c``) and individual
    (``r``) matrices:

    - ``mixture="logits"`` (default, the authors' code): ``out_ir = omega_ir * p_i @ M_c +
      (1 - omega_ir) * p_i @ M_r``, the answer distribution is ``softmax(out_ir)``;
    - ``mixture="probabilities"``: ``A = softmax(M, axis=-1)`` (rows: true class) and
      ``out_ir = log(omega_ir * p_i @ A_c + (1 - omega_ir) * p_i @ A_r)``: annotator ``r``
      answers by the common confusion with probability ``omega_ir``, else by their own.

    Either output is a valid logit for :class:`~crowd_layers.losses.MaskedMultiCrossEntropy`
    (``from_logits=True``, its default). The layer adds CoNAL's difference regulariser
    (:class:`ConfusionDifferenceRegularizer`) as a weight regulariser of ``confusion_logits``
    (so each ``tf.distribute`` replica computes it from its own copy of the weights). After
    training, predict with the base network alone (the model from the inputs to ``p``).

    Initialisation: ``init_confusions`` (row-stochastic ``(R, K, K)``, e.g. Dawid-Skene's
    ``confusions_``; the logits become their logarithm, the common matrix the logarithm of
    their mean); else ``init_diagonal`` (the probability of the true class, spread evenly
    otherwise); else (default) the authors' ``2 * I`` for every matrix. In the ``"logits"``
    mode, ``init_diagonal = e^2 / (e^2 + K - 1)`` trains exactly like ``2 * I`` (the two differ
    by a constant per row, which the softmax ignores).

    Args:
        num_classes: Number of classes ``K`` (``>= 2``).
        num_annotators: Number of annotators ``R``.
        mixture: ``"logits"`` (default) or ``"probabilities"``, see above.
        difference_weight: ``lambda >= 0`` of ``-lambda * sum_r |M_r - M_c|_F`` (default
            1e-5, the authors' code).
        init_diagonal: Optional start probability of the true class, in ``(1/K, 1)``.
        init_confusions: Optional row-stochastic ``(num_annotators, K, K)`` start.
        embedding_dim: Size of the item and annotator embeddings (default 20, their code).
        hidden_units: Width of the item network's first layer (default 128, their code).
        logit_scale: Positive learning-rate multiplier of the confusion logits (default 1: as
            in their code, the confusions learn at the network's rate).
        **kwargs: Base layer arguments (``name``, ``dtype``, ...).

    Input shape:
        A list ``[probabilities, features]``: ``(batch, num_classes)`` and ``(batch, ...)``
        (flattened; every axis but the batch must be known).

    Output shape:
        ``(batch, num_classes, num_annotators)``: per-annotator answer scores (logits).

    Examples:
        >>> inputs = keras.Input((16,))
        >>> probs = keras.layers.Dense(4, activation="softmax")(inputs)
        >>> crowd = CrowdsCoNAL(4, num_annotators=10)([probs, inputs])
        >>> model = keras.Model(inputs, crowd)
        >>> model.compile("adam", loss=MaskedMultiCrossEntropy())
        >>> predictor = keras.Model(inputs, probs)  # shares the trained layers
    """

    def __init__(
        self,
        num_classes,
        num_annotators,
        mixture="logits",
        difference_weight=1e-5,
        init_diagonal=None,
        init_confusions=None,
        embedding_dim=20,
        hidden_units=128,
        logit_scale=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.num_annotators = check_positive_int(num_annotators, "num_annotators")
        self.mixture = _check_mixture(mixture)
        self.difference_weight = check_non_negative(difference_weight, "difference_weight")
        if init_diagonal is not None:
            if isinstance(init_diagonal, bool) or not (
                1.0 / self.num_classes < init_diagonal < 1.0
            ):
                raise ValueError(
                    "`init_diagonal` must be None (the authors' 2 * I start) or lie strictly "
                    f"between 1/num_classes={1 / self.num_classes:.4g} and 1. "
                    f"Received: init_diagonal={init_diagonal!r}"
                )
            init_diagonal = float(init_diagonal)
        self.init_diagonal = init_diagonal
        self.init_confusions = None
        if init_confusions is not None:
            self.init_confusions = check_confusions(
                init_confusions, self.num_annotators, self.num_classes
            )
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        self.hidden_units = check_positive_int(hidden_units, "hidden_units")
        self.logit_scale = check_positive(logit_scale, "logit_scale")
        self.confusion_logits = None

    def build(self, input_shape):
        feature_size = self._check_input_shape(input_shape)
        k, r, e, h = self.num_classes, self.num_annotators, self.embedding_dim, self.hidden_units
        regularizer = None
        if self.difference_weight:
            regularizer = ConfusionDifferenceRegularizer(
                self.difference_weight, self.mixture, self.logit_scale
            )
        self.confusion_logits = self.add_weight(
            name="confusion_logits",
            shape=(r + 1, k, k),
            initializer=initializers.Constant(self._initial_logits()),
            regularizer=regularizer,
        )
        self.instance_kernel_1 = self.add_weight(name="instance_kernel_1", shape=(feature_size, h))
        self.instance_bias_1 = self.add_weight(
            name="instance_bias_1", shape=(h,), initializer="zeros"
        )
        self.instance_kernel_2 = self.add_weight(name="instance_kernel_2", shape=(h, e))
        self.instance_bias_2 = self.add_weight(
            name="instance_bias_2", shape=(e,), initializer="zeros"
        )
        self.annotator_embedding = self.add_weight(name="annotator_embedding", shape=(r, e))
        self.annotator_bias = self.add_weight(
            name="annotator_bias", shape=(e,), initializer="zeros"
        )

    def call(self, inputs):
        probabilities, features = inputs
        omega = ops.expand_dims(self._common_rates(features), 1)  # (batch, 1, R)
        matrices = _matrices(self.confusion_logits * self.logit_scale, self.mixture)
        common = ops.matmul(probabilities, matrices[-1])  # (batch, K)
        individual = ops.transpose(matrices[:-1], (1, 2, 0))  # (K, J, R)
        individual = ops.tensordot(probabilities, individual, axes=[[-1], [0]])  # (batch, J, R)
        mixed = omega * ops.expand_dims(common, -1) + (1.0 - omega) * individual
        if self.mixture == "probabilities":
            return ops.log(ops.maximum(mixed, _EPSILON))
        return mixed

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.num_classes, self.num_annotators)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "num_annotators": self.num_annotators,
                "mixture": self.mixture,
                "difference_weight": self.difference_weight,
                "init_diagonal": self.init_diagonal,
                "init_confusions": (
                    None if self.init_confusions is None else self.init_confusions.tolist()
                ),
                "embedding_dim": self.embedding_dim,
                "hidden_units": self.hidden_units,
                "logit_scale": self.logit_scale,
            }
        )
        return config

    def common_rates(self, features):
        """The mixing weights ``omega`` of a batch of item features, as a NumPy array.

        Args:
            features: ``(batch, ...)`` features, as the layer's second input.

        Returns:
            Array ``(batch, num_annotators)`` in ``[0.27, 0.73]``: the probability that each
            annotator's answer to each item follows the common confusion.
        """
        self._check_built()
        features = ops.convert_to_tensor(features, dtype=self.compute_dtype)
        return np.asarray(ops.convert_to_numpy(self._common_rates(features)), dtype=np.float64)

    def confusion_matrices(self):
        """Each annotator's individual confusion matrix as an answer distribution (NumPy).

        Row ``k`` of annotator ``r`` is the distribution of ``r``'s answers to an item of
        certain class ``k`` answered by ``r``'s own confusion (``omega = 0``): the row softmax
        of ``logit_scale * L_r``, in both mixtures.

        Returns:
            Array ``(num_annotators, num_classes, num_classes)``; rows sum to one.
        """
        return self._distributions()[:-1]

    def common_confusion_matrix(self):
        """The common confusion matrix as an answer distribution, ``(num_classes, num_classes)``."""
        return self._distributions()[-1]

    def _check_input_shape(self, input_shape):
        """The flattened feature size; ``ValueError`` unless ``[(batch, K), (batch, ...)]``."""
        shapes = list(input_shape) if isinstance(input_shape, list | tuple) else []
        if len(shapes) != 2 or not all(isinstance(s, list | tuple) for s in shapes):
            raise ValueError(
                "`CrowdsCoNAL` expects two inputs [probabilities (batch, num_classes), features "
                f"(batch, ...)]. Received: input_shape={input_shape}"
            )
        probabilities, features = (tuple(s) for s in shapes)
        if len(probabilities) != 2 or probabilities[-1] not in (None, self.num_classes):
            raise ValueError(
                "The first input of `CrowdsCoNAL` must be class probabilities of shape (batch, "
                f"num_classes={self.num_classes}). Received: input_shape={input_shape}"
            )
        if len(features) < 2 or any(d is None for d in features[1:]):
            raise ValueError(
                "The second input of `CrowdsCoNAL` must be features (batch, ...) with every "
                f"axis but the batch known. Received: input_shape={input_shape}"
            )
        return int(np.prod(features[1:]))

    def _check_built(self):
        if not self.built:
            raise ValueError(
                "`CrowdsCoNAL` must be built (called on inputs) before reading its weights. "
                f"Received: layer={self.name!r}, built={self.built}"
            )

    def _initial_logits(self):
        """Stored logits ``(R + 1, K, K)``: the individual matrices, then the common one."""
        k, r = self.num_classes, self.num_annotators
        if self.init_confusions is not None:
            common = self.init_confusions.mean(axis=0, keepdims=True)
            stacked = np.concatenate([self.init_confusions, common])
            logits = initial_confusion_logits(r + 1, k, None, stacked)
        elif self.init_diagonal is not None:
            logits = initial_confusion_logits(r + 1, k, self.init_diagonal, None)
        else:
            logits = np.broadcast_to(_CODE_DIAGONAL * np.eye(k), (r + 1, k, k)).copy()
        return logits / self.logit_scale

    def _common_rates(self, features):
        flat = ops.reshape(features, (ops.shape(features)[0], -1))
        instance = ops.matmul(flat, self.instance_kernel_1) + self.instance_bias_1
        instance = ops.matmul(instance, self.instance_kernel_2) + self.instance_bias_2
        annotators = self.annotator_embedding + self.annotator_bias
        product = ops.matmul(_l2_normalize(instance), ops.transpose(_l2_normalize(annotators)))
        return ops.sigmoid(product)

    def _distributions(self):
        self._check_built()
        scaled = self.confusion_logits * self.logit_scale
        return np.asarray(ops.convert_to_numpy(ops.softmax(scaled, axis=-1)), dtype=np.float64)
