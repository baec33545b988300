"""Export of a trained model to SavedModel, TFLite (LiteRT) and ONNX, each file checked in its own
runtime against the Keras model (the command: ``python -m affectnet_tf.export``).

* **SavedModel** (for TF Serving; ``RUN/export/saved_model/1`` by default, the version folder
  TF Serving expects; :mod:`affectnet_tf.deploy.export.savedmodel`). Signatures:
  ``serving_default`` takes ``image_bytes``, a batch of encoded JPEG/PNG images (decoded by
  content and resized with :func:`affectnet_tf.data.images.decode_image` and
  :func:`~affectnet_tf.data.images.resize_image`, the package's one decode path), and ``images``
  takes ``images``, RGB ``uint8`` ``[batch, height, width, 3]`` of any size (resized inside the
  model the same way). Outputs named per head: ``expression`` ``[batch, K]`` probabilities in
  ``class_names`` order, ``valence`` and ``arousal`` ``[batch]``. The metadata (class names,
  image size, preprocessing, heads) is in ``assets.extra/affectnet_tf_metadata.json`` (TF
  Serving's folder for extra files). Check: maximum absolute difference under
  ``MAX_ABS_DIFF`` on every output, through both signatures.
* **TFLite** in ``float32``, ``float16`` (weights) and ``int8`` (full-integer kernels calibrated
  on a representative set of the run's training images; input stays ``uint8`` and outputs
  ``float32``), ``RUN/export/model_<quantization>.tflite``
  (:mod:`affectnet_tf.deploy.export.tflite`). The input is RGB ``uint8`` ``[batch, S, S, 3]``
  already resized to the model's side ``S`` (``image_size`` in the metadata), one signature
  ``serving_default`` with the outputs above. The metadata travels inside the flatbuffer. Check
  in the LiteRT interpreter (``ai-edge-litert``): top-1 agreement with the Keras model at least
  ``MIN_TOP1_AGREEMENT`` (99.5% for float32 and float16, 97% for int8), and the mean absolute
  difference of valence and arousal under ``MAX_VA_MEAN_ABS_DIFF``.
* **ONNX** (opset ``ONNX_OPSET``, which onnxruntime 1.17 and later run), converted by
  ``tf2onnx``, ``RUN/export/model.onnx`` (:mod:`affectnet_tf.deploy.export.onnx`): the same
  input and outputs as TFLite, class names and the metadata in the model's ``metadata_props``.
  Check with ``onnxruntime``: maximum absolute difference under ``MAX_ABS_DIFF``.

The modules: :mod:`~affectnet_tf.deploy.export.model` (the model an export serves),
:mod:`~affectnet_tf.deploy.export.converters` (what the converters share),
:mod:`~affectnet_tf.deploy.export.metadata` (the metadata inside each file), one module per
format, :mod:`~affectnet_tf.deploy.export.check_data` (the run's images for checking and
calibrating), :mod:`~affectnet_tf.deploy.export.parity` (the checks and their thresholds) and
:mod:`~affectnet_tf.deploy.export.run_export` (one run folder to one format, checked). The
optional libraries (``tf2onnx``, ``onnx``, ``onnxruntime``, ``ai-edge-litert``: the ``export``
extra) are imported when first used.
"""
