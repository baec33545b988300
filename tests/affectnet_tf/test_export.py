"""Export to SavedModel, TFLite and ONNX: files written, read back in their own runtimes, parity
with the Keras model on held-out images, metadata inside each file, and the error cases."""

import json
import os

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from affectnet_tf import export
from affectnet_tf.data.images import decode_image, resize_image
from affectnet_tf.deploy.export import converters, metadata, parity, run_export, savedmodel, tflite
from affectnet_tf.deploy.export import onnx as onnx_export
from affectnet_tf.deploy.export.check_data import check_images
from affectnet_tf.deploy.export.model import prediction_model_of, run_keras
from affectnet_tf.modeling import models
from affectnet_tf.train import train

SIZE = 32


@pytest.fixture(scope="module")
def run_dir(synthetic_faces_tiny, tmp_path_factory):
    """A run of the training command on synthetic_faces/tiny (every head, 12 short epochs):
    confident enough that int8 rounding does not flip near-ties of an untrained model (all 48
    selection images agree at 10 epochs already)."""
    data_dir, _ = synthetic_faces_tiny
    run = tmp_path_factory.mktemp("export") / "run"
    train(
        {
            "dataset": "synthetic_faces/tiny",
            "data_dir": str(data_dir),
            "model": "compact_cnn_small",
            "weights": None,
            "image_size": SIZE,
            "epochs": 12,
            "batch_size": 8,
            "task": "all",
            "target": "true",
            "output_dir": str(run),
            "strategy": "default",
            "report": False,
        }
    )
    return run


@pytest.fixture(scope="module")
def held_out(run_dir):
    """The run's selection images (what the export command checks on) and the Keras outputs."""
    images = check_images(run_dir, "selection", count=200)
    model = models.load_model(run_dir / "model.keras")
    return images, run_keras(model, images)


def test_check_images_are_the_runs_selection_images(run_dir, held_out):
    images, reference = held_out
    assert images.shape == (48, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert set(reference) == {"expression", "valence", "arousal"}
    assert reference["expression"].shape == (48, 8) and reference["valence"].shape == (48,)
    train_images = check_images(run_dir, "train", count=10)
    assert len(train_images) == 10 and not np.array_equal(train_images, images[:10])
    # the same images as a split name and as a role
    assert np.array_equal(check_images(run_dir, "validation", count=200), images)


def test_saved_model_signatures_outputs_and_metadata(run_dir, held_out, tmp_path):
    images, reference = held_out
    records = run_export.export_run(run_dir, "saved_model")
    path = run_dir / "export" / "saved_model" / "1"
    assert records[0]["path"] == str(path) and records[0]["bytes"] > 0
    check = records[0]["check"]
    for signature in ("images", "serving_default"):
        for head in ("expression", "valence", "arousal"):
            assert check[signature][head]["max_abs_diff"] < parity.MAX_ABS_DIFF
    assert json.loads((path.parent / "check.json").read_text())["check"]["met"]

    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {"serving_default", "images"}
    default = loaded.signatures["serving_default"]
    assert list(default.structured_input_signature[1]) == ["image_bytes"]
    assert set(default.structured_outputs) == {"expression", "valence", "arousal"}

    # encoded images of other sizes: decoded and resized by the package's path, JPEG and PNG
    photo = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    png = cv2.imencode(".png", photo[..., ::-1])[1].tobytes()
    jpeg = cv2.imencode(".jpg", photo[..., ::-1])[1].tobytes()
    expected_inputs = np.stack(
        [np.asarray(resize_image(decode_image(data), SIZE)) for data in (png, jpeg)]
    )
    expected = run_keras(models.load_model(run_dir / "model.keras"), expected_inputs)
    got = savedmodel.run_saved_model(path, image_bytes=[png, jpeg])
    for head in expected:
        np.testing.assert_allclose(got[head], expected[head], atol=1e-5)
    # uint8 images of any size through the "images" signature
    any_size = loaded.signatures["images"](images=tf.constant(photo[None]))
    direct = run_keras(models.load_model(run_dir / "model.keras"), photo[None])
    np.testing.assert_allclose(any_size["expression"].numpy(), direct["expression"], atol=1e-5)

    info = metadata.read_saved_model_metadata(path)
    assert info["class_names"][:2] == ["neutral", "happy"] and len(info["class_names"]) == 8
    assert info["image_size"] == SIZE and info["preprocessing"] == "unit"
    assert info["output_shapes"]["expression"] == ["batch", 8]


def test_tflite_float32_float16_int8_in_litert(run_dir, held_out):
    from ai_edge_litert.interpreter import Interpreter

    images, reference = held_out
    records = run_export.export_run(run_dir, "tflite")
    assert [r["quantization"] for r in records] == ["float32", "float16", "int8"]
    sizes = {r["quantization"]: r["bytes"] for r in records}
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]
    for record in records:
        quantization = record["quantization"]
        expression = record["check"]["outputs"]["expression"]
        assert expression["top1_agreement"] >= parity.MIN_TOP1_AGREEMENT[quantization]
        assert (
            record["check"]["outputs"]["valence"]["mean_abs_diff"]
            <= (parity.MAX_VA_MEAN_ABS_DIFF[quantization])
        )
        # the record is the comparison of the file as read back now
        again = parity.compare_outputs(reference, tflite.run_tflite(record["path"], images))
        assert again["expression"]["top1_agreement"] == expression["top1_agreement"]
        info = metadata.read_tflite_metadata(record["path"])
        assert info["quantization"] == quantization
        assert info["class_names"] == reference_class_names(run_dir)
        assert f"{SIZE}x{SIZE}" in info["input_format"]
        interpreter = Interpreter(model_path=record["path"])
        (details,) = interpreter.get_input_details()
        assert details["dtype"] == np.uint8 and list(details["shape_signature"]) == [
            -1,
            SIZE,
            SIZE,
            3,
        ]
        kinds = {d["dtype"] for d in interpreter.get_tensor_details()}
        assert (np.int8 in kinds) == (quantization == "int8")
    float32 = records[0]["check"]["outputs"]
    assert float32["expression"]["max_abs_diff"] < 1e-5  # float32 is exact up to rounding


def reference_class_names(run_dir):
    return models.model_metadata(models.load_model(run_dir / "model.keras"))["class_names"]


def test_onnx_parity_and_metadata_properties(run_dir, held_out, tmp_path, capsys):
    import onnxruntime

    images, reference = held_out
    output = tmp_path / "exp.onnx"
    export.main(["--model-dir", str(run_dir), "--format", "onnx", "--output", str(output)])
    captured = capsys.readouterr()
    assert "Checking on 48 images (selection)" in captured.err
    assert f"Wrote onnx: {output}" in captured.err and "Check onnx vs Keras" in captured.err
    assert captured.out == ""  # status lines only, on the standard error
    record = json.loads((tmp_path / "exp.onnx.check.json").read_text())
    assert record["check"]["outputs"]["expression"]["max_abs_diff"] < parity.MAX_ABS_DIFF
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert {o.name for o in session.get_outputs()} == {"expression", "valence", "arousal"}
    got = onnx_export.run_onnx(output, images)
    for head in reference:
        assert np.abs(got[head] - reference[head]).max() < parity.MAX_ABS_DIFF
    properties = session.get_modelmeta().custom_metadata_map
    assert json.loads(properties["class_names"]) == reference_class_names(run_dir)
    assert properties["image_size"] == str(SIZE)
    assert metadata.read_onnx_metadata(output)["task"] == "all"


def test_quiet_hides_the_status_lines_and_still_writes_and_checks(run_dir, tmp_path, capsys):
    output = tmp_path / "quiet.onnx"
    argv = ["--model-dir", str(run_dir), "--format", "onnx", "--output", str(output)]
    export.main([*argv, "--quiet", "--check-count", "8"])
    captured = capsys.readouterr()
    assert "Wrote onnx" not in captured.err and "Check onnx" not in captured.err
    assert captured.out == ""
    record = json.loads((tmp_path / "quiet.onnx.check.json").read_text())
    assert record["check"]["outputs"]["images"] == 8 and record["check"]["met"]
    assert metadata.read_onnx_metadata(output)["image_size"] == SIZE


def test_a_crowd_model_exports_its_prediction_model(tmp_path):
    built = models.build_model(
        "compact_cnn_small",
        task="all",
        target="cv",
        num_annotators=5,
        weights=None,
        image_size=SIZE,
        dropout=0.0,
    )
    built.training_model.save(tmp_path / "crowd_model.keras")
    loaded = models.load_model(tmp_path / "crowd_model.keras")
    assert len(loaded.outputs) == 3 and loaded.outputs[0].shape[-1] == 5  # per-annotator outputs
    prediction = prediction_model_of(loaded)
    images = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    path = onnx_export.export_onnx(loaded, tmp_path / "crowd.onnx")
    got = onnx_export.run_onnx(path, images)
    expected = run_keras(built.prediction_model, images)
    assert set(got) == {"expression", "valence", "arousal"}
    assert got["expression"].shape == (4, 8)
    for head in expected:
        np.testing.assert_allclose(got[head], expected[head], atol=1e-5)
    assert prediction_model_of(prediction) is prediction


def test_single_head_model(tmp_path):
    built = models.build_model(
        "compact_cnn_small", task="exp", num_classes=7, weights=None, image_size=SIZE
    )
    images = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    path = tflite.export_tflite(built.prediction_model, tmp_path / "exp.tflite")
    got = tflite.run_tflite(path, images)
    assert set(got) == {"expression"} and got["expression"].shape == (3, 7)
    assert metadata.read_tflite_metadata(path)["output_shapes"] == {"expression": ["batch", 7]}


def test_a_class_set_of_its_own_keeps_its_names_in_every_format(tmp_path):
    names = ["calme", "très tendu", "bored, tired"]
    built = models.build_model(
        "compact_cnn_small", task="exp", class_names=names, weights=None, image_size=SIZE
    )
    images = np.random.default_rng(2).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    expected = run_keras(built.prediction_model, images)["expression"]
    path = tflite.export_tflite(built.prediction_model, tmp_path / "own.tflite")
    assert metadata.read_tflite_metadata(path)["class_names"] == names
    np.testing.assert_allclose(tflite.run_tflite(path, images)["expression"], expected, atol=1e-5)
    path = onnx_export.export_onnx(built.prediction_model, tmp_path / "own.onnx")
    assert metadata.read_onnx_metadata(path)["class_names"] == names
    np.testing.assert_allclose(
        onnx_export.run_onnx(path, images)["expression"], expected, atol=1e-5
    )


@pytest.mark.parametrize(
    "backbone",
    [
        "resnet50",
        "mobilenet",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "efficientnet_b2",
        "compact_cnn",
    ],
)
def test_every_backbone_exports_to_tflite_and_onnx(backbone, tmp_path):
    built = models.build_model(backbone, task="all", weights=None, image_size=SIZE, dropout=0.0)
    model = built.prediction_model
    images = np.random.default_rng(2).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    reference = run_keras(model, images)
    onnx_path = onnx_export.export_onnx(model, tmp_path / "model.onnx")
    tflite_path = tflite.export_tflite(model, tmp_path / "model.tflite")
    for got in (onnx_export.run_onnx(onnx_path, images), tflite.run_tflite(tflite_path, images)):
        comparison = parity.compare_outputs(reference, got)
        for head in ("expression", "valence", "arousal"):
            # untrained backbones have large activations: relative to the output's range
            assert comparison[head]["max_abs_diff"] < 1e-4 * max(1, np.abs(reference[head]).max())


def test_an_op_a_format_cannot_take_is_named(tmp_path):
    model = models.build_model(
        "compact_cnn_small", task="exp", weights=None, image_size=SIZE
    ).prediction_model
    # another input side puts the anti-aliased resize (ScaleAndTranslate) into the graph
    with pytest.raises(converters.ExportError, match=r"TFLite float32: op\(s\) ScaleAndTranslate"):
        tflite.export_tflite(model, tmp_path / "m.tflite", input_size=48)
    with pytest.raises(converters.ExportError, match=r"ONNX opset 17: op\(s\) ScaleAndTranslate"):
        onnx_export.export_onnx(model, tmp_path / "m.onnx", input_size=48)
    assert not os.path.exists(tmp_path / "m.tflite") and not os.path.exists(tmp_path / "m.onnx")


def test_a_failed_check_raises_and_keeps_its_record(run_dir, tmp_path, monkeypatch, capsys):
    real = tflite.run_tflite

    def swapped_classes(path, images, batch_size=32):
        outputs = real(path, images, batch_size)
        outputs["expression"] = outputs["expression"][:, ::-1]
        return outputs

    monkeypatch.setattr(tflite, "run_tflite", swapped_classes)
    output = tmp_path / "broken.tflite"
    with pytest.raises(parity.ParityError, match=r"tflite float32 export differs.*top-1 agreement"):
        run_export.export_run(run_dir, "tflite", output=output, quantizations=["float32"])
    record = json.loads((tmp_path / "broken.tflite.check.json").read_text())
    assert record["check"]["outputs"]["expression"]["top1_agreement"] < 0.5
    assert record["check"]["met"] == [] and output.exists()
    # the command: exit status 1, the error named; --verbose shows the checks' progress bars
    argv = ["--model-dir", str(run_dir), "--format", "tflite", "--quantization", "float32"]
    with pytest.raises(SystemExit) as exited:
        export.main([*argv, "--output", str(output), "--check-count", "8", "--verbose"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Error: The tflite float32 export differs from the Keras model on 8 images" in err
    assert "TFLite outputs" in err and "Keras outputs" in err  # the bars over the batches


def test_check_parity_thresholds():
    comparison = {
        "images": 200,
        "expression": {"max_abs_diff": 0.01, "mean_abs_diff": 0.001, "top1_agreement": 0.975},
        "valence": {"max_abs_diff": 0.2, "mean_abs_diff": 0.05},
    }
    assert len(parity.check_parity(comparison, "tflite", "int8")) == 2
    with pytest.raises(parity.ParityError, match=r"top-1 agreement >= 99.5%"):
        parity.check_parity(comparison, "tflite", "float16")
    with pytest.raises(parity.ParityError, match=r"expression max \|diff\| < 0.0001"):
        parity.check_parity(comparison, "onnx")


def test_check_data_from_a_folder_counts_unreadable_files(run_dir, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    (folder / "3.jpg").write_bytes(b"not an image")
    images = check_images(run_dir, str(folder), count=10, image_size=SIZE)
    assert images.shape == (3, SIZE, SIZE, 3)
    skipped = [r for r in caplog.records if "Skipped 1 of 4 files" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelname == "WARNING"
    assert "3.jpg" in skipped[0].getMessage()


def test_errors_name_what_is_wrong(run_dir, tmp_path, capsys):
    model = models.load_model(run_dir / "model.keras")
    with pytest.raises(converters.ExportError, match="int8 quantization needs representative"):
        tflite.export_tflite(model, tmp_path / "m.tflite", "int8")
    with pytest.raises(SystemExit):
        export.main(["--model-dir", str(tmp_path / "nowhere"), "--format", "onnx"])
    assert f"No model.keras in the run folder: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    with pytest.raises(converters.ExportError, match="has no split 'bogus'"):
        check_images(run_dir, "bogus", count=5)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(converters.ExportError, match="holds no image files"):
        check_images(run_dir, str(empty), count=5, image_size=SIZE)
    with pytest.raises(ValueError, match="--output names one file"):
        run_export.export_run(run_dir, "tflite", output=tmp_path / "x.tflite", check=False)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(converters.ExportError, match="no ModelMetadata layer"):
        prediction_model_of(plain)
    with pytest.raises(converters.ExportError, match="no affectnet_tf.metadata"):
        metadata.read_onnx_metadata(_plain_onnx(tmp_path))


def test_a_missing_export_library_says_which_extra_installs_it():
    with pytest.raises(ImportError, match=r"pip install 'affectnet-tf\[export\]'"):
        converters.optional_import("onnx_runtime_that_is_not_installed")


def _plain_onnx(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), path)
    return path
