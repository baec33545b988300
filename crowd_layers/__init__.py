"""Crowd layers for Keras 3: learning from the raw answers of many annotators.

The recommended method pools each item's answers in Dawid-Skene's likelihood with the network
as the class prior (:class:`CrowdsPooled`, :class:`PooledCrowdLikelihood`); for valence and
arousal the network is the prior of a latent-truth model with each annotator's scale, bias and
noise (:class:`CrowdsLatentTruth`, :class:`LatentTruthLikelihood`). Beside it: a Keras 3
re-implementation of Rodrigues & Pereira, "Deep Learning from Crowds", AAAI 2018 (reference
code: github.com/fmpr/CrowdLayer), with the reference's public names, a confusion-matrix layer
with the trace regulariser of Tanno et al. (CVPR 2019) or GeoCrowdNet's volume regulariser
(Ibrahim et al., ICLR 2023), CoNAL's common and individual confusions (:class:`CrowdsCoNAL`,
Chu et al., AAAI 2021), Annot-Mix's mixup over (item, annotator, answer) triples
(:func:`annot_mix_model`, :class:`AnnotMixBatches`, Herde et al., ECAI 2024), masked losses, and the label aggregators that serve as baselines
(majority vote, Dawid-Skene, agreement, and for valence and arousal the mean, the median and
the latent-truth model :class:`LatentTruthRegression`).

Importing the package registers every layer and loss with Keras, so a saved model reloads with
``keras.models.load_model(path)`` and no ``custom_objects``.

This package imports nothing else of affectnet-tf.
"""

from crowd_layers.aggregation import (
    DawidSkene,
    LatentTruthRegression,
    fleiss_kappa,
    krippendorff_alpha,
    majority_vote,
    majority_vote_confusions,
    mean_answer,
    median_answer,
    quiet_aggregation,
    vote_distribution,
)
from crowd_layers.annot_mix import (
    AnnotatorPerformance,
    AnnotMixBatches,
    AnnotMixCrossEntropy,
    annot_mix_batch,
    annot_mix_cross_entropy,
    annot_mix_model,
    observed_triples,
)
from crowd_layers.conal import CONAL_MIXTURES, ConfusionDifferenceRegularizer, CrowdsCoNAL
from crowd_layers.confusions import ConfusionTraceRegularizer, ConfusionVolumeRegularizer
from crowd_layers.latent_truth import CrowdsLatentTruth, LatentTruthLikelihood, latent_truth_nll
from crowd_layers.layers import CrowdsClassification, CrowdsConfusion, CrowdsRegression
from crowd_layers.losses import (
    MaskedMultiCrossEntropy,
    MaskedMultiMSE,
    MaskedMultiSequenceCrossEntropy,
    masked_multi_cross_entropy,
    masked_multi_mse,
)
from crowd_layers.methods import (
    CONFUSION_METHODS,
    CROWD_METHODS,
    DEFAULT_CROWD_METHOD,
    GEOCROWDNET_WEIGHT,
    crowd_loss,
    crowd_method,
)
from crowd_layers.models import prediction_model
from crowd_layers.pooled import (
    CrowdsGaussian,
    CrowdsPooled,
    MaskedGaussianLikelihood,
    PooledCrowdLikelihood,
    masked_gaussian_nll,
    pooled_crowd_nll,
)
from crowd_layers.trainers import CrowdsBinaryAggregator, CrowdsCategoricalAggregator

__all__ = [
    "quiet_aggregation",
    "DEFAULT_CROWD_METHOD",
    "CROWD_METHODS",
    "CONFUSION_METHODS",
    "GEOCROWDNET_WEIGHT",
    "crowd_loss",
    "crowd_method",
    "CrowdsPooled",
    "PooledCrowdLikelihood",
    "pooled_crowd_nll",
    "CrowdsLatentTruth",
    "LatentTruthLikelihood",
    "latent_truth_nll",
    "CrowdsGaussian",
    "MaskedGaussianLikelihood",
    "masked_gaussian_nll",
    "ConfusionVolumeRegularizer",
    "CrowdsCoNAL",
    "ConfusionDifferenceRegularizer",
    "CONAL_MIXTURES",
    "AnnotatorPerformance",
    "AnnotMixBatches",
    "AnnotMixCrossEntropy",
    "annot_mix_batch",
    "annot_mix_cross_entropy",
    "annot_mix_model",
    "observed_triples",
    "majority_vote_confusions",
    "CrowdsClassification",
    "CrowdsConfusion",
    "CrowdsRegression",
    "ConfusionTraceRegularizer",
    "MaskedMultiCrossEntropy",
    "MaskedMultiMSE",
    "MaskedMultiSequenceCrossEntropy",
    "masked_multi_cross_entropy",
    "masked_multi_mse",
    "prediction_model",
    "CrowdsCategoricalAggregator",
    "CrowdsBinaryAggregator",
    "DawidSkene",
    "LatentTruthRegression",
    "majority_vote",
    "vote_distribution",
    "mean_answer",
    "median_answer",
    "fleiss_kappa",
    "krippendorff_alpha",
]
