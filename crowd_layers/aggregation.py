"""Label aggregation baselines: majority vote, Dawid-Skene, mean/median, agreement.

Class answers come in one of two layouts, accepted by every function here:

- dense: an ``(n_items, n_annotators)`` integer matrix, ``-1`` where an annotator gave no
  answer (NaN in a float matrix is read as ``-1`` too);
- long: a **tuple** ``(items, annotators, labels)`` of three equal-length 1-D integer arrays,
  one entry per answer (``labels == -1`` entries are dropped). ``n_items`` is then
  ``items.max() + 1`` and ``n_annotators`` is ``annotators.max() + 1``. Large sparse crowds
  should use this layout: nothing here ever builds an ``(n_items, n_annotators, K)`` tensor.

Valence and arousal answers are a float ``(n_items, n_annotators)`` matrix with NaN (or the
reference code's sentinel ``999999999``) for no answer.
"""

import contextlib
import logging
import warnings

import krippendorff
import numpy as np
import scipy.sparse

from crowd_layers.checks import check_answers, check_float_answers, check_long_format

__all__ = [
    "DawidSkene",
    "quiet_aggregation",
    "majority_vote",
    "vote_distribution",
    "majority_vote_confusions",
    "mean_answer",
    "median_answer",
    "fleiss_kappa",
    "krippendorff_alpha",
]

logger = logging.getLogger(__name__)

_EPS = 1e-10  # crowd-kit's clipping floor for confusion counts and priors
_LOG_EPS = np.log(_EPS)
_BLOCK_ENTRIES = 65536  # items x classes per E-step block: 512 KiB of float64 temporaries
_TIE_BREAKS = ("random", "lowest", "prior", "keyed")
_ALPHA_LEVELS = ("nominal", "ordinal", "interval", "ratio")
_CONVERGENCE = ("crowdkit", "log_likelihood")


# --------------------------------------------------------------------------------------------
# Shared input handling
# --------------------------------------------------------------------------------------------


def _check_num_classes(num_classes):
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(
            f"`num_classes` must be a positive integer or None. Received: num_classes={num_classes!r}"
        )
    if num_classes < 1:
        raise ValueError(
            f"`num_classes` must be a positive integer or None. Received: num_classes={num_classes}"
        )
    return int(num_classes)


def _to_long(answers, num_classes=None, name="answers"):
    """Returns ``(items, annotators, labels, n_items, n_annotators, num_classes)``."""
    num_classes = _check_num_classes(num_classes)
    if isinstance(answers, tuple):
        items, annotators, labels = check_long_format(answers, num_classes, name=name)
        n_items = int(items.max()) + 1 if items.size else 0
        n_annotators = int(annotators.max()) + 1 if annotators.size else 0
    else:
        dense = check_answers(answers, num_classes, name=name)
        n_items, n_annotators = dense.shape
        items, annotators = np.nonzero(dense != -1)
        labels = dense[items, annotators]
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    return items, annotators, labels, n_items, n_annotators, num_classes


def _vote_counts(items, labels, n_items, num_classes):
    """``(n_items, num_classes)`` matrix of how many answers gave each class to each item."""
    flat = np.bincount(items * num_classes + labels, minlength=n_items * num_classes)
    return flat.reshape(n_items, num_classes)


def _counts(answers, num_classes, name="answers"):
    items, _, labels, n_items, _, num_classes = _to_long(answers, num_classes, name=name)
    return _vote_counts(items, labels, n_items, num_classes)


# --------------------------------------------------------------------------------------------
# Majority vote and vote distribution
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_aggregation():
    """Silences this module's per-call tie log and unanswered-item ``UserWarning``, for callers
    that count ties and unanswered items themselves (``return_info=True``) and report them
    once."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def majority_vote(
    answers, num_classes=None, tie_break="random", seed=0, return_info=False, keys=None
):
    """Most frequent answer per item.

    Ties between the most frequent classes are broken by ``tie_break``:

    - ``"random"``: uniformly among the tied classes, with ``np.random.default_rng(seed)``;
    - ``"lowest"``: the lowest class index (what ``np.argmax`` does);
    - ``"prior"``: the tied class answered most often over the whole data set (then lowest);
    - ``"keyed"``: by a fixed key of each item (``keys``, e.g. a hash of its file name): the
      tied classes in index order, the one at position ``key mod n_tied``. An item's label
      then depends on its own answers and key only, never on the other items, their order or
      a seed.

    The number of tied items is logged (``logging`` WARNING on ``crowd_layers.aggregation``)
    and returned with ``return_info=True``. Items without any answer get label ``-1``; they
    are counted and reported with a ``UserWarning``.

    Args:
        answers: dense ``(n_items, n_annotators)`` int matrix with -1 for no answer, or a
            tuple ``(items, annotators, labels)`` (see the module docstring).
        num_classes: number of classes; inferred as ``max(label) + 1`` when None.
        tie_break: ``"random"``, ``"lowest"``, ``"prior"`` or ``"keyed"``.
        seed: seed of the random tie break.
        keys: non-negative integer key per item, for ``tie_break="keyed"``.
        return_info: also return a dict with ``n_ties``, ``tied_items`` (indices),
            ``n_unanswered`` and ``unanswered_items``.

    Returns:
        ``labels`` of shape ``(n_items,)`` (int64, -1 for unanswered items), or
        ``(labels, info)`` when ``return_info`` is True.

    Examples:
        >>> majority_vote([[0, 1, 1], [2, 2, -1]], num_classes=3)
        array([1, 2])
    """
    if tie_break not in _TIE_BREAKS:
        raise ValueError(
            f"`tie_break` must be one of {_TIE_BREAKS}. Received: tie_break={tie_break!r}"
        )
    counts = _counts(answers, num_classes)
    n_items = counts.shape[0]
    if tie_break == "keyed":
        if keys is None or np.shape(keys) != (n_items,):
            raise ValueError(
                "`tie_break='keyed'` needs one integer key per item. Received: keys with shape "
                f"{None if keys is None else np.shape(keys)} for {n_items} items"
            )
        keys = np.asarray(keys)
        if keys.dtype.kind not in "iu" or (keys.dtype.kind == "i" and np.any(keys < 0)):
            raise ValueError(f"`keys` must be non-negative integers. Received dtype {keys.dtype}")
    answered = counts.sum(axis=1) > 0
    if counts.shape[1] == 0:
        labels = np.full(n_items, -1, dtype=np.int64)
        is_max = np.zeros_like(counts, dtype=bool)
    else:
        is_max = counts == counts.max(axis=1, keepdims=True)
        if tie_break == "lowest":
            labels = np.argmax(is_max, axis=1)
        elif tie_break == "prior":
            totals = counts.sum(axis=0)
            labels = np.argmax(np.where(is_max, totals, -1), axis=1)
        elif tie_break == "keyed":
            position = keys % np.maximum(is_max.sum(axis=1), 1).astype(keys.dtype)
            rank = np.cumsum(is_max, axis=1) - 1  # index among the tied classes
            labels = np.argmax(is_max & (rank == position[:, None]), axis=1)
        else:
            noise = np.random.default_rng(seed).random(counts.shape)
            labels = np.argmax(np.where(is_max, noise, -1.0), axis=1)
        labels = np.where(answered, labels, -1).astype(np.int64)
    tied = answered & (is_max.sum(axis=1) > 1)
    info = {
        "n_ties": int(tied.sum()),
        "tied_items": np.flatnonzero(tied),
        "n_unanswered": int((~answered).sum()),
        "unanswered_items": np.flatnonzero(~answered),
    }
    if info["n_ties"]:
        logger.warning(
            "majority_vote: %d of %d items have a tie for the most frequent class "
            "(broken with tie_break=%r).",
            info["n_ties"],
            n_items,
            tie_break,
        )
    if info["n_unanswered"]:
        warnings.warn(
            f"majority_vote: {info['n_unanswered']} of {n_items} items have no answer; "
            "their label is -1.",
            UserWarning,
            stacklevel=2,
        )
    return (labels, info) if return_info else labels


def vote_distribution(answers, num_classes=None):
    """Soft labels: the fraction of each item's answers that gave each class.

    Rows sum to 1. An item without any answer gets the uniform distribution ``1 / K`` (never
    NaN), and a ``UserWarning`` gives how many items that was.

    Args:
        answers: dense ``(n_items, n_annotators)`` int matrix with -1 for no answer, or a
            tuple ``(items, annotators, labels)``.
        num_classes: number of classes ``K``; inferred as ``max(label) + 1`` when None.

    Returns:
        float64 array of shape ``(n_items, K)``.

    Examples:
        >>> vote_distribution([[0, 1, 1, -1]], num_classes=2)
        array([[0.33333333, 0.66666667]])
    """
    counts = _counts(answers, num_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    unanswered = totals[:, 0] == 0
    if counts.shape[1] == 0:
        return counts
    if unanswered.any():
        warnings.warn(
            f"vote_distribution: {int(unanswered.sum())} of {counts.shape[0]} items have no "
            "answer; their distribution is uniform.",
            UserWarning,
            stacklevel=2,
        )
    uniform = np.full_like(counts, 1.0 / counts.shape[1])
    return np.where(unanswered[:, None], uniform, counts / np.where(totals == 0, 1.0, totals))


def majority_vote_confusions(answers, num_classes=None, smoothing=1.0):
    """Each annotator's confusion matrix against the (soft) majority vote.

    ``C_r[k, j] ∝ smoothing + sum_{i: y_ir = j} v_ik`` with ``v`` the vote distribution
    (:func:`vote_distribution`): one M-step of Dawid-Skene from the votes, with no tie to
    break. A start for the crowd layers' confusion matrices
    (``CrowdsPooled(init_confusions=...)``) that needs no EM.

    Args:
        answers: dense ``(n_items, n_annotators)`` int matrix with -1 for no answer, or a
            tuple ``(items, annotators, labels)``.
        num_classes: number of classes ``K``; inferred as ``max(label) + 1`` when None.
        smoothing: pseudo-count ``> 0`` added to every cell (an annotator without answers
            gets uniform rows).

    Returns:
        float64 array ``(n_annotators, K, K)``: rows the true class, columns the answer, rows
        sum to one.

    Examples:
        >>> majority_vote_confusions([[0, 0], [1, 0]], num_classes=2, smoothing=1.0)[1]
        array([[0.71428571, 0.28571429],
               [0.6       , 0.4       ]])
    """
    if not np.isscalar(smoothing) or not smoothing > 0:
        raise ValueError(
            f"`smoothing` must be a positive number. Received: smoothing={smoothing!r}"
        )
    items, annotators, labels, n_items, n_annotators, k = _to_long(answers, num_classes)
    counts = _vote_counts(items, labels, n_items, k).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    votes = counts / np.where(totals == 0, 1.0, totals)
    confusions = np.full((n_annotators, k, k), float(smoothing))
    # confusions[r, :, j] += votes[i] for every answer (i, r, j)
    np.add.at(confusions, (annotators, slice(None), labels), votes[items])
    return confusions / confusions.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Continuous answers (valence, arousal)
# --------------------------------------------------------------------------------------------


def _reduce_float(answers, reduce, name):
    array = check_float_answers(answers)
    unanswered = np.all(np.isnan(array), axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": reported below
        result = reduce(array, axis=1) if array.shape[1] else np.full(array.shape[0], np.nan)
    if unanswered.any():
        warnings.warn(
            f"{name}: {int(unanswered.sum())} of {array.shape[0]} items have no answer; "
            "their value is NaN.",
            UserWarning,
            stacklevel=3,
        )
    return result


def mean_answer(answers):
    """Mean of each item's answers, ignoring missing ones (NaN or 999999999).

    Items without any answer give NaN, reported (with their number) by a ``UserWarning``.

    Args:
        answers: float ``(n_items, n_annotators)`` matrix, NaN or 999999999 for no answer.

    Returns:
        float64 array of shape ``(n_items,)``.

    Examples:
        >>> mean_answer([[0.5, np.nan, 0.0], [1.0, 999999999, -1.0]])
        array([0.25, 0.  ])
    """
    return _reduce_float(answers, np.nanmean, "mean_answer")


def median_answer(answers):
    """Median of each item's answers, ignoring missing ones (NaN or 999999999).

    Items without any answer give NaN, reported (with their number) by a ``UserWarning``.

    Args:
        answers: float ``(n_items, n_annotators)`` matrix, NaN or 999999999 for no answer.

    Returns:
        float64 array of shape ``(n_items,)``.

    Examples:
        >>> median_answer([[0.5, np.nan, 0.0, 0.25]])
        array([0.25])
    """
    return _reduce_float(answers, np.nanmedian, "median_answer")


# --------------------------------------------------------------------------------------------
# Dawid-Skene
# --------------------------------------------------------------------------------------------


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
        self.num_classes = _check_num_classes(num_classes)
        self.smoothing = float(smoothing)

    def fit(self, answers):
        """Fits the model with EM.

        Args:
            answers: dense ``(n_items, n_annotators)`` int matrix with -1 for no answer, or a
                tuple ``(items, annotators, labels)`` of 1-D int arrays (long format).

        Returns:
            self.
        """
        items, annotators, labels, n_items, n_annotators, k = _to_long(answers, self.num_classes)
        counts = _vote_counts(items, labels, n_items, k)
        answered = counts.sum(axis=1) > 0
        self.log_likelihoods_, self.elbos_ = [], []
        self.n_iter_ = 0
        if not answered.any():
            self.priors_ = np.full(k, 1.0 / k) if k else np.zeros(0)
            self.probas_ = np.tile(self.priors_, (n_items, 1))
            self.labels_ = np.full(n_items, -1, dtype=np.int64)
            self.confusions_ = np.full((n_annotators, k, k), 1.0 / k if k else 0.0)
            self.log_likelihoods_, self.elbos_ = np.zeros(0), np.zeros(0)
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
            self.log_likelihoods_.append(log_likelihood / data.n_answers)
            self.elbos_.append(_crowdkit_elbo(data, entropy, priors, confusions, pair_sums))
            current = (
                self.elbos_[-1] if self.convergence == "crowdkit" else self.log_likelihoods_[-1]
            )
            if current - previous < self.tol:
                break
            previous = current

        self.priors_ = priors
        self.confusions_ = confusions.reshape(n_annotators, k, k).transpose(0, 2, 1).copy()
        self.probas_ = np.tile(priors, (n_items, 1))
        self.probas_[answered_items] = probas
        self.labels_ = np.full(n_items, -1, dtype=np.int64)
        self.labels_[answered_items] = np.argmax(probas, axis=1)
        self.log_likelihoods_ = np.asarray(self.log_likelihoods_)
        self.elbos_ = np.asarray(self.elbos_)
        if len(answered_items) < n_items:
            _warn_unanswered("DawidSkene", n_items - len(answered_items), n_items)
        return self

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
        items, annotators, labels, n_items, n_annotators, _ = _to_long(answers, k)
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
    warnings.warn(
        f"{where}: {n_unanswered} of {n_items} items have no answer; their label is -1 and "
        "their probabilities are the class priors.",
        UserWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------


def fleiss_kappa(answers, num_classes=None):
    r"""Fleiss' kappa for nominal answers, any number of raters per item.

    With ``n_ij`` the number of answers giving class ``j`` to item ``i`` and
    ``n_i = sum_j n_ij``:

    ``P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1))``, ``P_bar = mean_i P_i``,
    ``p_j = sum_i n_ij / sum_i n_i``, ``P_e = sum_j p_j^2``,
    ``kappa = (P_bar - P_e) / (1 - P_e)``.

    With the same number of raters on every item this is exactly Fleiss' formula; with varying
    numbers it is the usual generalisation (per-item agreement averaged over items, chance
    agreement from the pooled answers). Items with fewer than 2 answers carry no agreement
    information and are ignored (in ``P_bar`` and in ``p_j``). When no item has 2 answers, or
    all answers are the same class (``P_e = 1``), kappa is undefined: NaN with a
    ``RuntimeWarning``.

    J. L. Fleiss, "Measuring nominal scale agreement among many raters", Psychological
    Bulletin 76(5), 378-382, 1971. https://doi.org/10.1037/h0031619

    Args:
        answers: dense ``(n_items, n_annotators)`` int matrix with -1 for no answer, or a
            tuple ``(items, annotators, labels)``.
        num_classes: number of classes; inferred when None.

    Returns:
        kappa as a Python float.

    Examples:
        >>> round(fleiss_kappa([[0, 0, 0], [1, 1, 0], [1, 1, 1]]), 4)
        0.55
    """
    counts = _counts(answers, num_classes).astype(np.float64)
    n_i = counts.sum(axis=1)
    counts, n_i = counts[n_i >= 2], n_i[n_i >= 2]
    if not len(n_i):
        warnings.warn(
            "fleiss_kappa: no item has 2 or more answers; kappa is NaN.", RuntimeWarning, 2
        )
        return float("nan")
    p_bar = np.mean(((counts**2).sum(axis=1) - n_i) / (n_i * (n_i - 1)))
    p_j = counts.sum(axis=0) / n_i.sum()
    p_e = float(np.sum(p_j**2))
    if np.isclose(p_e, 1.0):
        warnings.warn(
            "fleiss_kappa: every answer is the same class; kappa is NaN.", RuntimeWarning, 2
        )
        return float("nan")
    return float((p_bar - p_e) / (1.0 - p_e))


def krippendorff_alpha(answers, level="nominal", num_classes=None):
    """Krippendorff's alpha, computed by the ``krippendorff`` package.

    Args:
        answers: for ``level="nominal"``, class answers as in :func:`majority_vote` (dense int
            matrix with -1 for no answer, or a long-format tuple). For ``"ordinal"``,
            ``"interval"`` and ``"ratio"``, a float ``(n_items, n_annotators)`` matrix of values
            with NaN (or 999999999) for no answer; -1 is a value there, not a missing answer.
        level: level of measurement: ``"nominal"``, ``"ordinal"``, ``"interval"`` or
            ``"ratio"``.
        num_classes: number of classes (nominal only); inferred when None.

    Returns:
        alpha as a Python float; NaN with a ``RuntimeWarning`` when it is undefined (no item
        with 2 answers, or fewer than 2 distinct values among such items).

    K. Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011.
    https://repository.upenn.edu/asc_papers/43

    Examples:
        >>> round(krippendorff_alpha([[0, 0], [1, 1], [1, 0]]), 4)
        0.4444
    """
    if level not in _ALPHA_LEVELS:
        raise ValueError(f"`level` must be one of {_ALPHA_LEVELS}. Received: level={level!r}")
    if level == "nominal":
        value_counts = _counts(answers, num_classes)
    else:
        reliability = check_float_answers(answers)
        values = np.unique(reliability[~np.isnan(reliability)])
        value_counts = (reliability[..., None] == values).sum(axis=1)
    pairable = value_counts[value_counts.sum(axis=1) >= 2]
    if (pairable.sum(axis=0) > 0).sum() < 2:
        warnings.warn(
            "krippendorff_alpha: fewer than 2 distinct values among items with 2 or more answers; "
            "alpha is NaN.",
            RuntimeWarning,
            2,
        )
        return float("nan")
    if level == "nominal":
        return float(krippendorff.alpha(value_counts=value_counts, level_of_measurement=level))
    return float(krippendorff.alpha(reliability_data=reliability.T, level_of_measurement=level))
