"""Crowd layers: shapes, initial values, hand-set weights against NumPy, bad input."""

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

from crowd_layers.layers import (
    CLASSIFICATION_CONN_TYPES,
    REGRESSION_CONN_TYPES,
    ConfusionTraceRegularizer,
    CrowdsClassification,
    CrowdsConfusion,
    CrowdsRegression,
)

K, R = 4, 3


def _probabilities(rng, shape):
    return rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype("float32")


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _reference_classification(x, conn_type, weights):
    """The reference's per-annotator loop, in NumPy, stacked as (..., K, R)."""
    out = []
    for r in range(R):
        if conn_type == "MW":
            out.append(x @ weights["kernel"][:, :, r])
        elif conn_type == "VW":
            out.append(x * weights["kernel"][:, r])
        elif conn_type == "VB":
            out.append(x + weights["bias"][:, r])
        elif conn_type == "VW+B":
            out.append(x * weights["kernel"][:, r] + weights["bias"][:, r])
        else:
            out.append(x * weights["kernel"][r, 0])
    return np.stack(out, axis=-1)


@pytest.mark.parametrize("conn_type", CLASSIFICATION_CONN_TYPES)
@pytest.mark.parametrize("input_shape", [(5, K), (2, 6, K)])
def test_classification_output_shape(conn_type, input_shape, rng):
    layer = CrowdsClassification(K, R, conn_type=conn_type)
    outputs = layer(_probabilities(rng, input_shape))
    assert tuple(outputs.shape) == (*input_shape[:-1], K, R)
    assert layer.compute_output_shape((None, *input_shape[1:])) == (None, *input_shape[1:-1], K, R)


@pytest.mark.parametrize(
    "conn_type, expected",
    [
        ("MW", {"kernel": np.tile(np.eye(K)[:, :, None], (1, 1, R))}),
        ("VW", {"kernel": np.ones((K, R))}),
        ("VB", {"bias": np.zeros((K, R))}),
        ("VW+B", {"kernel": np.ones((K, R)), "bias": np.zeros((K, R))}),
        ("SW", {"kernel": np.ones((R, 1))}),
    ],
)
def test_classification_initial_weights_follow_the_reference(conn_type, expected, rng):
    layer = CrowdsClassification(K, R, conn_type=conn_type)
    x = _probabilities(rng, (5, K))
    outputs = keras.ops.convert_to_numpy(layer(x))
    weights = {w.name: keras.ops.convert_to_numpy(w) for w in layer.weights}
    assert set(weights) == set(expected)
    for name, value in expected.items():
        assert_allclose(weights[name], value)
    # With the initial weights every annotator copies the input.
    assert_allclose(outputs, np.repeat(x[..., None], R, axis=-1), rtol=1e-6)


@pytest.mark.parametrize("conn_type", CLASSIFICATION_CONN_TYPES)
@pytest.mark.parametrize("input_shape", [(5, K), (2, 3, K)])
def test_classification_hand_set_weights_match_numpy(conn_type, input_shape, rng):
    layer = CrowdsClassification(K, R, conn_type=conn_type)
    layer.build((None, *input_shape[1:]))
    weights = {}
    for variable in layer.weights:
        value = rng.normal(size=variable.shape).astype("float32")
        variable.assign(value)
        weights[variable.name] = value
    x = _probabilities(rng, input_shape)
    outputs = keras.ops.convert_to_numpy(layer(x))
    assert_allclose(outputs, _reference_classification(x, conn_type, weights), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conn_type", CLASSIFICATION_CONN_TYPES)
def test_confusion_matrices_are_the_implied_answer_distributions(conn_type, rng):
    layer = CrowdsClassification(K, R, conn_type=conn_type)
    layer.build((None, K))
    weights = {}
    for variable in layer.weights:
        value = rng.normal(size=variable.shape).astype("float32")
        variable.assign(value)
        weights[variable.name] = value
    matrices = layer.confusion_matrices()
    assert isinstance(matrices, np.ndarray)
    assert matrices.shape == (R, K, K)
    assert_allclose(matrices.sum(-1), 1.0, rtol=1e-6)
    expected = _softmax(_reference_classification(np.eye(K), conn_type, weights), axis=1)
    assert_allclose(matrices, expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-6)


def test_confusion_matrices_before_build_and_mw_kernel_normalization():
    layer = CrowdsClassification(K, R, conn_type="MW")
    initial = layer.confusion_matrices()  # builds the layer
    diagonal = np.e / (np.e + K - 1)
    assert_allclose(np.diagonal(initial, axis1=1, axis2=2), diagonal, rtol=1e-6)
    assert_allclose(layer.confusion_matrices("kernel"), np.tile(np.eye(K), (R, 1, 1)))
    kernel = np.zeros((K, K, R), "float32")
    kernel[0, :, 0] = [2.0, -1.0, 1.0, 1.0]  # negative entry clipped, row normalised
    layer.kernel.assign(kernel)
    matrices = layer.confusion_matrices(normalization="kernel")
    assert_allclose(matrices[0, 0], [0.5, 0.0, 0.25, 0.25])
    assert_allclose(matrices[1, 2], np.full(K, 1 / K))  # all-zero row -> uniform
    with pytest.raises(ValueError, match="normalization"):
        CrowdsClassification(K, R, conn_type="VW").confusion_matrices(normalization="kernel")


def test_crowds_confusion_default_init_is_diagonal_dominant(rng):
    layer = CrowdsConfusion(K, R, init_diagonal=0.7)
    x = _probabilities(rng, (6, K))
    outputs = keras.ops.convert_to_numpy(layer(x))
    matrices = layer.confusion_matrices()
    expected = np.full((K, K), 0.1)
    np.fill_diagonal(expected, 0.7)
    assert_allclose(matrices, np.tile(expected, (R, 1, 1)), rtol=1e-5)
    assert outputs.shape == (6, K, R)
    # Log-probabilities: exp sums to one over the answered class.
    assert_allclose(np.exp(outputs).sum(axis=1), 1.0, rtol=1e-5)
    assert_allclose(np.exp(outputs), np.einsum("bk,rkj->bjr", x, matrices), rtol=1e-5)


def test_crowds_confusion_hand_set_logits_time_input_and_trace_loss(rng):
    layer = CrowdsConfusion(K, R, trace_weight=0.3, logit_scale=2.0)
    x = _probabilities(rng, (2, 5, K))
    layer(x)
    stored = rng.normal(size=(R, K, K)).astype("float32")
    layer.confusion_logits.assign(stored)
    matrices = _softmax(2.0 * stored, axis=-1)  # logits = logit_scale * stored
    assert_allclose(layer.confusion_matrices(), matrices, rtol=1e-5)
    assert_allclose(layer.confusion_matrices().sum(-1), 1.0, rtol=1e-6)
    outputs = keras.ops.convert_to_numpy(layer(x))
    assert outputs.shape == (2, 5, K, R)
    assert_allclose(outputs, np.log(np.einsum("btk,rkj->btjr", x, matrices)), rtol=1e-4)
    assert len(layer.losses) == 1
    expected_trace = 0.3 * np.mean(np.trace(matrices, axis1=1, axis2=2)) / K
    assert_allclose(float(layer.losses[0]), expected_trace, rtol=1e-5)


def test_crowds_confusion_zero_trace_weight_adds_no_loss(rng):
    layer = CrowdsConfusion(K, R, trace_weight=0.0)
    layer(_probabilities(rng, (3, K)))
    assert layer.losses == []


def test_crowds_confusion_init_confusions(rng):
    confusions = rng.dirichlet(np.ones(K), size=(R, K))
    confusions[0, 1] = [0.0, 1.0, 0.0, 0.0]  # exact zeros are clipped, not -inf
    layer = CrowdsConfusion(K, R, init_confusions=confusions)
    assert_allclose(layer.confusion_matrices(), confusions, atol=1e-6)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(layer.confusion_logits)))
    config = layer.get_config()
    assert_allclose(np.asarray(config["init_confusions"]), confusions)
    clone = CrowdsConfusion.from_config(config)
    assert_allclose(clone.confusion_matrices(), confusions, atol=1e-6)


def test_model_losses_include_the_trace_during_fit(rng):
    inputs = keras.Input((K,))
    outputs = CrowdsConfusion(K, R, trace_weight=0.5)(inputs)
    model = keras.Model(inputs, outputs)
    model.compile("sgd", loss=lambda y_true, y_pred: keras.ops.zeros(keras.ops.shape(y_pred)[:1]))
    x = _probabilities(rng, (4, K))
    loss = model.evaluate(x, np.zeros((4, R)), verbose=0)
    expected = 0.5 * np.mean(np.diagonal(model.layers[-1].confusion_matrices(), axis1=1, axis2=2))
    assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("conn_type", REGRESSION_CONN_TYPES)
def test_regression_initial_and_hand_set_weights(conn_type, rng):
    layer = CrowdsRegression(R, conn_type=conn_type)
    x = rng.normal(size=(6, 1)).astype("float32")
    outputs = keras.ops.convert_to_numpy(layer(x))
    assert outputs.shape == (6, R)
    assert_allclose(outputs, np.repeat(x, R, axis=1), rtol=1e-6)  # ones / zeros
    scale = rng.normal(size=(1, R)).astype("float32")
    bias = rng.normal(size=(1, R)).astype("float32")
    if layer.scale is not None:
        layer.scale.assign(scale)
    if layer.bias is not None:
        layer.bias.assign(bias)
    expected = {
        "S": x * scale,
        "B": x + bias,
        "S+B": x * scale + bias,
        "B+S": (x + bias) * scale,
    }[conn_type]
    assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5)
    assert layer.compute_output_shape((None, 1)) == (None, R)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: CrowdsClassification(K, R, conn_type="MV"),
            r"conn_type.*Received: conn_type='MV'",
        ),
        (lambda: CrowdsClassification(K, 0), r"num_annotators.*Received: num_annotators=0"),
        (lambda: CrowdsClassification(K, -2, "VW"), r"Received: num_annotators=-2"),
        (lambda: CrowdsClassification(0, R), r"Received: num_classes=0"),
        (lambda: CrowdsClassification(K, 2.5), r"Received: num_annotators=2.5"),
        (lambda: CrowdsRegression(R, conn_type="MW"), r"conn_type.*Received: conn_type='MW'"),
        (lambda: CrowdsRegression(0), r"Received: num_annotators=0"),
        (lambda: CrowdsConfusion(1, R), r"num_classes.*Received: num_classes=1"),
        (lambda: CrowdsConfusion(K, 0), r"Received: num_annotators=0"),
        (lambda: CrowdsConfusion(K, R, trace_weight=-1), r"Received: trace_weight=-1"),
        (lambda: CrowdsConfusion(K, R, init_diagonal=0.1), r"Received: init_diagonal=0.1"),
        (lambda: CrowdsConfusion(K, R, logit_scale=0), r"Received: logit_scale=0"),
        (
            lambda: CrowdsConfusion(K, R, init_confusions=np.ones((R, K, K - 1)) / (K - 1)),
            r"init_confusions.*Received: init_confusions.shape=\(3, 4, 3\)",
        ),
        (
            lambda: CrowdsConfusion(K, R, init_confusions=np.ones((R, K, K))),
            r"init_confusions.*row sums",
        ),
        (
            lambda: CrowdsConfusion(K, R, init_confusions=-np.eye(K)[None].repeat(R, 0)),
            r"init_confusions.*non-negative",
        ),
    ],
)
def test_bad_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "layer, shape, match",
    [
        (lambda: CrowdsClassification(K, R), (None, K + 1), r"num_classes=4.*input_shape"),
        (lambda: CrowdsClassification(K, R, "SW"), (None, 2, 3, K), r"Received: input_shape"),
        (lambda: CrowdsClassification(K, R), (None,), r"Received: input_shape"),
        (lambda: CrowdsConfusion(K, R), (None, 7, K - 1), r"num_classes=4.*input_shape"),
        (lambda: CrowdsRegression(R), (None, 2), r"\(batch, 1\).*Received: input_shape"),
        (lambda: CrowdsRegression(R), (None, 3, 1), r"Received: input_shape"),
    ],
)
def test_wrong_input_shapes_raise_value_error(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer().build(shape)


@pytest.mark.parametrize(
    "layer",
    [
        CrowdsClassification(K, R, conn_type="VW+B", name="crowd"),
        CrowdsConfusion(K, R, trace_weight=0.2, init_diagonal=0.6, logit_scale=3.0),
        CrowdsRegression(R, conn_type="B+S"),
    ],
)
def test_get_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def test_trace_regularizer_value_and_config(rng):
    logits = rng.normal(size=(R, K, K)).astype("float32")
    regularizer = ConfusionTraceRegularizer(trace_weight=0.2, logit_scale=0.5)
    expected = 0.2 * np.mean(np.trace(_softmax(0.5 * logits, axis=-1), axis1=1, axis2=2)) / K
    assert_allclose(float(regularizer(logits)), expected, rtol=1e-5)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(regularizer))
    assert clone.get_config() == regularizer.get_config()
