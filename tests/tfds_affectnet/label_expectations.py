"""The C25-to-AffectNet expression mapping written out by name: the tests' independent answer."""

from tfds_affectnet import labels

C25_TO_CANONICAL_NAME = {
    "happiness": "happy",
    "sadness": "sad",
    "surprise": "surprise",
    "fear": "fear",
    "disgust": "disgust",
    "anger": "anger",
    "contempt": "contempt",
    "neutral": "neutral",
}


def remap_by_name(c25_code):
    """AffectNet's code of a C25 code, found through the class names rather than arithmetic."""
    name = C25_TO_CANONICAL_NAME[labels.C25_EXPRESSION_NAMES[int(c25_code)]]
    return labels.EXPRESSION_NAMES.index(name)
