"""The predictor: a trained model run on the face crops of frames, one record per face.

A record has the keys :data:`RECORD_KEYS`: ``source``, ``frame`` (0 for an image), ``box`` (x,
y, width, height in the original frame), ``score`` (MTCNN's), ``expression`` (class name),
``probabilities`` (class name -> probability), ``valence`` and ``arousal``. A frame where no
face was found is one record with ``box`` null (and no prediction); a file that cannot be read
is one record with ``box`` null and an ``error`` key (:func:`empty_record`). Outputs a model does
not have (an expression-only or a valence/arousal-only model) are null.

Faces are cropped by :class:`affectnet_tf.inference.faces.FaceCropper` and resized to the
model's input with :func:`affectnet_tf.inference.faces.crops_for_model`, the path training
images take.

For example:

```python
from affectnet_tf.inference.predictor import Predictor, load_run_model

predictor = Predictor(load_run_model("runs/exp"))
faces = predictor.cropper.process([rgb_image])[0]
records = predictor.records("photo.jpg", 0, faces)
```
"""

import numpy as np

from affectnet_tf.inference import faces as faces_module
from affectnet_tf.modeling.models import model_metadata
from affectnet_tf.training.run_folder import load_run

__all__ = ["RECORD_KEYS", "Predictor", "empty_record", "load_run_model"]

RECORD_KEYS = (
    "source",
    "frame",
    "box",
    "score",
    "expression",
    "probabilities",
    "valence",
    "arousal",
)
# The shape of a head's output when there are no faces.
_EMPTY_SHAPES = {"valence": (0, 1), "arousal": (0, 1)}


def load_run_model(model_dir):
    """The prediction model of a run folder (``<model_dir>/model.keras``, or that file):
    :func:`affectnet_tf.training.run_folder.load_run`'s ``load_model()``."""
    return load_run(model_dir).load_model()


def empty_record(source, frame_index, error=None):
    """The record of a frame without a face (every prediction null), or of an input that could
    not be read (``error``: the reason, under the ``error`` key)."""
    record = dict.fromkeys(RECORD_KEYS)
    record.update(source=source, frame=int(frame_index))
    if error is not None:
        record["error"] = str(error)
    return record


def _float(value):
    return None if value is None else float(value)


class Predictor:
    """Runs a trained model on the faces of frames.

    Args:
        model: a prediction model of :func:`affectnet_tf.build_model` (metadata inside).
        cropper: a :class:`~affectnet_tf.inference.faces.FaceCropper` (default: every face, 224
            crops).
        batch_size: faces per model call.
    """

    def __init__(self, model, cropper=None, batch_size=32):
        self.model = model
        self.metadata = model_metadata(model)
        self.heads = tuple(self.metadata["outputs"])
        self.class_names = tuple(self.metadata["class_names"])
        self.image_size = int(self.metadata["image_size"])
        self.cropper = cropper or faces_module.FaceCropper(mode=faces_module.ALL)
        self.batch_size = int(batch_size)

    def predict_crops(self, crops):
        """``{head: array}`` for face crops ``(n, s, s, 3)``: ``expression`` ``(n, K)``,
        ``valence`` / ``arousal`` ``(n,)``; the heads the model lacks are absent."""
        crops = faces_module.crops_for_model(crops, self.image_size)
        result = {head: [] for head in self.heads}
        for start in range(0, len(crops), self.batch_size):
            outputs = self.model(crops[start : start + self.batch_size], training=False)
            if not isinstance(outputs, dict):
                outputs = {self.heads[0]: outputs}
            for head in self.heads:
                result[head].append(np.asarray(outputs[head], np.float32))
        shapes = dict(_EMPTY_SHAPES, expression=(0, len(self.class_names)))
        arrays = {
            head: np.concatenate(parts) if parts else np.zeros(shapes[head], np.float32)
            for head, parts in result.items()
        }
        for head in ("valence", "arousal"):
            if head in arrays:
                arrays[head] = arrays[head].reshape(-1)
        return arrays

    def records(self, source, frame_index, faces):
        """The records of one frame's `Faces` (one with ``box`` None when there is none)."""
        if len(faces) == 0:
            return [empty_record(source, frame_index)]
        predictions = self.predict_crops(faces.crops)
        return [self._record(source, frame_index, faces, predictions, i) for i in range(len(faces))]

    def _record(self, source, frame_index, faces, predictions, i):
        """The record of face ``i`` of a frame, from the heads' ``predictions``."""
        probabilities = None
        expression = None
        if "expression" in predictions:
            row = predictions["expression"][i]
            probabilities = {n: float(p) for n, p in zip(self.class_names, row)}
            expression = self.class_names[int(np.argmax(row))]
        return {
            "source": source,
            "frame": int(frame_index),
            "box": [round(float(v), 2) for v in faces.boxes[i]],
            "score": float(faces.scores[i]),
            "expression": expression,
            "probabilities": probabilities,
            "valence": _float(predictions["valence"][i]) if "valence" in predictions else None,
            "arousal": _float(predictions["arousal"][i]) if "arousal" in predictions else None,
        }
