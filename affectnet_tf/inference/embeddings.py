"""Face embeddings of a trained model, pooled per video clip.

As in the HSEmotion notebooks (github.com/av-savchenko/face-emotion-recognition): each face
crop of a clip goes through a trained AffectNet model up to the layer before its head(s) (the
pooled backbone features, :func:`embedding_model`); the embeddings of a clip are pooled into
``[mean, std, min, max]`` and L2-normalised (:func:`pool_features`). :func:`clip_embeddings`
does both for every clip of a video builder's split (``afew``, ``vgaf``); the video-level
classifiers of :mod:`affectnet_tf.training.video` learn from the result.

For example:

```python
import affectnet_tf
from affectnet_tf.inference.embeddings import embedding_model

embedder = embedding_model(affectnet_tf.load_model("runs/exp/model.keras"))
features = embedder(images)  # (n, d): what the heads read
```
"""

import logging

import keras
import numpy as np
import tensorflow_datasets as tfds

from affectnet_tf.inference.faces import crops_for_model
from affectnet_tf.modeling.models import model_metadata
from affectnet_tf.progress import progress

__all__ = ["POOLINGS", "embedding_model", "pool_features", "ClipFeatures", "clip_embeddings"]

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "std", "min", "max")


def embedding_model(model):
    """The model up to the layer before its head(s): image -> pooled backbone features.

    The heads (``expression``, ``valence``, ``arousal`` Dense layers of
    :func:`affectnet_tf.build_model`) all read one tensor (after the dropout, an identity at
    inference); the returned model outputs it.

    Raises:
        ValueError: the heads do not share one input.
    """
    heads = model_metadata(model)["outputs"]
    inputs = {id(model.get_layer(head).input) for head in heads}
    if len(inputs) != 1:
        raise ValueError(
            f"The heads {heads} of model {model.name!r} do not share one input; cannot pick "
            "the embedding layer."
        )
    features = model.get_layer(heads[0]).input
    return keras.Model(model.input, features, name=f"{model.name}_embedding")


def pool_features(embeddings):
    """``[mean, std, min, max]`` of frame embeddings ``(n, d)``, L2-normalised; ``(4d,)``.

    Raises:
        ValueError: no embeddings (a clip without faces has no features).
    """
    embeddings = np.asarray(embeddings, np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(
            "`embeddings` must have shape (frames, dims) with at least one frame. "
            f"Received: shape={embeddings.shape}"
        )
    pooled = np.concatenate(
        [embeddings.mean(0), embeddings.std(0), embeddings.min(0), embeddings.max(0)]
    )
    norm = np.linalg.norm(pooled)
    return (pooled / norm if norm > 0 else pooled).astype(np.float32)


class ClipFeatures:
    """Pooled features of the clips of one split.

    Attributes:
        names: clip names.
        labels: int labels ``(n,)``.
        has_face: bool ``(n,)``.
        features: float32 ``(n, 4d)``; rows of clips without faces are zeros.
    """

    def __init__(self, names, labels, has_face, features):
        self.names = list(names)
        self.labels = np.asarray(labels, np.int64)
        self.has_face = np.asarray(has_face, bool)
        self.features = np.asarray(features, np.float32)


def _embed_faces(embedder, crops, batch_size):
    """The embeddings ``(n, d)`` of face crops, ``batch_size`` crops per model call."""
    parts = [
        np.asarray(embedder(crops[i : i + batch_size], training=False), np.float32)
        for i in range(0, len(crops), batch_size)
    ]
    return np.concatenate(parts)


def clip_embeddings(dataset, embedder, batch_size=64, desc="clips"):
    """The pooled embeddings of every clip of a video builder's split.

    Args:
        dataset: the split's ``tf.data`` dataset of clips (``faces``, ``clip_name``,
            ``label``), e.g. ``builder.as_dataset(split="train")``.
        embedder: an :func:`embedding_model` (its metadata gives the crop size).
        batch_size: faces per model call.
        desc: what the progress bar counts.

    Returns:
        A :class:`ClipFeatures`; a clip without faces has a row of zeros and
        ``has_face`` False.
    """
    size = int(model_metadata(embedder)["image_size"])
    names, labels, has_face, rows = [], [], [], []
    dims = int(embedder.output_shape[-1])
    count = int(dataset.cardinality()) if hasattr(dataset, "cardinality") else -1
    clips = tfds.as_numpy(dataset)
    for example in progress(clips, total=count if count >= 0 else None, desc=desc, unit="clip"):
        crops = example["faces"]["image"]
        names.append(example["clip_name"].decode("utf-8"))
        labels.append(int(example["label"]))
        has_face.append(len(crops) > 0)
        if len(crops) == 0:
            rows.append(np.zeros(4 * dims, np.float32))
            continue
        faces = _embed_faces(embedder, crops_for_model(crops, size), batch_size)
        rows.append(pool_features(faces))
    features = np.stack(rows) if rows else np.zeros((0, 4 * dims), np.float32)
    logger.debug("%s: %d clips, %d with a face.", desc, len(names), sum(has_face))
    return ClipFeatures(names, labels, has_face, features)
