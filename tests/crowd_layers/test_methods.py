"""crowd_method / crowd_loss: every method name builds its layer and loss at the defaults."""

import numpy as np
import pytest

import crowd_layers
from crowd_layers import (
    CROWD_METHODS,
    CrowdsClassification,
    CrowdsConfusion,
    CrowdsPooled,
    MaskedMultiCrossEntropy,
    PooledCrowdLikelihood,
    crowd_loss,
    crowd_method,
)

K, R = 4, 3


@pytest.mark.parametrize("method", CROWD_METHODS)
def test_every_method_builds_its_layer_and_loss(method):
    layer, loss = crowd_method(method, K, R, name="crowd")
    expected_layer = {
        "pooled": CrowdsPooled,
        "confusion": CrowdsConfusion,
        "geocrowdnet": CrowdsConfusion,
    }.get(method, CrowdsClassification)
    assert type(layer) is expected_layer and layer.name == "crowd"
    expected_loss = PooledCrowdLikelihood if method == "pooled" else MaskedMultiCrossEntropy
    assert type(loss) is expected_loss and type(crowd_loss(method)) is expected_loss
    if method == "geocrowdnet":
        assert layer.trace_weight == 0 and layer.volume_weight == crowd_layers.GEOCROWDNET_WEIGHT
    if method in ("MW", "VW", "VB", "VW+B", "SW"):
        assert layer.conn_type == method
    out = layer(np.full((2, K), 1.0 / K, dtype="float32"))
    assert float(loss(np.array([[0, -1, 2], [1, 1, -1]]), out)) > 0
    assert crowd_layers.DEFAULT_CROWD_METHOD == "pooled"


def test_init_confusions_start_the_confusion_methods_only():
    start = np.full((R, K, K), 1.0 / K)
    for method in crowd_layers.CONFUSION_METHODS:
        layer, _ = crowd_method(method, K, R, init_confusions=start)
        layer.build((None, K))
        np.testing.assert_allclose(layer.confusion_matrices(), start, rtol=1e-5)
    with pytest.raises(ValueError, match="init_confusions.*Received: method='MW'"):
        crowd_method("MW", K, R, init_confusions=start)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="'pooled'.*Received: method='CoNAL'"):
        crowd_method("CoNAL", K, R)
    with pytest.raises(ValueError, match="Received: method='CoNAL'"):
        crowd_loss("CoNAL")
