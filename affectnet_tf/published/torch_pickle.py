"""The restricted unpickler of PyTorch checkpoints: tensors rebuilt as records, nothing run.

``torch.save`` pickles a state dict whose tensors point at storages by a persistent id. The
unpicklers here rebuild only ``collections.OrderedDict`` and tensors
(``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``, the ``torch.<Type>Storage``
element types): a tensor becomes a :class:`Tensor` record (storage, offset, size, stride) and a
storage a :class:`Storage` record (element type, number of elements), none holding data yet.
Every other global is refused before it is looked up (:class:`Refused`), and so is a ``BUILD``
that would change the reader's own objects. :mod:`affectnet_tf.published.state_dict` checks the
records against the file's sizes, then reads the data.
"""

import collections
import math
import pickle

import numpy as np

__all__ = [
    "MAGIC_NUMBER",
    "LEGACY_PROTOCOL",
    "MAX_DIMENSIONS",
    "Refused",
    "StorageType",
    "Storage",
    "Tensor",
    "SafeUnpickler",
    "RestrictedUnpickler",
    "unpickle",
]

#: The first pickle of ``torch.save``'s legacy format.
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
#: The protocol number of the legacy format (its second pickle).
LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "bf16",  # read as uint16, widened to float32
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}

#: The most dimensions of a tensor.
MAX_DIMENSIONS = 64


class Refused(ValueError):
    """What the safe reader refuses while unpickling (other errors mean a damaged pickle)."""


class StorageType:
    """What a ``torch.<Type>Storage`` global stands for: the element type."""

    __slots__ = ("name", "dtype", "bfloat16")

    def __init__(self, name):
        self.name = name
        code = _STORAGE_DTYPES[name]
        self.dtype = np.dtype("u2" if code == "bf16" else code)
        self.bfloat16 = code == "bf16"


class Storage:
    """One storage of a checkpoint: its elements once read (``array``), or a view of another
    (legacy files: ``numel`` elements of ``base`` from ``offset``)."""

    __slots__ = ("type", "key", "numel", "base", "offset", "array")

    def __init__(self, storage_type, key, numel, base=None, offset=0):
        self.type = storage_type
        self.key = key
        self.numel = numel
        self.base = base
        self.offset = offset
        self.array = None

    @property
    def nbytes(self):
        """The bytes of its ``numel`` elements."""
        return self.numel * self.type.dtype.itemsize

    def root(self, name):
        """``(root storage, offset of this storage in it)``; the views checked, naming the
        tensor ``name``."""
        storage, start = self, 0
        while storage.base is not None:
            base = storage.base
            if not _is_int(storage.offset) or storage.offset < 0:
                raise ValueError(
                    f"tensor {name!r} is in a view of storage {base.key!r} at the offset "
                    f"{storage.offset!r}, which must be a non-negative integer"
                )
            if storage.offset + storage.numel > base.numel:
                raise ValueError(
                    f"tensor {name!r} is in a view of storage {base.key!r} that reaches past "
                    f"its end (elements {storage.offset} to {storage.offset + storage.numel} of "
                    f"{base.numel})"
                )
            start += storage.offset
            storage = base
        return storage, start


def _is_int(value):
    """Whether ``value`` is an ``int`` (a ``bool`` is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value, what, name):
    """``value`` (a size or a stride of tensor ``name``) as a tuple of non-negative integers."""
    if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
        raise ValueError(f"tensor {name!r} has a {what} that is not a tuple of integers: {value!r}")
    if len(value) > MAX_DIMENSIONS:
        raise ValueError(
            f"tensor {name!r} has {len(value)} dimensions, more than the {MAX_DIMENSIONS} read"
        )
    if any(v < 0 for v in value):
        raise ValueError(f"tensor {name!r} has a negative {what}: {tuple(value)}")
    return tuple(value)


class Tensor:
    """A tensor to materialise once its storage is read."""

    __slots__ = ("storage", "offset", "size", "stride", "layout")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.layout = None

    def check(self, name):
        """Checks the tensor against its storage before any data is read; returns
        ``(root storage, elements copied)``."""
        if not isinstance(self.storage, Storage):
            raise ValueError(f"tensor {name!r} has no storage")
        root, start = self.storage.root(name)
        size = _int_tuple(self.size, "size", name)
        stride = _int_tuple(self.stride, "stride", name)
        offset = self.offset
        if not _is_int(offset) or offset < 0:
            raise ValueError(
                f"tensor {name!r} has the storage offset {offset!r}, which must be a "
                "non-negative integer"
            )
        if len(size) != len(stride):
            raise ValueError(f"tensor {name!r} has the size {size} but the stride {stride}")
        numel = self.storage.numel
        count = math.prod(size)  # exact: no overflow
        if count > numel:
            raise ValueError(
                f"tensor {name!r} has more elements ({count}) than its storage ({numel}); "
                "expanded tensors are not read"
            )
        if count:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= numel:
                raise ValueError(
                    f"tensor {name!r} reads past its storage ({last + 1} > {numel} elements)"
                )
        elif offset > numel:
            raise ValueError(
                f"tensor {name!r} starts past its storage (offset {offset} > {numel} elements)"
            )
        self.layout = (start + offset, size, stride)
        return root, count

    def numpy(self, name, root):
        """A C-contiguous, writeable copy (``check`` first, then the root storage read)."""
        if root.array is None:
            raise ValueError(f"the data of tensor {name!r} (storage {root.key!r}) is missing")
        start, size, stride = self.layout
        flat = root.array
        count = math.prod(size)
        view = np.lib.stride_tricks.as_strided(
            flat[start:] if count else flat[:0],
            shape=size,
            strides=[s * flat.itemsize for s in stride],
            writeable=False,
        )
        array = np.array(view, order="C")  # a contiguous copy
        if root.type.bfloat16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


class _Allowed:
    """An allowed global: calls the function it stands for; the pickle cannot change it."""

    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, hooks=None, metadata=None
):
    """``torch._utils._rebuild_tensor_v2``: a :class:`Tensor` record, no data read."""
    return Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    """``torch._utils._rebuild_parameter``: the tensor an ``nn.Parameter`` wraps."""
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _Allowed(collections.OrderedDict),
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter),
}


class SafeUnpickler(pickle._Unpickler):
    """Python's own unpickler, which reads the bytes a string declares before it holds them
    (the C one allocates them first: a 10-byte pickle could ask for a terabyte), without the
    one opcode that allocates first here too (``BYTEARRAY8``, protocol 5, which torch.save
    does not write) and with no global at all."""

    dispatch = dict(pickle._Unpickler.dispatch)
    del dispatch[pickle.BYTEARRAY8[0]]

    def __init__(self, file, where):
        super().__init__(file, encoding="utf-8")
        self.where = where

    def find_class(self, module, name):
        """Refuses every global."""
        raise Refused(
            f"{self.where}: the safe reader refuses the global {module}.{name}. "
            f"Received: global={module}.{name}"
        )


class RestrictedUnpickler(SafeUnpickler):
    """Rebuilds ordered dicts and tensors; every other global is refused."""

    dispatch = dict(SafeUnpickler.dispatch)

    def __init__(self, file, where, storages, legacy):
        super().__init__(file, where)
        self.storages = storages
        self.legacy = legacy

    def load_build(self):
        """``BUILD`` (set an object's state), refused on the reader's own objects."""
        target = self.stack[-2] if len(self.stack) > 1 else None
        if isinstance(target, (_Allowed, StorageType, Storage, Tensor)):
            raise Refused(
                f"{self.where} is not a plain state dict: its pickle changes the state of a "
                f"{type(target).__name__.lstrip('_')}, which a torch.save state dict never does."
            )
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module, name):
        """The allowed global ``module.name`` (a rebuild function, a storage type)."""
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return StorageType(name)
        raise Refused(
            f"{self.where} is not a plain state dict: it asks for the global {module}.{name}, "
            "which the safe reader refuses (it rebuilds only tensors and ordered dicts). "
            f"Received: global={module}.{name}"
        )

    def persistent_load(self, pid):
        """The :class:`Storage` record of a ``("storage", type, key, location, numel[, view])``
        persistent id; any other object is refused."""
        if not isinstance(pid, tuple) or not pid:
            raise Refused(f"{self.where}: unknown persistent id {pid!r}")
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        expected = 6 if self.legacy else 5
        if kind != "storage" or len(pid) != expected or not isinstance(pid[1], StorageType):
            raise Refused(
                f"{self.where} is not a plain state dict: it holds a {kind!r} object "
                "(a pickled module or another object), which the safe reader refuses."
            )
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        storage = self._storage(storage_type, key, numel)
        if self.legacy and pid[5] is not None:  # a view of the root storage
            view = pid[5]
            if not isinstance(view, tuple) or len(view) != 3:
                raise Refused(f"{self.where}: storage {key!r} has an invalid view {view!r}")
            view_key, offset, view_numel = str(view[0]), view[1], view[2]
            if not _is_int(offset):
                raise Refused(
                    f"{self.where}: the view {view_key!r} of storage {key!r} has an invalid "
                    f"offset {offset!r}"
                )
            storage = self._storage(storage_type, view_key, view_numel, storage, offset)
        return storage

    def _storage(self, storage_type, key, numel, base=None, offset=0):
        """The storage ``key``, made on its first mention; a second one must agree."""
        if not _is_int(numel) or numel < 0:
            raise Refused(f"{self.where}: storage {key!r} has an invalid size {numel!r}")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = Storage(storage_type, key, numel, base, offset)
        elif (storage.type.name, storage.numel) != (storage_type.name, numel) or (
            base is not None and (storage.base, storage.offset) != (base, offset)
        ):
            raise Refused(
                f"{self.where}: storage {key!r} is declared twice, as {storage.numel} "
                f"{storage.type.name} elements and as {numel} {storage_type.name} elements"
            )
        return storage


def unpickle(unpickler, where):
    """What ``unpickler`` loads; a :class:`Refused` global or a damaged pickle (``MemoryError``
    included) as a ``ValueError`` naming the file ``where``."""
    try:
        return unpickler.load()
    except Refused as error:
        raise ValueError(str(error)) from None
    except Exception as error:  # a damaged pickle, MemoryError included
        raise ValueError(
            f"{where} is not a readable PyTorch checkpoint ({type(error).__name__}: {error})"
        ) from None
