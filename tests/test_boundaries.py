"""The packages' boundaries, read from the source: no private name crosses a module, and the
dependencies point one way (``crowd_layers`` <- ``tfds_affectnet`` <- ``affectnet_tf``).

A private module (``tfds_affectnet/_examples.py``) may be imported by the modules of its own
package only; a private function, class or constant (``_check``) by its own module only. Names
that Python itself reserves (``__version__``, ``_replace`` and the other ``NamedTuple``
methods, ``os._exit``, ``sys._getframe``) are not the project's and pass.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("crowd_layers", "tfds_affectnet", "affectnet_tf")
FOLDERS = (*PACKAGES, "benchmarks", "examples", "docs/tools")
# what each package may import of the others
ALLOWED = {
    "crowd_layers": set(),
    "tfds_affectnet": {"crowd_layers"},
    "affectnet_tf": {"crowd_layers", "tfds_affectnet"},
}
# private names of the standard library and of NamedTuple
FOREIGN = {"_replace", "_asdict", "_fields", "_make", "_field_defaults", "_exit", "_getframe"}


def _python_files():
    for folder in FOLDERS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(dotted):
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _top(dotted):
    return dotted.split(".")[0]


def violations(path):
    """``[(line, what)]`` of one file: private names taken from another module, imports
    against the direction of the dependencies."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    package = _top(here)
    found = []
    modules = {}  # local name -> the project's module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _top(alias.name) in PACKAGES:
                    modules[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else _top(alias.name)
                    )
                    imported = [alias.name]
                else:
                    imported = []
                for dotted in imported:
                    found += _check_import(node.lineno, here, package, dotted)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _top(node.module) not in PACKAGES:
                continue
            found += _check_import(node.lineno, here, package, node.module)
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if _is_module(target):
                    modules[alias.asname or alias.name] = target
                    found += _check_import(node.lineno, here, package, target)
                elif _is_private(alias.name):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and _is_private(node.attr)
            and node.attr not in FOREIGN
        ):
            target = f"{modules[node.value.id]}.{node.attr}"
            if _is_module(target):
                found += _check_import(node.lineno, here, package, target)
            else:
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return found


def _check_import(line, here, package, dotted):
    """A module import: a private module from another package, or a package imported against
    the dependencies' direction."""
    problems = []
    top = _top(dotted)
    if package in ALLOWED and top != package and top not in ALLOWED[package]:
        problems.append((line, f"{package} imports {dotted} ({top} may not be imported here)"))
    parts = dotted.split(".")
    for depth in range(1, len(parts)):
        if _is_private(parts[depth]) and ".".join(parts[:depth]) != ".".join(
            here.split(".")[:depth]
        ):
            problems.append((line, f"private module {dotted} from outside its package"))
            break
    return problems


def test_the_scan_finds_what_it_looks_for(tmp_path, monkeypatch):
    sample = ROOT / "affectnet_tf" / "_boundary_probe.py"
    text = (
        "import tfds_affectnet\n"
        "from affectnet_tf import evaluate\n"
        "from tfds_affectnet import _examples\n"
        "from crowd_layers.layers import _private_helper\n"
        "evaluate._image_batches()\n"
        "tfds_affectnet._images\n"
        "evaluate.public()\n"
        "row._replace(a=1)\n"
    )
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: text)
    found = [what for _, what in violations(sample)]
    assert sorted(found) == [
        "evaluate._image_batches",
        "from crowd_layers.layers import _private_helper",
        "private module tfds_affectnet._examples from outside its package",
        "private module tfds_affectnet._images from outside its package",
    ]
    text = "import affectnet_tf\n"
    assert violations(ROOT / "crowd_layers" / "probe.py") == [
        (1, "crowd_layers imports affectnet_tf (affectnet_tf may not be imported here)")
    ]


@pytest.mark.parametrize("path", list(_python_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_crosses_a_module(path):
    assert violations(path) == []
