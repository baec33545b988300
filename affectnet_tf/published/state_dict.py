"""A torch-free, bomb-safe reader of PyTorch state dict files (``.pth``).

:func:`read_state_dict` reads ``torch.save``'s zip format (PyTorch 1.6 and later) and its
earlier "legacy" format into NumPy arrays, without PyTorch and without running any code from
the file: the pickle inside is read by the restricted unpickler of
:mod:`affectnet_tf.published.torch_pickle`, which rebuilds tensors as records and refuses every
other global. The file may come from anywhere: every size it declares is checked before
anything of that size is allocated or inflated, against the limits :data:`MAX_PICKLE_BYTES`,
:data:`MAX_TENSORS`, :data:`MAX_INFLATION` (with :data:`INFLATION_ALLOWANCE`),
:data:`MAX_SHARING` (with :data:`SHARING_ALLOWANCE`) and
:data:`~affectnet_tf.published.torch_pickle.MAX_DIMENSIONS`.
"""

import collections
import io
import os
import struct
import tarfile
import zipfile
import zlib

import numpy as np

from affectnet_tf.published.torch_pickle import (
    LEGACY_PROTOCOL,
    MAGIC_NUMBER,
    MAX_DIMENSIONS,
    Refused,
    RestrictedUnpickler,
    SafeUnpickler,
    Tensor,
    unpickle,
)

__all__ = [
    "read_state_dict",
    "unwrap_state_dict",
    "MAX_PICKLE_BYTES",
    "MAX_TENSORS",
    "MAX_INFLATION",
    "INFLATION_ALLOWANCE",
    "MAX_SHARING",
    "SHARING_ALLOWANCE",
    "MAX_DIMENSIONS",
]

#: The dict keys under which a checkpoint may wrap its state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")

# Limits on what an untrusted file may make the reader hold in memory. Every size the file
# declares is checked against them, and against the sizes the pickle gives, before anything of
# that size is allocated or inflated.

#: The largest pickle read (``data.pkl``, or the legacy format's pickles in all): EmoNet's is
#: about 120 KB, 170 bytes a tensor. Unpickling holds up to some 70 times the pickle's size.
MAX_PICKLE_BYTES = 16 << 20
#: The most tensors in a state dict (EmoNet's have 682).
MAX_TENSORS = 100_000
#: The compressed storages of a zip file (``torch.save`` writes them uncompressed) may inflate
#: to this many times their compressed size in all, beyond :data:`INFLATION_ALLOWANCE`.
MAX_INFLATION = 20
#: What a file's compressed storages may inflate to whatever their ratio (zero-filled tensors
#: deflate a thousandfold).
INFLATION_ALLOWANCE = 16 << 20
#: The tensors may copy their storages' bytes this many times in all (several tensors may view
#: one storage: tied weights, views), beyond :data:`SHARING_ALLOWANCE`.
MAX_SHARING = 4
#: What the tensors may copy from shared storages whatever the number of copies.
SHARING_ALLOWANCE = 64 << 20


def read_state_dict(path):
    """Reads a PyTorch state dict file into NumPy arrays, without PyTorch and without running
    code from the file.

    Reads ``torch.save``'s zip format (PyTorch 1.6 and later) and its earlier "legacy" format.
    The pickle inside may only rebuild tensors (``torch._utils._rebuild_tensor_v2``, storages
    ``torch.FloatStorage`` ...) and ``collections.OrderedDict``; any other global (a class, a
    function such as ``os.system``) is refused before it is looked up. A dict wrapping the state
    dict (``{"state_dict": ...}``, ``"model_state_dict"``, ``"model"``, ``"net"``) is unwrapped,
    and a ``module.`` prefix (``nn.DataParallel``) removed.

    The file may come from anywhere: before any data is read, every tensor's size, stride and
    offset is checked against its storage, and every storage's size against the bytes the file
    holds for it (a zip entry must declare exactly the storage's bytes, and is inflated with a
    cap at that size). A pickle larger than :data:`MAX_PICKLE_BYTES`, more than
    :data:`MAX_TENSORS` tensors, compressed storages that inflate more than
    :data:`MAX_INFLATION` times (a zip bomb) and tensors that copy their storages more than
    :data:`MAX_SHARING` times are refused, so that a small file cannot fill the memory.

    Args:
        path: the ``.pth`` file.

    Returns:
        ``{name: numpy array}`` in the file's order; ``bfloat16`` tensors widened to float32.

    Raises:
        ValueError: a file that is not a PyTorch state dict, a TorchScript archive, a refused
            global (named), or damaged or oversized data (naming the tensor).

    Example:

    ```python
    state = read_state_dict("emonet_8.pth")
    state["conv1.weight"].shape  # (64, 3, 7, 7)
    ```
    """
    path = os.fspath(path)
    where = os.path.basename(path)
    if not os.path.isfile(path):
        raise ValueError(f"The weights file {path} does not exist.")
    if zipfile.is_zipfile(path):
        state, roots = _read_zip(path, where)
    else:
        state, roots = _read_legacy(path, where)
    arrays = collections.OrderedDict()
    for name, tensor in state.items():
        try:
            arrays[name] = tensor.numpy(name, roots[name])
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        except Exception as error:  # MemoryError and the like: not expected after the checks
            raise ValueError(
                f"{where}: tensor {name!r} cannot be read ({type(error).__name__}: {error})"
            ) from None
    return arrays


def _checked_state(result, where):
    """``(state, {name: root storage}, {root storage: first tensor name})``: the tensors of
    what the pickle gave, each checked against its storage, none read yet."""
    state = unwrap_state_dict(result, where)
    if len(state) > MAX_TENSORS:
        raise ValueError(
            f"{where} holds {len(state)} tensors, more than the {MAX_TENSORS} the reader reads."
        )
    roots, owners = {}, {}
    copied = 0
    for name, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(
                f"{where}: the entry {name!r} is not a tensor. Received: {type(value).__name__}"
            )
        try:
            root, count = value.check(name)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        roots[name] = root
        owners.setdefault(root, name)
        copied += count * root.type.dtype.itemsize
    stored = sum(root.numel * root.type.dtype.itemsize for root in owners)
    if copied > SHARING_ALLOWANCE + MAX_SHARING * stored:
        raise ValueError(
            f"{where}: its {len(state)} tensors copy {copied} bytes out of storages of "
            f"{stored} bytes, more than {MAX_SHARING} times (the same data named many times, "
            "which would fill the memory); the safe reader refuses it."
        )
    return state, roots, owners


def _read_entry(archive, info, what):
    """The bytes of a zip entry, never more than it declares (``info.file_size``)."""
    try:
        with archive.open(info) as f:
            data = f.read(info.file_size + 1)  # inflates at most this much
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        RuntimeError,
        NotImplementedError,
    ) as error:
        raise ValueError(f"{what} cannot be read ({type(error).__name__}: {error})") from None
    if len(data) != info.file_size:
        raise ValueError(
            f"{what} holds {'more' if len(data) > info.file_size else len(data)} bytes, "
            f"not the {info.file_size} it declares"
        )
    return data


def _read_zip(path, where):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ValueError(f"{where} is a damaged zip file ({error}).") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        names = list(infos)
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if any(n.endswith("constants.pkl") for n in names):
            raise ValueError(
                f"{where} is a TorchScript archive (torch.jit.save), not a state dict: save the "
                "model's state_dict() with torch.save instead."
            )
        if len(pickles) != 1:
            raise ValueError(f"{where} is a zip file but not a PyTorch checkpoint (no data.pkl).")
        prefix = pickles[0][: -len("data.pkl")]
        order = "<"
        byteorder = infos.get(f"{prefix}byteorder")
        if byteorder is not None:
            if byteorder.file_size > 16:
                raise ValueError(f"{where}: its entry {byteorder.filename!r} is not a byte order")
            if (
                _read_entry(archive, byteorder, f"{where}: the entry {byteorder.filename!r}")
                == b"big"
            ):
                order = ">"
        info = infos[pickles[0]]
        if info.file_size > MAX_PICKLE_BYTES:
            raise ValueError(
                f"{where}: its pickle {info.filename!r} declares {info.file_size} bytes, more "
                f"than the {MAX_PICKLE_BYTES} the safe reader reads."
            )
        data = _read_entry(archive, info, f"{where}: its pickle {info.filename!r}")
        storages = {}
        unpickler = RestrictedUnpickler(io.BytesIO(data), where, storages, legacy=False)
        result = unpickle(unpickler, where)
        del data, unpickler
        state, roots, owners = _checked_state(result, where)
        records = {}
        for storage, name in owners.items():
            record = f"{prefix}data/{storage.key}"
            info = infos.get(record)
            what = f"{where}: the data of tensor {name!r} (zip entry {record!r})"
            if info is None:
                raise ValueError(f"{what} is missing")
            if info.file_size != storage.nbytes:
                raise ValueError(
                    f"{what} declares {info.file_size} bytes; its storage of {storage.numel} "
                    f"{storage.type.name} elements has {storage.nbytes}. "
                    f"Received: file_size={info.file_size}"
                )
            records[storage] = (info, what)
        _check_inflation(records.values(), where)
        for storage, (info, what) in records.items():
            storage.array = _elements(_read_entry(archive, info, what), storage, order)
    return state, roots


def _check_inflation(records, where):
    """Refuses compressed entries that inflate more than :data:`MAX_INFLATION` times."""
    compressed = [
        (info, what) for info, what in records if info.compress_type != zipfile.ZIP_STORED
    ]
    inflated = sum(info.file_size for info, _ in compressed)
    packed = sum(info.compress_size for info, _ in compressed)
    if inflated > INFLATION_ALLOWANCE + MAX_INFLATION * packed:
        info, what = max(compressed, key=lambda r: r[0].file_size / max(r[0].compress_size, 1))
        raise ValueError(
            f"{what} inflates {info.compress_size} bytes to {info.file_size}, and the "
            f"compressed storages {packed} bytes to {inflated}: more than {MAX_INFLATION} times "
            "(a zip bomb? torch.save stores its tensors uncompressed); the safe reader refuses it."
        )


def _elements(data, storage, order):
    """The storage's elements, on the bytes read (copied only to swap the byte order)."""
    dtype = storage.type.dtype.newbyteorder(order)
    array = np.frombuffer(data, dtype, storage.numel)
    return array if dtype.isnative else array.astype(storage.type.dtype)


class _LimitedReader:
    """The reads of the legacy format's pickles: at most :data:`MAX_PICKLE_BYTES` in all, and
    never past the end of the file (a pickle that declares a longer string is refused)."""

    def __init__(self, file, size, where):
        self.file = file
        self.where = where
        self.capped = size - file.tell() > MAX_PICKLE_BYTES
        self.left = min(size - file.tell(), MAX_PICKLE_BYTES)

    def _take(self, n):
        if n > self.left:
            if self.capped:
                raise Refused(
                    f"{self.where}: its pickles are larger than the {MAX_PICKLE_BYTES} bytes "
                    "the safe reader reads."
                )
            raise Refused(f"{self.where} is truncated (a pickle reads past its end).")
        self.left -= n

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else n
        self._take(n)
        return self.file.read(n)

    def readline(self, limit=-1):
        line = self.file.readline(self.left + 1)
        self._take(len(line))
        return line


def _read_legacy(path, where):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(2)
        if head[:1] != b"\x80":
            if tarfile.is_tarfile(path):
                raise ValueError(
                    f"{where} is in PyTorch's tar format (before version 0.1.10), which the safe "
                    "reader does not read: load it with that PyTorch and torch.save its "
                    "state_dict() again."
                )
            raise ValueError(f"{where} is not a PyTorch checkpoint (neither zip nor pickle).")
        f.seek(0)
        reader = _LimitedReader(f, size, where)
        magic = unpickle(SafeUnpickler(reader, where), where)
        if magic != MAGIC_NUMBER:
            raise ValueError(
                f"{where} is a pickle but not a PyTorch checkpoint (no torch.save magic number); "
                "the safe reader reads only torch.save's formats."
            )
        protocol = unpickle(SafeUnpickler(reader, where), where)
        if protocol != LEGACY_PROTOCOL:
            raise ValueError(f"{where}: unknown legacy checkpoint protocol {protocol!r}")
        sys_info = unpickle(SafeUnpickler(reader, where), where)
        little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
        storages = {}
        result = unpickle(RestrictedUnpickler(reader, where, storages, legacy=True), where)
        keys = unpickle(SafeUnpickler(reader, where), where)
        if not isinstance(keys, (list, tuple)):
            raise ValueError(f"{where}: its list of storages is a {type(keys).__name__}")
        state, roots, owners = _checked_state(result, where)
        order = "<" if little else ">"
        seen = set()
        for key in keys:
            storage = storages.get(str(key))
            if storage is None or storage.base is not None or storage.key in seen:
                raise ValueError(f"{where}: unknown storage {key!r} in the data section")
            seen.add(storage.key)
            name = owners.get(storage)
            what = f"{where}: the data of " + (
                f"tensor {name!r} (storage {storage.key!r})" if name else f"storage {storage.key!r}"
            )
            header = f.read(8)
            if len(header) != 8:
                raise ValueError(f"{what} is truncated")
            (numel,) = struct.unpack(f"{order}q", header)
            if numel != storage.numel:
                raise ValueError(f"{what} holds {numel} elements, not {storage.numel}")
            nbytes = storage.nbytes
            left = size - f.tell()
            if nbytes > left:
                raise ValueError(
                    f"{what} is truncated: its {numel} elements need {nbytes} bytes, the file "
                    f"has {left} left"
                )
            if name is None:  # a storage no tensor of the state dict reads
                f.seek(nbytes, os.SEEK_CUR)
                continue
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ValueError(f"{what} is truncated")
            storage.array = _elements(data, storage, order)
    return state, roots


def unwrap_state_dict(result, where):
    """The state dict inside what a checkpoint holds: unwrapped from ``{"state_dict": ...}``
    (``"model_state_dict"``, ``"model"``, ``"net"``), the ``module.`` prefix of
    ``nn.DataParallel`` removed from its keys.

    Args:
        result: what the file's pickle gave (or a mapping given by the user).
        where: what it is, for messages (the file name).

    Raises:
        ValueError: not a dict, or an empty one.
    """
    return _strip_prefix(_unwrap(result, where))


def _unwrap(result, where):
    """The state dict inside what a file holds (``{"state_dict": ...}`` and the like)."""
    if not isinstance(result, dict):
        raise ValueError(f"{where} does not hold a state dict. Received: {type(result).__name__}")
    if result and all(isinstance(v, (Tensor, np.ndarray)) for v in result.values()):
        return result
    for key in _WRAPPER_KEYS:
        if isinstance(result.get(key), dict):
            return result[key]
    if not result:
        raise ValueError(f"{where} holds an empty dict, not a state dict.")
    return result  # the non-tensor entry is named later


def _strip_prefix(state):
    """Removes the ``module.`` prefix of ``nn.DataParallel`` models."""
    prefix = "module."
    return collections.OrderedDict(
        (k[len(prefix) :] if isinstance(k, str) and k.startswith(prefix) else k, v)
        for k, v in state.items()
    )
