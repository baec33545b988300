"""Video-level emotion: an SVM on the pooled face embeddings of each clip, what
``python -m affectnet_tf.video_train`` runs.

The clips come from the ``afew`` or ``vgaf`` builder; their features are the pooled embeddings
of a trained AffectNet model (:func:`affectnet_tf.inference.embeddings.clip_embeddings`). A
scikit-learn classifier is trained on the ``train`` split and evaluated on ``validation``: a
linear SVM (``LinearSVC``) by default, an RBF SVM (``SVC``) as an option.

Accuracy is reported twice, as the EmotiW papers do: on the clips where at least one face was
found, and on all clips, where a clip without a face gets the most frequent training class.
The run folder gets ``video_metrics.json`` and the fitted ``video_classifier.joblib``.

For example:

```python
from affectnet_tf.training.video import train_video_classifier

result = train_video_classifier("runs/exp", "afew", manual_dir="~/afew", classifier="rbf")
print(result["validation"]["accuracy_all"])
```
"""

import logging
import os

import joblib
import numpy as np
import tensorflow_datasets as tfds
from sklearn import svm

import tfds_affectnet
from affectnet_tf.files import write_atomically, write_json
from affectnet_tf.inference.embeddings import POOLINGS, clip_embeddings, embedding_model
from affectnet_tf.training.run_folder import load_run

__all__ = [
    "CLASSIFIERS",
    "DATASETS",
    "make_classifier",
    "evaluate",
    "video_builder",
    "video_builder_config",
    "train_video_classifier",
]

logger = logging.getLogger(__name__)

CLASSIFIERS = ("linear", "rbf")
DATASETS = {"afew": tfds_affectnet.AfewConfig, "vgaf": tfds_affectnet.VgafConfig}


def make_classifier(kind="linear", C=1.0, gamma="scale", seed=0):
    """``LinearSVC`` (``"linear"``) or ``SVC(kernel="rbf")`` (``"rbf"``)."""
    if kind == "linear":
        return svm.LinearSVC(C=C, random_state=seed)
    if kind == "rbf":
        return svm.SVC(C=C, kernel="rbf", gamma=gamma, random_state=seed)
    raise ValueError(f"`classifier` must be one of {CLASSIFIERS}. Received: classifier={kind!r}")


def evaluate(classifier, clips, fallback_label):
    """Accuracy on the clips with faces and on all clips (no face: ``fallback_label``) of a
    :class:`~affectnet_tf.inference.embeddings.ClipFeatures`, and each clip's prediction."""
    predictions = np.full(len(clips.labels), int(fallback_label), np.int64)
    if clips.has_face.any():
        predictions[clips.has_face] = classifier.predict(clips.features[clips.has_face])
    correct = predictions == clips.labels
    with_face = int(clips.has_face.sum())
    return {
        "clips": len(clips.labels),
        "clips_with_face": with_face,
        "clips_without_face": len(clips.labels) - with_face,
        "accuracy_with_face": float(correct[clips.has_face].mean()) if with_face else None,
        "accuracy_all": float(correct.mean()) if len(correct) else None,
        "predictions": {n: int(p) for n, p in zip(clips.names, predictions)},
    }


def _dataset_name(dataset):
    """``(name, config name)`` of ``afew`` / ``vgaf`` optionally ``/<config>``."""
    name, _, config = dataset.partition("/")
    if name not in DATASETS:
        raise ValueError(
            f"`dataset` must be one of {tuple(DATASETS)} (optionally /<config>). "
            f"Received: dataset={dataset!r}"
        )
    return name, config


def video_builder(dataset, builder_config=None, data_dir=None):
    """The TFDS builder of ``afew`` or ``vgaf`` (optionally ``/<config name>``);
    ``builder_config`` overrides the named configuration."""
    name, config = _dataset_name(dataset)
    return tfds.builder(name, config=builder_config or config or None, data_dir=data_dir)


def video_builder_config(dataset, crop_size=None, every_n=None, fps=None):
    """A builder configuration of ``dataset``'s registered one (``default`` without
    ``/<config>``) with another stored crop side or frame sampling (``every_n`` or ``fps``);
    None when all three are None (the registered configuration is used as it is)."""
    if crop_size is None and every_n is None and fps is None:
        return None
    name, base = _dataset_name(dataset)
    registered = {c.name: c for c in tfds.builder_cls(name).BUILDER_CONFIGS}
    template = registered[base or "default"]
    crop = crop_size or template.crop_size
    if every_n is None and fps is None:
        every_n, fps = template.every_n, template.fps
    sampling = f"every{every_n}" if every_n else (f"fps{fps:g}" if fps else "all")
    fields = {
        k: getattr(template, k)
        for k in ("working_size", "min_face_size", "thresholds", "margin", "align")
    }
    return DATASETS[name](
        name=f"{template.name}_{crop}_{sampling}",
        crop_size=crop,
        every_n=every_n,
        fps=fps,
        **fields,
    )


def _write_outputs(output_dir, result, fitted):
    """``video_metrics.json`` and ``video_classifier.joblib`` in ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(output_dir, "video_metrics.json"), result)
    write_atomically(
        os.path.join(output_dir, "video_classifier.joblib"), lambda path: joblib.dump(fitted, path)
    )
    logger.info("Wrote video_metrics.json and video_classifier.joblib to %s.", output_dir)


def train_video_classifier(
    model_dir,
    dataset="afew",
    *,
    builder_config=None,
    data_dir=None,
    manual_dir=None,
    classifier="linear",
    C=1.0,
    batch_size=64,
    output_dir=None,
    seed=0,
):
    """Builds (if needed) the video dataset, pools the clips' embeddings, fits and evaluates.

    Args:
        model_dir: run folder (or ``model.keras``) of a trained AffectNet model.
        dataset: ``afew`` or ``vgaf``, optionally ``/<config name>``.
        builder_config: a ``tfds_affectnet.AfewConfig`` / ``VgafConfig`` (overrides the name).
        data_dir: TFDS data folder.
        manual_dir: folder of the manually downloaded videos.
        classifier: ``linear`` or ``rbf``.
        C: SVM regularisation.
        batch_size: faces per model call.
        output_dir: where ``video_metrics.json`` and ``video_classifier.joblib`` go
            (default: ``model_dir``).
        seed: the classifier's random state.

    Returns:
        dict of metrics (``train`` and ``validation`` entries, see :func:`evaluate`).
    """
    embedder = embedding_model(load_run(model_dir).load_model())
    builder = video_builder(dataset, builder_config, data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    logger.info("Preparing %s/%s.", builder.name, builder.builder_config.name)
    builder.download_and_prepare(download_config=download_config)
    splits = {
        split: clip_embeddings(
            builder.as_dataset(split=split), embedder, batch_size, desc=f"{split} clips"
        )
        for split in ("train", "validation")
    }
    train = splits["train"]
    if not train.has_face.any():
        raise ValueError(f"No training clip of {builder.name} has a face; nothing to train on.")
    logger.info("Fitting the %s classifier on %d clips.", classifier, int(train.has_face.sum()))
    fitted = make_classifier(classifier, C=C, seed=seed)
    fitted.fit(train.features[train.has_face], train.labels[train.has_face])
    fallback = int(np.argmax(np.bincount(train.labels, minlength=1)))
    class_names = builder.info.features["label"].names
    result = {
        "dataset": f"{builder.name}/{builder.builder_config.name}",
        "model_dir": os.fspath(model_dir),
        "classifier": classifier,
        "C": C,
        "embedding_dims": int(embedder.output_shape[-1]),
        "pooling": list(POOLINGS),
        "class_names": list(class_names),
        "fallback_label": class_names[fallback],
        **{split: evaluate(fitted, clips, fallback) for split, clips in splits.items()},
    }
    _write_outputs(
        os.fspath(output_dir or (model_dir if os.path.isdir(model_dir) else ".")), result, fitted
    )
    return result
