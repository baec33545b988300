"""The latent-truth crowd head for continuous answers (valence, arousal): the network as the
prior of :class:`~crowd_layers.LatentTruthRegression`'s model, trained by the marginal
likelihood of each item's answers.

Item ``i``'s truth is ``t_i ~ N(f(x_i), tau^2)``, the network's prediction with a learned
residual spread ``tau``; annotator ``r`` answers ``s_r t_i + b_r + N(0, sigma_r^2)``. The truth
is integrated out: an item's observed answers are jointly Gaussian with mean ``s f(x_i) + b``
and covariance ``diag(sigma^2) + tau^2 s s^T``, and the loss is the item's negative log
marginal likelihood, in closed form (the matrix determinant lemma and Woodbury's identity; no
``R x R`` matrix is built). Its gradient for ``f`` is ``-(t_hat_i - f) / (tau^2 + 1 / P_i)``
with ``t_hat_i`` the annotators' precision-weighted, bias- and scale-corrected mean and ``P_i``
its precision: the answers of an item are pooled before they reach the network, and an item
with many answers weighs more than one with few, but at most ``1 / tau^2``.

:class:`CrowdsLatentTruth` (the layer) and :class:`LatentTruthLikelihood` (the loss) are the
regression counterpart of :class:`~crowd_layers.CrowdsPooled` and
:class:`~crowd_layers.PooledCrowdLikelihood`. Compared with
:class:`~crowd_layers.CrowdsGaussian`, which scores each answer on its own and so attributes
the network's own error to every annotator's noise, the network's error has its own ``tau``
here, and the truth stays on the scale of the average answer (see ``normalize_scale``).
"""

import math

import numpy as np
from keras import initializers, layers, losses, ops, saving

from crowd_layers.checks import check_positive, check_positive_int
from crowd_layers.losses import MISSING_SENTINEL, check_reduction, mean_over_observed

__all__ = ["CrowdsLatentTruth", "LatentTruthLikelihood", "latent_truth_nll"]

_LOG_2PI = math.log(2.0 * math.pi)


def _softplus_inverse(value):
    return np.log(np.expm1(value))


def _annotator_vector(value, num_annotators, name, default):
    """A float ``(num_annotators,)`` vector from ``None`` (``default``), a scalar or a list."""
    if value is None:
        value = default
    array = np.asarray(value, np.float64)
    if array.ndim == 0:
        array = np.full(num_annotators, float(array))
    if array.shape != (num_annotators,) or not np.all(np.isfinite(array)):
        raise ValueError(
            f"`{name}` must be a finite scalar or {num_annotators} values, one per annotator. "
            f"Received: {name} of shape {array.shape}"
        )
    return array


@saving.register_keras_serializable(package="crowd_layers")
class CrowdsLatentTruth(layers.Layer):
    """Latent-truth crowd layer: the network's value is the prior mean of each item's truth.

    Annotator ``r`` answers ``s_r t + b_r + N(0, sigma_r^2)`` about a truth
    ``t ~ N(f(x), tau^2)``. The layer outputs, per annotator, the mean of that answer given
    ``f(x)``, the scale ``s_r``, ``log sigma_r`` and ``log tau``;
    :class:`LatentTruthLikelihood` scores them with the item's marginal likelihood.

    Start: ``init_scale``, ``init_bias``, ``init_noise`` (per annotator or one value) and
    ``init_prior_std`` (``tau``); from the aggregator with :meth:`from_aggregator`. The
    parameters are stored divided by ``learning_rate_multiplier`` and multiplied back in the
    forward pass, so with Adam-like optimizers they move that many times faster than the
    network.

    ``normalize_scale`` (default) keeps the truth on the scale of the average answer, as
    :class:`~crowd_layers.LatentTruthRegression` does: the model is unchanged by
    ``f -> alpha f + beta`` with the annotators' parameters adjusted, and without a rule the
    network's outputs drift with the scales and biases (a CCC against the truth then suffers).
    The effective ``s = s_raw / sum_r w_r s_raw_r`` and ``b = b_raw - s sum_r w_r b_raw_r``
    have ``sum_r w_r s_r = 1`` and ``sum_r w_r b_r = 0`` for the ``annotator_weights`` ``w``
    (normalised to sum 1; default equal; the training command passes each annotator's number
    of training answers).

    Args:
        num_annotators: Number of annotators ``R``.
        init_scale, init_bias: Start of ``s_r`` (default 1) and ``b_r`` (default 0).
        init_noise: Start of ``sigma_r`` (default 0.3), each ``> min_noise``.
        init_prior_std: Start of ``tau`` (default 0.3), ``> min_noise``.
        min_noise: Floor of ``sigma_r`` and ``tau`` (``> 0``).
        learning_rate_multiplier: Positive learning-rate multiplier of the annotators'
            parameters and ``tau``.
        normalize_scale: Keep the weighted mean scale 1 and mean bias 0 (default ``True``).
        annotator_weights: Optional ``(R,)`` non-negative weights of that mean.
        **kwargs: Base layer arguments.

    Input shape:
        ``(batch, 1)``: the network's value.

    Output shape:
        ``(batch, 4, num_annotators)``: means, scales, ``log sigma``, ``log tau``.

    Examples:
        >>> inputs = keras.Input((16,))
        >>> value = keras.layers.Dense(1, activation="tanh")(inputs)
        >>> crowd = CrowdsLatentTruth(num_annotators=10)(value)
        >>> model = keras.Model(inputs, crowd)
        >>> model.compile("adam", loss=LatentTruthLikelihood())
    """

    def __init__(
        self,
        num_annotators,
        init_scale=None,
        init_bias=None,
        init_noise=None,
        init_prior_std=0.3,
        min_noise=0.02,
        learning_rate_multiplier=1.0,
        normalize_scale=True,
        annotator_weights=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        r = self.num_annotators = check_positive_int(num_annotators, "num_annotators")
        self.min_noise = check_positive(min_noise, "min_noise")
        self.init_scale = _annotator_vector(init_scale, r, "init_scale", 1.0)
        self.init_bias = _annotator_vector(init_bias, r, "init_bias", 0.0)
        self.init_noise = _annotator_vector(init_noise, r, "init_noise", 0.3)
        self.init_prior_std = check_positive(init_prior_std, "init_prior_std")
        if np.any(self.init_noise <= self.min_noise) or self.init_prior_std <= self.min_noise:
            raise ValueError(
                f"`init_noise` and `init_prior_std` must exceed min_noise={self.min_noise}. "
                f"Received: init_noise min {self.init_noise.min():.4g}, "
                f"init_prior_std={self.init_prior_std!r}"
            )
        self.learning_rate_multiplier = check_positive(
            learning_rate_multiplier, "learning_rate_multiplier"
        )
        self.normalize_scale = bool(normalize_scale)
        weights = _annotator_vector(annotator_weights, r, "annotator_weights", 1.0)
        if np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(
                "`annotator_weights` must be non-negative with a positive sum. "
                f"Received: annotator_weights sum {weights.sum():.4g}"
            )
        self.annotator_weights = weights / weights.sum()
        self.scale = self.bias = self.noise = self.prior_std = None

    @classmethod
    def from_aggregator(cls, aggregator, **kwargs):
        """The layer started from a fitted :class:`~crowd_layers.LatentTruthRegression`: its
        scales, biases and noise levels, and ``tau`` its spread of the truths (the network
        knows nothing yet). ``kwargs`` go to the constructor (``annotator_weights`` ...)."""
        floor = kwargs.get("min_noise", 0.02)
        prior_std = aggregator.prior_std_
        if not np.isfinite(prior_std):
            prior_std = float(np.nanstd(aggregator.truth_))
        return cls(
            num_annotators=len(aggregator.scale_),
            init_scale=aggregator.scale_,
            init_bias=aggregator.bias_,
            init_noise=np.maximum(aggregator.noise_, 1.5 * floor),
            init_prior_std=max(float(prior_std), 1.5 * floor),
            **kwargs,
        )

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] not in (1, None):
            raise ValueError(
                "`CrowdsLatentTruth` expects inputs of shape (batch, 1). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        m, r = self.learning_rate_multiplier, self.num_annotators

        def weight(name, value, shape):
            start = np.asarray(value, np.float64).reshape(shape) / m
            return self.add_weight(name=name, shape=shape, initializer=initializers.Constant(start))

        self.scale = weight("scale", self.init_scale, (1, r))
        self.bias = weight("bias", self.init_bias, (1, r))
        self.noise = weight("noise", _softplus_inverse(self.init_noise - self.min_noise), (1, r))
        self.prior_std = weight(
            "prior_std", _softplus_inverse(self.init_prior_std - self.min_noise), (1, 1)
        )

    def _parameters(self):
        """Effective ``(scale, bias, sigma, tau)`` tensors, ``(1, R)`` and ``(1, 1)``."""
        m = self.learning_rate_multiplier
        scale, bias = self.scale * m, self.bias * m
        if self.normalize_scale:
            w = ops.convert_to_tensor(self.annotator_weights.reshape(1, -1), dtype=scale.dtype)
            scale = scale / ops.sum(w * scale, axis=1, keepdims=True)
            bias = bias - scale * ops.sum(w * bias, axis=1, keepdims=True)
        sigma = self.min_noise + ops.softplus(self.noise * m)
        tau = self.min_noise + ops.softplus(self.prior_std * m)
        return scale, bias, sigma, tau

    def call(self, inputs):
        scale, bias, sigma, tau = self._parameters()
        mean = inputs * scale + bias
        ones = ops.ones_like(mean)
        return ops.stack([mean, ones * scale, ones * ops.log(sigma), ones * ops.log(tau)], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 4, self.num_annotators)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_annotators": self.num_annotators,
                "init_scale": self.init_scale.tolist(),
                "init_bias": self.init_bias.tolist(),
                "init_noise": self.init_noise.tolist(),
                "init_prior_std": self.init_prior_std,
                "min_noise": self.min_noise,
                "learning_rate_multiplier": self.learning_rate_multiplier,
                "normalize_scale": self.normalize_scale,
                "annotator_weights": self.annotator_weights.tolist(),
            }
        )
        return config

    def mean_gradient_scale(self):
        """``2 tau_0^2`` from ``init_prior_std``: the :class:`LatentTruthLikelihood` factor
        that starts the network at the pace of the squared error to the pooled answers."""
        return 2.0 * self.init_prior_std**2

    def annotator_parameters(self):
        """The learned ``scale``, ``bias``, ``noise`` ``(R,)`` and ``prior_std`` (``tau``), as
        NumPy arrays (the effective values, after ``normalize_scale``)."""
        if not self.built:
            self.build((None, 1))
        scale, bias, sigma, tau = (
            np.asarray(ops.convert_to_numpy(t), np.float64).reshape(-1) for t in self._parameters()
        )
        return {"scale": scale, "bias": bias, "noise": sigma, "prior_std": float(tau[0])}


def _item_nll(z, scale, log_sigma, tau2, observed):
    """Per-item marginal NLL from the residuals ``z = y - s f - b`` (zero where unobserved)."""
    mask = ops.cast(observed, z.dtype)
    inv_var = ops.exp(-2.0 * log_sigma)
    precision = ops.sum(mask * ops.square(scale) * inv_var, axis=1)
    c = ops.sum(mask * scale * z * inv_var, axis=1)
    q = ops.sum(mask * ops.square(z) * inv_var, axis=1)
    logdet = ops.sum(mask * (2.0 * log_sigma + _LOG_2PI), axis=1)
    u = 1.0 + tau2 * precision
    return 0.5 * (q - tau2 * ops.square(c) / u + logdet + ops.log(u))


def latent_truth_nll(y_true, y_pred, mean_gradient_scale=1.0):
    r"""Negative log marginal likelihood of each item's answers under the latent-truth model.

    Formula, for item ``i`` with residuals ``z_r = y_ir - s_r f(x_i) - b_r`` over its observed
    answers, ``P = sum s_r^2 / sigma_r^2``, ``c = sum s_r z_r / sigma_r^2`` and
    ``u = 1 + tau^2 P``:

        nll_i = (sum z_r^2 / sigma_r^2 - tau^2 c^2 / u + sum log(2 pi sigma_r^2) + log u) / 2

    (items without answers: 0). The batch value is the mean over answered items, as
    :func:`~crowd_layers.pooled_crowd_nll`.

    ``mean_gradient_scale`` multiplies the gradients of the means and scales (the network,
    ``s``, ``b``) and leaves the value and the gradients of ``sigma`` and ``tau`` as they are.
    The likelihood's gradient for ``f`` is about ``1 / tau^2`` times the squared error's, so
    ``2 tau_0^2`` (``tau``'s start, as :meth:`CrowdsLatentTruth.mean_gradient_scale` gives)
    starts the network at the squared error's pace: in a multi-head model valence and arousal
    do not drown the expression head. (Tracking ``tau`` as it shrinks, instead of a constant,
    was measured and trains worse: it acts as a decaying learning rate.)

    Args:
        y_true: Answers ``(batch, num_annotators)``, NaN (or ``999999999``) for no answer.
        y_pred: ``(batch, 4, num_annotators)`` from :class:`CrowdsLatentTruth`.
        mean_gradient_scale: Positive factor of the means' gradients (default 1: the
            likelihood's own).

    Returns:
        Per-sample values ``(batch,)``.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    if len(y_pred.shape) != 3 or y_pred.shape[1] != 4 or len(y_true.shape) != 2:
        raise ValueError(
            "`y_pred` must be (batch, 4, num_annotators) from `CrowdsLatentTruth`, and `y_true` "
            f"(batch, num_annotators) answers. Received: y_true.shape={y_true.shape}, "
            f"y_pred.shape={y_pred.shape}"
        )
    if y_true.shape[-1] is not None and y_true.shape[-1] != y_pred.shape[-1]:
        raise ValueError(
            "`y_true` and `y_pred` must have the same number of annotators. Received: "
            f"y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
    mean, scale, log_sigma = y_pred[:, 0], y_pred[:, 1], y_pred[:, 2]
    tau2 = ops.exp(2.0 * y_pred[:, 3, 0])
    sentinel = ops.cast(MISSING_SENTINEL, y_true.dtype)
    observed = ops.logical_and(ops.isfinite(y_true), ops.not_equal(y_true, sentinel))
    targets = ops.where(observed, y_true, ops.stop_gradient(mean))
    if mean_gradient_scale != 1.0:
        sg = ops.stop_gradient
        nll = _item_nll(targets - sg(mean), sg(scale), log_sigma, tau2, observed)
        means = _item_nll(targets - mean, scale, sg(log_sigma), sg(tau2), observed)
        nll = nll + float(mean_gradient_scale) * (means - sg(means))
    else:
        nll = _item_nll(targets - mean, scale, log_sigma, tau2, observed)
    answered = ops.any(observed, axis=1)
    nll = ops.where(answered, nll, ops.zeros_like(nll))
    return mean_over_observed(nll, answered)


@saving.register_keras_serializable(package="crowd_layers")
class LatentTruthLikelihood(losses.Loss):
    """Mean over answered items of ``-log p(item's answers | x)`` under the latent-truth model:
    pairs with :class:`CrowdsLatentTruth`. Wraps :func:`latent_truth_nll` (see there for the
    formula and ``mean_gradient_scale``).

    Args:
        mean_gradient_scale: Positive factor of the means' gradients (default 1; the
            training command uses :meth:`CrowdsLatentTruth.mean_gradient_scale`).
        reduction: ``"sum_over_batch_size"`` (default, the mean over answered items),
            ``"mean"`` (the same) or ``"none"``.
        name: Loss name.
        dtype: Computation dtype.

    Examples:
        >>> layer = CrowdsLatentTruth(2, init_noise=1.0, init_prior_std=1.0, min_noise=0.5)
        >>> out = layer(np.zeros((1, 1)))
        >>> # one answer 1.0: N(0, sigma^2 + tau^2 = 2): 0.5 * (1/2 + log(2 pi 2))
        >>> float(LatentTruthLikelihood()(np.array([[1.0, np.nan]]), out))
        1.5155...
    """

    def __init__(
        self,
        mean_gradient_scale=1.0,
        reduction="sum_over_batch_size",
        name="latent_truth_likelihood",
        dtype=None,
    ):
        super().__init__(name=name, reduction=check_reduction(reduction), dtype=dtype)
        self.mean_gradient_scale = check_positive(mean_gradient_scale, "mean_gradient_scale")

    def call(self, y_true, y_pred):
        return latent_truth_nll(y_true, y_pred, mean_gradient_scale=self.mean_gradient_scale)

    def get_config(self):
        config = super().get_config()
        config["mean_gradient_scale"] = self.mean_gradient_scale
        return config
