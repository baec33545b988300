"""Backbones, heads, crowd heads, metadata, save/load in a fresh process, offline weights."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import affectnet_tf
import crowd_layers
from affectnet_tf.modeling import backbones, losses, models

IMAGE = 32


def _images(n=2, height=40, width=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_every_backbone_builds_and_trains_a_step(name):
    size = max(IMAGE, backbones.BACKBONES[name].min_size)  # EmoNet's hourglasses take 64 or more
    model = models.build_model(name, task="exp", weights=None, image_size=size).prediction_model
    assert model.input_shape == (None, None, None, 3)
    probabilities = np.asarray(model(_images(1, 20, 70)))  # any input size
    assert probabilities.shape == (1, 8)
    np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-5)
    loss_fn = losses.MaskedSparseCategoricalCrossentropy(8)
    with tf.GradientTape() as tape:  # one eager step: tracing fit's graph costs minutes here
        loss = loss_fn(np.array([1, 2]), model(_images(), training=True))
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in gradients)
    # keras.ops.convert_to_numpy: np.array(variable) warns under NumPy 2 (Keras' __array__
    # takes no copy argument)
    before = [keras.ops.convert_to_numpy(v) for v in variables]
    keras.optimizers.SGD(1e-4).apply_gradients(zip(gradients, variables))
    after = [keras.ops.convert_to_numpy(v) for v in variables]
    assert any(not np.array_equal(b, a) for b, a in zip(before, after))


@pytest.mark.parametrize(
    "task, outputs",
    [
        ("exp", (8,)),
        ("aro", (1,)),
        ("val", (1,)),
        ("va", {"valence": (1,), "arousal": (1,)}),
        ("all", {"expression": (7,), "valence": (1,), "arousal": (1,)}),
    ],
)
def test_heads(task, outputs):
    num_classes = 7 if task == "all" else 8
    built = models.build_model(
        "compact_cnn", task=task, num_classes=num_classes, weights=None, image_size=IMAGE
    )
    assert built.training_model is built.prediction_model
    result = built.prediction_model(_images())
    if isinstance(outputs, dict):
        assert {k: tuple(v.shape[1:]) for k, v in result.items()} == outputs
    else:
        assert tuple(result.shape[1:]) == outputs
    if task in ("aro", "val"):
        assert np.all(np.abs(np.asarray(result)) <= 1.0)


@pytest.mark.parametrize(
    "crowd_layer, va_crowd_layer",
    [(layer, "latent") for layer in models.CROWD_LAYERS]
    + [("pooled", "S+B"), ("pooled", "gaussian")],
)
def test_crowd_heads_share_weights_with_the_prediction_model(crowd_layer, va_crowd_layer):
    built = models.build_model(
        "compact_cnn",
        task="all",
        target="cv",
        num_annotators=5,
        crowd_layer=crowd_layer,
        va_crowd_layer=va_crowd_layer,
        weights=None,
        image_size=IMAGE,
    )
    crowd = built.training_model(_images())
    pooled = crowd_layer == "pooled"
    assert tuple(crowd["expression"].shape) == ((2, 8, 8, 5) if pooled else (2, 8, 5))
    rows = {"gaussian": 2, "latent": 4}.get(va_crowd_layer)
    assert tuple(crowd["valence"].shape) == ((2, rows, 5) if rows else (2, 5))
    prediction_weights = {id(v) for v in built.prediction_model.weights}
    assert prediction_weights <= {id(v) for v in built.training_model.weights}
    annotators = models.crowd_layer_weights(built.training_model)
    assert annotators["expression_confusions"].shape == (5, 8, 8)
    assert annotators["arousal_scale"].shape == (5,)
    assert ("arousal_noise" in annotators) == bool(rows)
    assert ("arousal_prior_std" in annotators) == (va_crowd_layer == "latent")
    layer = built.training_model.get_layer("crowd_expression")
    if crowd_layer == "geocrowdnet":
        assert layer.volume_weight == crowd_layers.GEOCROWDNET_WEIGHT and layer.trace_weight == 0
    losses = models.crowd_losses(crowd_layer, va_crowd_layer, built.training_model)
    expected = (
        crowd_layers.PooledCrowdLikelihood if pooled else crowd_layers.MaskedMultiCrossEntropy
    )
    assert isinstance(losses["expression"], expected)
    expected_va = {
        "gaussian": crowd_layers.MaskedGaussianLikelihood,
        "latent": crowd_layers.LatentTruthLikelihood,
    }.get(va_crowd_layer, crowd_layers.MaskedMultiMSE)
    assert isinstance(losses["valence"], expected_va)
    if va_crowd_layer == "latent":  # the layer's default start, tau 0.3
        assert losses["valence"].mean_gradient_scale == pytest.approx(2 * 0.3**2)


def test_init_confusions_start_every_confusion_layer_and_no_other():
    start = crowd_layers.majority_vote_confusions(
        np.random.default_rng(0).integers(-1, 8, (30, 5)), num_classes=8
    )
    for crowd_layer in models.CONFUSION_CROWD_LAYERS:
        built = models.build_model(
            "compact_cnn",
            target="cv",
            num_annotators=5,
            crowd_layer=crowd_layer,
            init_confusions=start,
            weights=None,
            image_size=IMAGE,
        )
        layer = built.training_model.get_layer("crowd_expression")
        np.testing.assert_allclose(layer.confusion_matrices(), start, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="confusion crowd layer"):
        models.build_model(
            "compact_cnn",
            target="cv",
            num_annotators=5,
            crowd_layer="MW",
            init_confusions=start,
            weights=None,
            image_size=IMAGE,
        )


def test_crowd_needs_annotators_and_a_known_layer():
    with pytest.raises(ValueError, match="num_annotators"):
        models.build_model("compact_cnn", target="cv", weights=None, image_size=IMAGE)
    with pytest.raises(ValueError, match="crowd_layer='XX'"):
        models.build_model(
            "compact_cnn", target="cv", num_annotators=3, crowd_layer="XX", weights=None
        )
    with pytest.raises(ValueError, match="va_crowd_layer='M'"):
        models.build_model(
            "compact_cnn", task="va", target="cv", num_annotators=3, va_crowd_layer="M"
        )
    with pytest.raises(ValueError, match="needs an expression crowd head"):
        models.build_model(
            "compact_cnn",
            task="all",
            target="mv",
            va_target="cv",
            num_annotators=3,
            init_confusions=np.tile(np.eye(8), (3, 1, 1)),
        )
    with pytest.raises(ValueError, match="task='emotion'"):
        models.build_model("compact_cnn", task="emotion")
    with pytest.raises(ValueError, match="num_classes=6"):
        models.build_model("compact_cnn", num_classes=6)


def test_each_head_follows_its_own_target():
    built = models.build_model(
        "compact_cnn",
        task="all",
        target="mv",
        va_target="cv",
        num_annotators=4,
        va_crowd_layer="S",
        weights=None,
        image_size=IMAGE,
        dropout=0.0,
    )
    images = _images()
    crowd = built.training_model(images)
    predicted = built.prediction_model(images)
    # expression is trained on the majority vote: the prediction head itself
    np.testing.assert_allclose(crowd["expression"], predicted["expression"], rtol=1e-6)
    assert tuple(crowd["valence"].shape) == (2, 4) and tuple(crowd["arousal"].shape) == (2, 4)
    names = [layer.name for layer in built.training_model.layers]
    assert "crowd_valence" in names and "crowd_expression" not in names
    assert models.model_metadata(built.training_model)["crowd_heads"] == ["valence", "arousal"]
    layers = [layer.name for layer in built.prediction_model.layers]
    assert "head_dropout" not in layers  # dropout=0: no dropout layer
    assert "head_dropout" in [
        layer.name
        for layer in models.build_model(
            "compact_cnn", weights=None, image_size=IMAGE
        ).prediction_model.layers
    ]


def test_a_pretrained_backbone_loads_its_weights_and_is_called_in_inference_mode(tmp_path):
    source = models.build_model("compact_cnn", weights=None, image_size=IMAGE)
    path = tmp_path / "backbone.weights.h5"
    source.backbone.save_weights(path)
    built = models.build_model("compact_cnn", weights=str(path), image_size=IMAGE)
    for loaded, saved in zip(built.backbone.weights, source.backbone.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(saved)
        )

    def backbone_call(model):
        layers = model.get_config()["layers"]
        [node] = next(layer for layer in layers if layer["name"] == "compact_cnn")["inbound_nodes"]
        return node["kwargs"].get("training")

    assert backbone_call(built.prediction_model) is False
    assert backbone_call(source.prediction_model) is None  # from scratch: BatchNorm trains
    # A frozen backbone (the first phase of fine-tuning) keeps its BatchNorm statistics. Once
    # unfrozen, Keras 3 passes the outer call's training=True on to it all the same
    # (keras-team/keras#20285), so the recorded training=False does not hold it then.
    built.backbone.trainable = False
    statistics = [w for w in built.backbone.non_trainable_weights if "moving" in w.path]
    before = [keras.ops.convert_to_numpy(w) for w in statistics]
    built.prediction_model(_images(), training=True)
    for value, weight in zip(before, statistics):
        np.testing.assert_array_equal(value, keras.ops.convert_to_numpy(weight))


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="known models: .*resnet50"):
        models.build_model("resnet18", weights=None)


def test_preprocessing_modes_match_keras_applications():
    image = _images(1, IMAGE, IMAGE).astype("float32")
    caffe = backbones.ImagePreprocessing(IMAGE, "caffe")(image)
    np.testing.assert_allclose(
        caffe, keras.applications.resnet50.preprocess_input(image.copy()), atol=1e-4
    )
    tf_mode = backbones.ImagePreprocessing(IMAGE, "tf")(image)
    np.testing.assert_allclose(
        tf_mode, keras.applications.mobilenet_v2.preprocess_input(image.copy()), atol=1e-5
    )


def test_resizing_inside_the_model_matches_the_data_pipeline():
    image = _images(1, 50, 37)
    layer = backbones.ImagePreprocessing(IMAGE, "raw")
    expected = affectnet_tf.resize_image(image, IMAGE).numpy().astype("float32")
    np.testing.assert_array_equal(layer(image), expected)
    np.testing.assert_array_equal(layer(expected.astype("uint8")), expected)  # identity


def test_metadata(tmp_path):
    built = models.build_model(
        "compact_cnn",
        task="exp",
        num_classes=7,
        weights=None,
        image_size=IMAGE,
        metadata={"dataset": "affectnet_c25/set1"},
    )
    meta = models.model_metadata(built.prediction_model)
    assert meta["class_names"] == list(affectnet_tf.labels.expression_names(7))
    assert meta["image_size"] == IMAGE
    assert meta["resize_method"] == affectnet_tf.data.images.RESIZE_METHOD
    assert meta["dataset"] == "affectnet_c25/set1"
    assert meta["package_version"] == affectnet_tf.__version__
    with pytest.raises(ValueError, match="ModelMetadata"):
        models.model_metadata(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))


def test_a_class_set_of_its_own_sizes_the_head_and_names_the_outputs():
    names = ["calm", "tense", "very tense"]
    built = models.build_model(
        "compact_cnn", task="all", class_names=names, weights=None, image_size=IMAGE
    )
    meta = models.model_metadata(built.prediction_model)
    assert meta["class_names"] == names and meta["num_classes"] == 3
    outputs = built.prediction_model(np.zeros((2, IMAGE, IMAGE, 3), np.uint8))
    assert outputs["expression"].shape == (2, 3)
    crowd = models.build_model(
        "compact_cnn", class_names=names, target="cv", num_annotators=4, crowd_layer="MW",
        weights=None, image_size=IMAGE,
    )  # fmt: skip
    assert crowd.training_model(np.zeros((1, IMAGE, IMAGE, 3), np.uint8)).shape == (1, 3, 4)
    with pytest.raises(ValueError, match=r"3 classes \(calm, tense, very tense\).*=8"):
        models.build_model("compact_cnn", class_names=names, num_classes=8, weights=None)
    with pytest.raises(ValueError, match="two distinct names"):
        models.build_model("compact_cnn", class_names=["calm", "calm"], weights=None)
    with pytest.raises(ValueError, match="num_classes=5"):
        models.build_model("compact_cnn", num_classes=5, weights=None)


_LOAD_SCRIPT = """
import json, sys
import numpy as np
import keras
import affectnet_tf
path, images = sys.argv[1], np.load(sys.argv[2])
models = [affectnet_tf.load_model(path), keras.models.load_model(path, safe_mode=True)]
out = {}
for i, model in enumerate(models):
    pred = model(images)  # one eager call: predict() would trace a function first
    pred = pred if isinstance(pred, dict) else {"out": pred}
    out[i] = {k: keras.ops.convert_to_numpy(v).tolist() for k, v in pred.items()}
out["meta"] = affectnet_tf.model_metadata(models[0])
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_save_and_load_in_a_fresh_process(tmp_path):
    built = models.build_model("mobilenet_v3_small", task="all", weights=None, image_size=IMAGE)
    images = _images(3, 45, 61)
    before = keras.tree.map_structure(keras.ops.convert_to_numpy, built.prediction_model(images))
    path = tmp_path / "model.keras"
    built.prediction_model.save(path)
    np.save(tmp_path / "images.npy", images)
    completed = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(path), str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.split("RESULT", 1)[1])
    for key in ("0", "1"):
        for head, values in before.items():
            np.testing.assert_allclose(result[key][head], values, rtol=1e-5, atol=1e-6)
    assert result["meta"]["task"] == "all"
    assert result["meta"]["image_size"] == IMAGE


def test_offline_imagenet_weights_error(monkeypatch, tmp_path):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no internet")

    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with pytest.raises(backbones.WeightsUnavailableError) as error:
        models.build_model("resnet50", weights="imagenet", image_size=IMAGE)
    message = str(error.value)
    assert str(tmp_path / "keras_home" / "models") in message
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "--weights none" in message


def test_missing_weights_file():
    with pytest.raises(ValueError, match="existing weights file"):
        models.build_model("compact_cnn", weights="/nonexistent/w.h5", image_size=IMAGE)


def test_latent_va_heads_start_from_the_aggregator():
    rng = np.random.default_rng(0)
    answers = rng.uniform(-1, 1, (40, 5)) + np.array([0.2, 0.0, -0.1, 0.0, 0.3])
    answers[rng.random((40, 5)) < 0.3] = np.nan
    start = crowd_layers.LatentTruthRegression(truth_prior=True).fit(answers)
    built = models.build_model(
        "compact_cnn",
        task="va",
        target="mv",
        va_target="cv",
        num_annotators=5,
        weights=None,
        image_size=IMAGE,
        va_crowd_starts={"valence": start},
    )
    valence = built.training_model.get_layer("crowd_valence")
    arousal = built.training_model.get_layer("crowd_arousal")
    params = valence.annotator_parameters()
    np.testing.assert_allclose(params["scale"], start.scale_, rtol=1e-5)
    np.testing.assert_allclose(params["bias"], start.bias_, atol=1e-6)
    np.testing.assert_allclose(params["prior_std"], start.prior_std_, rtol=1e-5)
    assert arousal.annotator_parameters()["prior_std"] == pytest.approx(0.3)  # no start given
    losses = models.crowd_losses("pooled", "latent", built.training_model)
    assert losses["valence"].mean_gradient_scale == pytest.approx(2 * start.prior_std_**2)
    with pytest.raises(ValueError, match="start has 5 annotators, the dataset 6"):
        models.build_model(
            "compact_cnn",
            task="val",
            target="mv",
            va_target="cv",
            num_annotators=6,
            weights=None,
            image_size=IMAGE,
            va_crowd_starts={"valence": start},
        )
