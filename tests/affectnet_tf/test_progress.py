"""affectnet_tf.progress: the --verbose / --quiet pair, where the lines go, when bars show."""

import argparse
import io
import logging

import pytest

from affectnet_tf import progress


def _parse(*argv):
    parser = argparse.ArgumentParser()
    progress.add_verbosity_flags(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    "argv, level",
    [((), logging.INFO), (("--quiet",), logging.WARNING), (("-v",), logging.DEBUG)],
)
def test_flags_choose_the_level(argv, level):
    assert progress.verbosity_level(_parse(*argv)) == level


def test_verbose_and_quiet_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        _parse("--verbose", "--quiet")
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, shown",
    [((), ["status", "careful"]), (("--quiet",), ["careful"]), (("--verbose",), None)],
)
def test_lines_reach_the_stream_by_level(argv, shown):
    stream = io.StringIO()
    progress.configure_logging(_parse(*argv), stream=stream)
    log = logging.getLogger("affectnet_tf.some_module")
    log.debug("details")
    log.info("status")
    log.warning("careful")
    lines = stream.getvalue().splitlines()
    if shown is None:  # verbose: level and logger name before each line, DEBUG included
        assert lines == [
            "DEBUG affectnet_tf.some_module: details",
            "INFO affectnet_tf.some_module: status",
            "WARNING affectnet_tf.some_module: careful",
        ]
    else:
        assert lines == shown


def test_reset_gives_python_its_defaults_back():
    progress.configure_logging(level=logging.DEBUG, stream=io.StringIO())
    progress.reset_logging()
    logger = logging.getLogger(progress.LOGGER_NAME)
    assert logger.level == logging.NOTSET and logger.propagate
    assert not [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    assert progress.progress(range(2)).disable


def test_a_second_configuration_replaces_the_first():
    first, second = io.StringIO(), io.StringIO()
    progress.configure_logging(level=logging.INFO, stream=first)
    progress.configure_logging(level=logging.INFO, stream=second)
    logging.getLogger("affectnet_tf.x").info("once")
    assert first.getvalue() == "" and second.getvalue() == "once\n"


def test_bars_follow_the_level(capsys):
    progress.reset_logging()  # library use: never a bar
    assert progress.progress(range(3)).disable
    progress.configure_logging(level=logging.WARNING)
    assert progress.progress(range(3)).disable
    progress.configure_logging(level=logging.DEBUG)
    bar = progress.progress(range(3), desc="items", unit="image")
    assert not bar.disable
    assert list(bar) == [0, 1, 2]
    assert "items" in capsys.readouterr().err
    # default level: tqdm's own rule, shown only on a terminal (pytest's stderr is not one)
    progress.configure_logging(level=logging.INFO)
    assert progress.progress(range(3)).disable
