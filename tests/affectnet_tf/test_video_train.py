"""Video-level emotion: embeddings, pooling, the SVMs and ``python -m affectnet_tf.video_train``."""

import json
import os

import hsemotion_weights
import joblib
import make_face_clips
import numpy as np
import pytest
import tensorflow_datasets as tfds

import affectnet_tf
from affectnet_tf import video_train
from affectnet_tf.inference.embeddings import ClipFeatures, embedding_model, pool_features
from affectnet_tf.published.conversion import convert_published
from affectnet_tf.training import video
from tfds_affectnet import AfewConfig, VgafConfig

pytest.importorskip("skimage", reason="scikit-image ships the astronaut test image")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_face_clips.save_tiny_run(tmp_path_factory.mktemp("run"), "all")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("manual")
    make_face_clips.make_afew_layout(root / "afew")
    make_face_clips.make_vgaf_layout(root / "vgaf")
    return root, tmp_path_factory.mktemp("tfds")


def test_pool_features_by_hand():
    embeddings = np.array([[1.0, 0.0], [3.0, 4.0]])
    pooled = pool_features(embeddings)
    raw = np.array([2.0, 2.0, 1.0, 2.0, 1.0, 0.0, 3.0, 4.0])  # mean, std, min, max
    np.testing.assert_allclose(pooled, raw / np.linalg.norm(raw), rtol=1e-6)
    assert np.linalg.norm(pooled) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"at least one frame. Received: shape=\(0, 2\)"):
        pool_features(np.zeros((0, 2)))


@pytest.mark.parametrize("task", ["exp", "va", "all"])
def test_embedding_is_the_input_of_the_heads(tmp_path, task):
    """The head applied to the embedding gives the model's output: it is the layer before it."""
    model = affectnet_tf.load_model(
        os.path.join(make_face_clips.save_tiny_run(tmp_path, task), "model.keras")
    )
    embedder = embedding_model(model)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    features = np.asarray(embedder(images, training=False))
    assert features.shape == (3, embedder.output_shape[-1])
    outputs = model(images, training=False)
    heads = affectnet_tf.model_metadata(model)["outputs"]
    outputs = outputs if isinstance(outputs, dict) else {heads[0]: outputs}
    for head in heads:
        layer = model.get_layer(head)
        np.testing.assert_allclose(
            np.asarray(layer(features)), np.asarray(outputs[head]), rtol=1e-5, atol=1e-6
        )


def test_make_classifier_options():
    assert type(video.make_classifier("linear")).__name__ == "LinearSVC"
    rbf = video.make_classifier("rbf", C=2.0)
    assert type(rbf).__name__ == "SVC" and rbf.kernel == "rbf" and rbf.C == 2.0
    with pytest.raises(ValueError, match="classifier.*Received: classifier='tree'"):
        video.make_classifier("tree")


def test_evaluate_counts_clips_without_face_with_the_fallback():
    class Fixed:
        def predict(self, features):
            return features[:, 0].astype(int)

    clips = ClipFeatures(
        ["a", "b", "c", "d"],
        [1, 0, 2, 2],
        [True, True, False, False],
        np.array([[1.0], [1.0], [0.0], [0.0]]),
    )
    result = video.evaluate(Fixed(), clips, fallback_label=2)
    assert result["accuracy_with_face"] == 0.5  # a right, b wrong
    assert result["accuracy_all"] == 0.75  # c and d get the fallback 2: right
    assert result["predictions"] == {"a": 1, "b": 1, "c": 2, "d": 2}
    assert result["clips_without_face"] == 2


@pytest.mark.parametrize("classifier", ["linear", "rbf"])
def test_train_on_afew(run_dir, layouts, tmp_path, classifier):
    root, data_dir = layouts
    config = AfewConfig(name="tiny", crop_size=24, every_n=2)
    result = video.train_video_classifier(
        run_dir,
        "afew",
        builder_config=config,
        data_dir=data_dir,
        manual_dir=root / "afew",
        classifier=classifier,
        output_dir=tmp_path,
    )
    assert result["dataset"] == "afew/tiny" and result["classifier"] == classifier
    for split, clips in (("train", 5), ("validation", 3)):
        metrics = result[split]
        assert metrics["clips"] == clips and metrics["clips_without_face"] == 1
        predictions = metrics["predictions"]
        assert len(predictions) == clips
        # The faceless clip gets the most frequent training class (happy and sad tie: happy).
        blank = "Neutral/blank_1" if split == "train" else "Neutral/blank_2"
        assert result["class_names"][predictions[blank]] == result["fallback_label"] == "happy"
        with_face = metrics["accuracy_with_face"] * metrics["clips_with_face"]
        assert metrics["accuracy_all"] * clips == pytest.approx(with_face)  # blank is wrong
    # Bright (happy) and dark (sad) backgrounds: separable even with random weights.
    assert result["train"]["accuracy_with_face"] == 1.0
    saved = json.loads((tmp_path / "video_metrics.json").read_text())
    assert saved["validation"] == result["validation"]
    fitted = joblib.load(tmp_path / "video_classifier.joblib")
    assert fitted.predict(np.zeros((1, 4 * result["embedding_dims"]))).shape == (1,)


def test_command_line_on_vgaf(run_dir, layouts, tmp_path, capsys, restore_logging):
    """The command prints each split's accuracy to the standard output, status lines to the
    standard error; ``--quiet`` drops the status lines, not the results."""
    root, data_dir = layouts
    argv = [
        "--model-dir",
        run_dir,
        "--dataset",
        "vgaf",
        "--data-dir",
        str(data_dir),
        "--manual-dir",
        str(root / "vgaf"),
        "--crop-size",
        "24",
        "--every-n",
        "2",
        "--output-dir",
        str(tmp_path),
    ]
    assert video_train.main(argv) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "vgaf/default_24_every2 validation: accuracy" in out
    assert "on the 2 clips with a face (1 without a face get 'positive')" in out
    assert "Fitting the linear classifier on" in captured.err
    assert "accuracy" not in captured.err
    builder = tfds.builder("vgaf", config="default_24_every2", data_dir=str(data_dir))
    assert builder.info.splits["train"].num_examples == 5
    assert (tmp_path / "video_metrics.json").exists()
    assert video_train.main([*argv, "--quiet"]) == 0  # the prepared data is read again
    quiet = capsys.readouterr()
    results = [line for line in out.splitlines() if ": accuracy " in line]
    assert len(results) == 2 and quiet.out.splitlines() == results
    assert "Fitting" not in quiet.err and "Preparing" not in quiet.err


def test_builder_config_from_the_flags():
    assert video.video_builder_config("afew") is None
    config = video.video_builder_config("vgaf", crop_size=24, every_n=2)
    assert (config.name, config.crop_size, config.every_n, config.fps) == (
        "default_24_every2",
        24,
        2,
        None,
    )
    fps = video.video_builder_config("afew", fps=2.5)
    assert fps.name.endswith("_fps2.5") and fps.fps == 2.5 and fps.every_n is None
    with pytest.raises(ValueError, match="Received: dataset='ferplus/x'"):
        video.video_builder_config("ferplus/x", crop_size=24)


@pytest.mark.slow
def test_hsemotion_recipe_on_afew(layouts, tmp_path):
    """HSEmotion's video recipe end to end: a converted HSEmotion model (seeded weights in its
    published graph) gives the frame embeddings (1280 features of EfficientNet-B0)."""
    run = tmp_path / "hse"
    weights = hsemotion_weights.write_seeded_file(tmp_path / "enet_b0_8_best_vgaf.onnx", "b0_8")
    convert_published("hsemotion", weights, run / "model.keras")
    root, data_dir = layouts
    result = video.train_video_classifier(
        run,
        "afew",
        builder_config=AfewConfig(name="tiny", crop_size=24, every_n=2),
        data_dir=data_dir,
        manual_dir=root / "afew",
        output_dir=tmp_path,
    )
    assert result["embedding_dims"] == 1280
    assert result["train"]["clips"] == 5 and result["validation"]["clips"] == 3
    assert 0.0 <= result["validation"]["accuracy_all"] <= 1.0


def test_no_training_face(run_dir, tmp_path):
    for split in ("Train", "Val"):
        make_face_clips.write_clip(tmp_path / "m" / split / "1_1.mp4", 2, blank_frames=(0, 1))
        (tmp_path / "m" / f"{split}_labels.txt").write_text("1_1 1\n")
    with pytest.raises(ValueError, match="No training clip of vgaf has a face"):
        video.train_video_classifier(
            run_dir,
            "vgaf",
            builder_config=VgafConfig(name="none", crop_size=16),
            data_dir=tmp_path / "tfds",
            manual_dir=tmp_path / "m",
        )
    with pytest.raises(ValueError, match="dataset.*Received: dataset='ferplus'"):
        video.train_video_classifier(run_dir, "ferplus")
