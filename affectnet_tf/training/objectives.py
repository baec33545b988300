"""What each head of a run learns against: its loss (from the head's target), the start of
a confusion crowd layer (``--crowd-init``), and that of a valence/arousal ``latent`` crowd
layer (the latent-truth model fitted on the training answers).

For example:

```python
from affectnet_tf.training.config import RunConfig
from affectnet_tf.training.objectives import head_losses

losses = head_losses(RunConfig(model="compact_cnn", task="all", target="mv"),
                     ["expression", "valence", "arousal"])
```
"""

import crowd_layers
from affectnet_tf.data import pipeline as data
from affectnet_tf.modeling import losses as losses_module
from affectnet_tf.modeling import models

__all__ = ["head_losses", "initial_confusions", "initial_va_crowds"]


def head_losses(config, heads, info=None, training_model=None):
    """Per-head Keras losses, each from its head's own target (masked where a label can be
    missing). ``info`` (the training data's :class:`affectnet_tf.DatasetInfo`) gives the
    classes (default ``config.num_classes`` of AffectNet's) and is needed for
    ``class_weights``; ``training_model`` gives a ``latent`` crowd head's loss its gradient
    scale (:func:`affectnet_tf.modeling.models.crowd_losses`)."""
    targets = config.head_targets
    crowd_losses = models.crowd_losses(
        config.crowd_layer, config.va_crowd_layer, training_model=training_model
    )
    num_classes = config.num_classes if info is None else info.num_classes
    weights = None
    if config.class_weights:
        weights = [info.class_weights[k] for k in range(num_classes)]
    result = {}
    for head in heads:
        if targets[head] == "cv":
            result[head] = crowd_losses[head]
        elif head != "expression":
            result[head] = losses_module.MaskedMeanSquaredError()
        elif targets[head] in ("soft", "ds"):
            result[head] = losses_module.MaskedCategoricalCrossentropy(
                label_smoothing=config.label_smoothing, class_weights=weights
            )
        else:
            result[head] = losses_module.MaskedSparseCategoricalCrossentropy(
                num_classes, label_smoothing=config.label_smoothing, class_weights=weights
            )
    return result


def _train_answers(config, roles, head):
    """The answer matrix of the run's training images for ``head``."""
    return data.crowd_answers(
        roles.dataset_name,
        roles.train.split,
        num_classes=len(roles.class_names),
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        config=roles.builder_config,
        subset=roles.train.subset,
        partition=roles.partition_of(roles.train, config.partition),
        head=head,
    )


def initial_va_crowds(config, roles):
    """Starts of ``latent`` valence/arousal crowd heads: ``{head: LatentTruthRegression}``
    fitted on the training images' answers only (None without such a head); with the truths'
    prior, whose spread is the head's start of ``tau`` (the start the demo runs measured)."""
    heads = [h for h in ("valence", "arousal") if h in config.crowd_heads]
    if config.va_crowd_layer != "latent" or not heads:
        return None
    return {
        head: crowd_layers.LatentTruthRegression(truth_prior=True).fit(
            _train_answers(config, roles, head)
        )
        for head in heads
    }


def initial_confusions(config, roles):
    """Start of a confusion crowd layer: ``--crowd-init ds`` from Dawid-Skene's confusion
    matrices of the training answers (one pseudo-answer per cell keeps every logit finite),
    ``mv`` from each annotator's confusions against the vote distribution; None for
    ``diagonal`` or without an expression crowd head."""
    if config.crowd_init == "diagonal" or "expression" not in config.crowd_heads:
        return None
    if config.crowd_layer not in models.CONFUSION_CROWD_LAYERS:
        raise ValueError(
            f"--crowd-init {config.crowd_init} initialises a confusion crowd layer "
            f"({', '.join(models.CONFUSION_CROWD_LAYERS)}) only. "
            f"Received: crowd_layer={config.crowd_layer!r}"
        )
    answers = _train_answers(config, roles, "expression")
    if config.crowd_init == "mv":
        return crowd_layers.majority_vote_confusions(answers, num_classes=len(roles.class_names))
    aggregator = crowd_layers.DawidSkene(num_classes=len(roles.class_names), smoothing=1.0)
    return aggregator.fit(answers).confusions_
