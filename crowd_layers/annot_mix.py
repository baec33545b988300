"""Annot-Mix: mixup over (item, annotator, answer) triples (Herde et al., ECAI 2024), in Keras 3.

Mixup (Zhang et al., ICLR 2018) trains on convex combinations of pairs of examples and of their
one-hot labels. Annot-Mix extends it to a crowd: every observed answer is a triple (item,
annotator, answer); two triples are mixed with one ``lambda ~ Beta(alpha, alpha)`` in their
input, their annotator's one-hot vector and their one-hot answer, and an annotator-aware model
is fitted to the mixed answer with the cross-entropy:

    p(answer j | x, a) = sum_k p(k | x) P(x, a)[k, j],
    loss = -mean_{mixed triples} sum_j z_j log p(answer j | x, a),

where ``p(k | x)`` is the classifier and ``P(x, a)`` a row-stochastic confusion matrix of an
annotator-performance network that sees the annotator (``a``) and the classifier's hidden
features of the item (with their gradient stopped). To predict, the classifier alone.

What came from where:

- the paper (M. Herde, L. Lührs, D. Huseljic, B. Sick, "Annot-Mix: Learning with Noisy Class
  Labels from Multiple Annotators via a Mixup Extension", ECAI 2024, doi:10.3233/FAIA240829):
  the mixing of triples, the annotator-aware model and its loss;
- the authors' code (github.com/ies-research/multi-annotator-machine-learning,
  ``maml/classifiers/_annot_mix.py``, ``maml/utils/_mixup.py``, ``maml/architectures/_base.py``,
  ``empirical_evaluation/hydra_configs/classifier/annot_mix.yaml``): every detail below is
  theirs: a batch is a batch of items expanded to all their observed answers; each triple gets
  its own ``lambda`` (``alpha = 1`` by default) and a partner drawn by a random permutation of
  the batch's triples (optionally only among the triples of the same item); the performance
  network: ``Dense(E)`` on the annotator's (mixed) one-hot vector and ``Dense(E)`` on the
  classifier's stopped hidden features, concatenated, ``Dropout(0.5)``, ``Dense(E)``,
  ``BatchNormalization``, ReLU, ``Dense(K * K)`` with the bias ``log(eta (K - 1) / (1 - eta))``
  on the diagonal (``eta = 0.9``: every annotator starts right 90% of the time), ``E = 128``;
  the loss divides by the number of mixed triples;
- new here: the mixing runs in the input pipeline (:class:`AnnotMixBatches`, NumPy, seeded per
  epoch and batch), so training is reproducible under a seed and ``model.fit`` under
  ``tf.distribute`` sees the very batches one device would; the loss follows the package's
  reduction rule (:func:`~crowd_layers.losses.mean_over_observed`); the batch normalisation is
  synchronised across replicas (TensorFlow backend), so two replicas train as one device.
"""

import math

import numpy as np
from keras import Model as KerasModel
from keras import backend, initializers, layers, losses, ops, saving
from keras.utils import PyDataset

from crowd_layers.checks import check_answers, check_non_negative, check_positive_int
from crowd_layers.losses import check_reduction, mean_over_observed

__all__ = [
    "AnnotMixBatches",
    "AnnotMixCrossEntropy",
    "AnnotatorPerformance",
    "annot_mix_batch",
    "annot_mix_cross_entropy",
    "annot_mix_model",
    "observed_triples",
]

_EPSILON = 1e-7


def observed_triples(answers):
    """The observed ``(item, annotator, answer)`` triples of an answer matrix, row by row.

    Args:
        answers: ``(n_items, n_annotators)`` integers, ``-1`` for no answer.

    Returns:
        Three ``int64`` arrays of equal length: items, annotators, answers.

    Examples:
        >>> observed_triples(np.array([[2, -1], [-1, -1], [0, 1]]))
        (array([0, 2, 2]), array([0, 0, 1]), array([2, 0, 1]))
    """
    answers = check_answers(answers)
    items, annotators = np.nonzero(answers >= 0)
    return items.astype(np.int64), annotators.astype(np.int64), answers[items, annotators]


def _check_alpha(alpha):
    return check_non_negative(alpha, "alpha")


def _partners_within_items(items, rng):
    """A random permutation that sends every position to one of the same item."""
    keys = rng.random(len(items))
    partners = np.empty(len(items), dtype=np.int64)
    partners[np.argsort(items, kind="stable")] = np.lexsort((keys, items))
    return partners


def _mix_triples(triples, items, alpha, rng, lam=None, partners=None, within_items=False):
    """Mixes the arrays of ``triples`` (equal first axes) with one ``lam`` and partner each."""
    n = len(items)
    if lam is None and alpha == 0:
        return triples
    if lam is None:
        lam = rng.beta(alpha, alpha, size=n)
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (n,))
    if partners is None:
        partners = _partners_within_items(items, rng) if within_items else rng.permutation(n)
    partners = np.asarray(partners)
    if partners.shape != (n,) or (n and (partners.min() < 0 or partners.max() >= n)):
        raise ValueError(
            f"`partners` must hold {n} indices into the batch's observed answers. "
            f"Received: partners.shape={partners.shape}"
        )

    def mix(values):
        weights = lam.reshape((n,) + (1,) * (values.ndim - 1))
        return (weights * values + (1.0 - weights) * values[partners]).astype(np.float32)

    return tuple(mix(values) for values in triples)


def annot_mix_batch(
    x,
    answers,
    num_classes,
    alpha=1.0,
    rng=None,
    lam=None,
    partners=None,
    within_items=False,
):
    """Expands a batch to its observed answers and mixes them (Annot-Mix, Herde et al. 2024).

    With triples ``t = (x_i, e_r, e_y)`` (the item's input, the annotator's and the answer's
    one-hot vectors), triple ``n`` becomes ``lam_n * t_n + (1 - lam_n) * t_partners[n]``.

    Args:
        x: Inputs of the batch's items, ``(n_items, ...)``.
        answers: ``(n_items, n_annotators)`` integers, ``-1`` for no answer (ignored).
        num_classes: Number of classes ``K``.
        alpha: ``lam ~ Beta(alpha, alpha)``, one per triple (default 1, the authors'); 0: no
            mixing (the triples as they are, unless ``lam`` is given).
        rng: A ``numpy.random.Generator`` (or a seed) for ``lam`` and ``partners``.
        lam: Optional fixed mixing weights: a number or ``(n_triples,)``.
        partners: Optional fixed partner of each triple, ``(n_triples,)`` indices.
        within_items: Draw partners only among the triples of the same item (the authors'
            ``mix_only_annotators``; default ``False``, as their default).

    Returns:
        ``((x_mixed, annotators_mixed), answers_mixed)``: float32 arrays ``(n_triples, ...)``,
        ``(n_triples, n_annotators)`` and ``(n_triples, num_classes)``, in the row-major
        order of :func:`observed_triples`.

    Examples:
        >>> x = np.array([[0.0], [4.0]])
        >>> (xm, am), zm = annot_mix_batch(x, np.array([[0, -1], [-1, 1]]), 2, lam=0.75,
        ...                                partners=np.array([1, 0]))
        >>> xm.ravel().tolist(), zm.tolist()
        ([1.0, 3.0], [[0.75, 0.25], [0.25, 0.75]])
    """
    num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
    alpha = _check_alpha(alpha)
    answers = check_answers(answers, num_classes=num_classes)
    x = np.asarray(x)
    if x.ndim < 1 or len(x) != len(answers):
        raise ValueError(
            "`x` and `answers` must have the same number of items. "
            f"Received: x.shape={x.shape}, answers.shape={answers.shape}"
        )
    items, annotators, labels = observed_triples(answers)
    triples = (
        x[items].astype(np.float32),
        np.eye(answers.shape[1], dtype=np.float32)[annotators],
        np.eye(num_classes, dtype=np.float32)[labels],
    )
    rng = np.random.default_rng(rng)
    x_mixed, a_mixed, z_mixed = _mix_triples(
        triples, items, alpha, rng, lam=lam, partners=partners, within_items=within_items
    )
    return (x_mixed, a_mixed), z_mixed


class AnnotMixBatches(PyDataset):
    """Batches of mixed triples for ``model.fit`` of :func:`annot_mix_model`, for all epochs.

    Every epoch shuffles the items, lines up the observed answers (triples) item by item in
    that order, and cuts them into batches of ``batch_size`` triples (the last batch is filled
    up from the start of the epoch's order: every batch is full, every answer is seen at least
    once an epoch); each batch is mixed as in :func:`annot_mix_batch`. The authors' batches are
    ``b`` items with all their answers: ``batch_size = b * answers per item`` is the same
    training, with a fixed number of rows (so ``tf.distribute`` splits every batch evenly when
    ``batch_size`` is a multiple of the replicas, and Keras' first-batch build under a strategy,
    which averages the replicas' batches, works).

    The dataset holds the batches of all ``epochs`` epochs in a row, and batch ``index`` is a
    pure function of ``(seed, index)``: epoch ``index // steps_per_epoch``, its item order from
    ``default_rng([seed, epoch, 0])``, its mixing from ``default_rng([seed, epoch, index, 1])``.
    The same seed gives the same training whatever the order in which Keras' prefetching or
    workers ask for batches (an epoch counter moved by ``on_epoch_end`` would race with the
    prefetching of the next epoch's first batch). Pass ``epochs`` and ``steps_per_epoch`` to
    ``fit``, as in the example: Keras then keeps one iterator over the whole sequence; and
    ``shuffle=False``: ``fit``'s default shuffles the order of a ``PyDataset``'s batches with
    Python's ``random`` (across epochs here), which the seed of this dataset does not govern.

    Args:
        x: Inputs ``(n_items, ...)``.
        answers: ``(n_items, n_annotators)`` integers, ``-1`` for no answer.
        num_classes: Number of classes ``K``.
        batch_size: Triples per batch (default 128).
        epochs: Number of epochs the dataset holds (default 1).
        alpha: ``Beta(alpha, alpha)`` of the mixing weights (default 1; 0: no mixing).
        within_items: Mix only triples of the same item (default ``False``).
        shuffle: Shuffle the items every epoch (default ``True``).
        seed: Integer seed ``>= 0`` (default 0).
        **kwargs: ``PyDataset`` arguments (``workers``, ``use_multiprocessing``,
            ``max_queue_size``).

    Attributes:
        steps_per_epoch: Batches per epoch, ``ceil(n_answers / batch_size)``.

    Examples:
        >>> batches = AnnotMixBatches(x_train, answers, num_classes=8, epochs=50, seed=0)
        >>> training = annot_mix_model(classifier, num_annotators=answers.shape[1])
        >>> training.compile("adam", loss=AnnotMixCrossEntropy())
        >>> training.fit(
        ...     batches, epochs=50, steps_per_epoch=batches.steps_per_epoch, shuffle=False
        ... )
    """

    def __init__(
        self,
        x,
        answers,
        num_classes,
        batch_size=128,
        epochs=1,
        alpha=1.0,
        within_items=False,
        shuffle=True,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.answers = check_answers(answers, num_classes=self.num_classes)
        self.x = np.asarray(x)
        if self.x.ndim < 1 or len(self.x) != len(self.answers):
            raise ValueError(
                "`x` and `answers` must have the same number of items. "
                f"Received: x.shape={self.x.shape}, answers.shape={self.answers.shape}"
            )
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.epochs = check_positive_int(epochs, "epochs")
        self.alpha = _check_alpha(alpha)
        self.within_items = bool(within_items)
        self.shuffle = bool(shuffle)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.items, self.annotators, self.labels = observed_triples(self.answers)
        if len(self.items) == 0:
            raise ValueError("`answers` must hold at least one answer. Received: all -1")
        self.steps_per_epoch = math.ceil(len(self.items) / self.batch_size)
        self._orders = {}

    def __len__(self):
        return self.epochs * self.steps_per_epoch

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"`index` must be in [0, {len(self)}). Received: index={index}")
        epoch, step = divmod(int(index), self.steps_per_epoch)
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        chosen = self.epoch_order(epoch)[positions % len(self.items)]
        items = self.items[chosen]
        triples = (
            self.x[items].astype(np.float32),
            np.eye(self.answers.shape[1], dtype=np.float32)[self.annotators[chosen]],
            np.eye(self.num_classes, dtype=np.float32)[self.labels[chosen]],
        )
        rng = np.random.default_rng([self.seed, epoch, int(index), 1])
        x_mixed, a_mixed, z_mixed = _mix_triples(
            triples, items, self.alpha, rng, within_items=self.within_items
        )
        return (x_mixed, a_mixed), z_mixed

    def epoch_order(self, epoch):
        """The triples (indices into ``items``, ``annotators``, ``labels``) of epoch ``epoch``."""
        order = self._orders.get(epoch)
        if order is None:
            order = np.arange(len(self.items))
            if self.shuffle:
                rank = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.answers))
                order = np.argsort(rank[self.items], kind="stable")
            self._orders = {epoch: order}  # one epoch cached: batches come in order
        return order


def _torch_dense(units, name, bias="zeros"):
    """``Dense`` with PyTorch's default kernel start, ``U(+-1 / sqrt(fan_in))``, as the authors'."""
    kernel = initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")
    return layers.Dense(units, kernel_initializer=kernel, bias_initializer=bias, name=name)


@saving.register_keras_serializable(package="crowd_layers")
class AnnotatorPerformance(layers.Layer):
    """Annot-Mix's annotator-aware output: class probabilities times a confusion of ``(x, a)``.

    Given the classifier's class probabilities ``p``, its hidden features ``h`` of the item
    (the gradient stops there, as in the authors' code) and an annotator vector ``a`` (one-hot,
    or a mixture of two), the layer computes a row-stochastic confusion matrix

        P(h, a) = softmax(Dense_K2(relu(BN(Dense_E(dropout([Dense_E(h), Dense_E(a)]))))))

    (reshaped to ``(K, K)``, rows the true class) and outputs the log-probability of each answer
    ``log sum_k p_k P[k, j]``. The last layer's bias starts at
    ``log(eta (K - 1) / (1 - eta))`` on the diagonal, so every annotator starts right with
    probability about ``eta``. Herde et al., ECAI 2024 (code:
    github.com/ies-research/multi-annotator-machine-learning).

    The network sees the item, so it can also learn to predict the answers without the
    classifier, which is then left unconstrained: on a 2-D toy crowd (5 dense annotators) the
    authors' 128 units did so in about half of the seeds tried, 16 units rarely. Lower
    ``embedding_dim`` when the item's features are few and easy to fit.

    Args:
        num_classes: Number of classes ``K`` (``>= 2``).
        num_annotators: Number of annotators ``R``.
        embedding_dim: Size ``E`` of the embeddings and of the hidden layer (default 128).
        dropout_rate: Dropout on the concatenated embeddings (default 0.5), in ``[0, 1)``.
        batch_norm: Batch normalisation of the hidden layer (default ``True``; synchronised
            across ``tf.distribute`` replicas on the TensorFlow backend).
        eta: Start probability of a right answer, in ``(0, 1)`` (default 0.9).
        seed: Optional seed of the dropout.
        **kwargs: Base layer arguments (``name``, ``dtype``, ...).

    Input shape:
        A list ``[probabilities (batch, K), features (batch, H), annotators (batch, R)]``.

    Output shape:
        ``(batch, K)``: answer log-probabilities, scored by :class:`AnnotMixCrossEntropy`.

    Examples:
        >>> layer = AnnotatorPerformance(3, num_annotators=4, dropout_rate=0.0)
        >>> out = layer([np.full((2, 3), 1 / 3), np.ones((2, 5)), np.eye(4)[:2]])
        >>> out.shape
        TensorShape([2, 3])
    """

    def __init__(
        self,
        num_classes,
        num_annotators,
        embedding_dim=128,
        dropout_rate=0.5,
        batch_norm=True,
        eta=0.9,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.num_annotators = check_positive_int(num_annotators, "num_annotators")
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        if isinstance(dropout_rate, bool) or not 0.0 <= dropout_rate < 1.0:
            raise ValueError(
                f"`dropout_rate` must lie in [0, 1). Received: dropout_rate={dropout_rate!r}"
            )
        self.dropout_rate = float(dropout_rate)
        self.batch_norm = bool(batch_norm)
        if isinstance(eta, bool) or not 0.0 < eta < 1.0:
            raise ValueError(f"`eta` must lie strictly between 0 and 1. Received: eta={eta!r}")
        self.eta = float(eta)
        self.seed = None if seed is None else check_positive_int(seed, "seed", minimum=0)
        k, e = self.num_classes, self.embedding_dim
        self.sample_dense = _torch_dense(e, "sample_embedding")
        self.annotator_dense = _torch_dense(e, "annotator_embedding")
        self.dropout = layers.Dropout(self.dropout_rate, seed=self.seed)
        self.hidden_dense = _torch_dense(e, "hidden")
        self.normalization = None
        if self.batch_norm:
            self.normalization = layers.BatchNormalization(
                synchronized=backend.backend() == "tensorflow", name="hidden_batch_norm"
            )
        diagonal = math.log(self.eta * (k - 1) / (1.0 - self.eta))
        self.output_dense = _torch_dense(
            k * k, "confusion_logits", bias=initializers.Constant((diagonal * np.eye(k)).ravel())
        )

    def build(self, input_shape):
        shapes = list(input_shape) if isinstance(input_shape, list | tuple) else []
        k, r, e = self.num_classes, self.num_annotators, self.embedding_dim
        if (
            len(shapes) != 3
            or not all(isinstance(s, list | tuple) and len(s) == 2 for s in shapes)
            or shapes[0][-1] not in (None, k)
            or shapes[1][-1] is None
            or shapes[2][-1] not in (None, r)
        ):
            raise ValueError(
                "`AnnotatorPerformance` expects three inputs [probabilities (batch, "
                f"num_classes={k}), features (batch, H), annotators (batch, num_annotators={r})]"
                f". Received: input_shape={input_shape}"
            )
        self.sample_dense.build(tuple(shapes[1]))
        self.annotator_dense.build((None, r))
        self.hidden_dense.build((None, 2 * e))
        if self.normalization is not None:
            self.normalization.build((None, e))
        self.output_dense.build((None, e))

    def call(self, inputs, training=None):
        probabilities, features, annotators = inputs
        log_confusions = self._log_confusions(features, annotators, training)
        log_prior = ops.log(ops.clip(probabilities, _EPSILON, 1.0))
        return ops.logsumexp(ops.expand_dims(log_prior, -1) + log_confusions, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "num_annotators": self.num_annotators,
                "embedding_dim": self.embedding_dim,
                "dropout_rate": self.dropout_rate,
                "batch_norm": self.batch_norm,
                "eta": self.eta,
                "seed": self.seed,
            }
        )
        return config

    def confusion_matrices(self, features, annotators):
        """The confusion matrices ``P(h, a)`` of given items and annotators (inference mode).

        Args:
            features: The classifier's hidden features ``(batch, H)``.
            annotators: Annotator vectors ``(batch, num_annotators)`` (one-hot rows).

        Returns:
            Array ``(batch, num_classes, num_classes)``: rows the true class, summing to one.
        """
        features = ops.convert_to_tensor(features, dtype=self.compute_dtype)
        annotators = ops.convert_to_tensor(annotators, dtype=self.compute_dtype)
        log_confusions = self._log_confusions(features, annotators, training=False)
        return np.exp(np.asarray(ops.convert_to_numpy(log_confusions), dtype=np.float64))

    def _log_confusions(self, features, annotators, training):
        embedded = ops.concatenate(
            [self.sample_dense(ops.stop_gradient(features)), self.annotator_dense(annotators)],
            axis=-1,
        )
        hidden = self.hidden_dense(self.dropout(embedded, training=training))
        if self.normalization is not None:
            hidden = self.normalization(hidden, training=training)
        logits = self.output_dense(ops.relu(hidden))
        logits = ops.reshape(logits, (-1, self.num_classes, self.num_classes))
        return ops.log_softmax(logits, axis=-1)


def annot_mix_cross_entropy(y_true, y_pred):
    """Cross-entropy of mixed answers, averaged over the triples (rows) that carry one.

    Formula: ``sum_{n: z_n != 0} -sum_j z_nj y_pred[n, j]`` divided by the number of such
    rows (the authors' loss), returned as per-sample shares under the package's reduction rule
    (:func:`~crowd_layers.losses.mean_over_observed`), so it is the same on one device and
    under ``tf.distribute``. An all-zero row (padding) adds nothing.

    Args:
        y_true: Mixed one-hot answers ``(batch, num_classes)``.
        y_pred: Answer log-probabilities ``(batch, num_classes)`` of
            :class:`AnnotatorPerformance`.

    Returns:
        Per-sample values ``(batch,)``.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    if len(y_pred.shape) != 2 or tuple(y_true.shape[1:]) != tuple(y_pred.shape[1:]):
        raise ValueError(
            "`y_true` (mixed one-hot answers) and `y_pred` (answer log-probabilities) must both "
            f"have shape (batch, num_classes). Received: y_true.shape={y_true.shape}, "
            f"y_pred.shape={y_pred.shape}"
        )
    observed = ops.sum(y_true, axis=-1) > 0
    terms = -ops.sum(ops.where(y_true > 0, y_true * y_pred, ops.zeros_like(y_pred)), axis=-1)
    return mean_over_observed(ops.where(observed, terms, ops.zeros_like(terms)), observed)


@saving.register_keras_serializable(package="crowd_layers")
class AnnotMixCrossEntropy(losses.Loss):
    """Annot-Mix's loss: the mean cross-entropy of the mixed answers (pairs with
    :class:`AnnotatorPerformance`; wraps :func:`annot_mix_cross_entropy`).

    Formula: ``mean_{n: z_n != 0} -sum_j z_nj log p(answer j | x_n, a_n)``.

    Args:
        reduction: ``"sum_over_batch_size"`` (default, the mean over mixed triples),
            ``"mean"`` (the same) or ``"none"`` (per-sample shares).
        name: Loss name.
        dtype: Computation dtype.

    Input shape:
        ``y_true`` and ``y_pred``: ``(batch, num_classes)``.

    Output shape:
        A scalar (``(batch,)`` with ``reduction="none"``).

    Examples:
        >>> loss = AnnotMixCrossEntropy()
        >>> y_pred = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
        >>> float(loss(np.array([[1.0, 0.0], [0.0, 0.0]]), y_pred))  # one row: -log 0.5
        0.6931...
    """

    def __init__(self, reduction="sum_over_batch_size", name="annot_mix_cross_entropy", dtype=None):
        super().__init__(name=name, reduction=check_reduction(reduction), dtype=dtype)

    def call(self, y_true, y_pred):
        return annot_mix_cross_entropy(y_true, y_pred)


def _classifier_embedding(classifier, embedding):
    """The symbolic tensor of the classifier's hidden features fed to the performance network."""
    if embedding is None:
        return classifier.layers[-1].input
    if isinstance(embedding, str):
        try:
            return classifier.get_layer(embedding).output
        except ValueError as error:
            raise ValueError(
                f"`embedding` must name a layer of `classifier`. Received: embedding={embedding!r}"
            ) from error
    raise ValueError(
        "`embedding` must be None (the input of the classifier's last layer) or the name of a "
        f"layer of `classifier`. Received: embedding={embedding!r}"
    )


def annot_mix_model(classifier, num_annotators, embedding=None, name=None, **performance_kwargs):
    """The training model of Annot-Mix: ``[x, annotators] -> answer log-probabilities``.

    Joins a classifier (a built functional or Sequential model with one input and class
    probabilities ``(batch, K)`` as its output) to an :class:`AnnotatorPerformance` layer fed
    with the classifier's output, its hidden features and an annotator vector. The model shares
    the classifier's layers: after ``fit`` on :class:`AnnotMixBatches` with
    :class:`AnnotMixCrossEntropy`, predict with ``classifier`` itself.

    Args:
        classifier: The classifier ``keras.Model``.
        num_annotators: Number of annotators ``R``.
        embedding: The hidden features: ``None`` (default: the input of the classifier's last
            layer, the authors' choice) or the name of one of its layers (its output).
        name: Name of the model (default: ``classifier.name + "_annot_mix"``).
        **performance_kwargs: :class:`AnnotatorPerformance` arguments (``embedding_dim``,
            ``dropout_rate``, ``batch_norm``, ``eta``, ``seed``).

    Returns:
        A functional ``keras.Model`` with inputs ``[x, annotators (batch, R)]``.

    Raises:
        ValueError: for a classifier that is not a built single-input model with a
            ``(batch, K)`` output, or an unknown ``embedding`` layer.

    Examples:
        >>> training = annot_mix_model(classifier, num_annotators=59)
        >>> training.compile("adam", loss=AnnotMixCrossEntropy())
        >>> batches = AnnotMixBatches(x, answers, num_classes=8, epochs=50)
        >>> training.fit(batches, epochs=50, steps_per_epoch=batches.steps_per_epoch,
        ...              shuffle=False)
    """
    if not isinstance(classifier, KerasModel):
        raise ValueError(
            f"`classifier` must be a keras.Model. Received: classifier={type(classifier).__name__}"
        )
    try:
        inputs, output = classifier.inputs, classifier.output
    except (AttributeError, ValueError) as error:
        raise ValueError(
            "`classifier` must be built on symbolic inputs (a functional model, or a Sequential "
            f"model with an Input). Received: classifier={classifier.name!r} ({error})"
        ) from error
    if not inputs or len(inputs) != 1 or len(output.shape) != 2 or output.shape[-1] is None:
        raise ValueError(
            "`classifier` must have one input and class probabilities (batch, num_classes) as "
            f"its output. Received: classifier={classifier.name!r} with "
            f"{len(inputs or [])} inputs and output shape {getattr(output, 'shape', None)}"
        )
    num_annotators = check_positive_int(num_annotators, "num_annotators")
    features = _classifier_embedding(classifier, embedding)
    annotators = layers.Input((num_annotators,), name="annotators")
    performance = AnnotatorPerformance(
        int(output.shape[-1]), num_annotators, name="annotator_performance", **performance_kwargs
    )
    outputs = performance([output, features, annotators])
    return KerasModel([*inputs, annotators], outputs, name=name or f"{classifier.name}_annot_mix")
