"""Latent-truth aggregation of continuous answers (valence, arousal): each annotator's scale,
bias and noise, fitted by EM.

Answers are a float ``(n_items, n_annotators)`` matrix with NaN (or the reference code's
sentinel ``999999999``) for no answer, as for :func:`~crowd_layers.mean_answer`.
"""

import warnings

import numpy as np

from crowd_layers.checks import check_float_answers, check_non_negative, check_positive

__all__ = ["LatentTruthRegression"]


class LatentTruthRegression:
    r"""Latent-truth model of continuous answers, fitted by EM with shrinkage priors.

    Item ``i`` has a latent true value ``t_i ~ N(mu, tau^2)``; annotator ``r`` answers

        y_ir = s_r t_i + b_r + e_ir,   e_ir ~ N(0, sigma_r^2),

    a scale, a bias and a noise level of their own. EM alternates:

    - E-step: the posterior of each truth given its answers, a Gaussian with precision
      ``1 / tau^2 + sum_r s_r^2 / sigma_r^2`` and mean
      ``(mu / tau^2 + sum_r s_r (y_ir - b_r) / sigma_r^2) / precision`` (sums over the
      annotators who answered ``i``);
    - M-step: per annotator, ``(s_r, b_r)`` by the expected least squares plus the priors, then
      ``sigma_r^2``; ``mu`` and ``tau^2`` from the posteriors.

    Priors keep annotators with few answers near the plain mean: ``prior_answers`` (``k``)
    pseudo-answers pull ``s_r`` toward 1 (penalty ``k tau^2 (s_r - 1)^2 / (2 sigma_r^2)``), ``b_r``
    toward 0 (``k b_r^2 / (2 sigma_r^2)``) and ``sigma_r^2`` toward the crowd's pooled noise
    (a scaled inverse chi-squared prior with ``k`` degrees of freedom). With ``k = 0`` it is
    maximum likelihood. An annotator without answers keeps ``s = 1``, ``b = 0`` and the pooled
    noise.

    The model is unchanged by ``t -> alpha t + beta`` with the annotators' parameters adjusted,
    so after each M-step the truth is put on the scale of the average answer: the mean of the
    annotators' scales, weighted by their numbers of answers, is 1 and that of their biases 0
    (the mean answer's own scale, so the two can be compared and swapped as targets).

    Without ``truth_prior`` (the default) the truths have no prior (``tau -> inf``): each item's
    value is its annotators' precision-weighted, bias- and scale-corrected mean, not shrunk
    toward ``mu``. ``truth_prior=True`` adds the Gaussian prior ``N(mu, tau^2)`` of the truths,
    fitted too, which pulls items with few or noisy answers toward the crowd's mean. On the real
    AffectNetC25 answers (``benchmarks/bench_c25_halves.py``: one half of the annotators
    aggregated, scored against the other half's mean) the default beats the plain mean on
    valence and arousal of both sets; the shrinkage loses a little to it on three of the four.

    Items without any answer get ``truth_ = NaN``, counted by a ``UserWarning``.

    Args:
        max_iter: Most EM iterations.
        tol: Stop when no item's truth moves by more than ``tol``.
        prior_answers: Pseudo-answers of each annotator's priors (``k`` above, ``>= 0``).
        truth_prior: Fit a Gaussian prior ``N(mu, tau^2)`` of the truths (default ``False``:
            none).
        min_noise: Floor of every ``sigma_r`` (``> 0``).

    Attributes:
        truth_: ``(n_items,)`` posterior means of the truths.
        truth_std_: ``(n_items,)`` their posterior standard deviations.
        scale_, bias_, noise_: ``(n_annotators,)`` each annotator's ``s_r``, ``b_r``,
            ``sigma_r``.
        prior_mean_, prior_std_: ``mu`` and ``tau`` (``prior_std_`` is ``inf`` without
            ``truth_prior``).
        answer_counts_: ``(n_annotators,)`` each annotator's number of answers.
        n_iter_: EM iterations run.
        log_likelihood_: marginal log-likelihood of the answers per answer, at the end.

    Examples:
        >>> answers = np.array([[0.1, 0.3, np.nan], [0.5, 0.9, 0.6], [-0.4, np.nan, -0.2]])
        >>> model = LatentTruthRegression().fit(answers)
        >>> model.truth_.shape, model.scale_.shape
        ((3,), (3,))
    """

    def __init__(
        self, max_iter=200, tol=1e-6, prior_answers=5.0, truth_prior=False, min_noise=1e-3
    ):
        if int(max_iter) < 1:
            raise ValueError(f"`max_iter` must be at least 1. Received: max_iter={max_iter!r}")
        self.max_iter = int(max_iter)
        self.tol = check_non_negative(tol, "tol")
        self.prior_answers = check_non_negative(prior_answers, "prior_answers")
        self.truth_prior = bool(truth_prior)
        self.min_noise = check_positive(min_noise, "min_noise")

    # -- public API -------------------------------------------------------------------------

    def fit(self, answers):
        """Fits the annotators' parameters and the truths to ``answers``; returns ``self``."""
        values, observed = _prepare(answers)
        answered = observed.any(axis=1)
        if not answered.any():
            raise ValueError("`answers` has no answer at all: nothing to fit.")
        _warn_unanswered(answered, "their truth_ is NaN", stacklevel=3)
        fit_values, fit_observed = values[answered], observed[answered]
        state = self._start(fit_values, fit_observed)
        previous = state["mean"]
        iterations = 0
        while iterations < self.max_iter:
            iterations += 1
            state = self._m_step(fit_values, fit_observed, state)
            state = self._e_step(fit_values, fit_observed, state)
            moved = np.max(np.abs(state["mean"] - previous))
            previous = state["mean"]
            if moved <= self.tol:
                break
        self.n_iter_ = iterations
        self.answer_counts_ = observed.sum(axis=0)
        self.scale_, self.bias_ = state["scale"], state["bias"]
        self.noise_ = np.sqrt(state["noise_var"])
        self.prior_mean_ = float(state["mu"])
        self.prior_std_ = float(np.sqrt(state["tau2"])) if self.truth_prior else float("inf")
        self.truth_ = np.full(len(values), np.nan)
        self.truth_std_ = np.full(len(values), np.nan)
        self.truth_[answered] = state["mean"]
        self.truth_std_[answered] = np.sqrt(state["var"])
        self.log_likelihood_ = self._log_likelihood(fit_values, fit_observed)
        return self

    def fit_predict(self, answers):
        """Fits to ``answers`` and returns ``truth_``."""
        return self.fit(answers).truth_

    def predict(self, answers):
        """Posterior means of the truths of other items answered by the same annotators.

        Args:
            answers: float ``(n_items, n_annotators)`` with the fitted annotators' columns.

        Returns:
            float64 ``(n_items,)``; NaN (counted by a ``UserWarning``) where no answer.
        """
        return self._posterior(answers)[0]

    def predict_std(self, answers):
        """Posterior standard deviations of the truths of ``answers`` (as :meth:`predict`)."""
        return self._posterior(answers)[1]

    # -- EM ---------------------------------------------------------------------------------

    def _start(self, values, observed):
        """The plain mean as the first truths, every annotator at ``s = 1``, ``b = 0``."""
        counts = observed.sum(axis=1)
        mean = np.where(observed, values, 0.0).sum(axis=1) / counts
        residual = np.where(observed, values - mean[:, None], 0.0)
        pooled = max(float(np.sum(residual**2) / max(observed.sum(), 1)), self.min_noise**2)
        return {
            "mean": mean,
            "var": np.full(len(mean), pooled / np.maximum(counts, 1)),
            "scale": np.ones(values.shape[1]),
            "bias": np.zeros(values.shape[1]),
            "noise_var": np.full(values.shape[1], pooled),
            "mu": float(mean.mean()),
            "tau2": max(float(mean.var()), self.min_noise**2),
        }

    def _m_step(self, values, observed, state):
        mask = observed.astype(np.float64)
        y = np.where(observed, values, 0.0)
        m, v = state["mean"], state["var"]
        k = self.prior_answers
        n = mask.sum(axis=0)
        sum_t = mask.T @ m
        sum_t2 = mask.T @ (m**2 + v)
        sum_y = y.sum(axis=0)
        sum_yt = y.T @ m
        sum_y2 = (y**2).sum(axis=0)
        spread = state["tau2"]  # the truths' spread: the unit of the scale prior's pseudo-answers
        # normal equations of (s, b) with the priors' pseudo-answers
        a11, a12, a22 = sum_t2 + k * spread, sum_t, n + k
        r1, r2 = sum_yt + k * spread, sum_y
        det = a11 * a22 - a12**2
        ok = det > 1e-12 * np.maximum(a11 * a22, 1e-300)
        safe = np.where(ok, det, 1.0)
        scale = np.where(ok, (r1 * a22 - a12 * r2) / safe, 1.0)
        bias = np.where(ok, (a11 * r2 - a12 * r1) / safe, 0.0)
        # expected squared residuals, plus the priors' terms
        sse = (
            sum_y2
            - 2 * scale * sum_yt
            - 2 * bias * sum_y
            + scale**2 * sum_t2
            + 2 * scale * bias * sum_t
            + n * bias**2
        )
        sse = np.maximum(sse, 0.0) + k * spread * (scale - 1) ** 2 + k * bias**2
        total = max(float(n.sum()), 1.0)
        pooled = max(float(sse.sum() / total), self.min_noise**2)
        noise_var = (sse + k * pooled) / np.maximum(n + k, 1e-12)
        noise_var = np.where(n + k > 0, noise_var, pooled)
        noise_var = np.maximum(noise_var, self.min_noise**2)
        state = dict(state, scale=scale, bias=bias, noise_var=noise_var)
        state["mu"] = float(m.mean())
        state["tau2"] = max(float(np.mean(m**2 + v) - m.mean() ** 2), self.min_noise**2)
        state = _on_average_scale(state, n)
        silent = n == 0  # no answer, no weight in the scale rule: the priors' own values
        state["scale"] = np.where(silent, 1.0, state["scale"])
        state["bias"] = np.where(silent, 0.0, state["bias"])
        return state

    def _e_step(self, values, observed, state):
        mean, var = _truth_posterior(values, observed, state, self.truth_prior)
        return dict(state, mean=mean, var=var)

    def _log_likelihood(self, values, observed):
        """Marginal log-likelihood per answer (with the truths' prior; without it, at the
        fitted truths)."""
        s, b, var = self.scale_, self.bias_, self.noise_**2
        y = np.where(observed, values, 0.0)
        if not self.truth_prior:
            fitted = self.truth_[np.isfinite(self.truth_)]
            z = np.where(observed, y - s * fitted[:, None] - b, 0.0)
            terms = np.where(observed, z**2 / var + np.log(2 * np.pi * var), 0.0)
            return float(-0.5 * terms.sum() / observed.sum())
        nll = gaussian_marginal_nll(y, observed, self.prior_mean_, self.prior_std_**2, s, b, var)
        return float(-nll.sum() / observed.sum())

    def _posterior(self, answers):
        if not hasattr(self, "scale_"):
            raise ValueError("This LatentTruthRegression is not fitted yet: call fit first.")
        values, observed = _prepare(answers)
        if values.shape[1] != len(self.scale_):
            raise ValueError(
                f"`answers` must have the fitted {len(self.scale_)} annotator columns. "
                f"Received: answers.shape={values.shape}"
            )
        answered = observed.any(axis=1)
        _warn_unanswered(answered, "their value is NaN", stacklevel=4)
        state = {
            "scale": self.scale_,
            "bias": self.bias_,
            "noise_var": self.noise_**2,
            "mu": self.prior_mean_,
            "tau2": self.prior_std_**2,
        }
        mean, var = _truth_posterior(values, observed, state, self.truth_prior)
        mean[~answered], var[~answered] = np.nan, np.nan
        return mean, np.sqrt(var)


def _warn_unanswered(answered, consequence, stacklevel):
    """A ``UserWarning`` counting the items without answers, if any."""
    if not answered.all():
        warnings.warn(
            f"LatentTruthRegression: {int((~answered).sum())} of {len(answered)} items have "
            f"no answer; {consequence}.",
            UserWarning,
            stacklevel=stacklevel,
        )


def _prepare(answers):
    """``(values, observed)`` of a float answer matrix (NaN and the sentinel: no answer)."""
    values = check_float_answers(answers)
    observed = np.isfinite(values)
    return np.where(observed, values, 0.0), observed


def _truth_posterior(values, observed, state, truth_prior):
    """Posterior mean and variance of every item's truth given its answers."""
    s, b, var = state["scale"], state["bias"], state["noise_var"]
    weight = np.where(observed, s**2 / var, 0.0)
    evidence = np.where(observed, s * (values - b) / var, 0.0)
    precision = weight.sum(axis=1)
    numerator = evidence.sum(axis=1)
    if truth_prior:
        precision = precision + 1.0 / state["tau2"]
        numerator = numerator + state["mu"] / state["tau2"]
    precision = np.maximum(precision, 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        return numerator / precision, 1.0 / precision


def _on_average_scale(state, counts):
    """Moves the truths to the scale of the average answer: count-weighted mean scale 1 and
    mean bias 0 (the model's likelihood unchanged)."""
    weights = counts / max(float(counts.sum()), 1.0)
    alpha = float(weights @ state["scale"])
    beta = float(weights @ state["bias"])
    if not np.isfinite(alpha) or abs(alpha) < 1e-8:
        return state
    # t' = alpha t + beta; s' = s / alpha; b' = b - s beta / alpha
    state = dict(state)
    state["scale"] = state["scale"] / alpha
    state["bias"] = state["bias"] - state["scale"] * beta
    state["mean"] = alpha * state["mean"] + beta
    state["var"] = alpha**2 * state["var"]
    state["mu"] = alpha * state["mu"] + beta
    state["tau2"] = alpha**2 * state["tau2"]
    return state


def gaussian_marginal_nll(values, observed, prior_mean, prior_var, scale, bias, noise_var):
    r"""Each item's negative log marginal likelihood of its answers under the latent-truth model.

    With the truth ``t ~ N(m_i, v)`` (``prior_mean`` may be per item) the item's observed
    answers are jointly Gaussian, mean ``s m_i + b`` and covariance ``diag(sigma^2) + v s s^T``;
    by the matrix determinant lemma and Woodbury's identity, with ``z = y - s m_i - b``,
    ``P = sum s^2 / sigma^2``, ``c = sum s z / sigma^2`` and ``u = 1 + v P``:

        NLL_i = (sum z^2 / sigma^2 - v c^2 / u + sum log(2 pi sigma^2) + log u) / 2

    Args:
        values, observed: ``(n_items, n_annotators)`` answers (any value where not observed)
            and the mask of observed ones.
        prior_mean: scalar or ``(n_items,)``; ``prior_var``: scalar ``v``.
        scale, bias, noise_var: ``(n_annotators,)``.

    Returns:
        float64 ``(n_items,)`` (0 for items without answers).
    """
    prior_mean = np.asarray(prior_mean, np.float64).reshape(-1, 1)
    z = np.where(observed, values - scale * prior_mean - bias, 0.0)
    precision = np.where(observed, scale**2 / noise_var, 0.0).sum(axis=1)
    c = np.where(observed, scale * z / noise_var, 0.0).sum(axis=1)
    q = np.where(observed, z**2 / noise_var, 0.0).sum(axis=1)
    logdet = np.where(observed, np.log(2 * np.pi * noise_var), 0.0).sum(axis=1)
    u = 1.0 + prior_var * precision
    return 0.5 * (q - prior_var * c**2 / u + logdet + np.log(u))
