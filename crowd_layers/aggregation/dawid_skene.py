"""Dawid-Skene: one confusion matrix per annotator, fitted by EM on sparse answer counts.

Answers in either layout of :mod:`crowd_layers.aggregation.answers`; the E-step and M-step are
the small private functions below the class.
"""

import warnings

import numpy as np
import scipy.sparse

from crowd_layers.aggregation.answers import check_num_classes, to_long, vote_counts

__all__ = ["DawidSkene"]

_EPS = 1e-10  # crowd-kit's clipping floor for confusion counts and priors
_LOG_EPS = np.log(_EPS)
_BLOCK_ENTRIES = 65536  # items x classes per E-step block: 512 KiB of float64 temporaries
_CONVERGENCE = ("crowdkit", "log_likelihood")


class DawidSkene:
    r"""Dawid-Skene: one confusion matrix per annotator, fitted by EM.

    Each item ``i`` has a latent true class ``z_i`` with prior ``p_c = P(z_i = c)``; annotator
    ``w`` answers ``l`` with probability ``pi^w_{c l} = P(y_{iw} = l | z_i = c)`` (rows of
    ``confusions_[w]`` are true classes). EM alternates:

    - E-step: ``log q_ic = log p_c + sum_{w answered i} log pi^w_{c, y_iw} - log Z_i``, in log
      space;
    - M-step: ``p_c = mean_i q_ic`` and ``pi^w_cl = n^w_cl / sum_l' n^w_cl'`` with
      ``n^w_cl = max(sum_{i: y_iw = l} q_ic + smoothing, eps)``.

    The answers are held as a sparse ``(n_items, n_annotators * K)`` count matrix over
    (annotator, answer) pairs, so each step is a sparse-dense product (taken in blocks of items
    whose temporaries fit in the CPU cache): memory and time are linear in the number of
    answers, and no ``(n_items, n_annotators, K)`` tensor is built.

    Initialisation, clipping and stopping follow crowd-kit's ``DawidSkene`` (1.4) so that the
    two give the same labels: the initial posteriors are the majority-vote vote fractions,
    followed by one M-step; ``eps = 1e-10`` clips the confusion counts of the (annotator,
    answer) pairs that occur (other answers keep probability 0 when ``smoothing == 0``) and the
    priors inside the E-step. Stopping (``convergence``):

    - ``"crowdkit"`` (default): after each iteration, crowd-kit's objective is computed,
      ``(sum_{answers (i,w,l)} sum_c q_ic (log pi^w_cl + log p_c) + sum_i H(q_i)) / n_answers``
      (note the log-prior counted once per *answer*, as crowd-kit does), and EM stops when it
      improves by less than ``tol``. That objective is not monotone under EM, so this often
      stops after 2 iterations (it does on both AffectNetC25 expression sets).
    - ``"log_likelihood"``: stop when the marginal log-likelihood per answer,
      ``sum_i log Z_i / n_answers``, which EM never decreases, improves by less than ``tol``:
      EM run to convergence. (On AffectNetC25 the labels then differ from crowd-kit's on 4-5%
      of the items.)

    Ties in ``labels_`` go to the lowest class. Items without answers get
    ``probas_ = priors_`` and ``labels_ = -1`` and do not enter the priors; annotators without
    answers get uniform confusion rows.

    A. P. Dawid and A. M. Skene, "Maximum Likelihood Estimation of Observer Error-Rates Using
    the EM Algorithm", Journal of the Royal Statistical Society, Series C (Applied Statistics)
    28(1), 20-28, 1979. https://doi.org/10.2307/2346806

    Args:
        max_iter: maximum number of EM iterations (E-step + M-step), ``>= 0``; 0 leaves the
            majority-vote initialisation.
        tol: stop when the objective chosen by ``convergence`` improves by less than this
            (a negative value runs all ``max_iter`` iterations unless it drops by more).
        num_classes: number of classes ``K``; inferred as ``max(label) + 1`` when None.
        smoothing: pseudo-count added to every confusion count before normalising (0, the
            default, matches crowd-kit).
        convergence: ``"crowdkit"`` or ``"log_likelihood"`` (see above).

    Attributes:
        probas_: ``(n_items, K)`` posterior class probabilities.
        labels_: ``(n_items,)`` most probable class (-1 for items without answers).
        confusions_: ``(n_annotators, K, K)``, ``confusions_[w, c, l] = P(answer l | true c)``.
        priors_: ``(K,)`` class priors.
        log_likelihoods_: ``(n_iter_,)`` marginal log-likelihood per answer under the
            parameters each iteration's E-step used (non-decreasing).
        elbos_: ``(n_iter_,)`` crowd-kit's objective after each iteration (its
            ``loss_history_``).
        n_iter_: number of EM iterations run.

    Examples:
        >>> ds = DawidSkene(max_iter=50).fit([[0, 0, 1], [1, 1, 1], [0, -1, 0]])
        >>> ds.labels_
        array([0, 1, 0])
    """

    def __init__(
        self, max_iter=100, tol=1e-5, num_classes=None, smoothing=0.0, convergence="crowdkit"
    ):
        if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 0:
            raise ValueError(
                f"`max_iter` must be a non-negative integer. Received: max_iter={max_iter!r}"
            )
        if isinstance(tol, bool) or not isinstance(tol, int | float | np.number) or np.isnan(tol):
            raise ValueError(f"`tol` must be a number. Received: tol={tol!r}")
        if not np.isscalar(smoothing) or not smoothing >= 0:
            raise ValueError(
                f"`smoothing` must be a non-negative number. Received: smoothing={smoothing!r}"
            )
        if convergence not in _CONVERGENCE:
            raise ValueError(
                f"`convergence` must be one of {_CONVERGENCE}. Received: convergence={convergence!r}"
            )
        self.max_iter = int(max_iter)
        self.convergence = convergence
        self.tol = float(tol)
        self.num_classes = check_num_classes(num_classes)
        self.smoothing = float(smoothing)

    def fit(self, answers):
        """Fits the model with EM.

        Args:
            answers: dense ``(n_items, n_annotators)`` int matrix with -1 for no answer, or a
                tuple ``(items, annotators, labels)`` of 1-D int arrays (long format).

        Returns:
            self.
        """
        items, annotators, labels, n_items, n_annotators, k = to_long(answers, self.num_classes)
        counts = vote_counts(items, labels, n_items, k)
        answered = counts.sum(axis=1) > 0
        if not answered.any():
            self._set_unanswered(n_items, n_annotators, k)
            if n_items:
                _warn_unanswered("DawidSkene", n_items, n_items)
            return self

        # Work on answered items only, renumbered 0..n-1.
        answered_items = np.flatnonzero(answered)
        if len(answered_items) < n_items:
            items = (np.cumsum(answered) - 1)[items]
        data = _Answers(items, annotators, labels, len(answered_items), n_annotators, k)
        counts = counts[answered].astype(np.float64)
        probas = counts / counts.sum(axis=1, keepdims=True)  # majority-vote vote fractions
        priors, confusions = self._run_em(data, probas)
        self._set_fitted(data, priors, confusions, probas, answered_items, n_items)
        if len(answered_items) < n_items:
            _warn_unanswered("DawidSkene", n_items - len(answered_items), n_items)
        return self

    def _set_unanswered(self, n_items, n_annotators, k):
        """The fitted attributes when no item has an answer: uniform priors and confusions."""
        self.n_iter_ = 0
        self.priors_ = np.full(k, 1.0 / k) if k else np.zeros(0)
        self.probas_ = np.tile(self.priors_, (n_items, 1))
        self.labels_ = np.full(n_items, -1, dtype=np.int64)
        self.confusions_ = np.full((n_annotators, k, k), 1.0 / k if k else 0.0)
        self.log_likelihoods_, self.elbos_ = np.zeros(0), np.zeros(0)

    def _run_em(self, data, probas):
        """EM from the posteriors ``probas`` (updated in place); records the objectives and
        returns the priors and the flat confusions."""
        self.n_iter_ = 0
        log_likelihoods, elbos = [], []
        priors = probas.mean(axis=0)
        pair_sums = _pair_sums(data, probas)
        confusions = _m_step(data, pair_sums, self.smoothing)
        previous = -np.inf
        for _ in range(self.max_iter):
            log_likelihood, entropy = _e_step(data, priors, confusions, probas)
            priors = probas.mean(axis=0)
            pair_sums = _pair_sums(data, probas)
            confusions = _m_step(data, pair_sums, self.smoothing)
            self.n_iter_ += 1
            log_likelihoods.append(log_likelihood / data.n_answers)
            elbos.append(_crowdkit_elbo(data, entropy, priors, confusions, pair_sums))
            current = elbos[-1] if self.convergence == "crowdkit" else log_likelihoods[-1]
            if current - previous < self.tol:
                break
            previous = current
        self.log_likelihoods_ = np.asarray(log_likelihoods)
        self.elbos_ = np.asarray(elbos)
        return priors, confusions

    def _set_fitted(self, data, priors, confusions, probas, answered_items, n_items):
        """The fitted attributes from EM's results on the answered items."""
        k = data.num_classes
        self.priors_ = priors
        self.confusions_ = confusions.reshape(data.n_annotators, k, k).transpose(0, 2, 1).copy()
        self.probas_ = np.tile(priors, (n_items, 1))
        self.probas_[answered_items] = probas
        self.labels_ = np.full(n_items, -1, dtype=np.int64)
        self.labels_[answered_items] = np.argmax(probas, axis=1)

    def predict_proba(self, answers):
        """Posteriors of (new) items' answers under the fitted model, parameters unchanged.

        ``p(c | y_i) ∝ priors_[c] prod_{w answered} confusions_[w, c, y_iw]`` (probabilities
        clipped at ``1e-10``), the E-step for items that did not take part in the fit. Items
        without answers get ``priors_``.

        Args:
            answers: dense ``(n_items, n_annotators)`` int matrix (-1 for no answer) or long
                format, with the fitted annotators and classes.

        Returns:
            float64 array ``(n_items, K)``.
        """
        if not hasattr(self, "confusions_"):
            raise ValueError("This DawidSkene is not fitted yet: call `fit` first.")
        n_fitted, k, _ = self.confusions_.shape
        items, annotators, labels, n_items, n_annotators, _ = to_long(answers, k)
        if n_annotators > n_fitted:
            raise ValueError(
                f"`answers` has {n_annotators} annotators; the model was fitted on {n_fitted}."
            )
        log_confusions = np.log(np.clip(self.confusions_, 1e-10, None))
        log_p = np.tile(np.log(np.clip(self.priors_, 1e-10, None)), (n_items, 1))
        np.add.at(log_p, items, log_confusions[annotators, :, labels])
        log_p -= log_p.max(axis=1, keepdims=True)
        probas = np.exp(log_p)
        return probas / probas.sum(axis=1, keepdims=True)

    def fit_predict(self, answers):
        """Fits the model and returns ``labels_``."""
        return self.fit(answers).labels_

    def fit_predict_proba(self, answers):
        """Fits the model and returns ``probas_``."""
        return self.fit(answers).probas_


class _Answers:
    """The answers as a sparse ``(n_items, n_annotators * K)`` count matrix over (annotator, answer)
    pairs: column ``w * K + l`` counts annotator ``w`` answering ``l``. Both EM steps are then
    sparse-dense products, and no ``(n_items, n_annotators, K)`` tensor is ever built. The rows
    are cut into blocks of items so that each block's ``(K, block)`` temporaries stay in cache.
    """

    def __init__(self, items, annotators, labels, n_items, n_annotators, num_classes):
        self.n_annotators = n_annotators
        self.num_classes = num_classes
        self.n_answers = len(items)
        pairs = annotators * num_classes + labels
        matrix = scipy.sparse.csr_matrix(
            (np.ones(len(items)), (items, pairs)), shape=(n_items, n_annotators * num_classes)
        )
        matrix.sum_duplicates()  # canonical: results do not depend on the answer order
        size = max(64, _BLOCK_ENTRIES // max(num_classes, 1))
        self.blocks = [(start, matrix[start : start + size]) for start in range(0, n_items, size)]
        self.present = np.bincount(pairs, minlength=n_annotators * num_classes) > 0


def _e_step(data, priors, confusions, probas):
    """Writes the posteriors into ``probas``; returns the log-likelihood and ``H(q)``."""
    log_confusions = np.log(np.where(data.present[:, None], confusions, 1.0))
    log_priors = np.log(np.maximum(priors, _EPS))[:, None]
    log_likelihood = entropy = 0.0
    for start, block in data.blocks:
        shifted = (block @ log_confusions).T.copy()  # (K, block): fast reductions over classes
        shifted += log_priors
        top = shifted.max(axis=0)
        shifted -= top
        post = np.exp(shifted)
        norm = post.sum(axis=0)
        post /= norm
        log_norm = np.log(norm)
        log_likelihood += np.sum(log_norm) + np.sum(top)
        # crowd-kit's entropy clips q at eps: -sum max(q, eps) log max(q, eps); no log pass.
        shifted -= log_norm
        np.maximum(shifted, _LOG_EPS, out=shifted)
        entropy -= np.einsum("ij,ij->", np.maximum(post, _EPS), shifted)
        probas[start : start + post.shape[1]] = post.T
    return float(log_likelihood), float(entropy)


def _pair_sums(data, probas):
    """``n^w_{cl} = sum_{i: y_iw = l} q_ic`` as a flat ``(n_annotators * K, K)`` array."""
    sums = np.zeros((data.n_annotators * data.num_classes, data.num_classes))
    for start, block in data.blocks:
        sums += block.T @ probas[start : start + block.shape[0]]
    return sums


def _m_step(data, pair_sums, smoothing):
    """Flat ``(n_annotators * K, K)`` confusions: row ``w * K + l``, column true class."""
    k = data.num_classes
    counts = pair_sums + smoothing
    counts[data.present] = np.maximum(counts[data.present], _EPS)
    counts = counts.reshape(data.n_annotators, k, k)
    totals = counts.sum(axis=1, keepdims=True)  # over answers l, per annotator and true class
    confusions = np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), 1.0 / k)
    return confusions.reshape(data.n_annotators * k, k)


def _crowdkit_elbo(data, entropy, priors, confusions, pair_sums):
    """crowd-kit's stopping objective (log-priors counted once per answer), per answer."""
    joint = np.sum(pair_sums * np.log(np.where(data.present[:, None], confusions, 1.0)))
    joint += np.sum(pair_sums.sum(axis=0) * np.log(np.maximum(priors, _EPS)))
    return float((joint + entropy) / data.n_answers)


def _warn_unanswered(where, n_unanswered, n_items):
    """Warns of the items without answers, at the caller of ``fit``."""
    warnings.warn(
        f"{where}: {n_unanswered} of {n_items} items have no answer; their label is -1 and "
        "their probabilities are the class priors.",
        UserWarning,
        stacklevel=3,
    )
