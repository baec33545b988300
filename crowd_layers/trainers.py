"""EM trainers that alternate a network and the annotators' confusion estimates (AggNet-style).

Vectorised NumPy ports of the reference's ``crowd_layer/crowd_aggregators.py``
(github.com/fmpr/CrowdLayer), with the same public names and methods (``e_step``, ``m_step``,
plus ``run``). The network plays the role of the class prior in Dawid & Skene's model:

- E-step: ``q_i(k) ∝ p_model(k | x_i) * prod_{r answered i} pi_r[k, a_ir]``;
- M-step: fit the network on ``q`` (soft targets), predict again, and re-estimate each
  annotator's confusion matrix from the predictions:
  ``pi_r[k, j] ∝ pi_prior + sum_{i: a_ir = j} p_model(k | x_i)``.

Differences from the reference, which are fixes: the posteriors are normalised (the reference
fitted on unnormalised products), the confusion rows include the prior in their normaliser (so
they sum to one), and the binary sensitivity/specificity use Beta smoothing (they could exceed
one). Everything runs in the log domain without loops over items or annotators.

References: S. Albarqouni et al., "AggNet: Deep Learning From Crowds for Mitosis Detection in
Breast Cancer Histology Images", IEEE TMI 35(5), 2016, doi:10.1109/TMI.2016.2528120;
A. P. Dawid and A. M. Skene, "Maximum Likelihood Estimation of Observer Error-Rates Using the
EM Algorithm", Applied Statistics 28(1), 1979, doi:10.2307/2346806.
"""

import numpy as np

from crowd_layers.checks import check_answers

__all__ = ["CrowdsBinaryAggregator", "CrowdsCategoricalAggregator"]

_TINY = 1e-12


def _compact_answers(answers, num_classes=None):
    """Reads ``(n, R)`` ints with -1 missing, or the one-hot ``(n, K, R)`` layout."""
    array = np.asarray(answers)
    if array.ndim == 3:
        if num_classes is not None and array.shape[1] != num_classes:
            raise ValueError(
                f"One-hot `answers` must have shape (n_items, num_classes={num_classes}, "
                f"n_annotators). Received: answers.shape={array.shape}"
            )
        array = array.astype(np.float64)
        observed = (array.min(axis=1) >= 0) & (array.sum(axis=1) > 0)
        return np.where(observed, array.argmax(axis=1), -1).astype(np.int64)
    if array.ndim != 2:
        raise ValueError(
            "`answers` must be (n_items, n_annotators) integers with -1 for missing, or "
            f"one-hot (n_items, num_classes, n_annotators). Received: answers.shape={array.shape}"
        )
    return check_answers(array, num_classes=num_classes)


def _one_hot(answers, num_classes):
    """``(n, R)`` answers -> ``(n, R, K)`` indicators, zero rows for missing answers."""
    eye = np.vstack([np.eye(num_classes), np.zeros((1, num_classes))])
    return eye[np.where(answers >= 0, answers, num_classes)]


def _majority_vote_one_hot(indicators):
    """One-hot majority vote, ties to the lowest class (as the reference's ``argmax``)."""
    votes = indicators.sum(axis=1)
    return np.eye(votes.shape[1])[votes.argmax(axis=1)]


def _check_data(data_train, n_items):
    length = len(data_train) if not isinstance(data_train, dict) else None
    if length is not None and length != n_items:
        raise ValueError(
            "`data_train` and `answers` must have the same number of items. "
            f"Received: len(data_train)={length}, answers.shape[0]={n_items}"
        )


class CrowdsCategoricalAggregator:
    """EM training of a classifier from crowd answers (multi-class).

    The annotators' confusion matrices ``pi`` start uniform and the targets start as the
    majority vote; each :meth:`m_step` fits the network for ``epochs`` epochs on the current
    targets and re-estimates ``pi`` from its predictions, each :meth:`e_step` combines the
    predictions with the answers (formulas in the module docstring).

    Args:
        model: A compiled Keras classifier with a softmax output ``(n, num_classes)`` and a
            loss that accepts soft targets (e.g. ``"categorical_crossentropy"``).
        data_train: The inputs, anything ``model.fit`` accepts with ``len`` equal to the
            number of items (arrays, or a dict of arrays).
        answers: ``(n_items, n_annotators)`` integers with -1 for missing, or the reference's
            one-hot ``(n_items, num_classes, n_annotators)`` with all -1 vectors for missing.
        batch_size: Batch size of ``model.fit``.
        pi_prior: Dirichlet pseudo-count added to every confusion-matrix entry.
        num_classes: Number of classes (default: the model's output size).

    Attributes:
        pi: Confusion matrices in the reference's layout ``(num_classes, num_classes,
            n_annotators)``: ``pi[k, j, r]`` is ``P(annotator r answers j | true class k)``.
        ground_truth_est: Current targets ``(n_items, num_classes)``.
        losses: Training loss at the end of each M-step.

    Examples:
        >>> trainer = CrowdsCategoricalAggregator(model, x_train, answers, batch_size=32)
        >>> model, pi = trainer.run(epochs=10)
    """

    def __init__(self, model, data_train, answers, batch_size=16, pi_prior=1.0, num_classes=None):
        if num_classes is None:
            num_classes = int(model.output_shape[-1])
        if num_classes < 2:
            raise ValueError(
                f"`num_classes` must be >= 2 (the model's output size). Received: num_classes={num_classes}"
            )
        if pi_prior < 0:
            raise ValueError(f"`pi_prior` must be >= 0. Received: pi_prior={pi_prior!r}")
        self.model = model
        self.data_train = data_train
        self.answers = _compact_answers(answers, num_classes)
        _check_data(data_train, self.answers.shape[0])
        self.batch_size = int(batch_size)
        self.pi_prior = float(pi_prior)
        self.num_classes = int(num_classes)
        self.n_train, self.num_annotators = self.answers.shape
        self._indicators = _one_hot(self.answers, self.num_classes)
        self.pi = np.full(
            (self.num_classes, self.num_classes, self.num_annotators), 1.0 / self.num_classes
        )
        self.ground_truth_est = _majority_vote_one_hot(self._indicators)
        self.losses = []

    def e_step(self):
        """Posterior of the true class from the network's predictions and the answers."""
        log_likelihood = np.einsum(
            "irj,kjr->ik", self._indicators, np.log(np.maximum(self.pi, _TINY))
        )
        log_post = np.log(np.maximum(self.ground_truth_est, _TINY)) + log_likelihood
        log_post -= log_post.max(axis=1, keepdims=True)
        post = np.exp(log_post)
        self.ground_truth_est = post / post.sum(axis=1, keepdims=True)
        return self.ground_truth_est

    def m_step(self, epochs=1, verbose=0):
        """Fits the network on the targets, predicts, and re-estimates the confusions."""
        history = self.model.fit(
            self.data_train,
            self.ground_truth_est,
            epochs=epochs,
            shuffle=True,
            batch_size=self.batch_size,
            verbose=verbose,
        )
        self.losses.append(float(history.history["loss"][-1]))
        self.ground_truth_est = np.asarray(
            self.model.predict(self.data_train, batch_size=max(self.batch_size, 256), verbose=0),
            dtype=np.float64,
        )
        counts = self.pi_prior + np.einsum("ik,irj->kjr", self.ground_truth_est, self._indicators)
        sums = counts.sum(axis=1, keepdims=True)
        self.pi = np.where(sums > 0, counts / np.where(sums > 0, sums, 1.0), 1.0 / self.num_classes)
        return self.model, self.pi

    def run(self, epochs=10, fit_epochs=1, verbose=0):
        """Alternates ``epochs`` times an M-step (``fit_epochs`` epochs) and an E-step.

        Returns:
            ``(model, pi)``.
        """
        for _ in range(int(epochs)):
            self.m_step(epochs=fit_epochs, verbose=verbose)
            self.e_step()
        return self.model, self.pi

    def confusion_matrices(self):
        """``pi`` as ``(n_annotators, num_classes, num_classes)``, rows the true class."""
        return np.transpose(self.pi, (2, 0, 1))


class CrowdsBinaryAggregator:
    """EM training of a binary classifier from crowd answers (sensitivity/specificity).

    Each annotator ``r`` has a sensitivity ``alpha_r = P(answer 1 | true 1)`` and a
    specificity ``beta_r = P(answer 0 | true 0)``, both starting at 0.5, and the targets start
    as the majority vote. E-step, with ``p_i = p_model(1 | x_i)``:

        mu_i = a_i p_i / (a_i p_i + b_i (1 - p_i)),
        a_i = prod_r alpha_r^[a_ir = 1] (1 - alpha_r)^[a_ir = 0],
        b_i = prod_r (1 - beta_r)^[a_ir = 1] beta_r^[a_ir = 0];

    M-step: fit the network on ``(1 - mu, mu)``, predict ``p``, and set
    ``alpha_r = (alpha_prior + sum_{a_ir = 1} p_i) / (2 alpha_prior + sum_{i answered} p_i)``
    and likewise ``beta_r`` with ``1 - p_i`` and answers 0.

    Args:
        model: A compiled Keras classifier with a softmax output ``(n, 2)`` (the reference's
            layout, loss e.g. ``"categorical_crossentropy"``) or a sigmoid output ``(n, 1)``
            (loss e.g. ``"binary_crossentropy"``).
        data_train: The inputs (``len`` equal to the number of items).
        answers: ``(n_items, n_annotators)`` with values 0, 1 and -1 for missing, or one-hot
            ``(n_items, 2, n_annotators)`` with all -1 vectors for missing.
        batch_size: Batch size of ``model.fit``.
        alpha_prior: Beta pseudo-count of the sensitivities.
        beta_prior: Beta pseudo-count of the specificities.

    Attributes:
        alpha: Sensitivities ``(n_annotators,)``.
        beta: Specificities ``(n_annotators,)``.
        ground_truth_est: Current targets ``(n_items, 2)``.
        losses: Training loss at the end of each M-step.

    Examples:
        >>> trainer = CrowdsBinaryAggregator(model, x_train, answers, batch_size=32)
        >>> model, alpha, beta = trainer.run(epochs=10)
    """

    def __init__(self, model, data_train, answers, batch_size=16, alpha_prior=1.0, beta_prior=1.0):
        if alpha_prior < 0 or beta_prior < 0:
            raise ValueError(
                "`alpha_prior` and `beta_prior` must be >= 0. "
                f"Received: alpha_prior={alpha_prior!r}, beta_prior={beta_prior!r}"
            )
        outputs = int(model.output_shape[-1])
        if outputs not in (1, 2):
            raise ValueError(
                "`model` must output (n, 2) softmax or (n, 1) sigmoid probabilities. "
                f"Received: model.output_shape={model.output_shape}"
            )
        self.model = model
        self.data_train = data_train
        self.answers = _compact_answers(answers, 2)
        _check_data(data_train, self.answers.shape[0])
        self.batch_size = int(batch_size)
        self.alpha_prior = float(alpha_prior)
        self.beta_prior = float(beta_prior)
        self.n_train, self.num_annotators = self.answers.shape
        self._sigmoid = outputs == 1
        self._ones = (self.answers == 1).astype(np.float64)
        self._zeros = (self.answers == 0).astype(np.float64)
        self.alpha = np.full(self.num_annotators, 0.5)
        self.beta = np.full(self.num_annotators, 0.5)
        self.ground_truth_est = _majority_vote_one_hot(_one_hot(self.answers, 2))
        self.losses = []

    def e_step(self):
        """Posterior ``mu_i = P(true 1 | x_i, answers)`` from the predictions and answers."""
        log_alpha, log_1m_alpha = (
            np.log(np.maximum(self.alpha, _TINY)),
            np.log(np.maximum(1.0 - self.alpha, _TINY)),
        )
        log_beta, log_1m_beta = (
            np.log(np.maximum(self.beta, _TINY)),
            np.log(np.maximum(1.0 - self.beta, _TINY)),
        )
        log_a = self._ones @ log_alpha + self._zeros @ log_1m_alpha
        log_b = self._ones @ log_1m_beta + self._zeros @ log_beta
        log_pos = log_a + np.log(np.maximum(self.ground_truth_est[:, 1], _TINY))
        log_neg = log_b + np.log(np.maximum(self.ground_truth_est[:, 0], _TINY))
        mu = 1.0 / (1.0 + np.exp(np.clip(log_neg - log_pos, -700, 700)))
        self.ground_truth_est = np.stack([1.0 - mu, mu], axis=1)
        return self.ground_truth_est

    def m_step(self, epochs=1, verbose=0):
        """Fits the network on the targets, predicts, and re-estimates alpha and beta."""
        targets = self.ground_truth_est[:, 1:] if self._sigmoid else self.ground_truth_est
        history = self.model.fit(
            self.data_train,
            targets,
            epochs=epochs,
            shuffle=True,
            batch_size=self.batch_size,
            verbose=verbose,
        )
        self.losses.append(float(history.history["loss"][-1]))
        predicted = np.asarray(
            self.model.predict(self.data_train, batch_size=max(self.batch_size, 256), verbose=0),
            dtype=np.float64,
        )
        p = predicted[:, 0] if self._sigmoid else predicted[:, 1] / predicted.sum(axis=1)
        self.ground_truth_est = np.stack([1.0 - p, p], axis=1)
        answered = self._ones + self._zeros
        self.alpha = (self.alpha_prior + p @ self._ones) / (2 * self.alpha_prior + p @ answered)
        self.beta = (self.beta_prior + (1.0 - p) @ self._zeros) / (
            2 * self.beta_prior + (1.0 - p) @ answered
        )
        self.alpha = np.nan_to_num(self.alpha, nan=0.5)
        self.beta = np.nan_to_num(self.beta, nan=0.5)
        return self.model, self.alpha, self.beta

    def run(self, epochs=10, fit_epochs=1, verbose=0):
        """Alternates ``epochs`` times an M-step (``fit_epochs`` epochs) and an E-step.

        Returns:
            ``(model, alpha, beta)``.
        """
        for _ in range(int(epochs)):
            self.m_step(epochs=fit_epochs, verbose=verbose)
            self.e_step()
        return self.model, self.alpha, self.beta
