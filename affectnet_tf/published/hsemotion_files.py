"""The released HSEmotion models as data: class order, licence, published figures, URLs.

HSEmotion (github.com/av-savchenko/face-emotion-recognition, Apache-2.0) releases its
EfficientNets as ONNX files (:data:`HSEMOTION_FILES`), their outputs in alphabetical order of
the class folders (:data:`HSEMOTION_LABELS`; :data:`HSEMOTION_CLASS_NAMES` in the package's
vocabulary). The package downloads and ships none of them.
"""

import dataclasses

__all__ = [
    "HSEMOTION_LABELS",
    "HSEMOTION_CLASS_NAMES",
    "HSEMOTION_FILES",
    "HSEmotionFile",
    "LICENCE",
]

#: HSEmotion's class names in its output order (``idx_to_class`` of ``hsemotion_onnx``).
HSEMOTION_LABELS = {
    8: ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise"),
    7: ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise"),
}
_VOCABULARY = {
    "Anger": "anger",
    "Contempt": "contempt",
    "Disgust": "disgust",
    "Fear": "fear",
    "Happiness": "happy",
    "Neutral": "neutral",
    "Sadness": "sad",
    "Surprise": "surprise",
}
#: The same in the package's vocabulary (:data:`tfds_affectnet.labels.EXPRESSION_NAMES`), still
#: in HSEmotion's output order.
HSEMOTION_CLASS_NAMES = {
    k: tuple(_VOCABULARY[name] for name in names) for k, names in HSEMOTION_LABELS.items()
}
#: The licence of HSEmotion's code and weights.
LICENCE = "Apache-2.0"


@dataclasses.dataclass(frozen=True)
class HSEmotionFile:
    """One released HSEmotion model: its variant, classes, multitask head, input side, the
    published figures of its README (accuracy in percent on the validation sets of AffectNet
    with 8 and 7 classes, AFEW and VGAF; valence and arousal CCC on AffectNet for the multitask
    model, from its training notebook) and the URL of its ONNX file."""

    variant: str
    num_classes: int
    multitask: bool
    image_size: int
    published: dict
    url: str


_ONNX_URL = (
    "https://github.com/HSE-asavchenko/face-emotion-recognition/blob/main/models/"
    "affectnet_emotions/onnx/{}.onnx?raw=true"
)


#: The released ONNX files (``hsemotion-onnx``'s ``model_name`` values and ``enet_b2_8_best``),
#: name -> :class:`HSEmotionFile`. ``enet_b0_7`` is released as PyTorch only (``.pt``).
HSEMOTION_FILES = {
    "enet_b0_8_best_afew": HSEmotionFile(
        "b0",
        8,
        False,
        224,
        {
            "affectnet8_accuracy": 60.95,
            "affectnet7_accuracy": 64.63,
            "afew_accuracy": 59.89,
            "vgaf_accuracy": 66.80,
        },
        _ONNX_URL.format("enet_b0_8_best_afew"),
    ),
    "enet_b0_8_best_vgaf": HSEmotionFile(
        "b0",
        8,
        False,
        224,
        {
            "affectnet8_accuracy": 61.32,
            "affectnet7_accuracy": 64.57,
            "afew_accuracy": 55.14,
            "vgaf_accuracy": 68.29,
        },
        _ONNX_URL.format("enet_b0_8_best_vgaf"),
    ),
    "enet_b0_8_va_mtl": HSEmotionFile(
        "b0",
        8,
        True,
        224,
        {
            "affectnet8_accuracy": 61.93,
            "affectnet7_accuracy": 64.94,
            "afew_accuracy": 56.73,
            "vgaf_accuracy": 66.58,
            "affectnet_valence_ccc": 0.594,
            "affectnet_arousal_ccc": 0.549,
        },
        _ONNX_URL.format("enet_b0_8_va_mtl"),
    ),
    "enet_b2_7": HSEmotionFile(
        "b2",
        7,
        False,
        260,
        {"affectnet7_accuracy": 66.34, "afew_accuracy": 59.63, "vgaf_accuracy": 69.84},
        _ONNX_URL.format("enet_b2_7"),
    ),
    "enet_b2_8": HSEmotionFile(
        "b2",
        8,
        False,
        260,
        {
            "affectnet8_accuracy": 63.03,
            "affectnet7_accuracy": 66.29,
            "afew_accuracy": 57.78,
            "vgaf_accuracy": 70.23,
        },
        _ONNX_URL.format("enet_b2_8"),
    ),
    "enet_b2_8_best": HSEmotionFile(
        "b2",
        8,
        False,
        260,
        {
            "affectnet8_accuracy": 63.125,
            "affectnet7_accuracy": 66.51,
            "afew_accuracy": 56.73,
            "vgaf_accuracy": 71.12,
        },
        _ONNX_URL.format("enet_b2_8_best"),
    ),
}
