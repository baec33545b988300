"""The README and the documentation pages work as written.

- Every ```python block runs: the blocks of a page in order, in one namespace (as a reader
  copies them), in a temporary folder with a temporary TFDS data folder, so they build the small
  synthetic faces they load. A block right after a ``<!-- skip: reason -->`` line is not run
  (it needs AffectNet, a GPU or a video); the reason is required.
- Every command of a ```bash block is checked without running it: ``make X`` is a Makefile
  target, ``python -m affectnet_tf.X ARGS`` parses with that command's own parser (flags and
  values), ``python path.py`` exists, ``tfds build NAME`` names a registered builder and config,
  ``pip install -e ".[extra]"`` names an extra of pyproject.toml, a console script
  (``affectnet-train ARGS``) parses as its module's command; and every ``python -m`` module
  prints its ``--help``.
- The docs' own tools: the flag tables cover every flag of their parsers, the screenshot
  command line, the docstring hooks.
"""

import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ ]*$",
    re.MULTILINE | re.DOTALL,
)
SKIP = re.compile(r"^<!-- skip: (?P<reason>\S.*?) -->$")
# the commands a page may show, and the module whose build_parser() parses their flags
PARSERS = {"affectnet_tf.train": "affectnet_tf.training.config"}


def _tool(name):
    """A module of docs/tools (a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_blocks(path, language):
    """``[(line, code, skip reason or None)]`` of the fenced blocks of ``language`` in a page."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("lang") != language:
            continue
        indent = len(match.group("indent"))
        code = "\n".join(line[indent:] for line in match.group("body").splitlines())
        before = [line.strip() for line in text[: match.start()].splitlines() if line.strip()]
        skip = SKIP.match(before[-1]) if before else None
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((line, code, skip.group("reason") if skip else None))
    return blocks


def commands(path):
    """``[(line, argv)]`` of the shell commands of a page's bash blocks (continuations joined,
    comments dropped)."""
    result = []
    for line, code, _ in code_blocks(path, "bash"):
        for command in code.replace("\\\n", " ").splitlines():
            argv = shlex.split(command, comments=True)
            if argv:
                result.append((line, argv))
    return result


def _page_id(path):
    return str(path.relative_to(ROOT))


PYTHON_PAGES = [p for p in PAGES if any(not skip for _, _, skip in code_blocks(p, "python"))]
COMMAND_PAGES = [p for p in PAGES if commands(p)]


@pytest.fixture(scope="module")
def tfds_data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("docs_tfds")


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_page_id)
def test_python_examples_run(page, tfds_data_dir, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    # the examples load datasets from TFDS's default folder: a temporary one here
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tfds_data_dir))
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for line, code, skip in code_blocks(page, "python"):
        if not skip:
            exec(compile(code, f"{_page_id(page)}:{line}", "exec"), namespace)


def _makefile_targets():
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.MULTILINE))


def _project():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as stream:
        return tomllib.load(stream)["project"]


def _extras():
    return set(_project()["optional-dependencies"])


def _scripts():
    """``{console script: module}`` of pyproject.toml's ``[project.scripts]``."""
    return {name: target.split(":")[0] for name, target in _project()["scripts"].items()}


def _parse_module_command(module, args):
    """Parses ``args`` with the parser of ``python -m module``; a bad flag or value fails."""
    if not module.startswith("affectnet_tf."):
        assert importlib.util.find_spec(module) is not None, f"no module {module}"
        return
    parser = importlib.import_module(PARSERS.get(module, module)).build_parser()
    try:
        parsed = parser.parse_args(args)
    except SystemExit as error:
        raise AssertionError(f"python -m {module} {shlex.join(args)}: flags rejected") from error
    if module == "affectnet_tf.train" and not parsed.config:
        from affectnet_tf.training.config import parse_config

        parse_config(args)  # the settings' own checks (choices, combinations)


def check_command(argv):
    """Raises AssertionError where a documented command names something that is not there."""
    program, *args = argv
    if program.endswith("/bin/python"):  # the python of another virtual environment
        program = "python"
    if program == "make":
        missing = set(args) - _makefile_targets()
        assert not missing, f"no Makefile target {sorted(missing)}"
    elif program == "python" and args[:1] == ["-m"]:
        _parse_module_command(args[1], args[2:])
    elif program in _scripts():
        _parse_module_command(_scripts()[program], args)
    elif program == "python":
        assert (ROOT / args[0]).is_file(), f"no file {args[0]}"
    elif program == "pip" and args[:2] == ["install", "-e"]:
        extras = re.fullmatch(r"\.(?:\[([\w,]+)\])?", args[2])
        assert extras, f"pip install -e {args[2]}: not this package"
        unknown = set(filter(None, (extras.group(1) or "").split(","))) - _extras()
        assert not unknown, f"no extra {sorted(unknown)} in pyproject.toml"
    elif program == "tfds" and args[:1] == ["build"]:
        import tensorflow_datasets as tfds

        import tfds_affectnet  # noqa: F401  (registers the builders)

        builder = tfds.builder_cls(args[1])
        if "--config" in args:
            config = args[args.index("--config") + 1]
            assert config in builder.builder_configs, f"{args[1]} has no config {config}"
    elif program == "git" and args[:1] == ["clone"]:
        url = args[1]
        assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), f"not a GitHub URL: {url}"
    else:
        raise AssertionError(f"no check for this command: {shlex.join(argv)}")


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=_page_id)
def test_commands_exist(page):
    failures = []
    for line, argv in commands(page):
        try:
            check_command(argv)
        except (AssertionError, ValueError, KeyError) as error:
            failures.append(f"{_page_id(page)}:{line}: {shlex.join(argv)}\n    {error}")
    assert not failures, "\n".join(failures)


def test_module_commands_print_their_help():
    modules = sorted(
        {argv[2] for page in PAGES for _, argv in commands(page) if argv[:2] == ["python", "-m"]}
    )
    assert "affectnet_tf.train" in modules
    script = (
        "import runpy, sys, warnings\n"
        "warnings.simplefilter('ignore', RuntimeWarning)\n"
        f"for module in {modules!r}:\n"
        "    sys.argv = [module, '--help']\n"
        "    try:\n"
        "        runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code in (0, None), (module, exit.code)\n"
        "    print('=== done', module, flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for module in modules:
        assert f"=== done {module}" in result.stdout
    for module in (m for m in modules if m.startswith("affectnet_tf.")):
        assert f"usage: python -m {module}" in result.stdout


def test_console_scripts_are_the_module_commands():
    assert set(_scripts()) == {
        "affectnet-train",
        "affectnet-evaluate",
        "affectnet-predict",
        "affectnet-export",
        "affectnet-serve",
        "affectnet-convert",
        "affectnet-agreement",
    }
    for name, target in _project()["scripts"].items():
        module, function = target.split(":")
        assert module == "affectnet_tf." + name.removeprefix("affectnet-") and function == "main"
        assert callable(getattr(importlib.import_module(module), function)), name


def test_skip_markers_give_a_reason_and_are_few():
    skipped = [
        (page, line, reason)
        for page in PAGES
        for line, _, reason in code_blocks(page, "python")
        if reason
    ]
    assert all(reason.strip() for _, _, reason in skipped)
    assert len(skipped) <= 3, skipped  # a skipped example can rot: keep them rare
    text = "\n".join(page.read_text() for page in PAGES)
    markers = re.findall(r"<!-- skip:.*-->", text)
    assert len(markers) == len(skipped), "a skip marker that is not right above a python block"


def test_flag_tables_cover_every_flag():
    flag_tables = _tool("flag_tables")
    markers = {
        match.group(1) for page in PAGES for match in flag_tables.MARKER.finditer(page.read_text())
    }
    assert "affectnet_tf.train" in markers
    for command in markers:
        parser = flag_tables.build_parser(command)
        listed = {
            flag for _, rows in flag_tables.flag_rows(parser) for row in rows for flag in row[0]
        }
        for action in parser._actions:
            if "--help" in action.option_strings:
                continue
            strings = action.option_strings  # a boolean's --no-x goes with its --x
            names = [s for s in strings if not (s.startswith("--no-") and f"--{s[5:]}" in strings)]
            names = names or [action.metavar or action.dest]
            assert set(names) <= listed, (command, names)
    table = flag_tables.flag_tables(flag_tables.build_parser("affectnet_tf.train"))
    assert "| `--target` | `mv`, `soft`, `cv`, `ds`" in table
    assert "| `--augment`, `--no-augment` |  | `True` |" in table
    assert "&lt;set&gt;" in table  # no raw HTML tags from the help texts


def test_flag_markers_take_their_level_from_the_heading_above():
    flag_tables = _tool("flag_tables")
    page = "# Page\n\n```bash\n# a comment, not a heading\n```\n\n### Command\n\n"
    markdown = flag_tables.on_page_markdown(
        page + "<!-- flags: affectnet_tf.predict -->\n", None, None, None
    )
    assert "\n#### Positional arguments\n" in markdown and "\n#### Model\n" in markdown
    assert "`--model-dir`" in markdown and "required" in markdown


def test_screenshot_command(tmp_path):
    screenshot_report = _tool("screenshot_report")
    report = tmp_path / "report dir" / "report.html"
    command = screenshot_report.screenshot_command(
        "chromium", report, tmp_path / "shot.png", "1200,1600", tmp_path / "profile"
    )
    assert command[0] == "chromium" and "--headless" in command
    assert "--window-size=1200,1600" in command
    assert f"--screenshot={(tmp_path / 'shot.png').resolve()}" in command
    assert command[-1] == report.resolve().as_uri() and "%20" in command[-1]
    with pytest.raises(FileNotFoundError, match="No report at"):
        screenshot_report.screenshot(report, tmp_path / "shot.png")
    with pytest.raises(FileNotFoundError, match="No Chromium found"):
        screenshot_report.find_chromium("no-such-browser-here")


def test_docstring_roles_become_optional_links():
    roles = _tool("docstring_roles")
    html = (
        '<h2 id="crowd_layers.pooled.CrowdsPooled">CrowdsPooled</h2>'
        "<p>:class:<code>CrowdsPooled</code>, :func:<code>~affectnet_tf.make_dataset</code>, "
        ":mod:<code>Elsewhere</code></p>"
    )
    linked = roles.link_roles(html)
    assert ":class:" not in linked and ":func:" not in linked
    assert (
        '<autoref optional identifier="crowd_layers.pooled.CrowdsPooled"><code>CrowdsPooled</code>'
        in linked
    )
    assert (
        '<autoref optional identifier="affectnet_tf.make_dataset"><code>make_dataset</code>'
        in linked
    )
    assert '<autoref optional identifier="Elsewhere"><code>Elsewhere</code>' in linked


@pytest.mark.parametrize(
    "command, message",
    [
        ("make nothing-here", "no Makefile target"),
        ("python -m affectnet_tf.train --no-such-flag 1", "flags rejected"),
        ("python -m affectnet_tf.train --target nonsense", "flags rejected"),
        ("python -m affectnet_tf.train --model no_such_backbone", "Unknown model"),
        ("python -m affectnet_tf.evaluate --split set2", "flags rejected"),  # --model-dir missing
        ("python examples/no_such_example.py", "no file"),
        ('pip install -e ".[nothing]"', "no extra"),
        ("tfds build affectnet --config nothing --imports tfds_affectnet", "no config"),
        ("git clone https://example.org/repo", "not a GitHub URL"),
        ("git push origin main", "no check for this command"),
    ],
)
def test_command_check_catches_mistakes(command, message, capsys):
    with pytest.raises((AssertionError, ValueError), match=message):
        check_command(shlex.split(command))


def _requirement_name(requirement):
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _closure(names):
    """The distributions ``names`` need, transitively (extras' requirements left out)."""
    import importlib.metadata as metadata

    seen, todo = set(), [n.lower().replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_requirement_name(r) for r in requires if "extra ==" not in r]
    return seen


def _modules_only_in_other_extras():
    """Top-level modules of the distributions that only extras other than ``docs`` install."""
    import importlib.metadata as metadata

    requires = metadata.requires("affectnet-tf")
    core = [_requirement_name(r) for r in requires if "extra ==" not in r]
    docs = [_requirement_name(r) for r in requires if 'extra == "docs"' in r]
    others = {_requirement_name(r) for r in requires if "extra ==" in r} - set(docs)
    others.discard("affectnet-tf")  # the test extra names the other extras through the package
    kept = _closure(core + docs)
    blocked = {name for name in others if name not in kept}
    modules = []
    for module, distributions in metadata.packages_distributions().items():
        names = {d.lower().replace("_", "-") for d in distributions}
        if names & blocked and not names & kept:
            modules.append(module)
    return sorted(modules)


@pytest.mark.slow
def test_the_docs_build_with_only_the_docs_extra(tmp_path):
    """`make docs` where only the docs extra is installed: the modules of every other extra
    (aiohttp, onnx, tf2onnx, apache_beam, selenium, ...) fail to import, as on such a machine."""
    modules = _modules_only_in_other_extras()
    assert {"aiohttp", "onnx", "tf2onnx", "apache_beam", "selenium"} <= set(modules)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        f"BLOCKED = {modules!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (docs extra only)')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    environment = {
        **__import__("os").environ,
        "PYTHONPATH": str(blocker),
        "NO_MKDOCS_2_WARNING": "1",
    }
    check = subprocess.run(
        [sys.executable, "-c", "import aiohttp"], capture_output=True, text=True, env=environment
    )
    assert "docs extra only" in check.stderr  # the blocker works
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "serving" / "index.html").exists()
