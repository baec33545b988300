"""Files written so that a kill, a full disk or a crash never leaves half of one.

Every file of a run folder (weights, backups, ``config.yaml``, ``history.csv``,
``metrics.json``, the report, exported models) is written through :func:`write_atomically`:
the content goes to a partial file beside the target (same folder, so the final rename stays on
one file system), is flushed to disk, and replaces the target in one ``os.replace``. A reader
sees the old file or the new one, never a mixture. Partial names only add a prefix to the file
name, so they keep its suffixes (Keras insists on ``.weights.h5`` and ``.keras``), and the path
of the folder is never taken apart: folders named ``runs.v2``, ``a b`` or ``ü`` are ordinary.
"""

import contextlib
import hashlib
import json
import os
import secrets

import numpy as np

__all__ = [
    "PARTIAL_PREFIX",
    "partial_path",
    "write_atomically",
    "atomic_open",
    "write_json",
    "file_sha256",
    "json_ready",
    "remove_partial_files",
]

PARTIAL_PREFIX = ".partial-"  # a file being written: ".partial-<pid>-<random>-<name>"


def partial_path(path):
    """A new partial name beside ``path`` (the same folder and suffixes, unique to this call)."""
    folder, name = os.path.split(os.fspath(path))
    unique = f"{os.getpid()}-{secrets.token_hex(4)}"  # threads and processes never collide
    return os.path.join(folder, f"{PARTIAL_PREFIX}{unique}-{name}")


def _sync(path):
    """Flushes a written file to disk (a no-op where the OS cannot open it for that)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_atomically(path, write):
    """Calls ``write(partial_path)``, then puts the written file in place of ``path`` at once.

    Args:
        path: the file to write (its folder must exist).
        write: a function that writes a complete file at the path it is given, e.g.
            ``model.save_weights`` or ``lambda p: np.savez(p, **arrays)``.

    Returns:
        ``path``. If ``write`` raises, ``path`` is left as it was and the partial file is removed.
    """
    path = os.fspath(path)
    partial = partial_path(path)
    try:
        write(partial)
        if not os.path.isfile(partial):
            raise FileNotFoundError(f"writing {path}: the writer did not create {partial}")
        _sync(partial)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    _sync(os.path.dirname(os.path.abspath(path)))
    return path


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """``open`` for writing whose file appears at ``path`` only when the block ends without
    an error (text mode by default; ``encoding`` defaults to UTF-8 there)."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    path = os.fspath(path)
    partial = partial_path(path)
    try:
        with open(partial, mode, **kwargs) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise


def write_json(path, value, indent=2):
    """Writes ``value`` as JSON (UTF-8, a final newline) atomically."""
    with atomic_open(path) as stream:
        json.dump(value, stream, indent=indent)
        stream.write("\n")
    return os.fspath(path)


def json_ready(value):
    """``value`` with NumPy numbers as Python ones, tuples as lists and non-finite floats as
    None (JSON's null), through dicts and lists: what JSON and YAML files can hold."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    return value


def file_sha256(path, chunk_size=1 << 20):
    """The SHA-256 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_partial_files(folder):
    """Removes the partial files a killed writer left in ``folder`` and its subfolders.

    Returns:
        The paths removed.
    """
    removed = []
    for root, _, names in os.walk(folder):
        for name in names:
            if name.startswith(PARTIAL_PREFIX):
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    os.remove(path)
                    removed.append(path)
    return removed
