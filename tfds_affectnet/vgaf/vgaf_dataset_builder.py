"""VGAF (Video-level Group AFfect): group videos labelled positive, neutral or negative."""

import dataclasses
import os
import re

import tensorflow_datasets as tfds

from tfds_affectnet import _generation, _video_examples, video_frames

__all__ = ["VGAF_CLASS_NAMES", "SPLITS", "VgafConfig", "Builder", "read_vgaf_labels"]

_DESCRIPTION = """\
VGAF (Sharma et al., 2019), the audio-video group emotion data of EmotiW 2020: clips from web
videos of groups of people, each labelled with the group's affect: positive, neutral or negative.
Only faces are kept: MTCNN finds every face of each sampled frame; each crop is stored with its
frame index, box (x, y, width, height in the original frame) and score, so the faces of one
frame share a frame index.

Clips where no face was found are kept with an empty `faces` sequence and `has_face` False; they
are counted and named in faces_<split>.json next to the generated data. Unreadable videos,
videos without a label and labels without a video are skipped and listed in skipped_<split>.tsv.
"""

_CITATION = """\
@inproceedings{sharma2019vgaf,
  title     = {Automatic Group Level Affect and Cohesion Prediction in Videos},
  author    = {Sharma, Garima and Ghosh, Shreya and Dhall, Abhinav},
  booktitle = {8th International Conference on Affective Computing and Intelligent
               Interaction Workshops and Demos (ACIIW)},
  pages     = {161--167},
  year      = {2019},
}
"""

_HOMEPAGE = "https://sites.google.com/view/emotiw2020"

VGAF_CLASS_NAMES = ("positive", "neutral", "negative")
# split -> (video folder, label file)
SPLITS = {"train": ("Train", "Train_labels.txt"), "validation": ("Val", "Val_labels.txt")}
_SEPARATORS = re.compile(r"[\s,;]+")


def _parse_label(value):
    text = value.strip().lower()
    if text in ("1", "2", "3"):
        return int(text) - 1
    if text in VGAF_CLASS_NAMES:
        return VGAF_CLASS_NAMES.index(text)
    raise ValueError(value)


def read_vgaf_labels(path):
    """Reads a VGAF label file into ``{clip name without extension: label index}``.

    Format: one clip per line, ``<Vid_name> <Label>`` separated by spaces, a tab, a comma or a
    semicolon; ``<Label>`` is 1, 2, 3 (Positive, Neutral, Negative, as in EmotiW 2020) or the
    word (any case); ``<Vid_name>`` with or without its extension. A first line whose label is
    not a label (the header ``Vid_name Label``) and blank lines are ignored.

    Raises:
        ValueError: naming the file, line and value of a bad line or a repeated clip.
    """
    result = {}
    with open(path, encoding="utf-8-sig") as stream:
        for number, line in enumerate(stream, start=1):
            parts = [p for p in _SEPARATORS.split(line.strip()) if p]
            if not parts:
                continue
            try:
                if len(parts) != 2:
                    raise ValueError(line.strip())
                label = _parse_label(parts[1])
            except ValueError:
                if number == 1 and result == {}:
                    continue  # the header
                raise ValueError(
                    f"{path}, line {number}: expected '<Vid_name> <Label>' with a label 1/2/3 or "
                    f"Positive/Neutral/Negative. Received: {line.strip()!r}"
                ) from None
            name = (
                os.path.splitext(parts[0])[0]
                if parts[0].lower().endswith(video_frames.VIDEO_EXTENSIONS)
                else parts[0]
            )
            if name in result:
                raise ValueError(f"{path}, line {number}: clip {name!r} is listed twice.")
            result[name] = label
    return result


@dataclasses.dataclass
class VgafConfig(_video_examples.VideoFacesConfig):
    """Settings of the ``vgaf`` builder (see `VideoFacesConfig`; every face of each frame)."""


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for VGAF face crops."""

    name = "vgaf"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: train and validation, every MTCNN face.",
        "1.1.0": "Working size 480 (was 320), applied as MTCNN's pyramid on the full frame: "
        "the boxes of plain MTCNN for faces above the working size's minimum.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
VGAF is distributed by the EmotiW 2020 organisers on request (see
https://sites.google.com/view/emotiw2020). Extract it into the manual folder (by default
~/tensorflow_datasets/downloads/manual/; set another with `tfds build --manual_dir=DIR` or
`tfds.download.DownloadConfig(manual_dir=DIR)`) so that:

    <manual_dir>/Train/<Vid_name>.mp4
    <manual_dir>/Val/<Vid_name>.mp4
    <manual_dir>/Train_labels.txt
    <manual_dir>/Val_labels.txt

Label files: one clip per line, "<Vid_name> <Label>" separated by spaces, a tab, a comma or a
semicolon, where <Label> is 1 (Positive), 2 (Neutral) or 3 (Negative), as in EmotiW 2020, or the
word itself in any case; <Vid_name> with or without the extension. A header line such as
"Vid_name Label" and blank lines are ignored. Videos are recognised by their extension (.mp4,
.avi, .mov, .mkv, .webm, .mpg, .mpeg, .m4v, .wmv). A video without a line in the label file, and
a line without its video, are skipped and listed in skipped_<split>.tsv.

Face boxes are cached per video in <download_dir>/face_boxes/vgaf/ (config `box_cache_dir`), so a
rebuild with another crop size does not run MTCNN again.
"""
    BUILDER_CONFIGS = [
        VgafConfig(
            name="default",
            fps=5.0,
            description="5 frames per second, every face, 112x112 square crops (margin 0.1).",
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=_video_examples.clip_feature_spec(
                VGAF_CLASS_NAMES, self.builder_config.crop_size
            ),
            supervised_keys=("faces", "label"),
            homepage=_HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Checks the layout and reads the label files."""
        manual_dir = os.fspath(dl_manager.manual_dir)
        missing = [
            os.path.join(manual_dir, item)
            for folder, label_file in SPLITS.values()
            for item, check in ((folder, os.path.isdir), (label_file, os.path.isfile))
            if not check(os.path.join(manual_dir, item))
        ]
        if missing:
            raise FileNotFoundError(
                f"vgaf: missing {', '.join(missing)}.\n\n" + self.MANUAL_DOWNLOAD_INSTRUCTIONS
            )
        cache = _video_examples.cache_for(self.builder_config, dl_manager, self.name)
        return {
            split: self._generate_examples(
                split=split,
                video_dir=os.path.join(manual_dir, folder),
                clip_labels=read_vgaf_labels(os.path.join(manual_dir, label_file)),
                cache=cache,
            )
            for split, (folder, label_file) in SPLITS.items()
        }

    def _generate_examples(self, split, video_dir, clip_labels, cache):
        """Yields ``(clip name, example)`` in name order."""
        videos, others = _video_examples.list_videos(video_dir)
        extra = [
            _generation.skipped(os.path.basename(p), _video_examples.NOT_A_VIDEO, p) for p in others
        ]
        rows, seen = [], set()
        for path in videos:
            stem = os.path.splitext(os.path.basename(path))[0]
            if stem not in clip_labels:
                extra.append(_generation.skipped(stem, "video without a label", path))
                continue
            if stem in seen:
                extra.append(_generation.skipped(stem, "second video of one clip name", path))
                continue
            seen.add(stem)
            rows.append({"file_name": stem, "path": path, "label": clip_labels[stem]})
        extra.extend(
            _generation.skipped(name, "label without a video", f"not found in {video_dir}")
            for name in sorted(set(clip_labels) - seen)
        )
        return _video_examples.generate_clips(self, split, "all", rows, cache, extra)
