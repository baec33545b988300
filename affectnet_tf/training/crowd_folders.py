"""``--dataset crowd_images --manual-dir DIR``: a user's crowd folder
(:mod:`tfds_affectnet.crowd_folder`) as the data of a run.

The folder's configuration (:class:`tfds_affectnet.CrowdImagesConfig`) is read from the folder
each time the roles are made; its one split ``train`` is cut into train / selection / test as
an AffectNetC25 set is (:class:`affectnet_tf.data.partition.Partition`: stratified by majority
vote, seeded by ``--split-seed``, ``--folds`` too). The test data is scored against the truth
of ``truth.csv`` where the folder has one, else against the crowd (majority vote, mean answer).
"""

__all__ = ["CROWD_IMAGES", "crowd_images_config", "eval_reference"]

CROWD_IMAGES = "crowd_images"


def crowd_images_config(config):
    """The ``crowd_images`` configuration of ``--manual-dir`` (the folder is read and checked).

    Raises:
        ValueError: no ``--manual-dir``, another name than ``crowd_images``, a task whose
            answers the folder lacks, or a class set that the training and evaluation do not
            take (AffectNet's 8, or its 7 without contempt with ``--num-classes 7``).
    """
    from tfds_affectnet import CrowdImagesConfig, labels

    if config.dataset != CROWD_IMAGES:
        raise ValueError(f"`dataset` must be 'crowd_images'. Received: dataset={config.dataset!r}")
    if not config.manual_dir:
        raise ValueError(
            "--dataset crowd_images reads your folder: give it with --manual-dir DIR "
            "(DIR/images/, DIR/answers.csv; docs/crowd-images.md). Received: manual_dir=None"
        )
    folder = CrowdImagesConfig.from_folder(
        config.manual_dir, image_size=int(config.stored_image_size or 224)
    )
    names = tuple(name.lower() for name in folder.class_names)
    if names != labels.expression_names(config.num_classes):
        raise ValueError(
            f"The crowd folder {config.manual_dir} has the classes {list(folder.class_names)}; "
            f"training takes AffectNet's classes in the package's order, "
            f"{list(labels.expression_names(config.num_classes))} for --num-classes "
            f"{config.num_classes} (7: without contempt). Received: num_classes="
            f"{config.num_classes}"
        )
    heads = {"exp": ("expression",), "val": ("valence",), "aro": ("arousal",)}
    heads.update(va=("valence", "arousal"), all=())
    unanswered = [head for head in heads.get(config.task, ()) if head not in folder.tasks]
    if unanswered:
        raise ValueError(
            f"The crowd folder {config.manual_dir} has no {' and no '.join(unanswered)} "
            f"answers (its answers: {', '.join(folder.tasks)}). Received: task={config.task!r}"
        )
    return folder


def eval_reference(dataset, target, va_target):
    """What the test data of a run is scored against, in words (``metrics.json``)."""
    words = {
        "true": "the truth",
        "mv": "the crowd's majority vote",
        "mean": "the crowd's mean answer",
        "median": "the crowd's median answer",
        "original": "AffectNet's own label",
    }
    text = {
        "expression": words.get(target, target),
        "valence_arousal": words.get(va_target, va_target),
    }
    if dataset == CROWD_IMAGES:
        text["source"] = "truth.csv" if "true" in (target, va_target) else "the crowd"
    return text
