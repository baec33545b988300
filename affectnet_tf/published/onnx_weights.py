"""Reading the weights of an untrusted ONNX file: parsed only, every tensor checked.

:func:`load_onnx` parses a file with ``onnx`` (no external data, no operator run);
:class:`OnnxGraph` indexes its nodes (who produces and who consumes each tensor) and reads a
weight by name (:meth:`OnnxGraph.array`) only if its element type is a float, its dims are
non-negative and it holds exactly the values they need, following ``Identity`` aliases at most
:data:`MAX_ALIAS_CHAIN` steps and refusing a cycle; :meth:`OnnxGraph.attributes` reads a node's
attributes, each of the type it must have. Every error names the tensor and node.
"""

import math
import os

import numpy as np

__all__ = ["MAX_ALIAS_CHAIN", "OnnxGraph", "load_onnx"]

#: The longest chain of ``Identity`` nodes followed to a tensor's value (``torch.onnx.export``
#: writes chains of one); a longer one, or a cycle, is refused.
MAX_ALIAS_CHAIN = 64
#: ONNX element types a weight may have: ``{TensorProto type: (name, bytes per element, field
#: holding the values when they are not raw bytes)}``.
_FLOAT_TYPES = {
    1: ("FLOAT", 4, "float_data"),
    10: ("FLOAT16", 2, "int32_data"),
    11: ("DOUBLE", 8, "double_data"),
    16: ("BFLOAT16", 2, "int32_data"),
}
#: The attributes read, and the ``AttributeProto`` type each must have (1 FLOAT, 2 INT,
#: 3 STRING, 4 TENSOR, 7 INTS).
_ATTRIBUTE_TYPES = {
    "alpha": 1,
    "beta": 1,
    "epsilon": 1,
    "transA": 2,
    "transB": 2,
    "group": 2,
    "auto_pad": 3,
    "value": 4,
    "strides": 7,
    "dilations": 7,
    "pads": 7,
}


class OnnxGraph:
    """The tensors and the node links of an ONNX graph.

    Args:
        model: the ``onnx.ModelProto`` (:func:`load_onnx`).
        where: the file, for messages.

    Attributes:
        nodes: the graph's nodes in order.
        initializers: ``{name: TensorProto}``.
        constants: ``{output: TensorProto or None}`` of the ``Constant`` nodes.
        aliases: ``{output: input}`` of the ``Identity`` nodes.
        producers: ``{tensor: node}`` that writes it.
        consumers: ``{tensor: [nodes]}`` that read it.
        inputs: the graph inputs that are not initializers (the images).
    """

    def __init__(self, model, where):
        self.where = where
        graph = model.graph
        self.nodes = list(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.constants = {}
        self.aliases = {}
        self.producers = {}
        self.consumers = {}
        for node in self.nodes:
            for name in node.output:
                self.producers[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            if node.op_type in ("Constant", "Identity"):
                inputs = 0 if node.op_type == "Constant" else 1
                if len(node.input) != inputs or len(node.output) != 1:
                    raise ValueError(
                        f"{where}: the {node.op_type} node {node.name!r} must have "
                        f"{('no input', 'one input')[inputs]} and one output. Received: "
                        f"inputs={list(node.input)}, outputs={list(node.output)}"
                    )
            if node.op_type == "Constant":
                value = self.attributes(node, node.output[0]).get("value")
                self.constants[node.output[0]] = value  # None: a constant of another kind
            elif node.op_type == "Identity":
                self.aliases[node.output[0]] = node.input[0]
        self.inputs = [i for i in graph.input if i.name not in self.initializers]

    def _source(self, name, what):
        """The tensor that ``name`` is an alias of (through ``Identity`` nodes)."""
        chain = [name]
        while chain[-1] in self.aliases:
            source = self.aliases[chain[-1]]
            if source in chain:
                cycle = " -> ".join(chain[chain.index(source) :] + [source])
                raise ValueError(
                    f"{self.where}: {what} is an alias of itself (a cycle of Identity nodes: "
                    f"{cycle}). Received: tensor={name!r}"
                )
            chain.append(source)
            if len(chain) > MAX_ALIAS_CHAIN:
                raise ValueError(
                    f"{self.where}: {what} is reached through more than {MAX_ALIAS_CHAIN} "
                    f"Identity nodes. Received: tensor={name!r}"
                )
        return chain[-1]

    def array(self, name, node, role):
        """The float32 value of a constant tensor, or a ValueError naming it."""
        from onnx import TensorProto, numpy_helper

        what = f"the tensor {name!r} ({role} of {node.op_type} node {node.name!r})"
        source = self._source(name, what)
        tensor = self.initializers.get(source, self.constants.get(source))
        if tensor is None:
            detail = (
                "a Constant node without a tensor value"
                if source in self.constants
                else "neither an initializer nor a constant"
            )
            raise ValueError(
                f"{self.where}: {what} is missing from the file ({detail}). "
                f"Received: tensor={name!r}"
            )
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            raise ValueError(
                f"{self.where}: {what} is stored in an external file, which is not read; "
                f"HSEmotion's files hold every tensor. Received: tensor={name!r}"
            )
        _check_tensor(tensor, f"{self.where}: {what}", name)
        try:
            value = numpy_helper.to_array(tensor)
            return np.asarray(value, np.float32)
        except Exception as error:  # not expected after the checks
            raise ValueError(
                f"{self.where}: {what} cannot be read ({error}). Received: tensor={name!r}"
            ) from None

    def attributes(self, node, tensor):
        """``{name: value}`` of a node's attributes; one the reader reads must be of its
        type (a ValueError names the node and ``tensor``)."""
        from onnx import AttributeProto, helper

        values = {}
        for attribute in node.attribute:
            expected = _ATTRIBUTE_TYPES.get(attribute.name)
            if expected is not None and attribute.type != expected:
                raise ValueError(
                    f"{self.where}: the attribute {attribute.name!r} of {node.op_type} node "
                    f"{node.name!r} (tensor {tensor!r}) must be of type "
                    f"{AttributeProto.AttributeType.Name(expected)}. Received: "
                    f"type={_type_name(AttributeProto.AttributeType, attribute.type)}"
                )
            if expected is not None:
                values[attribute.name] = helper.get_attribute_value(attribute)
        return values


def _type_name(enum, value):
    """The name of ``value`` in an ONNX enum, or the number when it has none."""
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def _check_tensor(tensor, what, name):
    """Checks a tensor's element type, shape and values against each other, before NumPy
    holds it: a float type, non-negative dims, exactly the values the dims need."""
    from onnx import TensorProto

    spec = _FLOAT_TYPES.get(tensor.data_type)
    if spec is None:
        raise ValueError(
            f"{what} has the element type "
            f"{_type_name(TensorProto.DataType, tensor.data_type)}; a weight is a float. "
            f"Received: tensor={name!r}"
        )
    type_name, itemsize, field = spec
    dims = tuple(tensor.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{what} has a negative dimension. Received: {name}.dims={dims}")
    numel = math.prod(dims)
    if tensor.HasField("raw_data"):
        found, needed, unit = len(tensor.raw_data), numel * itemsize, "bytes"
    else:
        found, needed, unit = len(getattr(tensor, field)), numel, "values"
    if found != needed:
        raise ValueError(
            f"{what} cannot be read: it holds {found} {unit}; its shape {dims} of {type_name} "
            f"needs {needed}. Received: tensor={name!r}"
        )


def load_onnx(path):
    """``(onnx.ModelProto, bytes)`` of a file, parsed only (no external data, nothing run)."""
    try:
        import onnx
    except ImportError as error:  # the "export" extra
        raise ImportError(
            "Reading HSEmotion's ONNX files needs the `onnx` package: "
            "pip install 'affectnet-tf[convert]' (or pip install onnx)."
        ) from error
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"The HSEmotion ONNX file does not exist. Received: path={path!r}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as error:
        raise ValueError(
            f"{path} is not an ONNX model file ({type(error).__name__}: {error}). "
            f"Received: path={path!r}"
        ) from None
    return model, data
