"""AFEW (Acted Facial Expressions in the Wild): movie clips, 7 emotions, face crops per frame."""

import dataclasses
import os

import tensorflow_datasets as tfds

from tfds_affectnet import _generation, _video_examples, labels

__all__ = ["AFEW_FOLDERS", "SPLIT_FOLDERS", "AfewConfig", "Builder"]

_DESCRIPTION = """\
AFEW (Dhall et al.), the video data of the EmotiW challenges: short clips from movies and TV,
each labelled with one of seven emotions. Only faces are kept: MTCNN (the `mtcnn` package) finds
the largest face of each sampled frame, and the square crop around it (or a 5-point aligned crop)
is stored with its frame index, box (x, y, width, height in the original frame) and score.

Labels use AffectNet's canonical order without contempt (0 neutral, 1 happy, 2 sad, 3 surprise,
4 fear, 5 disgust, 6 anger), mapped from AFEW's folder names (Angry, Disgust, Fear, Happy,
Neutral, Sad, Surprise), so that AffectNet models' classes line up.

Clips where no face was found are kept with an empty `faces` sequence and `has_face` False; they
are counted and named in faces_<split>.json next to the generated data. Unreadable videos are
skipped and listed in skipped_<split>.tsv.
"""

_CITATION = """\
@article{dhall2012afew,
  title   = {Collecting Large, Richly Annotated Facial-Expression Databases from Movies},
  author  = {Dhall, Abhinav and Goecke, Roland and Lucey, Simon and Gedeon, Tom},
  journal = {IEEE MultiMedia},
  volume  = {19},
  number  = {3},
  pages   = {34--41},
  year    = {2012},
}
"""

_HOMEPAGE = "https://sites.google.com/site/emotiwchallenge/"

# AFEW's folder names -> AffectNet's canonical names.
AFEW_FOLDERS = {
    "Angry": "anger",
    "Disgust": "disgust",
    "Fear": "fear",
    "Happy": "happy",
    "Neutral": "neutral",
    "Sad": "sad",
    "Surprise": "surprise",
}
SPLIT_FOLDERS = {"train": "Train_AFEW", "validation": "Val_AFEW"}


@dataclasses.dataclass
class AfewConfig(_video_examples.VideoFacesConfig):
    """Settings of the ``afew`` builder (see `VideoFacesConfig`; the largest face per frame)."""


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for AFEW face crops."""

    name = "afew"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: train and validation, largest MTCNN face.",
        "1.1.0": "Working size 480 (was 320), applied as MTCNN's pyramid on the full frame: "
        "the boxes of plain MTCNN for faces above the working size's minimum.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
AFEW is distributed by the EmotiW organisers on request (see
https://sites.google.com/site/emotiwchallenge/). Extract the training and validation archives
into the manual folder (by default ~/tensorflow_datasets/downloads/manual/; set another with
`tfds build --manual_dir=DIR` or `tfds.download.DownloadConfig(manual_dir=DIR)`) so that:

    <manual_dir>/Train_AFEW/<Emotion>/<clip>.avi
    <manual_dir>/Val_AFEW/<Emotion>/<clip>.avi

where <Emotion> is one of Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise (exactly these
folder names; any other folder is an error). Video files are recognised by their extension
(.avi, .mp4, .mov, .mkv, .webm, .mpg, .mpeg, .m4v, .wmv); other files are listed as skipped.
The clip name of an example is "<Emotion>/<file name without extension>". The test set has no
labels and is not built.

Face boxes are cached per video in <download_dir>/face_boxes/afew/ (config `box_cache_dir`), so a
rebuild with another crop size does not run MTCNN again.
"""
    BUILDER_CONFIGS = [
        AfewConfig(
            name="default",
            description="Every frame, largest face, 112x112 square crops (margin 0.1).",
        ),
        AfewConfig(
            name="aligned",
            align=True,
            margin=0.0,
            description="Every frame, largest face, 112x112 crops aligned on 5 landmarks.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=_video_examples.clip_feature_spec(
                labels.EXPRESSION_NAMES_7, self.builder_config.crop_size
            ),
            supervised_keys=("faces", "label"),
            homepage=_HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Checks the layout, lists the clips of each split."""
        manual_dir = os.fspath(dl_manager.manual_dir)
        missing = [
            f"{manual_dir}/{folder}"
            for folder in SPLIT_FOLDERS.values()
            if not os.path.isdir(os.path.join(manual_dir, folder))
        ]
        if missing:
            raise FileNotFoundError(
                f"afew: missing folder(s) {', '.join(missing)}.\n\n"
                + self.MANUAL_DOWNLOAD_INSTRUCTIONS
            )
        cache = _video_examples.cache_for(self.builder_config, dl_manager, self.name)
        return {
            split: self._generate_examples(
                split=split, split_dir=os.path.join(manual_dir, folder), cache=cache
            )
            for split, folder in SPLIT_FOLDERS.items()
        }

    def _generate_examples(self, split, split_dir, cache):
        """Yields ``("<Emotion>/<clip>", example)`` in name order."""
        rows, extra = [], []
        class_names = labels.EXPRESSION_NAMES_7
        for emotion in sorted(os.listdir(split_dir)):
            folder = os.path.join(split_dir, emotion)
            if not os.path.isdir(folder):
                extra.append(_generation.skipped(emotion, _video_examples.NOT_A_VIDEO, folder))
                continue
            if emotion not in AFEW_FOLDERS:
                raise ValueError(
                    f"afew: unknown emotion folder {folder}; expected one of "
                    f"{sorted(AFEW_FOLDERS)}. Received: folder={emotion!r}"
                )
            label = class_names.index(AFEW_FOLDERS[emotion])
            videos, others = _video_examples.list_videos(folder)
            extra.extend(
                _generation.skipped(
                    f"{emotion}/{os.path.basename(p)}", _video_examples.NOT_A_VIDEO, p
                )
                for p in others
            )
            seen = set()
            for path in videos:
                stem = os.path.splitext(os.path.basename(path))[0]
                if stem in seen:
                    extra.append(
                        _generation.skipped(
                            f"{emotion}/{stem}", "second video of one clip name", path
                        )
                    )
                    continue
                seen.add(stem)
                rows.append({"file_name": f"{emotion}/{stem}", "path": path, "label": label})
        return _video_examples.generate_clips(self, split, "largest", rows, cache, extra)
