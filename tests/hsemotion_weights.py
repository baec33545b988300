"""Deterministic random weights for HSEmotion's ONNX graphs, without PyTorch.

The HSEmotion parity fixtures (``tests/affectnet_tf/data/hsemotion/``, made by
``tests/make_hsemotion_fixture.py``) hold each exported graph without its weights: a skeleton
whose weight initializers keep their names, shapes and types but no values. This module puts the
values back, the same ones in the fixture script (in an environment with PyTorch) and in the
tests (in the package's, without it). Every weight initializer, in the graph's initializer
order, is drawn from one ``numpy.random.default_rng(seed)`` by its role, which its consumer node
tells (input 1 or 2 of a ``Conv``, ``Gemm`` or ``MatMul``, inputs 1 to 4 of a
``BatchNormalization``):

* weights and biases: standard normal draws times the tensor's standard deviation, given by
  name (the fixture stores them: the weights' are calibrated so that every layer's output has
  unit spread, see the fixture script), by default ``1 / sqrt(fan_in)`` for weights and
  :data:`BIAS_STD` for biases, batch-norm shifts and means;
* batch-norm scales and variances: uniform in :data:`BN_RANGE`.

It also holds HSEmotion's preprocessing (``hsemotion_onnx.facial_emotions``, without its
resize): ``x / 255``, ImageNet mean and standard deviation in float64, channels first,
``float32``.
"""

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = [
    "BIAS_STD",
    "BN_RANGE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "weight_roles",
    "default_stds",
    "fill_initializers",
    "strip_initializers",
    "stripped_initializers",
    "random_images",
    "reference_preprocess",
    "write_seeded_file",
]

#: Standard deviation of the biases, batch-norm shifts and means (normal draws).
BIAS_STD = {"conv_bias": 0.2, "linear_bias": 0.1, "bn_bias": 0.1, "bn_mean": 0.1}
#: Range of the batch-norm scales and variances (uniform draws).
BN_RANGE = {"bn_scale": (0.5, 1.5), "bn_var": (0.5, 1.5)}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ROLES = {
    "Conv": {1: "conv_weight", 2: "conv_bias"},
    "Gemm": {1: "linear_weight", 2: "linear_bias"},
    "MatMul": {1: "linear_weight"},
    "BatchNormalization": {1: "bn_scale", 2: "bn_bias", 3: "bn_mean", 4: "bn_var"},
}


def weight_roles(model):
    """``{initializer name: (role, fan_in)}`` of the weight initializers of an ONNX model."""
    initializers = {init.name: init for init in model.graph.initializer}
    roles = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            role = _ROLES.get(node.op_type, {}).get(index)
            if role is None or name not in initializers or name in roles:
                continue
            dims = list(initializers[name].dims)
            fan_in = 1
            if role == "conv_weight":
                fan_in = int(np.prod(dims[1:]))
            elif role == "linear_weight":
                trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                fan_in = dims[1] if (node.op_type == "Gemm" and trans_b) else dims[0]
            roles[name] = (role, fan_in)
    return roles


def default_stds(model):
    """``{name: std}`` of the normal-drawn initializers: ``1 / sqrt(fan_in)`` for weights,
    :data:`BIAS_STD` for the others."""
    stds = {}
    for name, (role, fan_in) in weight_roles(model).items():
        if role.endswith("_weight"):
            stds[name] = float(1.0 / np.sqrt(fan_in))
        elif role in BIAS_STD:
            stds[name] = BIAS_STD[role]
    return stds


def fill_initializers(model, seed, stds=None):
    """Sets every weight initializer of ``model`` (in place) from ``default_rng(seed)``.

    Args:
        model: an ``onnx.ModelProto`` (a skeleton, or a graph whose weights are replaced).
        seed: the seed of the weights.
        stds: ``{initializer name: standard deviation}`` overriding :func:`default_stds`.

    Returns:
        ``model``.
    """
    roles = weight_roles(model)
    spreads = default_stds(model)
    spreads.update(stds or {})
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        if init.name not in roles:
            continue
        role, _ = roles[init.name]
        shape = tuple(int(d) for d in init.dims)
        if role in BN_RANGE:
            values = rng.uniform(*BN_RANGE[role], size=shape)
        else:
            values = rng.standard_normal(shape) * spreads[init.name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        init.CopyFrom(numpy_helper.from_array(values.astype(dtype), init.name))
    return model


def strip_initializers(model):
    """Removes the values of the weight initializers of ``model`` (in place), keeping their
    names, shapes and types; returns their names, in order."""
    stripped = []
    roles = weight_roles(model)
    for init in model.graph.initializer:
        if init.name in roles:
            for field in ("raw_data", "float_data", "double_data", "int32_data", "int64_data"):
                init.ClearField(field)
            stripped.append(init.name)
    return stripped


def stripped_initializers(model):
    """The names of the initializers that hold no values (a skeleton's weights)."""
    empty = []
    for init in model.graph.initializer:
        count = int(np.prod(init.dims)) if len(init.dims) else 1
        if count and not (init.raw_data or init.float_data or init.double_data):
            empty.append(init.name)
    return empty


def random_images(seed, shape):
    """Seeded ``uint8`` RGB images ``(n, height, width, 3)``: coarse blocks of colour plus
    pixel noise, so that they have large structures as faces do."""
    rng = np.random.default_rng(seed)
    n, height, width, _ = shape
    coarse = rng.integers(0, 256, size=(n, 8, 8, 3)).astype(np.float64)
    rows = np.minimum(np.arange(height) * 8 // height, 7)
    cols = np.minimum(np.arange(width) * 8 // width, 7)
    blocks = coarse[:, rows][:, :, cols]
    noisy = blocks + rng.normal(0.0, 20.0, size=blocks.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def reference_preprocess(images):
    """HSEmotion's preprocessing of images already at the model's size: ``x / 255``, then
    ``(x - mean) / std`` per channel in float64, channels first, ``float32``."""
    x = np.asarray(images, np.float64) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def write_seeded_file(path, key="b0_8_va_mtl"):
    """Writes the fixture's graph ``key`` with its seeded weights as an ONNX file at ``path``:
    a file shaped like a released one (e.g. ``enet_b0_8_va_mtl.onnx``) for the tests of the
    front doors (convert, fine-tuning, video)."""
    import json
    from pathlib import Path

    data = Path(__file__).parent / "affectnet_tf" / "data" / "hsemotion"
    variant = json.loads((data / "hsemotion_fixture.json").read_text())["variants"][key]
    model = onnx.load(str(data / variant["skeleton"]))
    model = fill_initializers(model, variant["weights_seed"], variant["weights_std"])
    onnx.save(model, str(path))
    return path
