"""Deterministic EmoNet weights from a seed, shared by the fixture script and the tests.

Torch-free: ``tests/make_emonet_fixture.py`` (which has PyTorch) loads these weights into the
reference EmoNet and records its outputs; ``tests/affectnet_tf/test_emonet.py`` (which has not)
rebuilds the same weights from the same list of tensors and seed and converts them.

Each tensor is drawn, in the state dict's order, from one ``numpy.random.default_rng(seed)``
in float64 and stored as float32:

* convolution and linear weights: ``N(0, 1) * WEIGHT_GAIN / sqrt(fan_in)`` (fan-in
  ``in * kh * kw``). BatchNorm in eval mode with random statistics does not normalise, and the
  residual sums, the hourglasses and the heatmap attention (a product) compound: with a gain
  of 1 the outputs reach 1e5, with 0.5 they hardly depend on the input; with 0.6 the
  activations stay of order 1 and the outputs of two images differ by 0.02 to 0.2;
* their biases: ``N(0, 0.1)``;
* BatchNorm ``weight`` ``U(0.8, 1.2)``, ``bias`` ``N(0, 0.1)``, ``running_mean``
  ``N(0, 0.1)``, ``running_var`` ``U(0.5, 1.5)``; ``num_batches_tracked`` 0 (int64, no draw).

A BatchNorm's tensors are told from a convolution's by the ``running_mean`` beside them.

:func:`write_torch_zip` writes such a state dict as a ``torch.save`` zip file without PyTorch
(the opcodes PyTorch writes), so the tests can convert a full-size ``.pth`` file.
"""

import io
import struct
import zipfile

import numpy as np

__all__ = ["WEIGHT_GAIN", "seeded_state_dict", "seeded_images", "write_torch_zip"]

WEIGHT_GAIN = 0.6


def seeded_state_dict(tensors, seed):
    """``{name: array}`` for ``tensors``, ``[(name, shape), ...]`` in the state dict's order."""
    rng = np.random.default_rng(seed)
    names = {name for name, _ in tensors}
    state = {}
    for name, shape in tensors:
        shape = tuple(int(n) for n in shape)
        module, _, kind = name.rpartition(".")
        batch_norm = f"{module}.running_mean" in names
        if kind == "num_batches_tracked":
            state[name] = np.zeros(shape, np.int64)
            continue
        if kind == "running_mean":
            value = rng.normal(0.0, 0.1, shape)
        elif kind == "running_var":
            value = rng.uniform(0.5, 1.5, shape)
        elif batch_norm and kind == "weight":
            value = rng.uniform(0.8, 1.2, shape)
        elif kind == "bias":
            value = rng.normal(0.0, 0.1, shape)
        elif kind == "weight" and len(shape) >= 2:
            value = rng.normal(0.0, 1.0, shape) * WEIGHT_GAIN / np.sqrt(np.prod(shape[1:]))
        else:
            raise ValueError(f"No rule for the tensor {name!r} of shape {shape}")
        state[name] = value.astype(np.float32)
    return state


def seeded_images(seed, count, size=256):
    """``count`` RGB ``uint8`` images ``(count, size, size, 3)``: an 8x8 grid of random colours
    (so that the images differ in content, not only in noise) plus uniform noise in 0..63."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 193, (count, 8, 8, 3))
    grid = np.repeat(np.repeat(cells, -(-size // 8), axis=1), -(-size // 8), axis=2)
    noise = rng.integers(0, 64, (count, size, size, 3))
    return (grid[:, :size, :size] + noise).astype(np.uint8)


_STORAGES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("int64"): "LongStorage",
}


def _unicode(text):
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value):
    return b"J" + struct.pack("<i", value)


def _tuple(values):
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def write_torch_zip(state, path, archive="archive"):
    """Writes ``{name: array}`` as ``torch.save`` would (zip format, pickle protocol 2)."""
    ordered_dict = b"ccollections\nOrderedDict\n)R"
    pickle = bytearray(b"\x80\x02" + ordered_dict + b"(")
    records = {}
    for index, (name, array) in enumerate(state.items()):
        array = np.array(array, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        key = str(index)
        records[key] = array.astype(array.dtype.newbyteorder("<")).tobytes()
        strides = [s // array.itemsize for s in array.strides] if array.ndim else []
        storage = (
            b"("
            + _unicode("storage")
            + f"ctorch\n{_STORAGES[array.dtype]}\n".encode()
            + _unicode(key)
            + _unicode("cpu")
            + _int(array.size)
            + b"tQ"
        )
        pickle += _unicode(name) + b"ctorch._utils\n_rebuild_tensor_v2\n("
        pickle += storage + _int(0) + _tuple(array.shape) + _tuple(strides)
        pickle += b"\x89" + ordered_dict + b"tR"
    pickle += b"u."
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", bytes(pickle))
        z.writestr(f"{archive}/byteorder", b"little")
        for key, data in records.items():
            z.writestr(f"{archive}/data/{key}", data)
        z.writestr(f"{archive}/version", b"3\n")
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
