"""The converted published models at every front door: ``python -m affectnet_tf.convert``, as
backbones of the training command (a one-epoch fine-tune of each family on the synthetic
faces), ``predict``, ``video_train``'s embeddings and ``export``.

The weights are seeded random tensors written as the files the authors publish (EmoNet's
``.pth``, HSEmotion's ONNX): see ``tests/emonet_weights.py`` and ``tests/hsemotion_weights.py``.
"""

import contextlib
import io
import json

import hsemotion_weights
import numpy as np
import pytest
from emonet_weights import seeded_state_dict, write_torch_zip

from affectnet_tf import convert, export, predict
from affectnet_tf.modeling import backbones, models
from affectnet_tf.published import emonet, hsemotion
from affectnet_tf.train import train
from affectnet_tf.video_train import embedding_model
from tfds_affectnet import labels


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
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        convert.main(["--from", "emonet", str(emonet_file), "--output", str(run / "model.keras")])
    (run / "convert.log").write_text(printed.getvalue())
    return run


def test_convert_command_writes_a_model_with_its_licence(emonet_run, emonet_file):
    printed = (emonet_run / "convert.log").read_text()
    assert "Wrote" in printed and "emonet" in printed and "CC BY-NC-ND 4.0" in printed
    model = models.load_model(emonet_run / "model.keras")
    info = models.model_metadata(model)
    assert info["backbone"] == "emonet" and info["image_size"] == 256
    assert info["class_names"] == list(emonet.EMONET_CLASS_NAMES[8])
    assert info["source"]["file"] == emonet_file.name
    direct = emonet.convert_emonet(emonet_file)
    image = np.random.default_rng(0).integers(0, 256, (1, 100, 90, 3), dtype=np.uint8)
    for head, value in direct(image).items():
        np.testing.assert_allclose(model(image)[head], value, atol=1e-6)


def test_convert_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.main(["--from", "emonet", str(tmp_path / "none.pth"), "--output", "m.keras"])
    assert f"The weights file {tmp_path / 'none.pth'} does not exist" in capsys.readouterr().err
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="must be a .keras file"):
        convert.convert("emonet", tmp_path / "w.pth", tmp_path / "model.h5")
    with pytest.raises(ValueError, match="`family` must be one of"):
        convert.convert("poster", tmp_path / "w.pth")


def test_predict_and_embeddings_on_a_converted_model(emonet_run, tmp_path):
    photo = np.random.default_rng(1).integers(0, 256, (180, 160, 3), dtype=np.uint8)
    model = models.load_model(emonet_run / "model.keras")
    predictor = predict.Predictor(model)
    crops = np.stack([photo[:128, :128], photo[20:148, 10:138]])
    arrays = predictor.predict_crops(crops)
    assert arrays["expression"].shape == (2, 8) and arrays["valence"].shape == (2,)
    np.testing.assert_allclose(arrays["expression"].sum(1), 1.0, rtol=1e-5)
    embedder = embedding_model(model)
    assert embedder.output_shape == (None, 128)
    features = np.asarray(embedder(crops[:1]))
    assert features.shape == (1, 128) and np.all(np.isfinite(features))


@pytest.mark.slow
def test_a_converted_model_exports_like_any_other(emonet_run, tmp_path):
    model = models.load_model(emonet_run / "model.keras")
    images = np.random.default_rng(2).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    path = export.export_tflite(model, tmp_path / "emonet.tflite")
    comparison = export.compare_outputs(
        export.run_keras(model, images), export.run_tflite(path, images)
    )
    for head in ("expression", "valence", "arousal"):
        assert comparison[head]["max_abs_diff"] < 1e-4, comparison
    assert export.read_tflite_metadata(path)["source"]["family"] == "emonet"


def _fine_tune(data_dir, run, model, weights, image_size, task):
    return train(
        {
            "dataset": "synthetic_faces/tiny",
            "data_dir": str(data_dir),
            "model": model,
            "weights": str(weights),
            "image_size": image_size,
            "epochs": 1,
            "batch_size": 8,
            "steps_per_epoch": 1,
            "task": task,
            "target": "true",
            "output_dir": str(run),
            "strategy": "default",
            "report": False,
        }
    )


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


def test_convert_hsemotion_and_predict(hsemotion_file, tmp_path, capsys):
    output = tmp_path / "run" / "model.keras"
    convert.main(["--from", "hsemotion", str(hsemotion_file), "--output", str(output)])
    printed = capsys.readouterr().out
    assert "hsemotion_enet_b0, input 224x224, outputs expression, valence, arousal" in printed
    assert "Apache-2.0" in printed
    model = models.load_model(output)
    info = models.model_metadata(model)
    assert info["class_names"] == list(labels.expression_names(8))  # the canonical order
    assert info["source"]["published"]["affectnet_valence_ccc"] == 0.594
    arrays = predict.Predictor(model).predict_crops(
        np.random.default_rng(4).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    )
    assert arrays["expression"].shape == (3, 8) and arrays["arousal"].shape == (3,)
    assert embedding_model(model).output_shape == (None, 1280)


@pytest.mark.slow
def test_fine_tune_hsemotion_on_expression(synthetic_faces_tiny, hsemotion_file, tmp_path):
    """``--model hsemotion_enet_b0 --weights enet_b0_8_va_mtl.onnx``: the backbone starts from
    the file (its first convolution's kernel is the file's), new heads are trained."""
    run = tmp_path / "run"
    _fine_tune(synthetic_faces_tiny[0], run, "hsemotion_enet_b0", hsemotion_file, 64, "exp")
    saved = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= saved["expression"]["accuracy"] <= 1.0
    model = models.load_model(run / "model.keras")
    assert models.model_metadata(model)["backbone"] == "hsemotion_enet_b0"
    weights = hsemotion.read_hsemotion_onnx(hsemotion_file)
    stem = hsemotion.hsemotion_backbone_b0(image_size=64)
    hsemotion.load_backbone_weights(stem, weights)
    expected = np.asarray(stem.get_layer("stem_conv").kernel)
    trained = [w for w in model.weights if w.path == "stem_conv/kernel"]
    assert len(trained) == 1
    np.testing.assert_allclose(np.asarray(trained[0]), expected, atol=0.05)


def test_the_registry_asks_for_the_published_file():
    for name, file in (("emonet", "emonet_8.pth"), ("hsemotion_enet_b2", "enet_b2_")):
        with pytest.raises(ValueError, match=rf"'{name}' has no ImageNet weights.*{file}"):
            backbones.build_backbone(name, weights="imagenet")
    with pytest.raises(ValueError, match=r"'emonet' takes images of at least 64x64"):
        backbones.build_backbone("emonet", weights=None, image_size=32)
    with pytest.raises(ValueError, match="an existing weights file"):
        backbones.build_backbone("hsemotion_enet_b0", weights="missing.onnx", image_size=32)
