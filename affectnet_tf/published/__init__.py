"""Published PyTorch affect models (EmoNet, HSEmotion) converted into Keras.

* :mod:`~affectnet_tf.published.conversion`: a downloaded weights file of a family into a saved
  prediction model (``python -m affectnet_tf.convert``), :func:`convert_published`;
* :mod:`~affectnet_tf.published.emonet`: EmoNet in Keras and its conversion from ``.pth``
  files, read by :mod:`~affectnet_tf.published.state_dict` (a torch-free, bomb-safe reader
  over the restricted unpickler of :mod:`~affectnet_tf.published.torch_pickle`);
* :mod:`~affectnet_tf.published.hsemotion`: HSEmotion's EfficientNets and their conversion
  from ONNX files: the Keras backbone (:mod:`~affectnet_tf.published.hsemotion_model`), the
  graph mapped onto it (:mod:`~affectnet_tf.published.hsemotion_onnx`) through a checked ONNX
  reader (:mod:`~affectnet_tf.published.onnx_weights`), the released files
  (:mod:`~affectnet_tf.published.hsemotion_files`);
* :mod:`~affectnet_tf.published.prediction`: the prediction model both converters build.

The converters are imported on first use (``affectnet_tf.published.emonet`` ...): a converted
model reloads from its ``.keras`` file without them.
"""

from affectnet_tf.published.conversion import FAMILIES, convert_published

__all__ = ["FAMILIES", "convert_published"]
