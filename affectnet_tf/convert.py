"""Convert published affect models into Keras: ``python -m affectnet_tf.convert``.

```bash
python -m affectnet_tf.convert --from hsemotion enet_b2_8.onnx --output hsemotion_b2_8.keras
python -m affectnet_tf.convert --from emonet emonet_8.pth --output emonet_8.keras
```

The weights are files the user downloaded from the authors (the package downloads and ships
none; see :data:`affectnet_tf.published.hsemotion.HSEMOTION_FILES` and :data:`affectnet_tf.published.emonet.EMONET_URLS`
for where): HSEmotion's ONNX files (read with the ``onnx`` package) and EmoNet's ``.pth`` files
(read by a restricted reader that refuses anything but tensors). The result is a prediction
model in the package's structure: RGB ``uint8`` images of any size in, its own preprocessing
inside (HSEmotion: resize to 224 or 260, ImageNet mean and standard deviation; EmoNet: resize to
256, scaled to [0, 1]), its outputs named per head with the expression probabilities in the
package's class order (mapped by name), and its metadata (class names, source file, its SHA-256
and licence). It works wherever a trained run's ``model.keras`` does: ``predict`` (save it as
``RUN/model.keras``), ``video_train`` embeddings, ``export``, ``serve``; and the registry's
``emonet``, ``hsemotion_enet_b0`` and ``hsemotion_enet_b2`` backbones take the same files as
``--weights`` for fine-tuning.

EmoNet's code and weights are licensed CC BY-NC-ND 4.0: no commercial use, and a converted
model is a derivative that may not be redistributed. HSEmotion's are Apache-2.0.
"""

import argparse
import os
import sys

__all__ = ["FAMILIES", "convert", "build_parser", "main"]

#: The published model families: name -> ``"module:function"`` of the converter.
FAMILIES = {
    "hsemotion": "affectnet_tf.published.hsemotion:convert_hsemotion",
    "emonet": "affectnet_tf.published.emonet:convert_emonet",
}


def convert(family, weights, output=None):
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
    from affectnet_tf.modeling.backbones import import_function

    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {tuple(FAMILIES)}. Received: family={family!r}")
    weights = os.fspath(weights)
    if not os.path.isfile(weights):
        raise ValueError(f"The weights file {weights} does not exist.")
    if output is not None and not os.fspath(output).endswith(".keras"):
        raise ValueError(f"`output` must be a .keras file. Received: output={output!r}")
    model = import_function(FAMILIES[family])(weights)
    if output is not None:
        folder = os.path.dirname(os.path.abspath(output))
        os.makedirs(folder, exist_ok=True)
        model.save(output)
    return model


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.convert",
        description=(
            "Convert a published affect model (HSEmotion's ONNX files, EmoNet's .pth files) "
            "that you downloaded into a Keras model with its preprocessing and class names."
        ),
    )
    parser.add_argument(
        "--from",
        dest="family",
        required=True,
        choices=tuple(FAMILIES),
        help="the model family of the weights file",
    )
    parser.add_argument("weights", help="the downloaded weights file (.onnx or .pth)")
    parser.add_argument("--output", required=True, help="the Keras model to write (.keras)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from affectnet_tf.modeling.models import model_metadata

    try:
        model = convert(args.family, args.weights, args.output)
    except ValueError as error:
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    info = model_metadata(model)
    print(
        f"Wrote {args.output}: {info['backbone']}, input {info['image_size']}x"
        f"{info['image_size']}, outputs {', '.join(info['outputs'])}; classes "
        f"{', '.join(info['class_names'])}"
    )
    licence = info.get("source", {}).get("licence")
    if licence:
        print(f"Licence of the weights: {licence}")


if __name__ == "__main__":
    main()
