"""The converted published models at every front door: ``python -m affectnet_tf.convert``, as
backbones of the training command (a one-epoch fine-tune of each family on the synthetic
faces), ``predict``, ``video_train``'s embeddings and ``export``.

The weights are seeded random tensors written as the files the authors publish (EmoNet's
``.pth``, HSEmotion's ONNX): see ``tests/emonet_weights.py`` and ``tests/hsemotion_weights.py``.
"""

import contextlib
import io
import json
import logging
import warnings

import hsemotion_weights
import numpy as np
import pytest
import tensorflow as tf
from emonet_weights import seeded_state_dict, write_torch_zip

from affectnet_tf import convert
from affectnet_tf.deploy.export import metadata, parity, tflite
from affectnet_tf.deploy.export import model as export_model
from affectnet_tf.inference.embeddings import embedding_model
from affectnet_tf.inference.predictor import Predictor
from affectnet_tf.modeling import backbones, models
from affectnet_tf.published import conversion, emonet, hsemotion
from affectnet_tf.train import train
from tfds_affectnet import labels


@contextlib.contextmanager
def _logging_restored():
    """Restores the package logger that the command's ``configure_logging`` sets (its level,
    handlers and propagation), so that later tests see logging as they would alone."""
    logger = logging.getLogger("affectnet_tf")
    saved = logger.level, list(logger.handlers), logger.propagate
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]


@pytest.fixture
def restore_logging():
    """The package logger as it was before the test."""
    with _logging_restored():
        yield


@pytest.fixture(scope="module")
def emonet_file(tmp_path_factory):
    """Seeded EmoNet weights (8 classes) as a ``.pth`` file, as the authors publish them."""
    tensors = list(emonet.emonet_tensor_shapes(8).items())
    path = tmp_path_factory.mktemp("published") / "emonet_8.pth"
    write_torch_zip(seeded_state_dict(tensors, seed=3), path, "emonet_8")
    return path


@pytest.fixture(scope="module")
def hsemotion_file(tmp_path_factory):
    """Seeded weights in HSEmotion's multitask B0 graph, as the file ``enet_b0_8_va_mtl.onnx``."""
    path = tmp_path_factory.mktemp("published") / "enet_b0_8_va_mtl.onnx"
    return hsemotion_weights.write_seeded_file(path, "b0_8_va_mtl")


@pytest.fixture(scope="module")
def emonet_run(emonet_file, tmp_path_factory):
    """``python -m affectnet_tf.convert --from emonet`` into a run folder's ``model.keras``."""
    run = tmp_path_factory.mktemp("emonet_run")
    out, err = io.StringIO(), io.StringIO()
    with _logging_restored(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        convert.main(["--from", "emonet", str(emonet_file), "--output", str(run / "model.keras")])
    (run / "convert.out").write_text(out.getvalue())
    (run / "convert.log").write_text(err.getvalue())
    return run


@pytest.fixture(scope="module")
def emonet_model(emonet_run):
    """The command's ``model.keras``, loaded once for the tests that only read it."""
    return models.load_model(emonet_run / "model.keras")


def test_convert_command_writes_a_model_with_its_licence(emonet_run, emonet_model, emonet_file):
    # the status lines go to the standard error (logging), nothing to the standard output
    printed = (emonet_run / "convert.log").read_text()
    assert f"Wrote {emonet_run / 'model.keras'}: emonet, input 256x256" in printed
    assert "Licence of the weights: CC BY-NC-ND 4.0" in printed
    assert (emonet_run / "convert.out").read_text() == ""
    model = emonet_model
    info = models.model_metadata(model)
    assert info["backbone"] == "emonet" and info["image_size"] == 256
    assert info["class_names"] == list(emonet.EMONET_CLASS_NAMES[8])
    assert info["source"]["file"] == emonet_file.name
    direct = emonet.convert_emonet(emonet_file)
    image = np.random.default_rng(0).integers(0, 256, (1, 100, 90, 3), dtype=np.uint8)
    for head, value in direct(image).items():
        np.testing.assert_allclose(model(image)[head], value, atol=1e-6)


def test_convert_errors(tmp_path, capsys, restore_logging):
    with pytest.raises(SystemExit):
        convert.main(["--from", "emonet", str(tmp_path / "none.pth"), "--output", "m.keras"])
    assert f"The weights file {tmp_path / 'none.pth'} does not exist" in capsys.readouterr().err
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="must be a .keras file"):
        conversion.convert_published("emonet", tmp_path / "w.pth", tmp_path / "model.h5")
    with pytest.raises(ValueError, match="`family` must be one of"):
        conversion.convert_published("poster", tmp_path / "w.pth")


def test_predict_and_embeddings_on_a_converted_model(emonet_model):
    photo = np.random.default_rng(1).integers(0, 256, (180, 160, 3), dtype=np.uint8)
    model = emonet_model
    predictor = Predictor(model)
    crops = np.stack([photo[:128, :128], photo[20:148, 10:138]])
    arrays = predictor.predict_crops(crops)
    assert arrays["expression"].shape == (2, 8) and arrays["valence"].shape == (2,)
    np.testing.assert_allclose(arrays["expression"].sum(1), 1.0, rtol=1e-5)
    embedder = embedding_model(model)
    assert embedder.output_shape == (None, 128)
    features = np.asarray(embedder(crops[:1]))
    assert features.shape == (1, 128) and np.all(np.isfinite(features))


@pytest.mark.slow
def test_a_converted_model_exports_like_any_other(emonet_model, tmp_path):
    model = emonet_model
    images = np.random.default_rng(2).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    path = tflite.export_tflite(model, tmp_path / "emonet.tflite")
    comparison = parity.compare_outputs(
        export_model.run_keras(model, images), tflite.run_tflite(path, images)
    )
    for head in ("expression", "valence", "arousal"):
        assert comparison[head]["max_abs_diff"] < 1e-4, comparison
    assert metadata.read_tflite_metadata(path)["source"]["family"] == "emonet"


@contextlib.contextmanager
def _functions_run_eagerly():
    """``tf.function`` bodies (Keras's train, test and predict steps) run eagerly: tracing a
    training step over a published backbone's variables (EmoNet's 698, with Adam's updates)
    into a graph takes a minute on a CPU, running it eagerly a few seconds. The graph-mode
    loop itself is tested on the compact CNN (``test_train.py``)."""
    previous = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        with warnings.catch_warnings():  # tf.data's functions stay graphs, as they should
            warnings.filterwarnings("ignore", "Even though the `tf.config.experimental_run")
            yield
    finally:
        tf.config.run_functions_eagerly(previous)


def _fine_tune(data_dir, run, model, weights, image_size, task):
    """One step of ``train`` from the published weights file, with batches of 24 (the 48
    validation and test faces in two batches each), eagerly."""
    config = {
        "dataset": "synthetic_faces/tiny",
        "data_dir": str(data_dir),
        "model": model,
        "weights": str(weights),
        "image_size": image_size,
        "epochs": 1,
        "batch_size": 24,
        "steps_per_epoch": 1,
        "task": task,
        "target": "true",
        "output_dir": str(run),
        "strategy": "default",
        "report": False,
    }
    with _functions_run_eagerly():
        return train(config)


@pytest.mark.slow
def test_fine_tune_emonet_on_valence_and_arousal(synthetic_faces_tiny, emonet_file, tmp_path):
    """``--model emonet --weights emonet_8.pth --task va``, as the AffectNetC25 authors did."""
    run = tmp_path / "run"
    _fine_tune(synthetic_faces_tiny[0], run, "emonet", emonet_file, 64, "va")
    saved = json.loads((run / "metrics.json").read_text())
    assert "valence" in saved and "arousal" in saved and "expression" not in saved
    assert np.isfinite(saved["valence"]["ccc"])
    model = models.load_model(run / "model.keras")
    assert models.model_metadata(model)["backbone"] == "emonet"
    # the backbone started from the file: its first convolution is the file's, still close
    # after a step with BatchNorm frozen (a pretrained backbone runs in inference mode)
    state = emonet.read_state_dict(emonet_file)
    kernel = np.transpose(state["conv1.weight"], (2, 3, 1, 0))
    trained = [w for w in model.weights if w.path == "conv1/kernel"]
    assert len(trained) == 1
    np.testing.assert_allclose(np.asarray(trained[0]), kernel, atol=0.05)
    assert not np.allclose(np.asarray(trained[0]), kernel, atol=1e-7)


@pytest.fixture(scope="module")
def hsemotion_run(hsemotion_file, tmp_path_factory):
    """``python -m affectnet_tf.convert --from hsemotion`` into a run folder's ``model.keras``
    (``{"default": (stdout, stderr)}``), and the same with ``--quiet`` into another folder."""
    run = tmp_path_factory.mktemp("hsemotion_run")
    printed = {}
    for name, flags in (("default", []), ("quiet", ["--quiet"])):
        output = run / name / "model.keras"
        out, err = io.StringIO(), io.StringIO()
        with (
            _logging_restored(),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            convert.main(
                ["--from", "hsemotion", str(hsemotion_file), "--output", str(output), *flags]
            )
        printed[name] = out.getvalue(), err.getvalue()
    return run, printed


def test_convert_quiet_hides_the_status_lines(hsemotion_run):
    run, printed = hsemotion_run
    assert "Wrote" in printed["default"][1] and "Licence of the weights" in printed["default"][1]
    quiet_out, quiet_err = printed["quiet"]
    assert quiet_out == "" and "Wrote" not in quiet_err and "Licence" not in quiet_err
    # the result is written all the same
    info = models.model_metadata(models.load_model(run / "quiet" / "model.keras"))
    assert (
        info["backbone"] == "hsemotion_enet_b0"
        and info["source"]["file"] == "enet_b0_8_va_mtl.onnx"
    )


def test_convert_hsemotion_and_predict(hsemotion_run):
    run, printed = hsemotion_run
    output = run / "default" / "model.keras"
    status = printed["default"][1]
    assert "hsemotion_enet_b0, input 224x224, outputs expression, valence, arousal" in status
    assert "Licence of the weights: Apache-2.0" in status
    model = models.load_model(output)
    info = models.model_metadata(model)
    assert info["class_names"] == list(labels.expression_names(8))  # the canonical order
    assert info["source"]["published"]["affectnet_valence_ccc"] == 0.594
    arrays = Predictor(model).predict_crops(
        np.random.default_rng(4).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    )
    assert arrays["expression"].shape == (3, 8) and arrays["arousal"].shape == (3,)
    assert embedding_model(model).output_shape == (None, 1280)


@pytest.mark.slow
def test_fine_tune_hsemotion_on_expression(synthetic_faces_tiny, hsemotion_file, tmp_path):
    """``--model hsemotion_enet_b0 --weights enet_b0_8_va_mtl.onnx``: the backbone starts from
    the file (its first convolution's kernel is the file's), new heads are trained."""
    run = tmp_path / "run"
    _fine_tune(synthetic_faces_tiny[0], run, "hsemotion_enet_b0", hsemotion_file, 32, "exp")
    saved = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= saved["expression"]["accuracy"] <= 1.0
    model = models.load_model(run / "model.keras")
    assert models.model_metadata(model)["backbone"] == "hsemotion_enet_b0"
    # the file's kernel in the Keras layout (the same at every input side)
    expected = hsemotion.read_hsemotion_onnx(hsemotion_file).layers["stem_conv"]["kernel"]
    trained = [w for w in model.weights if w.path == "stem_conv/kernel"]
    assert len(trained) == 1
    np.testing.assert_allclose(np.asarray(trained[0]), expected, atol=0.05)
    assert not np.allclose(np.asarray(trained[0]), expected, atol=1e-7)  # and fine-tuned


def test_the_registry_asks_for_the_published_file():
    for name, file in (("emonet", "emonet_8.pth"), ("hsemotion_enet_b2", "enet_b2_")):
        with pytest.raises(ValueError, match=rf"'{name}' has no ImageNet weights.*{file}"):
            backbones.build_backbone(name, weights="imagenet")
    with pytest.raises(ValueError, match=r"'emonet' takes images of at least 64x64"):
        backbones.build_backbone("emonet", weights=None, image_size=32)
    with pytest.raises(ValueError, match="an existing weights file"):
        backbones.build_backbone("hsemotion_enet_b0", weights="missing.onnx", image_size=32)
