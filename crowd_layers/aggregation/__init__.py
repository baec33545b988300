"""Label aggregation baselines: majority vote, Dawid-Skene, mean/median, agreement.

One module per method, as crowd-kit's ``aggregation/classification/``:
:mod:`~crowd_layers.aggregation.voting` (majority vote, vote distribution, confusions against
the votes), :mod:`~crowd_layers.aggregation.dawid_skene`,
:mod:`~crowd_layers.aggregation.continuous` (mean and median of valence and arousal answers),
:mod:`~crowd_layers.aggregation.latent_truth` (each annotator's scale, bias and noise by EM),
:mod:`~crowd_layers.aggregation.agreement` (Fleiss' kappa, Krippendorff's alpha), and
:mod:`~crowd_layers.aggregation.answers` (the answer layouts they share). Every public name is
importable from here.

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

from crowd_layers.aggregation.agreement import fleiss_kappa, krippendorff_alpha
from crowd_layers.aggregation.answers import quiet_aggregation
from crowd_layers.aggregation.continuous import mean_answer, median_answer
from crowd_layers.aggregation.dawid_skene import DawidSkene
from crowd_layers.aggregation.latent_truth import LatentTruthRegression
from crowd_layers.aggregation.voting import (
    majority_vote,
    majority_vote_confusions,
    vote_distribution,
)

__all__ = [
    "DawidSkene",
    "LatentTruthRegression",
    "quiet_aggregation",
    "majority_vote",
    "vote_distribution",
    "majority_vote_confusions",
    "mean_answer",
    "median_answer",
    "fleiss_kappa",
    "krippendorff_alpha",
]
