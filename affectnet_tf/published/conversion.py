"""A downloaded weights file of a published family into a saved Keras prediction model.

The work of ``python -m affectnet_tf.convert``: :func:`convert_published` picks the family's
converter (:data:`FAMILIES`: :func:`affectnet_tf.published.hsemotion.convert_hsemotion` for
HSEmotion's ONNX files, :func:`affectnet_tf.published.emonet.convert_emonet` for EmoNet's
``.pth`` files), checks the paths, converts and saves; :func:`summary_lines` describes the
result (backbone, input side, outputs, classes, the licence of the weights). The converters are
imported on first use, so that the command's ``--help`` and its errors on paths need no
TensorFlow.

Example:

```python
model = convert_published("hsemotion", "enet_b2_8.onnx", "runs/hse/model.keras")
```
"""

import logging
import os

__all__ = ["FAMILIES", "convert_published", "summary_lines"]

logger = logging.getLogger(__name__)

#: The published model families: name -> ``"module:function"`` of the converter.
FAMILIES = {
    "hsemotion": "affectnet_tf.published.hsemotion:convert_hsemotion",
    "emonet": "affectnet_tf.published.emonet:convert_emonet",
}


def convert_published(family, weights, output=None):
    """Converts a downloaded weights file of ``family`` into a Keras prediction model.

    Args:
        family: ``"hsemotion"`` (an ONNX file) or ``"emonet"`` (a ``.pth`` file).
        weights: the path of the file.
        output: where to save the model (a ``.keras`` file); not saved when ``None``.

    Returns:
        The Keras model.

    Raises:
        ValueError: an unknown family, a file that is missing or of another architecture (the
            message names the tensor).
    """
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {tuple(FAMILIES)}. Received: family={family!r}")
    weights = os.fspath(weights)
    if not os.path.isfile(weights):
        raise ValueError(f"The weights file {weights} does not exist.")
    if output is not None and not os.fspath(output).endswith(".keras"):
        raise ValueError(f"`output` must be a .keras file. Received: output={output!r}")
    from affectnet_tf.modeling.backbones import import_function

    logger.debug("Converting %s with %s", weights, FAMILIES[family])
    model = import_function(FAMILIES[family])(weights)
    if output is not None:
        folder = os.path.dirname(os.path.abspath(output))
        os.makedirs(folder, exist_ok=True)
        model.save(output)
    return model


def summary_lines(model, output):
    """What the command says of a converted model saved as ``output``: the file, backbone,
    input side, outputs and classes; then the licence of the weights, when the metadata
    names one."""
    from affectnet_tf.modeling.models import model_metadata

    info = model_metadata(model)
    lines = [
        f"Wrote {output}: {info['backbone']}, input {info['image_size']}x"
        f"{info['image_size']}, outputs {', '.join(info['outputs'])}; classes "
        f"{', '.join(info['class_names'])}"
    ]
    licence = info.get("source", {}).get("licence")
    if licence:
        lines.append(f"Licence of the weights: {licence}")
    return lines
