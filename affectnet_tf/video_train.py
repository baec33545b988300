"""Video-level emotion: frame embeddings pooled per clip and an SVM (``python -m affectnet_tf.video_train``).

```bash
python -m affectnet_tf.video_train --model-dir runs/exp --dataset afew \\
    --manual-dir ~/afew --output-dir runs/exp/afew [--classifier rbf]
```

As in the HSEmotion notebooks (github.com/av-savchenko/face-emotion-recognition): each face crop
of a clip (from the ``afew`` or ``vgaf`` builder) goes through a trained AffectNet model up to the
layer before its head(s) (the pooled backbone features); the embeddings of a clip are pooled into
``[mean, std, min, max]``, L2-normalised, and a scikit-learn classifier is trained on the
``train`` split and evaluated on ``validation``: a linear SVM (``LinearSVC``) by default, an RBF
SVM (``SVC``) as an option.

Accuracy is reported twice, as the EmotiW papers do: on the clips where at least one face was
found, and on all clips, where a clip without a face gets the most frequent training class.
The run folder gets ``video_metrics.json`` and the fitted ``video_classifier.joblib``.
"""

import argparse
import os
import sys

import joblib
import keras
import numpy as np
import tensorflow_datasets as tfds
from sklearn import svm

import tfds_affectnet
from affectnet_tf.files import write_atomically, write_json
from affectnet_tf.inference.faces import crops_for_model
from affectnet_tf.modeling.models import model_metadata
from affectnet_tf.predict import load_run_model

__all__ = [
    "CLASSIFIERS",
    "DATASETS",
    "embedding_model",
    "pool_features",
    "ClipFeatures",
    "clip_features",
    "make_classifier",
    "evaluate",
    "train_video_classifier",
    "build_parser",
    "main",
]

CLASSIFIERS = ("linear", "rbf")
DATASETS = {"afew": tfds_affectnet.AfewConfig, "vgaf": tfds_affectnet.VgafConfig}
POOLINGS = ("mean", "std", "min", "max")


def embedding_model(model):
    """The model up to the layer before its head(s): image -> pooled backbone features.

    The heads (``expression``, ``valence``, ``arousal`` Dense layers of
    :func:`affectnet_tf.build_model`) all read one tensor (after the dropout, an identity at
    inference); the returned model outputs it.
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


def clip_features(dataset, embedder, batch_size=64):
    """Pools the embeddings of every clip of a video builder's split (a ``tf.data`` dataset)."""
    size = int(model_metadata(embedder)["image_size"])
    names, labels, has_face, rows = [], [], [], []
    dims = int(embedder.output_shape[-1])
    for example in tfds.as_numpy(dataset):
        crops = example["faces"]["image"]
        names.append(example["clip_name"].decode("utf-8"))
        labels.append(int(example["label"]))
        if len(crops) == 0:
            has_face.append(False)
            rows.append(np.zeros(4 * dims, np.float32))
            continue
        crops = crops_for_model(crops, size)
        parts = [
            np.asarray(embedder(crops[i : i + batch_size], training=False), np.float32)
            for i in range(0, len(crops), batch_size)
        ]
        has_face.append(True)
        rows.append(pool_features(np.concatenate(parts)))
    features = np.stack(rows) if rows else np.zeros((0, 4 * dims), np.float32)
    return ClipFeatures(names, labels, has_face, features)


def make_classifier(kind="linear", C=1.0, gamma="scale", seed=0):
    """``LinearSVC`` (``"linear"``) or ``SVC(kernel="rbf")`` (``"rbf"``)."""
    if kind == "linear":
        return svm.LinearSVC(C=C, random_state=seed)
    if kind == "rbf":
        return svm.SVC(C=C, kernel="rbf", gamma=gamma, random_state=seed)
    raise ValueError(f"`classifier` must be one of {CLASSIFIERS}. Received: classifier={kind!r}")


def evaluate(classifier, clips, fallback_label):
    """Accuracy on the clips with faces and on all clips (no face: ``fallback_label``)."""
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


def _builder(dataset, builder_config, data_dir):
    name, _, config = dataset.partition("/")
    if name not in DATASETS:
        raise ValueError(
            f"`dataset` must be one of {tuple(DATASETS)} (optionally /<config>). "
            f"Received: dataset={dataset!r}"
        )
    return tfds.builder(name, config=builder_config or config or None, data_dir=data_dir)


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

    Returns:
        dict of metrics (``train`` and ``validation`` entries, see :func:`evaluate`).
    """
    model = load_run_model(model_dir)
    embedder = embedding_model(model)
    builder = _builder(dataset, builder_config, data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=download_config)
    train = clip_features(builder.as_dataset(split="train"), embedder, batch_size)
    validation = clip_features(builder.as_dataset(split="validation"), embedder, batch_size)
    if not train.has_face.any():
        raise ValueError(f"No training clip of {builder.name} has a face; nothing to train on.")
    fitted = make_classifier(classifier, C=C, seed=seed)
    fitted.fit(train.features[train.has_face], train.labels[train.has_face])
    counts = np.bincount(train.labels, minlength=1)
    fallback = int(np.argmax(counts))
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
        "train": evaluate(fitted, train, fallback),
        "validation": evaluate(fitted, validation, fallback),
    }
    output_dir = os.fspath(output_dir or (model_dir if os.path.isdir(model_dir) else "."))
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(output_dir, "video_metrics.json"), result)
    write_atomically(
        os.path.join(output_dir, "video_classifier.joblib"), lambda path: joblib.dump(fitted, path)
    )
    return result


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.video_train",
        description="Video-level emotion: pooled frame embeddings of a trained model and an SVM.",
    )
    group = parser.add_argument_group("Model")
    group.add_argument("--model-dir", required=True, help="run folder holding model.keras")
    group.add_argument(
        "--batch-size", type=int, default=64, help="faces per model call (default: 64)"
    )
    group = parser.add_argument_group("Dataset")
    group.add_argument(
        "--dataset", default="afew", help="afew or vgaf, optionally /<config> (default: afew)"
    )
    group.add_argument("--data-dir", default=None, help="TFDS data folder (default: TFDS's)")
    group.add_argument("--manual-dir", default=None, help="folder of the downloaded videos")
    group.add_argument(
        "--crop-size", type=int, default=None, help="stored crop side (default: the config's)"
    )
    sampling = group.add_mutually_exclusive_group()
    sampling.add_argument("--every-n", type=int, default=None, help="use every n-th frame")
    sampling.add_argument("--fps", type=float, default=None, help="frames per second to use")
    group = parser.add_argument_group("Classifier")
    group.add_argument(
        "--classifier", choices=CLASSIFIERS, default="linear", help="(default: linear)"
    )
    group.add_argument("--C", type=float, default=1.0, help="SVM regularisation (default: 1.0)")
    group.add_argument("--seed", type=int, default=0, help="(default: 0)")
    group = parser.add_argument_group("Output")
    group.add_argument(
        "--output-dir", default=None, help="where the metrics go (default: the model's run folder)"
    )
    return parser


def _config_from_args(args):
    if args.crop_size is None and args.every_n is None and args.fps is None:
        return None
    name, _, base = args.dataset.partition("/")
    if name not in DATASETS:
        raise ValueError(f"`--dataset` must be one of {tuple(DATASETS)}. Received: {name!r}")
    registered = {c.name: c for c in tfds.builder_cls(name).BUILDER_CONFIGS}
    template = registered[base or "default"]
    crop = args.crop_size or template.crop_size
    every_n, fps = args.every_n, args.fps
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = train_video_classifier(
        args.model_dir,
        args.dataset,
        builder_config=_config_from_args(args),
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
        classifier=args.classifier,
        C=args.C,
        batch_size=args.batch_size,
        output_dir=args.output_dir,
        seed=args.seed,
    )
    for split in ("train", "validation"):
        metrics = result[split]
        with_face = metrics["accuracy_with_face"]
        print(
            f"{result['dataset']} {split}: accuracy {metrics['accuracy_all']:.4f} on all "
            f"{metrics['clips']} clips, "
            + (f"{with_face:.4f}" if with_face is not None else "n/a")
            + f" on the {metrics['clips_with_face']} clips with a face "
            f"({metrics['clips_without_face']} without a face get "
            f"'{result['fallback_label']}')."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
