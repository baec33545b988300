"""The prediction model: a crowd-trained model without its crowd layer."""

import keras

from crowd_layers.layers import CrowdsClassification, CrowdsConfusion, CrowdsRegression
from crowd_layers.pooled import CrowdsGaussian, CrowdsPooled

__all__ = ["CROWD_LAYER_TYPES", "find_crowd_layer", "prediction_model"]

CROWD_LAYER_TYPES = (
    CrowdsClassification,
    CrowdsConfusion,
    CrowdsRegression,
    CrowdsPooled,
    CrowdsGaussian,
)


def find_crowd_layer(model):
    """Returns the single crowd layer among ``model.layers``.

    Args:
        model: A built functional or Sequential ``keras.Model``.

    Returns:
        The crowd layer.

    Raises:
        ValueError: if the model holds no crowd layer, or more than one.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={type(model).__name__}")
    found = [layer for layer in model.layers if isinstance(layer, CROWD_LAYER_TYPES)]
    if not found:
        raise ValueError(
            "`model` has no crowd layer (CrowdsClassification, CrowdsConfusion, "
            f"CrowdsRegression, CrowdsPooled or CrowdsGaussian) among its top-level layers. Received: model={model.name!r} "
            f"with layers {[layer.name for layer in model.layers]}"
        )
    if len(found) > 1:
        raise ValueError(
            "`model` has more than one crowd layer, so the prediction output is ambiguous. "
            f"Received: model={model.name!r} with crowd layers {[layer.name for layer in found]}"
        )
    return found[0]


def prediction_model(model, name=None):
    """The model without its crowd layer: from the inputs to the crowd layer's input.

    Unlike the reference's ``model.pop()``, this works for functional models as well as
    Sequential ones. The returned model shares the weights of ``model`` and can be saved on
    its own (it holds no crowd layer, so it reloads without this package).

    Args:
        model: A built functional or Sequential model with exactly one crowd layer
            (:class:`~crowd_layers.layers.CrowdsClassification`,
            :class:`~crowd_layers.layers.CrowdsConfusion` or
            :class:`~crowd_layers.layers.CrowdsRegression`) at its top level.
        name: Name of the returned model (default: ``model.name + "_prediction"``).

    Returns:
        A functional ``keras.Model`` ``model.inputs -> crowd_layer.input``.

    Raises:
        ValueError: if ``model`` has no crowd layer, several, or is not built.

    Examples:
        >>> crowd_model.fit(x, answers)
        >>> predictor = prediction_model(crowd_model)
        >>> probabilities = predictor.predict(x)
    """
    layer = find_crowd_layer(model)
    try:
        inputs = model.inputs
        outputs = layer.input
    except (AttributeError, ValueError) as error:
        raise ValueError(
            "`model` must be built on symbolic inputs (a functional model, or a Sequential "
            f"model with an Input or input_shape) to cut off its crowd layer. Received: "
            f"model={model.name!r} ({error})"
        ) from error
    if not inputs:
        raise ValueError(
            f"`model` has no symbolic inputs; build it first. Received: model={model.name!r}"
        )
    return keras.Model(inputs, outputs, name=name or f"{model.name}_prediction")
