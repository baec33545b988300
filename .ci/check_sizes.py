"""Fails when a package module is over 600 lines or a function over 80 (issue #22).

Run by ``make lint`` (and so by ``make test`` and CI): ``python .ci/check_sizes.py``. Lines are
counted as in an editor (comments and docstrings included); a function's length runs from its
``def`` line (decorators excluded) to its last line, nested functions counted inside it too.
"""

import ast
import sys
from pathlib import Path

PACKAGES = ("affectnet_tf", "tfds_affectnet", "crowd_layers")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def violations(root):
    """The modules and functions of ``root``'s packages over the limits, one line each."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            name = path.relative_to(root).as_posix()
            lines = len(text.splitlines())
            if lines > MAX_MODULE_LINES:
                found.append(f"{name}: {lines} lines (at most {MAX_MODULE_LINES})")
            for node in ast.walk(ast.parse(text, filename=name)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        found.append(
                            f"{name}:{node.lineno}: function {node.name} has {length} lines "
                            f"(at most {MAX_FUNCTION_LINES})"
                        )
    return found


def main(argv=None):
    """Prints each violation and returns 1 if there is any."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path(__file__).resolve().parent.parent
    found = violations(root)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} size limit(s) exceeded (see .ci/check_sizes.py).", file=sys.stderr)
        return 1
    print(
        f"Sizes within limits: modules <= {MAX_MODULE_LINES} lines, functions <= "
        f"{MAX_FUNCTION_LINES}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
