"""synthetic_faces: drawn faces with a known truth and a simulated AffectNetC25-like crowd."""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from tfds_affectnet import _examples, labels
from tfds_affectnet.synthetic_faces import annotators, drawing

__all__ = ["SPLITS", "SyntheticFacesConfig", "Builder", "split_classes", "make_example"]

SPLITS = ("train", "validation", "test")

_DESCRIPTION = """\
Synthetic faces: procedurally drawn faces (OpenCV, seeded, no external assets) whose expression
(one of AffectNet's 8 classes) and valence / arousal are known, answered by simulated annotators
calibrated on the real AffectNetC25 crowd. Built locally, nothing is downloaded: a dataset for
demos, tests and for comparing crowd targets against a known truth. THE DATA ARE SYNTHETIC.

Faces: mouth curvature and openness, a one-sided smile for contempt, eye openness, brow angle
and height, a nose wrinkle for disgust; valence and arousal at the class's circumplex position
plus per-face variation (standard deviation 0.12), moving the mouth, eyes and brows with them.
Nuisance variation: face size, position, rotation (+-15 degrees), skin tone, lighting,
background clutter, pixel noise and, on a quarter of the faces, a partial occlusion.

Features as in `affectnet_c25`: `crowd_expression` (R answers, canonical order, -1 = no answer),
`crowd_valence` / `crowd_arousal` (R answers on the 9 levels -1, -0.75, ..., 1; NaN = no
answer), `affectnet_expression` / `affectnet_valence` / `affectnet_arousal` (the answers of one
more simulated annotator, standing for AffectNet's single label), `affectnet_index` (the image's
number in its split); plus the truth, `true_expression`, `true_valence`, `true_arousal`.
Classes are balanced within each split.
"""

_CITATION = """\
@misc{affectnetc25,
  title        = {AffectNetC25: crowd annotations of AffectNet by 25 participants},
  howpublished = {\\url{https://github.com/kdoodoo/affectnetc25}},
}
"""

_SPLIT_STREAMS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass
class SyntheticFacesConfig(tfds.core.BuilderConfig):
    """Settings of the ``synthetic_faces`` builder.

    Attributes:
        image_size: side of the square images, in pixels.
        num_train: images in the ``train`` split.
        num_validation: images in the ``validation`` split.
        num_test: images in the ``test`` split.
        num_annotators: number of simulated annotators ``R`` (the crowd vectors' length).
        answers_per_image: how many of them answer each image (all of them: dense like
            AffectNetC25; fewer: sparse like crowdsourcing platforms).
        seed: the seed of everything (faces, classes, crowd profiles, answers).
    """

    image_size: int = 96
    num_train: int = 2400
    num_validation: int = 400
    num_test: int = 800
    num_annotators: int = 25
    answers_per_image: int = 25
    seed: int = 0

    def __post_init__(self):
        for name in (
            "image_size",
            "num_train",
            "num_validation",
            "num_test",
            "num_annotators",
            "answers_per_image",
            "seed",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"`{name}` must be an int. Received: {name}={value!r}")
            if value < (0 if name == "seed" else 1):
                raise ValueError(
                    f"`{name}` must be >= {0 if name == 'seed' else 1}. Received: {name}={value}"
                )
        if self.image_size < 16:
            raise ValueError(f"`image_size` must be >= 16. Received: image_size={self.image_size}")
        if self.answers_per_image > self.num_annotators:
            raise ValueError(
                "`answers_per_image` must be <= `num_annotators`. Received: "
                f"answers_per_image={self.answers_per_image}, num_annotators={self.num_annotators}"
            )

    def with_image_size(self, size):
        """This configuration storing ``size`` x ``size`` images, named ``<name>_<size>``."""
        return dataclasses.replace(self, name=f"{self.name}_{size}", image_size=int(size))

    def split_size(self, split):
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}[
            split
        ]


def split_classes(config, split):
    """The true classes of a split: balanced (counts differ by at most 1), seeded order."""
    count = config.split_size(split)
    rng = np.random.default_rng([config.seed, _SPLIT_STREAMS[split]])
    return rng.permutation(np.arange(count) % len(labels.EXPRESSION_NAMES))


def make_example(config, crowd, split, index, expression):
    """``(key, features)`` of image ``index`` of ``split``; its own seed, so order-free."""
    stream = _SPLIT_STREAMS[split]
    rng = np.random.default_rng([config.seed, stream, index, 0])
    face = drawing.sample_face(int(expression), rng)
    image = drawing.draw_face(face, config.image_size, rng)
    answers = np.random.default_rng([config.seed, stream, index, 1])
    truth = (face["expression"], face["valence"], face["arousal"])
    crowd_exp, crowd_val, crowd_aro = annotators.simulate_answers(
        crowd, *truth, config.answers_per_image, answers
    )
    original = annotators.simulate_answers(crowd["original"], *truth, 1, answers)
    key = f"{split}_{index:06d}.png"
    return key, {
        "image": image,
        "file_name": key,
        "affectnet_index": index,
        "crowd_expression": crowd_exp,
        "crowd_valence": crowd_val,
        "crowd_arousal": crowd_aro,
        "affectnet_expression": int(original[0][0]),
        "affectnet_valence": np.float32(original[1][0]),
        "affectnet_arousal": np.float32(original[2][0]),
        "true_expression": face["expression"],
        "true_valence": np.float32(face["valence"]),
        "true_arousal": np.float32(face["arousal"]),
    }


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder of synthetic faces with a simulated crowd (nothing to download)."""

    name = "synthetic_faces"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: c25_dense, sparse and tiny configurations."}
    BUILDER_CONFIGS = [
        SyntheticFacesConfig(
            name="c25_dense",
            description="2,400 / 400 / 800 faces at 96x96, 25 answers per image (like C25).",
        ),
        SyntheticFacesConfig(
            name="sparse",
            num_annotators=50,
            answers_per_image=3,
            description="2,400 / 400 / 800 faces at 96x96, 3 answers per image from 50 annotators.",
        ),
        SyntheticFacesConfig(
            name="tiny",
            image_size=32,
            num_train=48,
            num_validation=48,
            num_test=48,
            description="48 faces per split at 32x32, 25 answers per image: builds in seconds.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "c25_dense"

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    **_examples.crowd_features(
                        config.image_size, config.num_annotators, encoding_format="png"
                    ),
                    "true_expression": tfds.features.ClassLabel(names=labels.EXPRESSION_NAMES),
                    "true_valence": tfds.features.Scalar(dtype=np.float32),
                    "true_arousal": tfds.features.Scalar(dtype=np.float32),
                }
            ),
            supervised_keys=("image", "true_expression"),
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Three splits, drawn from the config's seed (``dl_manager`` is not used)."""
        del dl_manager
        crowd = annotators.simulated_annotators(self.builder_config)
        return {split: self._generate_examples(split, crowd) for split in SPLITS}

    def _generate_examples(self, split, crowd):
        """Yields ``(file name, example)``; each image from its own seed."""
        config = self.builder_config
        for index, expression in enumerate(split_classes(config, split)):
            yield make_example(config, crowd, split, index, expression)
