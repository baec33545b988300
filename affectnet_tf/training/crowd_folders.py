"""``--dataset crowd_images --manual-dir DIR``: a user's crowd folder
(:mod:`tfds_affectnet.crowd_folder`) as the data of a run.

The folder's configuration (:class:`tfds_affectnet.CrowdImagesConfig`) is read from the folder
each time the roles are made; its one split ``train`` is cut into train / selection / test as
an AffectNetC25 set is (:class:`affectnet_tf.data.partition.Partition`: stratified by majority
vote, seeded by ``--split-seed``, ``--folds`` too). The test data is scored against the truth
of ``truth.csv`` where the folder has one, else against the crowd (majority vote, mean answer).
"""

__all__ = ["CROWD_IMAGES", "crowd_images_config", "folder_classes", "eval_reference"]

CROWD_IMAGES = "crowd_images"


def crowd_images_config(config):
    """The ``crowd_images`` configuration of ``--manual-dir`` (the folder is read and checked).

    Raises:
        ValueError: no ``--manual-dir``, another name than ``crowd_images``, or a task whose
            answers the folder lacks.
    """
    from tfds_affectnet import CrowdImagesConfig

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
    heads = {"exp": ("expression",), "val": ("valence",), "aro": ("arousal",)}
    heads.update(va=("valence", "arousal"), all=())
    unanswered = [head for head in heads.get(config.task, ()) if head not in folder.tasks]
    if unanswered:
        raise ValueError(
            f"The crowd folder {config.manual_dir} has no {' and no '.join(unanswered)} "
            f"answers (its answers: {', '.join(folder.tasks)}). Received: task={config.task!r}"
        )
    return folder


def folder_classes(config, folder):
    """The classes a run learns from a crowd folder: those of its ``classes.txt`` (AffectNet's
    8 without one); ``--num-classes 7`` drops contempt from AffectNet's 8 only.

    Raises:
        ValueError: ``--num-classes 7`` on a folder with a class set of its own (not 7 long).
    """
    from tfds_affectnet import labels

    requested = 7 if config.num_classes == 7 else None
    try:
        return labels.class_set(folder.class_names, requested)
    except ValueError as error:
        raise ValueError(f"The crowd folder {config.manual_dir}: {error}") from None


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
