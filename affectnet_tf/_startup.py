"""TensorFlow imported without its C++ start-up notices (see the package docstring)."""

import contextlib
import os
import re
import sys
import tempfile

__all__ = ["import_tensorflow_quietly", "started_as_command"]

# Printed through absl while TensorFlow's libraries load, before TensorFlow reads
# TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442): the INFO notice of a machine without a GPU,
# once per library, each after absl's header line.
_NOTICES = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|.*\bcudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, "
    rb"GPU will not be used\."
    # TensorFlow 2.21 prints its oneDNN notice through absl too, whatever the log level
    rb"|I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on\. .*"
)


def drop_notices(data):
    """``data`` (bytes written to the standard error) without the lines of ``_NOTICES``."""
    lines = data.splitlines(keepends=True)
    return b"".join(line for line in lines if not _NOTICES.fullmatch(line.rstrip(b"\r\n")))


@contextlib.contextmanager
def notices_filtered():
    """Holds back what is written to file descriptor 2, then writes it back less the notices."""
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = drop_notices(captured.read())
            while kept:
                kept = kept[os.write(2, kept) :]


def started_as_command():
    """Whether this process runs one of the package's commands: ``python -m affectnet_tf.X``
    or a console script ``affectnet-X``; not a program or notebook that imports the package."""
    if os.path.basename(sys.argv[0] if sys.argv else "").startswith("affectnet-"):
        return True
    argv = list(getattr(sys, "orig_argv", sys.argv))[1:]
    while argv:
        argument = argv.pop(0)
        if argument == "-m":
            return bool(argv) and argv[0].startswith("affectnet_tf.")
        if argument.startswith("-m"):  # python -maffectnet_tf.train
            return argument[2:].startswith("affectnet_tf.")
        if argument in ("-X", "-W"):  # options that take a value
            argv = argv[1:]
        elif argument.startswith("-c") or not argument.startswith("-"):  # code or a script
            return False
    return False


def import_tensorflow_quietly():
    """Imports TensorFlow with ``TF_CPP_MIN_LOG_LEVEL`` 2 unless set, without its notices.

    Nothing is filtered when TensorFlow is already imported or when the user asked for INFO lines
    (``TF_CPP_MIN_LOG_LEVEL=0``); any other line the import writes is passed on, after it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    quiet = os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() not in ("", "0")
    with notices_filtered() if quiet else contextlib.nullcontext():
        import tensorflow  # noqa: F401
