"""MkDocs hook: the flag tables of the command lines, generated from their parsers at build time.

A page asks for a table with a marker line naming the module of the command::

    <!-- flags: affectnet_tf.train -->

and the build replaces it with one Markdown table per argument group (flag, values, default,
description), read from the command's ``argparse`` parser: the training command's from
:func:`affectnet_tf.training.config.build_parser`, the others' from their module's ``build_parser()``.
So the tables cannot drift from the code. ``mkdocs.yml`` loads this file under ``hooks:``.
"""

import argparse
import html
import importlib
import re

__all__ = ["MARKER", "PARSERS", "build_parser", "flag_rows", "flag_tables", "on_page_markdown"]

MARKER = re.compile(r"^<!-- flags: ([\w.]+) -->$", re.MULTILINE)

# module of the command -> the module that builds its parser
PARSERS = {"affectnet_tf.train": "affectnet_tf.training.config"}

# a trailing "(default: X)", X with at most one level of parentheses
_DEFAULT = re.compile(r"\s*\(default: ((?:[^()]|\([^()]*\))*)\)\s*$")
_TYPE_NAMES = {str: "text", int: "int", float: "float"}


def build_parser(command):
    """The ``argparse`` parser of ``python -m <command>``."""
    return importlib.import_module(PARSERS.get(command, command)).build_parser()


def _cell(text):
    """Text safe inside a Markdown table cell (no HTML tags, no column breaks)."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _flags(action):
    if isinstance(action, argparse.BooleanOptionalAction):
        return [s for s in action.option_strings if s.startswith("--")]
    return action.option_strings or [action.metavar or action.dest]


def _values(action):
    if action.choices is not None:
        return ", ".join(f"`{choice}`" for choice in action.choices)
    if action.nargs == 0:  # store_true, BooleanOptionalAction
        return ""
    kind = _TYPE_NAMES.get(action.type, getattr(action.type, "__name__", "text"))
    count = {"+": " ...", "*": " ...", None: "", "?": ""}.get(action.nargs, f" x {action.nargs}")
    return f"{kind}{count}"


def flag_rows(parser):
    """``[(group title, [(flags, values, default, description), ...]), ...]`` of a parser, in
    the order ``--help`` prints them; ``--help`` itself is left out."""
    formatter = parser._get_formatter()
    groups = []
    for group in parser._action_groups:
        rows = []
        for action in group._group_actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            description = " ".join((formatter._expand_help(action) if action.help else "").split())
            defaults = []  # "text (default: from X) (default: None)": the first says more
            while match := _DEFAULT.search(description):
                defaults.insert(0, match.group(1))
                description = description[: match.start()]
            default = next((d for d in defaults if d != "None"), defaults[0] if defaults else "")
            if action.required:
                default = "required"
            rows.append((_flags(action), _values(action), default, description))
        if rows:
            groups.append((group.title, rows))
    return groups


def flag_tables(parser, heading_level=3):
    """The Markdown tables of :func:`flag_rows`, one per argument group under its title."""
    blocks = []
    for title, rows in flag_rows(parser):
        lines = [
            f"{'#' * heading_level} {title[:1].upper()}{title[1:]}",
            "",
            "| flag | values | default | description |",
            "|---|---|---|---|",
        ]
        for flags, values, default, description in rows:
            flag_text = ", ".join(f"`{flag}`" for flag in flags)
            literal = default and " " not in default and default != "required"
            default_text = f"`{default}`" if literal else _cell(default)
            lines.append(f"| {flag_text} | {values} | {default_text} | {_cell(description)} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


_HEADING = re.compile(r"^(#{1,6}) ", re.MULTILINE)
_FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def on_page_markdown(markdown, page, config, files, **kwargs):
    """Replaces every flag marker of a page by its command's tables, their group titles one
    level below the heading the marker stands under."""

    def tables(match):
        above = _HEADING.findall(_FENCED.sub("", markdown[: match.start()]))
        level = min(len(above[-1]) + 1, 6) if above else 2
        return flag_tables(build_parser(match.group(1)), heading_level=level)

    return MARKER.sub(tables, markdown)
