"""Pooled crowd likelihoods: every answer of an item scored together, under Dawid-Skene's model.

The per-answer losses of :mod:`crowd_layers.losses` score each answer on its own: the network
is fitted to a mixture of the item's answers. Dawid and Skene's model multiplies the evidence of
all of an item's answers instead, so ten agreeing answers weigh far more than one. Here the
network's prediction is the class prior of that model (Raykar et al., JMLR 2010), and the loss
is the item's negative log marginal likelihood:

    -log p(answers_i | x_i) = -log sum_k p_k(x_i) prod_{r answered i} A_r[k, y_ir]

Its gradient with respect to the network's logits is ``p(x_i) - q_i``, where ``q_i`` is the
Dawid-Skene posterior of the true class given the prediction and the answers: end-to-end
training does the EM of Raykar et al. one step at a time.

- :class:`CrowdsPooled` holds one confusion matrix per annotator and outputs the joint
  log-probabilities ``log p_k(x) + log A_r[k, j]``; :class:`PooledCrowdLikelihood` scores them.
- :class:`CrowdsGaussian` and :class:`MaskedGaussianLikelihood` are the regression counterpart
  for valence and arousal: annotator ``r`` answers ``s_r f(x) + b_r`` plus Gaussian noise of
  their own ``sigma_r``, so a noisy annotator's answers count less.

References: A. P. Dawid and A. M. Skene, Applied Statistics 28(1), 1979, doi:10.2307/2346806;
V. C. Raykar et al., "Learning From Crowds", JMLR 11, 2010.
"""

import math

import numpy as np
from keras import initializers, layers, losses, ops, saving

from crowd_layers.checks import check_non_negative, check_positive, check_positive_int
from crowd_layers.confusions import (
    check_confusions,
    confusion_regularizer,
    initial_confusion_logits,
)
from crowd_layers.losses import MISSING_SENTINEL, check_reduction, mean_over_observed

__all__ = [
    "CrowdsGaussian",
    "CrowdsPooled",
    "MaskedGaussianLikelihood",
    "PooledCrowdLikelihood",
    "masked_gaussian_nll",
    "pooled_crowd_nll",
]

_EPSILON = 1e-7
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@saving.register_keras_serializable(package="crowd_layers")
class CrowdsPooled(layers.Layer):
    """Dawid-Skene crowd layer: the network is the class prior, one confusion matrix per annotator.

    Annotator ``r`` answers ``j`` for an item of true class ``k`` with probability
    ``A_r[k, j]``, ``A_r = softmax(logit_scale * L_r, axis=-1)``. Given the base network's
    class probabilities ``x``, the layer outputs the joint log-probabilities

        out[..., k, j, r] = log x[..., k] + log A_r[k, j] = log P(true k, r answers j | x)

    which :class:`PooledCrowdLikelihood` turns into the item's marginal likelihood of all its
    answers. (``logsumexp`` over ``k`` gives each annotator's answer distribution, the output
    of :class:`~crowd_layers.layers.CrowdsConfusion`.)

    Initialisation: ``init_confusions`` (``DawidSkene(...).fit(answers).confusions_``, or the
    confusion counts of the majority vote: see
    :func:`crowd_layers.aggregation.majority_vote_confusions`), else every annotator answers the
    true class with probability ``init_diagonal``. The logits are stored divided by
    ``logit_scale`` and multiplied back in the forward pass: with Adam-like optimizers they
    move ``logit_scale`` times faster than the base network (their own learning-rate
    multiplier). Leave them out of weight decay (``optimizer.exclude_from_weight_decay``
    with ``var_names=["confusion_logits"]``): decay would pull every annotator towards uniform
    answers.

    Args:
        num_classes: Number of classes ``K`` (``>= 2``).
        num_annotators: Number of annotators ``R``.
        init_confusions: Optional row-stochastic ``(num_annotators, K, K)`` start.
        init_diagonal: Start's probability of the true class when ``init_confusions`` is not
            given, in ``(1/K, 1)``.
        logit_scale: Positive learning-rate multiplier of the confusion logits.
        trace_weight: Optional weight ``>= 0`` of Tanno et al.'s mean diagonal entry (as in
            :class:`~crowd_layers.layers.CrowdsConfusion`; default 0: the pooled likelihood
            needs no push away from the identity when it starts from Dawid-Skene).
        volume_weight: Optional weight ``>= 0`` of GeoCrowdNet's volume term
            (:class:`ConfusionVolumeRegularizer`). At most one of the two regularisers.
        **kwargs: Base layer arguments (``name``, ``dtype``, ...).

    Input shape:
        ``(batch, num_classes)``: class probabilities.

    Output shape:
        ``(batch, num_classes, num_classes, num_annotators)``: joint log-probabilities (true
        class, answered class, annotator).

    Examples:
        >>> inputs = keras.Input((16,))
        >>> probs = keras.layers.Dense(4, activation="softmax")(inputs)
        >>> joint = CrowdsPooled(4, num_annotators=10)(probs)
        >>> model = keras.Model(inputs, joint)
        >>> model.compile("adam", loss=PooledCrowdLikelihood())
    """

    def __init__(
        self,
        num_classes,
        num_annotators,
        init_confusions=None,
        init_diagonal=0.7,
        logit_scale=30.0,
        trace_weight=0.0,
        volume_weight=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.num_annotators = check_positive_int(num_annotators, "num_annotators")
        if not 1.0 / self.num_classes < init_diagonal < 1.0:
            raise ValueError(
                f"`init_diagonal` must lie strictly between 1/num_classes={1 / self.num_classes:.4g} "
                f"and 1. Received: init_diagonal={init_diagonal!r}"
            )
        self.init_diagonal = float(init_diagonal)
        self.logit_scale = check_positive(logit_scale, "logit_scale")
        self.trace_weight = check_non_negative(trace_weight, "trace_weight")
        self.volume_weight = check_non_negative(volume_weight, "volume_weight")
        confusion_regularizer(self.trace_weight, self.volume_weight, self.logit_scale)  # checks
        self.init_confusions = None
        if init_confusions is not None:
            self.init_confusions = check_confusions(
                init_confusions, self.num_annotators, self.num_classes
            )
        self.confusion_logits = None

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] not in (None, self.num_classes):
            raise ValueError(
                "`CrowdsPooled` expects inputs of shape (batch, num_classes) with "
                f"num_classes={self.num_classes}. Received: input_shape={tuple(input_shape)}"
            )
        logits = initial_confusion_logits(
            self.num_annotators, self.num_classes, self.init_diagonal, self.init_confusions
        )
        self.confusion_logits = self.add_weight(
            name="confusion_logits",
            shape=(self.num_annotators, self.num_classes, self.num_classes),
            initializer=initializers.Constant(logits / self.logit_scale),
            regularizer=self._regularizer(),
        )

    def call(self, inputs):
        log_prior = ops.log(ops.maximum(inputs, _EPSILON))
        # (R, K, J) -> (K, J, R), broadcast against (batch, K, 1, 1)
        log_confusions = ops.transpose(self._log_confusions(), (1, 2, 0))
        return log_prior[:, :, None, None] + log_confusions[None]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes, self.num_classes, self.num_annotators)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "num_annotators": self.num_annotators,
                "init_confusions": (
                    None if self.init_confusions is None else self.init_confusions.tolist()
                ),
                "init_diagonal": self.init_diagonal,
                "logit_scale": self.logit_scale,
                "trace_weight": self.trace_weight,
                "volume_weight": self.volume_weight,
            }
        )
        return config

    def confusion_matrices(self):
        """The learned confusion matrices ``A_r``, as a NumPy array.

        Returns:
            Array ``(num_annotators, num_classes, num_classes)``: rows are the true class,
            columns the answered class, rows sum to one.
        """
        if not self.built:
            self.build((None, self.num_classes))
        return np.exp(np.asarray(ops.convert_to_numpy(self._log_confusions()), dtype=np.float64))

    def _log_confusions(self):
        return ops.log_softmax(self.confusion_logits * self.logit_scale, axis=-1)

    def _regularizer(self):
        return confusion_regularizer(self.trace_weight, self.volume_weight, self.logit_scale)


def _answer_indicators(y_true, num_classes, dtype):
    """``(batch, J, R)`` one-hot answers (zero for missing) and ``(batch, R)`` observed mask."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == 2:
        answers = ops.cast(y_true, "int32")
        observed = answers >= 0
        one_hot = ops.one_hot(ops.where(observed, answers, 0), num_classes, axis=1)
        one_hot = ops.cast(one_hot, dtype) * ops.cast(observed, dtype)[:, None, :]
        return one_hot, observed
    if len(y_true.shape) == 3:
        y_true = ops.cast(y_true, dtype)
        observed = ops.logical_and(ops.min(y_true, axis=1) >= 0, ops.sum(y_true, axis=1) > 0)
        return ops.where(observed[:, None, :], y_true, ops.zeros_like(y_true)), observed
    raise ValueError(
        "`y_true` must be integer answers (batch, num_annotators) with -1 for no answer, or "
        "one-hot answers (batch, num_classes, num_annotators) with all -1 vectors for no "
        f"answer. Received: y_true.shape={y_true.shape}"
    )


def pooled_crowd_nll(y_true, y_pred):
    """Negative log marginal likelihood of each item's answers under Dawid-Skene's model.

    Formula, for item ``i`` with ``y_pred[i, k, j, r] = log p_k(x_i) + log A_r[k, j]``:

        nll_i = -log sum_k p_k(x_i) prod_{r answered i} A_r[k, y_ir]

    An item without answers has ``nll_i = -log sum_k p_k = 0`` (and no gradient). The batch
    value is the mean over the items with at least one answer, returned as per-sample shares
    like the masked losses (so Keras' reduction gives that mean on one device and under
    ``tf.distribute`` alike).

    Args:
        y_true: Integer answers ``(batch, num_annotators)``, ``-1`` for no answer, or one-hot
            ``(batch, num_classes, num_annotators)`` with all ``-1`` vectors for no answer.
        y_pred: Joint log-probabilities ``(batch, K, K, num_annotators)`` of
            :class:`CrowdsPooled`.

    Returns:
        Per-sample values ``(batch,)``.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    if len(y_pred.shape) != 4 or (
        None not in y_pred.shape[1:3] and y_pred.shape[1] != y_pred.shape[2]
    ):
        raise ValueError(
            "`y_pred` must be the joint log-probabilities of `CrowdsPooled`, shape (batch, "
            f"num_classes, num_classes, num_annotators). Received: y_pred.shape={y_pred.shape}"
        )
    one_hot, observed = _answer_indicators(y_true, y_pred.shape[2], y_pred.dtype)
    if tuple(one_hot.shape[1:]) != tuple(y_pred.shape[2:]):
        raise ValueError(
            "`y_true` does not match `y_pred`: expected answers of num_annotators="
            f"{y_pred.shape[-1]} annotators among {y_pred.shape[2]} classes. Received: "
            f"y_true.shape={ops.shape(y_true)}, y_pred.shape={y_pred.shape}"
        )
    # log p_k: each row of A_r sums to one, so logsumexp over the answered class of annotator 0
    log_prior = ops.logsumexp(y_pred[..., 0], axis=2)
    # sum_r [answered] log A_r[k, y_r]: (batch, K)
    picked = ops.einsum("bkjr,bjr->bk", y_pred - log_prior[:, :, None, None], one_hot)
    nll = -ops.logsumexp(log_prior + picked, axis=1)
    answered = ops.any(observed, axis=1)
    nll = ops.where(answered, nll, ops.zeros_like(nll))
    return mean_over_observed(nll, answered)


@saving.register_keras_serializable(package="crowd_layers")
class PooledCrowdLikelihood(losses.Loss):
    """The mean over answered items of ``-log p(item's answers | x)``: pairs with :class:`CrowdsPooled`.

    Wraps :func:`pooled_crowd_nll`. Unlike :class:`~crowd_layers.losses.MaskedMultiCrossEntropy`,
    which scores each answer on its own, the answers of an item are multiplied inside one
    likelihood, as Dawid-Skene does; its gradient with respect to the network's logits is the
    prediction minus the Dawid-Skene posterior.

    Formula: ``mean_{i answered} -log sum_k p_k(x_i) prod_{r answered i} A_r[k, y_ir]``.

    Args:
        reduction: ``"sum_over_batch_size"`` (default, the mean over answered items),
            ``"mean"`` (the same) or ``"none"`` (per-sample shares).
        name: Loss name.
        dtype: Computation dtype.

    Input shape:
        ``y_pred``: ``(batch, K, K, num_annotators)``; ``y_true``: ``(batch, num_annotators)``
        integers with ``-1`` missing, or one-hot ``(batch, K, num_annotators)``.

    Output shape:
        A scalar (``(batch,)`` with ``reduction="none"``).

    Examples:
        >>> layer = CrowdsPooled(3, num_annotators=2, init_diagonal=0.5)
        >>> joint = layer(np.full((1, 3), 1.0 / 3.0))
        >>> # both answered 0: -log(1/3 * 0.5 * 0.5 + 2/3 * 0.25 * 0.25) = -log(0.125)
        >>> float(PooledCrowdLikelihood()(np.array([[0, 0]]), joint))
        2.0794...
    """

    def __init__(self, reduction="sum_over_batch_size", name="pooled_crowd_likelihood", dtype=None):
        super().__init__(name=name, reduction=check_reduction(reduction), dtype=dtype)

    def call(self, y_true, y_pred):
        return pooled_crowd_nll(y_true, y_pred)


# --------------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------------


@saving.register_keras_serializable(package="crowd_layers")
class CrowdsGaussian(layers.Layer):
    """Regression crowd layer with a noise level per annotator (Gaussian likelihood).

    Annotator ``r`` answers ``s_r f(x) + b_r + e``, ``e ~ N(0, sigma_r^2)``, with
    ``sigma_r = min_noise + softplus(v_r)``. The layer outputs, per annotator, the mean and
    the log standard deviation of that answer; :class:`MaskedGaussianLikelihood` scores them.
    Compared with :class:`~crowd_layers.layers.CrowdsRegression` and its squared error, an
    annotator whose answers scatter widely gets a large ``sigma_r`` and so a small weight
    (``1 / sigma_r^2``) in the network's gradient: the answers are pooled by reliability.

    Args:
        num_annotators: Number of annotators ``R``.
        conn_type: ``"S+B"`` (default: scale and bias), ``"S"``, ``"B"`` or ``"none"`` (the
            mean is ``f(x)`` for every annotator, only the noise differs).
        init_noise: Starting ``sigma_r`` (``> min_noise``).
        min_noise: Floor of ``sigma_r`` (``> 0``): an annotator with one answer cannot claim
            zero noise.
        **kwargs: Base layer arguments.

    Input shape:
        ``(batch, 1)``.

    Output shape:
        ``(batch, 2, num_annotators)``: ``[:, 0]`` the means, ``[:, 1]`` the log standard
        deviations.

    Examples:
        >>> inputs = keras.Input((16,))
        >>> value = keras.layers.Dense(1, activation="tanh")(inputs)
        >>> crowd = CrowdsGaussian(num_annotators=10)(value)
        >>> model = keras.Model(inputs, crowd)
        >>> model.compile("adam", loss=MaskedGaussianLikelihood())
    """

    CONN_TYPES = ("S+B", "S", "B", "none")

    def __init__(self, num_annotators, conn_type="S+B", init_noise=0.3, min_noise=0.02, **kwargs):
        super().__init__(**kwargs)
        self.num_annotators = check_positive_int(num_annotators, "num_annotators")
        if conn_type not in self.CONN_TYPES:
            raise ValueError(
                f"`conn_type` must be one of {self.CONN_TYPES}. Received: conn_type={conn_type!r}"
            )
        self.conn_type = conn_type
        self.min_noise = check_positive(min_noise, "min_noise")
        self.init_noise = check_positive(init_noise, "init_noise")
        if self.init_noise <= self.min_noise:
            raise ValueError(
                f"`init_noise` must exceed min_noise={self.min_noise}. "
                f"Received: init_noise={init_noise!r}"
            )
        self.scale = None
        self.bias = None
        self.noise = None

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] not in (1, None):
            raise ValueError(
                "`CrowdsGaussian` expects inputs of shape (batch, 1). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        r = self.num_annotators
        if "S" in self.conn_type:
            self.scale = self.add_weight(name="scale", shape=(1, r), initializer="ones")
        if "B" in self.conn_type:
            self.bias = self.add_weight(name="bias", shape=(1, r), initializer="zeros")
        excess = self.init_noise - self.min_noise
        raw = math.log(math.expm1(excess))  # softplus^-1
        self.noise = self.add_weight(
            name="noise", shape=(1, r), initializer=initializers.Constant(raw)
        )

    def call(self, inputs):
        mean = inputs
        if self.scale is not None:
            mean = mean * self.scale
        if self.bias is not None:
            mean = mean + self.bias
        mean = mean + ops.zeros((1, self.num_annotators), dtype=mean.dtype)
        log_sigma = ops.log(self.min_noise + ops.softplus(self.noise))
        log_sigma = ops.zeros_like(mean) + log_sigma
        return ops.stack([mean, log_sigma], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2, self.num_annotators)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_annotators": self.num_annotators,
                "conn_type": self.conn_type,
                "init_noise": self.init_noise,
                "min_noise": self.min_noise,
            }
        )
        return config

    def noise_levels(self):
        """Each annotator's learned ``sigma_r``, as a NumPy array ``(num_annotators,)``."""
        if not self.built:
            self.build((None, 1))
        sigma = self.min_noise + ops.softplus(self.noise)
        return np.asarray(ops.convert_to_numpy(sigma), dtype=np.float64).reshape(-1)


def masked_gaussian_nll(y_true, y_pred, normalize_precision=True):
    """Gaussian negative log-likelihood of the observed answers, averaged over them.

    Formula, with ``mu = y_pred[:, 0]`` and ``log sigma = y_pred[:, 1]``:

        mean_{(i, r) observed} (y_ir - mu_ir)^2 / (2 sigma_r^2) + log sigma_r + log(2 pi) / 2

    With ``normalize_precision`` (default) the value is exactly that, and so is its gradient for
    the noise levels, but the gradient for the means (the network, the scales and biases) is
    that of ``mean w_r (y_ir - mu_ir)^2`` with ``w_r = (1 / sigma_r^2) / mean_s(1 / sigma_s^2)``:
    the likelihood's direction (each answer weighted by its annotator's precision, the same
    stationary points) at the scale of :func:`~crowd_layers.losses.masked_multi_mse`. Without
    it, the means' gradient grows as ``1 / sigma^2`` while the noise levels are learned, and in a
    multi-head model valence and arousal would outweigh the expression head. ``w`` depends on
    the layer's weights only, not on the batch, so it is the same on every replica.

    Args:
        y_true: Answers ``(batch, num_annotators)``, ``NaN`` (or ``999999999``) for no answer.
        y_pred: ``(batch, 2, num_annotators)`` from :class:`CrowdsGaussian`.
        normalize_precision: Rescale the means' gradient as above (default ``True``).

    Returns:
        Per-sample values ``(batch,)`` (shares of the mean over observed answers, as in
        :func:`~crowd_layers.losses.masked_multi_mse`).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    if len(y_pred.shape) != 3 or y_pred.shape[1] != 2 or len(y_true.shape) != 2:
        raise ValueError(
            "`y_pred` must be (batch, 2, num_annotators) means and log standard deviations of "
            "`CrowdsGaussian`, and `y_true` (batch, num_annotators) answers. Received: "
            f"y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
    if y_true.shape[-1] is not None and y_true.shape[-1] != y_pred.shape[-1]:
        raise ValueError(
            "`y_true` and `y_pred` must have the same number of annotators. Received: "
            f"y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
    mean, log_sigma = y_pred[:, 0], y_pred[:, 1]
    sentinel = ops.cast(MISSING_SENTINEL, y_true.dtype)
    observed = ops.logical_and(ops.isfinite(y_true), ops.not_equal(y_true, sentinel))
    targets = ops.where(observed, y_true, mean)
    squared = ops.square(targets - mean)
    precision = ops.exp(-2.0 * log_sigma)
    if normalize_precision:
        weights = ops.stop_gradient(precision / ops.mean(precision, axis=1, keepdims=True))
        weighted = weights * squared
        # value: the NLL; gradients: sigma from the NLL, the means from the weighted squares
        terms = 0.5 * ops.stop_gradient(squared) * precision + log_sigma + _HALF_LOG_2PI
        terms = terms + weighted - ops.stop_gradient(weighted)
    else:
        terms = 0.5 * squared * precision + log_sigma + _HALF_LOG_2PI
    terms = ops.where(observed, terms, ops.zeros_like(terms))
    return mean_over_observed(terms, observed)


@saving.register_keras_serializable(package="crowd_layers")
class MaskedGaussianLikelihood(losses.Loss):
    """Mean Gaussian NLL of the observed answers: pairs with :class:`CrowdsGaussian`.

    Wraps :func:`masked_gaussian_nll` (see there for ``normalize_precision``).

    Formula: ``mean_{(i, r) observed} (y_ir - mu_ir)^2 / (2 sigma_r^2) + log sigma_r +
    log(2 pi) / 2``.

    Args:
        normalize_precision: Give the means the likelihood's gradient direction at the scale of
            the masked squared error (default ``True``).
        reduction: As for :class:`PooledCrowdLikelihood`.
        name: Loss name.
        dtype: Computation dtype.

    Examples:
        >>> y_pred = np.zeros((1, 2, 2))  # mean 0, sigma 1 for both annotators
        >>> float(MaskedGaussianLikelihood()(np.array([[1.0, np.nan]]), y_pred))
        1.4189...
    """

    def __init__(
        self,
        normalize_precision=True,
        reduction="sum_over_batch_size",
        name="masked_gaussian_likelihood",
        dtype=None,
    ):
        super().__init__(name=name, reduction=check_reduction(reduction), dtype=dtype)
        self.normalize_precision = bool(normalize_precision)

    def call(self, y_true, y_pred):
        return masked_gaussian_nll(y_true, y_pred, normalize_precision=self.normalize_precision)

    def get_config(self):
        config = super().get_config()
        config["normalize_precision"] = self.normalize_precision
        return config
