"""Status output of the commands: ``logging`` with a ``--verbose`` / ``--quiet`` pair, and
progress bars on the long loops.

Every module logs to ``logging.getLogger(__name__)`` (under ``affectnet_tf``); a command calls
:func:`add_verbosity_flags` on its parser and :func:`configure_logging` with the parsed
arguments. Results a command is run for (the metrics' JSON, a prediction table, the server's
URL) still go to the standard output with ``print``; status goes to the standard error through
``logging``, so a pipe keeps only the results.

Levels: ``--quiet`` shows warnings and errors only and no progress bars; the default shows
status lines (INFO) and a progress bar on each long loop when the standard error is a terminal;
``--verbose`` adds DEBUG lines (settings resolved, files read) and shows the bars on any
standard error (a log file, CI). Library use (no ``configure_logging`` call) prints nothing but
warnings, as Python's logging does by default, and shows no bars.

Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_verbosity_flags(parser)
    >>> args = parser.parse_args(["--quiet"])
    >>> configure_logging(args)
    >>> for item in progress(range(3), desc="items"):
    ...     pass
"""

import logging
import sys

from tqdm.auto import tqdm

__all__ = [
    "add_verbosity_flags",
    "configure_logging",
    "reset_logging",
    "verbosity_level",
    "progress",
]

LOGGER_NAME = "affectnet_tf"
_FORMAT = "%(message)s"
_VERBOSE_FORMAT = "%(levelname)s %(name)s: %(message)s"

# What configure_logging chose: None (library use: no bars), or the chosen level.
_state = {"level": None}


def add_verbosity_flags(parser):
    """Adds the mutually exclusive ``--verbose`` / ``--quiet`` flags to an ``argparse`` parser
    (or to one of its argument groups)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="Also show DEBUG status lines, and progress bars even when the standard error is "
        "not a terminal (default: off).",
    )
    group.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="Show only warnings and errors, no progress bars (default: off).",
    )
    return parser


def verbosity_level(args):
    """The logging level the ``--verbose`` / ``--quiet`` flags of ``args`` choose."""
    if getattr(args, "quiet", False):
        return logging.WARNING
    if getattr(args, "verbose", False):
        return logging.DEBUG
    return logging.INFO


def configure_logging(args=None, level=None, stream=None):
    """Sends the package's log records to ``stream`` (default: the standard error) at the level
    of ``args``' flags (or ``level``), replacing the handler an earlier call installed.

    Args:
        args: parsed arguments with ``verbose`` / ``quiet`` attributes (``None``: INFO).
        level: a logging level that overrides ``args``.
        stream: where the lines go (default ``sys.stderr`` at the time of each record).

    Returns:
        The chosen level.
    """
    chosen = level if level is not None else verbosity_level(args)
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if getattr(handler, "_affectnet_tf", False):
            logger.removeHandler(handler)
    handler = _StderrHandler(stream)
    handler._affectnet_tf = True
    handler.setFormatter(logging.Formatter(_VERBOSE_FORMAT if chosen <= logging.DEBUG else _FORMAT))
    logger.addHandler(handler)
    logger.setLevel(chosen)
    logger.propagate = False
    _state["level"] = chosen
    return chosen


def reset_logging():
    """Undoes :func:`configure_logging`: removes its handler, gives the package's logger back
    to Python's defaults (level unset, records propagated to the root logger), no bars."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if getattr(handler, "_affectnet_tf", False):
            logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    _state["level"] = None


class _StderrHandler(logging.StreamHandler):
    """A stream handler that looks up ``sys.stderr`` at each record (pytest's capture, a
    redirected standard error) unless given a stream."""

    def __init__(self, stream=None):
        super().__init__(stream)
        self._fixed = stream is not None

    def emit(self, record):
        if not self._fixed:
            self.stream = sys.stderr
        super().emit(record)


def progress(iterable=None, total=None, desc=None, unit="it", **kwargs):
    """Wraps ``iterable`` in a progress bar on the standard error (``tqdm``), shown as the
    logging flags say (see the module's docstring); the bar leaves no line behind when done.

    Args:
        iterable: what is looped over (``None``: update the returned bar by hand).
        total: the number of items when ``len(iterable)`` does not give it.
        desc: what is counted, shown before the bar (e.g. ``"evaluating"``).
        unit: the unit of one item (e.g. ``"image"``, ``"batch"``).
        **kwargs: passed on to ``tqdm``.

    Returns:
        A ``tqdm`` object: iterate over it, or call ``update(n)`` and ``close()``.
    """
    level = _state["level"]
    if level is None or level > logging.INFO:
        disable = True
    elif level <= logging.DEBUG:
        disable = False
    else:
        disable = None  # tqdm's rule: shown only on a terminal
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
        **kwargs,
    )
