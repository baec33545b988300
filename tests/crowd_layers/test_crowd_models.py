"""Saving and reloading crowd models, and cutting off the crowd layer."""

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

from crowd_layers.layers import (
    CLASSIFICATION_CONN_TYPES,
    CrowdsClassification,
    CrowdsConfusion,
    CrowdsRegression,
)
from crowd_layers.losses import (
    MaskedMultiCrossEntropy,
    MaskedMultiMSE,
    MaskedMultiSequenceCrossEntropy,
)
from crowd_layers.models import prediction_model

K, R, D = 3, 4, 6


def _classifier(crowd_layer, time=None):
    shape = (D,) if time is None else (time, D)
    inputs = keras.Input(shape, name="x")
    probabilities = keras.layers.Dense(K, activation="softmax", name="probs")(inputs)
    return keras.Model(inputs, crowd_layer(probabilities), name="crowd_model")


def _perturb(model, rng):
    for variable in model.weights:
        variable.assign(variable + rng.normal(scale=0.1, size=variable.shape).astype("float32"))


CLASSIFICATION_LAYERS = [
    *[
        lambda c=c: CrowdsClassification(K, R, conn_type=c, name="crowd")
        for c in CLASSIFICATION_CONN_TYPES
    ],
    lambda: CrowdsConfusion(K, R, trace_weight=0.1, name="crowd"),
    lambda: CrowdsConfusion(K, R, init_confusions=np.full((R, K, K), 1 / K), name="crowd"),
]


@pytest.mark.parametrize("make_layer", CLASSIFICATION_LAYERS)
def test_classification_model_save_load_round_trip(make_layer, tmp_path, rng):
    model = _classifier(make_layer())
    model.compile("adam", loss=MaskedMultiCrossEntropy())
    x = rng.normal(size=(5, D)).astype("float32")
    model.fit(x, rng.integers(-1, K, size=(5, R)), epochs=1, verbose=0)
    _perturb(model, rng)
    path = tmp_path / "crowd.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    assert type(loaded.get_layer("crowd")) is type(model.get_layer("crowd"))
    assert isinstance(loaded.loss, MaskedMultiCrossEntropy)
    assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert_allclose(
        loaded.get_layer("crowd").confusion_matrices(),
        model.get_layer("crowd").confusion_matrices(),
        rtol=1e-6,
    )


def test_sequence_model_save_load_round_trip(tmp_path, rng):
    model = _classifier(CrowdsClassification(K, R, conn_type="MW", name="crowd"), time=7)
    model.compile("adam", loss=MaskedMultiSequenceCrossEntropy(K))
    x = rng.normal(size=(2, 7, D)).astype("float32")
    model.fit(x, rng.integers(-1, K, size=(2, 7, R)), epochs=1, verbose=0)
    path = tmp_path / "sequence.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, MaskedMultiSequenceCrossEntropy)
    assert loaded.loss.num_classes == K
    assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize("conn_type", ["S", "B", "S+B", "B+S"])
def test_regression_model_save_load_round_trip(conn_type, tmp_path, rng):
    inputs = keras.Input((D,))
    value = keras.layers.Dense(1)(inputs)
    model = keras.Model(inputs, CrowdsRegression(R, conn_type=conn_type, name="crowd")(value))
    model.compile("adam", loss=MaskedMultiMSE())
    x = rng.normal(size=(5, D)).astype("float32")
    y = rng.normal(size=(5, R))
    y[0, :2], y[1, 1] = np.nan, 999999999
    model.fit(x, y, epochs=1, verbose=0)
    _perturb(model, rng)
    path = tmp_path / "regression.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, MaskedMultiMSE)
    assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    base = prediction_model(loaded)
    assert base.output_shape == (None, 1)


def test_prediction_model_of_a_functional_model(tmp_path, rng):
    model = _classifier(CrowdsClassification(K, R, name="crowd"))
    base = prediction_model(model)
    x = rng.normal(size=(4, D)).astype("float32")
    probabilities = base.predict(x, verbose=0)
    assert probabilities.shape == (4, K)
    assert_allclose(probabilities, model.get_layer("probs")(x), rtol=1e-6)
    assert all(not isinstance(layer, CrowdsClassification) for layer in base.layers)
    # Shares the weights, and saves and reloads on its own.
    path = tmp_path / "base.keras"
    base.save(path)
    assert_allclose(keras.models.load_model(path).predict(x, verbose=0), probabilities, rtol=1e-6)


def test_prediction_model_of_a_sequential_model(rng):
    model = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(K, activation="softmax", name="probs"),
            CrowdsConfusion(K, R, name="crowd"),
        ]
    )
    base = prediction_model(model)
    x = rng.normal(size=(3, D)).astype("float32")
    assert base.output_shape == (None, K)
    expected = model.get_layer("probs")(model.layers[0](x))
    assert_allclose(base.predict(x, verbose=0), expected, rtol=1e-6)


def test_prediction_model_with_a_multi_input_model(rng):
    a, b = keras.Input((D,), name="a"), keras.Input((2,), name="b")
    merged = keras.layers.Concatenate()([a, b])
    probabilities = keras.layers.Dense(K, activation="softmax")(merged)
    model = keras.Model([a, b], CrowdsClassification(K, R, "VW")(probabilities))
    base = prediction_model(model)
    assert base.output_shape == (None, K)
    assert len(base.inputs) == 2


def test_prediction_model_errors():
    inputs = keras.Input((D,))
    plain = keras.Model(inputs, keras.layers.Dense(K)(inputs), name="plain")
    with pytest.raises(ValueError, match=r"no crowd layer.*Received: model='plain'"):
        prediction_model(plain)
    probabilities = keras.layers.Dense(K, activation="softmax")(inputs)
    two = keras.Model(
        inputs,
        [CrowdsClassification(K, R)(probabilities), CrowdsConfusion(K, R)(probabilities)],
        name="two",
    )
    with pytest.raises(ValueError, match=r"more than one crowd layer.*Received: model='two'"):
        prediction_model(two)
    with pytest.raises(ValueError, match=r"keras.Model.*Received: model=CrowdsClassification"):
        prediction_model(CrowdsClassification(K, R))
