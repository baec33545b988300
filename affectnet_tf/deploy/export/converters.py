"""What the TFLite and ONNX converters share: the optional libraries of the ``export`` extra,
a quiet conversion, and the names of the ops a converter could not take out of its message."""

import contextlib
import importlib
import os
import re
import sys
import tempfile
import warnings

import tensorflow as tf

__all__ = [
    "ExportError",
    "optional_import",
    "converter_output_hidden",
    "unsupported_ops",
    "first_error_line",
]


class ExportError(RuntimeError):
    """A model that cannot be exported to a format (the message names the ops), or bad input."""


def optional_import(module):
    """Imports a library of the ``export`` extra (``onnx``, ``tf2onnx``, ``onnxruntime``,
    ``ai_edge_litert...``), or says how to install it.

    Raises:
        ImportError: the library is missing; the message names the extra that installs it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"Exporting needs {module.split('.')[0]}, which the package's `export` extra "
            f"installs: pip install 'affectnet-tf[export]' ({error})"
        ) from error


@contextlib.contextmanager
def converter_output_hidden():
    """Hides what a converter writes besides its result: TensorFlow's Python warnings
    (deprecation notices of the TF1 graph tools the converters use), Python warnings, and the
    C++ notices on the standard error (the TFLite converter's errors are in its exception)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        logger.setLevel(level)


def unsupported_ops(message):
    """Op names out of a converter's error message (TFLite's and tf2onnx's wordings)."""
    names = []
    for listed in re.findall(r"(?:Custom|Flex|Unsupported) ops: ([^\n]+)", message):
        names += re.findall(r"(\w+)'?:\s*\d+", listed) or re.split(r",\s*", listed.strip())
    names += re.findall(r"'tf\.(\w+)' op is neither", message)
    found = []
    for name in names:
        name = name.strip().removeprefix("Flex")
        if name and name not in found:
            found.append(name)
    return found


def first_error_line(message):
    """The first line of a converter's message that reports an error (at most 300 characters),
    else its first line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or ["(no message)"])[0][:300]
