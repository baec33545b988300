"""Start-up: TensorFlow's notices filtered, the command-line modules imported only when run."""

import os
import subprocess
import sys

import pytest

import affectnet_tf
from affectnet_tf import _startup

COMMANDS = (
    "train",
    "evaluate",
    "predict",
    "agreement",
    "video_train",
    "export",
    "serve",
    "convert",
)

NOTICES = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796593927.055307   18890 port.cc:153] oneDNN custom operations are on. You "
    b"may see slightly different numerical results due to floating-point round-off errors from "
    b"different computation orders. To turn them off, set the environment variable "
    b"`TF_ENABLE_ONEDNN_OPTS=0`.\n"
    b"I0000 00:00:1795947700.892022   10420 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used.\n"
    b"2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not "
    b"find cuda drivers on your machine, GPU will not be used.\n"
)
ERROR = b"E0000 00:00:1795947700.9 10420 cuda_dnn.cc:8579] Unable to register cuDNN factory\n"


def test_drop_notices_keeps_every_other_line():
    assert _startup.drop_notices(NOTICES) == b""
    assert _startup.drop_notices(b"a\n" + NOTICES + ERROR + b"b") == b"a\n" + ERROR + b"b"
    assert _startup.drop_notices(b"GPU will not be used.\n") == b"GPU will not be used.\n"


def test_notices_filtered_writes_the_rest_back_in_order(capfd):
    with _startup.notices_filtered():
        os.write(2, b"first\n" + NOTICES[:90])
        os.write(2, NOTICES[90:] + ERROR + b"last")
    assert capfd.readouterr().err == "first\n" + ERROR.decode() + "last"


def test_notices_filtered_passes_an_exception_on(capfd):
    with pytest.raises(ImportError, match="broken"), _startup.notices_filtered():
        os.write(2, NOTICES + b"why\n")
        raise ImportError("broken")
    assert capfd.readouterr().err == "why\n"


def test_the_commands_are_imported_on_first_use():
    assert set(COMMANDS) <= set(dir(affectnet_tf))
    assert affectnet_tf.train is sys.modules["affectnet_tf.train"]
    assert callable(affectnet_tf.video_train.main)
    with pytest.raises(AttributeError, match="'affectnet_tf' has no attribute 'serving'"):
        affectnet_tf.serving  # noqa: B018


_IMPORTED_COMMANDS = f"""
import os, sys
# the dependencies first: TensorFlow, OpenCV, h5py ... set variables of their own on import
import cv2, h5py, keras, matplotlib, mtcnn, sklearn, tensorflow, tensorflow_datasets
before = (dict(os.environ), [os.fstat(fd).st_ino for fd in (0, 1, 2)])
import affectnet_tf
after = (dict(os.environ), [os.fstat(fd).st_ino for fd in (0, 1, 2)])
print([c for c in {COMMANDS!r} if "affectnet_tf." + c in sys.modules], before == after)
"""


@pytest.mark.slow
def test_command_lines_start_quietly():
    """``python -m affectnet_tf.train --help`` as users run it, without runpy's RuntimeWarning or
    TensorFlow's start-up notices; and the package imports none of the commands, which is what
    keeps ``python -m`` of each of them free of that warning."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    # Started together: the two TensorFlow start-ups overlap.
    command = subprocess.Popen([sys.executable, "-m", "affectnet_tf.train", "--help"], **options)
    package = subprocess.Popen([sys.executable, "-c", _IMPORTED_COMMANDS], **options)
    stdout, stderr = command.communicate(timeout=300)
    assert command.returncode == 0, stderr[-3000:]
    assert stdout.startswith("usage: python -m affectnet_tf.train"), stdout[:200]
    imported, package_stderr = package.communicate(timeout=300)
    assert package.returncode == 0, package_stderr[-3000:]
    # a library import sets no environment variable and leaves the file descriptors alone
    assert imported.strip() == "[] True"
    assert "RuntimeWarning" not in stderr + package_stderr, stderr[-3000:] + package_stderr
    for unwanted in ("cudart_stub", "cpu_feature_guard", "absl::", "oneDNN"):
        assert unwanted not in stderr, stderr[-3000:]


@pytest.mark.parametrize(
    "argv, command",
    [
        (["python", "-m", "affectnet_tf.train", "--help"], True),
        (["python", "-X", "dev", "-maffectnet_tf.serve"], True),
        (["python", "-m", "pytest", "-k", "affectnet_tf.train"], False),
        (["python", "script.py", "-m", "affectnet_tf.train"], False),
        (["python", "-c", "import affectnet_tf"], False),
        (["python"], False),
    ],
)
def test_only_the_commands_start_quietly(monkeypatch, argv, command):
    monkeypatch.setattr(sys, "orig_argv", argv, raising=False)
    monkeypatch.setattr(sys, "argv", argv[-1:] if argv[-1:] != ["python"] else [""])
    assert _startup.started_as_command() is command
    monkeypatch.setattr(sys, "argv", ["/venv/bin/affectnet-train", "--help"])
    assert _startup.started_as_command()
