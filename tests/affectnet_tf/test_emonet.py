"""EmoNet converted from PyTorch: parity with the reference, class order, preprocessing inside the
model, save/load, the safe checkpoint reader and the errors that name the tensor.

The reference outputs come from ``tests/make_emonet_fixture.py`` (PyTorch, run once): seeded
weights (``tests/emonet_weights.py``), fixed inputs, the outputs stored in
``data/emonet_parity.json``. Here the same weights are rebuilt without PyTorch and converted.
"""

import hashlib
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from emonet_weights import seeded_images, seeded_state_dict, write_torch_zip

import affectnet_tf
from affectnet_tf.inference.embeddings import embedding_model
from affectnet_tf.inference.predictor import Predictor
from affectnet_tf.modeling import backbones, models
from affectnet_tf.published import emonet
from tfds_affectnet import labels

DATA = Path(__file__).parent / "data"
FIXTURE = json.loads((DATA / "emonet_parity.json").read_text())
TOLERANCE = 1e-4


def _tensors(num_classes):
    """The reference's ``[(name, shape)]`` for ``num_classes``, in its state dict's order."""
    changes = FIXTURE["state_dict_5_changes"] if num_classes == 5 else {}
    return [(name, changes.get(name, shape)) for name, shape in FIXTURE["state_dict_8"]]


@pytest.fixture(scope="module")
def images():
    count, size = FIXTURE["input_shape"][:2]
    return seeded_images(FIXTURE["input_seed"], count, size)


@pytest.fixture(scope="module")
def states():
    return {n: seeded_state_dict(_tensors(n), FIXTURE["weights_seed"]) for n in (5, 8)}


@pytest.fixture(scope="module")
def weights_file(states, tmp_path_factory):
    """The 8-class seeded weights as a ``.pth`` file, with ``nn.DataParallel``'s prefix."""
    path = tmp_path_factory.mktemp("emonet") / "emonet_8.pth"
    write_torch_zip({f"module.{k}": v for k, v in states[8].items()}, path, "emonet_8")
    return path


@pytest.fixture(scope="module")
def converted(states, weights_file):
    """``{5: model, 8: model}``: the 8-class one from a file, the 5-class one from a dict."""
    return {8: emonet.convert_emonet(weights_file), 5: emonet.convert_emonet(states[5])}


@pytest.fixture(scope="module")
def outputs(converted, images):
    return {
        n: {k: np.asarray(v) for k, v in model(images).items()} for n, model in converted.items()
    }


# --- parity with the reference --------------------------------------------------------------


def test_fixture_outputs_depend_on_the_input():
    # otherwise a mix-up of channels or images could pass the parity test
    for reference in FIXTURE["models"].values():
        for key in ("expression_logits", "valence", "arousal"):
            values = np.asarray(reference[key])
            assert np.abs(values[0] - values[1]).max() > 100 * TOLERANCE, key


@pytest.mark.parametrize("num_classes", [8, 5])
def test_parity_with_the_reference(num_classes, converted, outputs, images):
    reference = FIXTURE["models"][str(num_classes)]
    ours = outputs[num_classes]
    assert set(ours) == {"expression", "valence", "arousal"}
    assert ours["expression"].shape == (len(images), num_classes)
    assert ours["valence"].shape == ours["arousal"].shape == (len(images), 1)
    differences = {
        "expression_probabilities": ours["expression"] - reference["expression_probabilities"],
        "valence": ours["valence"][:, 0] - reference["valence"],
        "arousal": ours["arousal"][:, 0] - reference["arousal"],
    }
    # the logits: the embedding (the heads' shared input) times the expression head
    model = converted[num_classes]
    features = np.asarray(embedding_model(model)(images))
    head = model.get_layer("expression")
    logits = features @ np.asarray(head.kernel) + np.asarray(head.bias)
    differences["features"] = features - reference["features"]
    differences["expression_logits"] = logits - reference["expression_logits"]
    for key, difference in differences.items():
        assert np.abs(difference).max() < TOLERANCE, key


def test_backbone_from_the_registry_gives_the_reference_features(weights_file, images):
    backbone, spec = backbones.build_backbone("emonet", weights=str(weights_file))
    assert spec.preprocessing == "unit" and backbone.input_shape == (None, 256, 256, 3)
    features = np.asarray(backbone(images.astype("float32") / 255.0))
    np.testing.assert_allclose(features, FIXTURE["models"]["8"]["features"], atol=TOLERANCE)


@pytest.mark.parametrize("size", [64, 128, 320])
def test_backbone_takes_multiples_of_64(size, states):
    backbone = emonet.emonet_backbone(size)
    emonet.load_backbone_weights(backbone, states[5])  # the final layer's shape does not matter
    features = np.asarray(backbone(np.full((1, size, size, 3), 0.5, "float32")))
    assert features.shape == (1, 128) and np.all(np.isfinite(features))


@pytest.mark.parametrize("size", [32, 96, 250])
def test_backbone_refuses_other_sizes(size):
    with pytest.raises(ValueError, match=f"multiple of 64.*image_size={size}"):
        emonet.emonet_backbone(size)


# --- the package's model structure ----------------------------------------------------------


@pytest.mark.parametrize("num_classes", [8, 5])
def test_metadata(num_classes, converted, weights_file):
    info = models.model_metadata(converted[num_classes])
    built = models.build_model("compact_cnn", task="all", weights=None, image_size=32)
    assert set(models.model_metadata(built.prediction_model)) | {"source"} == set(info)
    assert info["backbone"] == "emonet" and info["image_size"] == 256
    assert info["preprocessing"] == "unit" and info["task"] == "all"
    assert info["outputs"] == ["expression", "valence", "arousal"]
    assert info["num_classes"] == num_classes and info["target"] == "published"
    assert info["class_names"] == list(labels.EXPRESSION_NAMES[:num_classes])
    assert info["crowd_heads"] == []
    source = info["source"]
    assert source["family"] == "emonet" and source["licence"] == emonet.LICENCE
    assert source["reference"] == "Toisoul et al. 2021"
    if num_classes == 8:
        assert source["file"] == "emonet_8.pth"
        assert source["sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    else:
        assert source["file"] is None and source["sha256"] is None


def test_published_class_names_are_the_package_vocabulary():
    assert emonet.EMONET_CLASS_NAMES[8] == labels.EXPRESSION_NAMES
    assert set(emonet.EMONET_CLASS_NAMES[5]) <= set(labels.EXPRESSION_NAMES)
    assert set(emonet.EMONET_URLS) == set(emonet.EMONET_CLASS_NAMES)


def test_class_order_is_mapped_by_name(states, outputs, images):
    # a file whose outputs were in another order: the model's columns follow the names
    order = ("fear", "neutral", "surprise", "happy", "sad")
    model = emonet.convert_emonet(states[5], class_names=order)
    canonical = list(labels.EXPRESSION_NAMES[:5])
    assert models.model_metadata(model)["class_names"] == canonical
    # the file's column j is named order[j]; the default names put column j at canonical j
    expected = outputs[5]["expression"][:, [order.index(name) for name in canonical]]
    np.testing.assert_allclose(np.asarray(model(images)["expression"]), expected, atol=1e-6)


@pytest.mark.parametrize(
    "class_names, match",
    [
        (("neutral", "happy", "sad", "surprise", "joy"), "distinct names"),
        (("neutral", "happy", "sad", "surprise", "surprise"), "distinct names"),
        (("neutral", "happy", "sad"), "name the 5 expressions"),
    ],
)
def test_class_names_are_checked(class_names, match, states):
    with pytest.raises(ValueError, match=match):
        emonet.convert_emonet(states[5], class_names=class_names)


def test_preprocessing_is_inside_the_model(converted):
    model = converted[5]
    layer = model.get_layer("preprocessing")
    assert (layer.image_size, layer.mode) == (256, "unit")
    photo = seeded_images(3, 1, 300)[:, :, 40:240]  # 300x200
    direct = model(photo)
    resized = model(np.asarray(affectnet_tf.resize_image(photo, 256)))
    for head in direct:
        np.testing.assert_allclose(np.asarray(direct[head]), np.asarray(resized[head]), atol=1e-6)


def test_embedding_model_and_predictor(converted, images):
    model = converted[5]
    embedding = embedding_model(model)
    assert embedding.output_shape == (None, 128)
    predictions = Predictor(model).predict_crops(images[:, :200, :200])
    assert predictions["expression"].shape == (2, 5)
    assert predictions["valence"].shape == predictions["arousal"].shape == (2,)
    np.testing.assert_allclose(predictions["expression"].sum(axis=1), 1.0, rtol=1e-5)


def test_save_and_reload_in_safe_mode(converted, images, tmp_path):
    model = converted[5]
    path = tmp_path / "emonet_5.keras"
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    assert models.model_metadata(reloaded) == models.model_metadata(model)
    before, after = model(images[:1]), reloaded(images[:1])
    for head in before:
        np.testing.assert_allclose(np.asarray(after[head]), np.asarray(before[head]), atol=1e-6)


@pytest.mark.slow
def test_reloads_in_a_fresh_process_with_only_the_package(converted, images, tmp_path):
    path = tmp_path / "emonet_5.keras"
    converted[5].save(path)
    np.save(tmp_path / "image.npy", images[:1])
    script = (
        "import sys, numpy as np, keras, affectnet_tf\n"
        f"model = keras.models.load_model({str(path)!r}, safe_mode=True)\n"
        "assert 'affectnet_tf.published.emonet' not in sys.modules\n"
        f"out = model(np.load({str(tmp_path / 'image.npy')!r}))\n"
        f"np.save({str(tmp_path / 'valence.npy')!r}, np.asarray(out['valence']))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    expected = np.asarray(converted[5](images[:1])["valence"])
    np.testing.assert_allclose(np.load(tmp_path / "valence.npy"), expected, atol=1e-6)


# --- errors that name the tensor ------------------------------------------------------------


def _mutated(state, drop=(), **replace):
    result = {k: v for k, v in state.items() if k not in drop}
    result.update(replace)
    return result


@pytest.mark.parametrize(
    "change, match",
    [
        (
            {"drop": ["m1.b2_plus_1.conv2.weight"]},
            "lacks the EmoNet tensor 'm1.b2_plus_1.conv2.weight'",
        ),
        ({"drop": ["emo_fc_2.3.weight"]}, "lacks the EmoNet tensor 'emo_fc_2.3.weight'"),
        (
            {"replace": {"emo_net_2.4.bn3.running_var": np.ones(63, np.float32)}},
            r"'emo_net_2.4.bn3.running_var' has shape \(63,\), EmoNet's has \(64,\)",
        ),
        (
            {"replace": {"conv1.weight": np.ones((64, 3, 5, 5), np.float32)}},
            r"'conv1.weight' has shape \(64, 3, 5, 5\)",
        ),
        (
            {"replace": {"emo_fc_2.3.bias": np.ones(7, np.float32)}},
            r"'emo_fc_2.3.bias' has shape \(7,\), EmoNet's has \(10,\)",
        ),
        (
            {"replace": {"attention.weight": np.ones(3, np.float32)}},
            "EmoNet lacks: 'attention.weight'",
        ),
        ({"replace": {"m0.b1_4.bn1.num_batches_tracked": np.zeros((), np.int64)}}, None),
    ],
)
def test_conversion_errors_name_the_tensor(change, match, states):
    state = _mutated(states[8], change.get("drop", ()), **change.get("replace", {}))
    if match is None:  # a BatchNorm's step counter is accepted
        emonet._check_state(state, emonet.emonet_tensor_shapes(8), "the state dict")
        return
    with pytest.raises(ValueError, match=match):
        emonet.convert_emonet(state)


def test_wrong_architecture_is_named(tmp_path):
    resnet = {
        "conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
        "bn1.weight": np.ones(64, np.float32),
        "bn1.bias": np.zeros(64, np.float32),
        "bn1.running_mean": np.zeros(64, np.float32),
        "bn1.running_var": np.ones(64, np.float32),
        "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32),
        "fc.weight": np.zeros((1000, 2048), np.float32),
        "fc.bias": np.zeros(1000, np.float32),
    }
    path = tmp_path / "resnet50.pth"
    write_torch_zip(resnet, path)
    match = (
        "resnet50.pth is not an EmoNet state dict.*first 'conv1.bias'.*"
        "tensors EmoNet lacks, the first 'layer1.0.conv1.weight'"
    )
    with pytest.raises(ValueError, match=match):
        emonet.convert_emonet(path)
    with pytest.raises(ValueError, match=match):
        backbones.build_backbone("emonet", weights=str(path), image_size=64)


def test_unknown_number_of_classes_needs_names(states):
    state = _mutated(
        states[8],
        **{
            "emo_fc_2.3.weight": np.zeros((9, 128), np.float32),
            "emo_fc_2.3.bias": np.zeros(9, np.float32),
        },
    )
    with pytest.raises(ValueError, match=r"'emo_fc_2.3.weight' gives 7 expressions"):
        emonet.convert_emonet(state)


def test_backbone_loader_names_the_missing_tensor(states):
    backbone = emonet.emonet_backbone(64)
    state = _mutated(states[8], drop=["emo_fc_2.1.running_var"])
    with pytest.raises(ValueError, match="lacks the EmoNet tensor 'emo_fc_2.1.running_var'"):
        emonet.load_backbone_weights(backbone, state)


# --- the safe checkpoint reader -------------------------------------------------------------


@pytest.mark.parametrize("file", ["tiny_state_dict.pth", "tiny_state_dict_legacy.pth"])
def test_read_state_dict_of_real_torch_files(file):
    # written by torch.save: the zip format (wrapped in {"epoch", "state_dict"}) and the legacy
    # format, keys with a "module." prefix, float16, bfloat16, int64, a transposed tensor and a
    # view at a storage offset sharing its storage
    state = emonet.read_state_dict(DATA / file)
    expected = FIXTURE["tiny_state_dict"]
    assert list(state) == list(expected)
    for name, entry in expected.items():
        array = state[name]
        assert str(array.dtype) == entry["dtype"], name
        assert list(array.shape) == entry["shape"], name
        np.testing.assert_array_equal(array.reshape(-1), np.asarray(entry["values"], array.dtype))
        assert array.flags.c_contiguous and array.flags.writeable, name  # a copy


def test_read_state_dict_of_a_full_emonet_file(weights_file, states):
    state = emonet.read_state_dict(weights_file)
    assert list(state) == list(states[8])  # prefix removed, order kept
    for name, array in states[8].items():
        np.testing.assert_array_equal(state[name], array, err_msg=name)


# A pickle whose loading runs os.system: GLOBAL "os system", an argument, REDUCE.
def _evil_pickle(marker):
    command = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R."


def _legacy_file(payload):
    """torch.save's legacy layout: magic number, protocol, system info, the object, and the
    (here empty) list of storages."""
    header = b"".join(
        pickle.dumps(value, protocol=2)
        for value in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
    )
    return header + payload + pickle.dumps([], protocol=2)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_read_state_dict_refuses_code(layout, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", _evil_pickle(marker))
            archive.writestr("evil/version", "3\n")
    else:
        path.write_bytes(_legacy_file(_evil_pickle(marker)))
    with pytest.raises(ValueError, match=r"evil.pth is not a plain state dict.*global os\.system"):
        emonet.read_state_dict(path)
    with pytest.raises(ValueError, match=r"global os\.system"):
        emonet.convert_emonet(path)
    assert not marker.exists()


def _zip(path, records):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in records.items():
            archive.writestr(name, data)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=2)), "not a PyTorch checkpoint"),
        (lambda p: p.write_bytes(b"GIF89a...."), "neither zip nor pickle"),
        (lambda p: _zip(p, {"m/constants.pkl": b"", "m/data.pkl": b""}), "TorchScript"),
        (lambda p: _zip(p, {"m/other.txt": b"x"}), "no data.pkl"),
        (lambda p: p.write_bytes(_legacy_file(pickle.dumps([1, 2], protocol=2))), "state dict"),
        (
            lambda p: p.write_bytes(_legacy_file(pickle.dumps({"w": "text"}, protocol=2))),
            "'w' is not a tensor",
        ),
    ],
    ids=["plain-pickle", "not-pickle", "torchscript", "zip-without-pickle", "list", "not-tensor"],
)
def test_read_state_dict_format_errors(make, match, tmp_path):
    path = tmp_path / "weights.pth"
    make(path)
    with pytest.raises(ValueError, match=match):
        emonet.read_state_dict(path)


def test_read_state_dict_refuses_out_of_bounds_views(tmp_path):
    # a tensor whose size and stride read past its storage
    path = tmp_path / "weights.pth"
    write_torch_zip({"w": np.arange(4, dtype=np.float32)}, path, "weights")
    with zipfile.ZipFile(path) as archive:
        records = {n: archive.read(n) for n in archive.namelist()}
    size_and_stride = b"(J\x04\x00\x00\x00t(J\x01\x00\x00\x00t"  # (4,), (1,)
    assert size_and_stride in records["weights/data.pkl"]
    records["weights/data.pkl"] = records["weights/data.pkl"].replace(
        size_and_stride,
        b"(J\x04\x00\x00\x00t(J\x03\x00\x00\x00t",  # stride 3
    )
    _zip(path, records)
    with pytest.raises(ValueError, match="tensor 'w' reads past its storage"):
        emonet.read_state_dict(path)


def test_missing_file():
    with pytest.raises(ValueError, match="does not exist"):
        emonet.read_state_dict(os.path.join("no", "emonet_8.pth"))


# --- untrusted files: sizes checked before anything is allocated ----------------------------


def _text(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _integer(value):
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    size = (value.bit_length() + 8) // 8
    return b"\x8a" + bytes([size]) + value.to_bytes(size, "little", signed=True)


def _integers(values):
    return b"(" + b"".join(_integer(v) for v in values) + b"t"


_ORDERED_DICT = b"ccollections\nOrderedDict\n)R"


def _tensor(numel=4, offset=0, size=(4,), stride=(1,), key="0", view=None, legacy=False):
    """The pickle opcodes of one ``_rebuild_tensor_v2`` call, as torch.save writes them."""
    pid = b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text(key) + _text("cpu")
    pid += _integer(numel)
    if legacy:
        pid += (
            b"N"
            if view is None
            else b"(" + _text(view[0]) + _integer(view[1]) + _integer(view[2]) + b"t"
        )
    size = _integers(size) if isinstance(size, tuple) else size
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + pid
        + b"tQ"
        + _integer(offset)
        + size
        + _integers(stride)
        + b"\x89"
        + _ORDERED_DICT
        + b"tR"
    )


def _state_pickle(*entries):
    """A state dict pickle of ``(name, tensor opcodes)`` entries."""
    body = b"".join(_text(name) + tensor for name, tensor in entries)
    return b"\x80\x02" + _ORDERED_DICT + b"(" + body + b"u."


def _write_pth(path, data_pkl, storages, compression=zipfile.ZIP_STORED):
    """A zip-format ``.pth``: ``storages`` maps each key to its bytes, or to a number of zero
    bytes (written in chunks: the file stays small when deflated)."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("a/data.pkl", data_pkl)
        archive.writestr("a/byteorder", b"little")
        for key, data in storages.items():
            if isinstance(data, bytes):
                archive.writestr(f"a/data/{key}", data)
                continue
            with archive.open(f"a/data/{key}", "w") as entry:
                for start in range(0, data, 1 << 20):
                    entry.write(bytes(min(1 << 20, data - start)))
    return path


def _patch_file_size(path, entry, size):
    """Makes the zip headers (local and central) of ``entry`` declare ``size`` bytes."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(entry)
    struct.pack_into("<I", data, info.header_offset + 22, size)
    central = data.find(b"PK\x01\x02" + data[info.header_offset + 4 : info.header_offset + 6])
    while data[central + 46 : central + 46 + len(entry)] != entry.encode():
        central = data.find(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", data, central + 24, size)
    path.write_bytes(bytes(data))


def _read_with_peak_memory(path):
    """Reads ``path`` (which must fail) and returns the error and the peak memory it took
    (Python's and NumPy's allocations)."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as error:
            emonet.read_state_dict(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return str(error.value), peak


_FOUR = np.arange(4, dtype=np.float32).tobytes()
_LIMIT = 50 << 20  # bytes: the peak memory a refused file of tens of bytes may cost
_BOMB = 64 << 20  # bytes of zeros a bomb inflates to (deflated to 65 KB)


@pytest.mark.parametrize(
    "storage, match",
    [
        (_BOMB, r"tensor 'w' \(zip entry 'a/data/0'\) declares 67108864 bytes; .* has 16"),
        (_FOUR[:8], r"tensor 'w' \(zip entry 'a/data/0'\) declares 8 bytes; .* has 16"),
    ],
    ids=["larger", "smaller"],
)
def test_storage_entry_must_have_the_size_of_its_storage(storage, match, tmp_path):
    path = _write_pth(
        tmp_path / "w.pth", _state_pickle(("w", _tensor())), {"0": storage}, zipfile.ZIP_DEFLATED
    )
    assert path.stat().st_size < 100_000
    message, peak = _read_with_peak_memory(path)
    assert re.search(match, message), message
    assert peak < _LIMIT  # the 64 MiB entry is never inflated


def test_a_zip_header_that_lies_about_the_size_is_not_inflated(tmp_path):
    # the pickle and the header say 16 bytes; the deflated stream holds 64 MiB
    path = _write_pth(
        tmp_path / "w.pth", _state_pickle(("w", _tensor())), {"0": _BOMB}, zipfile.ZIP_DEFLATED
    )
    _patch_file_size(path, "a/data/0", 16)
    message, peak = _read_with_peak_memory(path)
    assert re.search(
        r"w.pth: the data of tensor 'w' \(zip entry 'a/data/0'\) cannot be read", message
    )
    assert "CRC" in message
    assert peak < _LIMIT


def test_a_zip_bomb_is_refused(tmp_path):
    # an honest file: a 64 MiB tensor of zeros, deflated to 65 KB
    numel = _BOMB // 4
    data_pkl = _state_pickle(("w", _tensor(numel=numel, size=(numel,))))
    path = _write_pth(tmp_path / "w.pth", data_pkl, {"0": _BOMB}, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 100_000
    message, peak = _read_with_peak_memory(path)
    assert re.search(
        r"tensor 'w' \(zip entry 'a/data/0'\) inflates \d+ bytes to 67108864.*more than "
        rf"{emonet.MAX_INFLATION} times \(a zip bomb",
        message,
    ), message
    assert peak < _LIMIT


def test_compressed_storages_within_the_allowance_are_read(tmp_path):
    # a re-zipped file: small zero tensors deflate a thousandfold and are still read
    numel = (1 << 20) // 4
    data_pkl = _state_pickle(("w", _tensor(numel=numel, size=(numel,))), ("v", _tensor(key="1")))
    path = _write_pth(
        tmp_path / "w.pth", data_pkl, {"0": 1 << 20, "1": _FOUR}, zipfile.ZIP_DEFLATED
    )
    state = emonet.read_state_dict(path)
    assert state["w"].shape == (numel,) and not state["w"].any()
    np.testing.assert_array_equal(state["v"], np.arange(4, dtype=np.float32))


def test_the_pickle_size_is_capped(tmp_path):
    path = tmp_path / "w.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("a/data.pkl", "w") as entry:
            entry.write(bytes(emonet.MAX_PICKLE_BYTES + 1))
    message, peak = _read_with_peak_memory(path)
    assert f"pickle 'a/data.pkl' declares {emonet.MAX_PICKLE_BYTES + 1} bytes, more than" in message
    assert peak < _LIMIT


@pytest.mark.parametrize(
    "tensor, match",
    [
        (_tensor(offset=-1, size=(2,)), r"tensor 'w' has the storage offset -1"),
        (_tensor(size=(-1,)), r"tensor 'w' has a negative size: \(-1,\)"),
        (_tensor(size=(2,), stride=(-1,)), r"tensor 'w' has a negative stride: \(-1,\)"),
        (_tensor(offset=2, size=(4,)), r"tensor 'w' reads past its storage \(6 > 4 elements\)"),
        (
            _tensor(size=(2**32, 2**32), stride=(0, 0)),  # 2**64 elements: int64 overflows to 0
            r"tensor 'w' has more elements \(18446744073709551616\) than its storage \(4\)",
        ),
        (
            _tensor(size=(2**62,), stride=(0,)),
            r"tensor 'w' has more elements \(4611686018427387904",
        ),
        (_tensor(size=_text("ab")), r"tensor 'w' has a size that is not a tuple of integers"),
        (_tensor(size=(1,) * 65, stride=(1,) * 65), r"tensor 'w' has 65 dimensions"),
        (_tensor(numel=2**62), r"tensor 'w' \(zip entry 'a/data/0'\) declares 16 bytes"),
    ],
    ids=[
        "negative-offset",
        "negative-size",
        "negative-stride",
        "past-the-end",
        "numel-overflow",
        "huge-size",
        "size-not-integers",
        "too-many-dimensions",
        "huge-storage",
    ],
)
def test_malformed_tensors_are_refused_naming_them(tensor, match, tmp_path):
    path = _write_pth(tmp_path / "w.pth", _state_pickle(("w", tensor)), {"0": _FOUR})
    message, peak = _read_with_peak_memory(path)
    assert re.search(rf"^w.pth: .*{match}", message), message
    assert peak < _LIMIT


def test_a_pickle_cannot_change_the_readers_objects(tmp_path):
    # BUILD on the storage type (its dtype replaced by a string: an AttributeError once read)
    storage_type = b"ctorch\nFloatStorage\n"
    evil = _tensor().replace(
        storage_type, storage_type + b"}" + _text("dtype") + _text("x") + b"sb"
    )
    path = _write_pth(tmp_path / "w.pth", _state_pickle(("w", evil)), {"0": _FOUR})
    with pytest.raises(ValueError, match=r"w.pth is not a plain state dict: .*state of a Storage"):
        emonet.read_state_dict(path)
    # BUILD on the rebuild function: its defaults replaced for every later read in the process
    rebuild = b"ctorch._utils\n_rebuild_tensor_v2\n"
    slots = b"(N}" + _text("__defaults__") + b")st"
    evil = _tensor().replace(rebuild, rebuild + slots + b"b")
    _write_pth(tmp_path / "evil.pth", _state_pickle(("w", evil)), {"0": _FOUR})
    with pytest.raises(ValueError, match=r"evil.pth is not a plain state dict: .*state of a"):
        emonet.read_state_dict(tmp_path / "evil.pth")
    good = _write_pth(tmp_path / "good.pth", _state_pickle(("w", _tensor())), {"0": _FOUR})
    np.testing.assert_array_equal(emonet.read_state_dict(good)["w"], np.arange(4))


def test_a_storage_declared_twice_must_agree(tmp_path):
    data_pkl = _state_pickle(("w", _tensor()), ("v", _tensor(numel=2, size=(2,))))
    path = _write_pth(tmp_path / "w.pth", data_pkl, {"0": _FOUR})
    with pytest.raises(ValueError, match=r"storage '0' is declared twice, as 4 .* and as 2"):
        emonet.read_state_dict(path)


def _named_many_times(count, numel):
    """A pickle of ``count`` names of one tensor (the pickle's memo: 4 bytes a name)."""
    first = _text("w0") + _tensor(numel=numel, size=(numel,)) + b"q\x01"
    rest = b"".join(_text(f"w{i}") + b"h\x01" for i in range(1, count))
    return b"\x80\x02" + _ORDERED_DICT + b"(" + first + rest + b"u."


def test_copies_of_a_shared_storage_are_capped(tmp_path):
    # 1,100 names of one 64 KiB tensor: 70 MB of copies from a 66 KB file
    numel = (64 << 10) // 4
    path = _write_pth(tmp_path / "w.pth", _named_many_times(1100, numel), {"0": numel * 4})
    message, peak = _read_with_peak_memory(path)
    assert re.search(
        rf"1100 tensors copy 72089600 bytes .* more than {emonet.MAX_SHARING} times", message
    )
    assert peak < _LIMIT
    # tied weights (a few names of one storage) are read
    path = _write_pth(tmp_path / "tied.pth", _named_many_times(3, 4), {"0": _FOUR})
    state = emonet.read_state_dict(path)
    assert list(state) == ["w0", "w1", "w2"]
    state["w0"][0] = 7
    assert state["w1"][0] == 0  # each a copy


def test_the_number_of_tensors_is_capped(tmp_path):
    path = _write_pth(
        tmp_path / "w.pth", _named_many_times(emonet.MAX_TENSORS + 1, 4), {"0": _FOUR}
    )
    with pytest.raises(ValueError, match=rf"w.pth holds {emonet.MAX_TENSORS + 1} tensors, more"):
        emonet.read_state_dict(path)


def _write_legacy(path, data_pkl, storages):
    """A legacy-format ``.pth``: ``storages`` is ``[(key, declared elements, bytes)]``."""
    with open(path, "wb") as f:
        f.write(_legacy_file(b"")[: -len(pickle.dumps([], protocol=2))])
        f.write(data_pkl + pickle.dumps([key for key, _, _ in storages], protocol=2))
        for _, numel, data in storages:
            f.write(struct.pack("<q", numel) + data)
    return path


@pytest.mark.parametrize(
    "data_pkl, storages, match",
    [
        (
            _state_pickle(("w", _tensor(view=("v", -4, 2), size=(2,), legacy=True))),
            [("0", 4, _FOUR)],
            r"tensor 'w' is in a view of storage '0' at the offset -4",
        ),
        (
            _state_pickle(("w", _tensor(view=("v", 3, 4), size=(1,), legacy=True))),
            [("0", 4, _FOUR)],
            r"tensor 'w' is in a view of storage '0' that reaches past its end",
        ),
        (
            _state_pickle(("w", _tensor(numel=2**40, legacy=True))),
            [("0", 2**40, _FOUR)],
            r"tensor 'w' \(storage '0'\) is truncated: its 1099511627776 elements need "
            r"4398046511104 bytes, the file has 16 left",
        ),
        (
            b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc",  # bytes of 1 TiB, declared
            [],
            r"w.pth is truncated \(a pickle reads past its end\)",
        ),
    ],
    ids=["negative-view-offset", "view-past-the-end", "huge-storage", "huge-pickle-string"],
)
def test_legacy_files_are_checked_the_same_way(data_pkl, storages, match, tmp_path):
    path = _write_legacy(tmp_path / "w.pth", data_pkl, storages)
    message, peak = _read_with_peak_memory(path)
    assert re.search(match, message), message
    assert peak < _LIMIT


def test_legacy_views_within_their_storage_are_read(tmp_path):
    data_pkl = _state_pickle(("w", _tensor(numel=4, view=("v", 1, 2), size=(2,), legacy=True)))
    path = _write_legacy(tmp_path / "w.pth", data_pkl, [("0", 4, _FOUR)])
    np.testing.assert_array_equal(emonet.read_state_dict(path)["w"], [1.0, 2.0])
