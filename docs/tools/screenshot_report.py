"""Screenshot of an evaluation report (``report.html``) in headless Chromium, for the docs.

Usage::

    python docs/tools/screenshot_report.py REPORT_HTML OUTPUT_PNG [--window-size 1200,1600]

For the picture on the "Evaluation and reports" page, run it on the crowd-layer run of
``make demo``::

    python docs/tools/screenshot_report.py demo_output/runs/cv/report/report.html \\
        docs/images/report.png

Needs a Chromium (Debian: ``apt-get install -y chromium``); ``--chromium PATH`` names another
binary. The page is self-contained (its figures are base64 PNGs inside it), so nothing else is
read or fetched.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["CANDIDATES", "find_chromium", "screenshot_command", "screenshot", "main"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(name=None):
    """The path of a Chromium binary: ``name`` if given, else the first of ``CANDIDATES``."""
    for candidate in (name,) if name else CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    raise FileNotFoundError(
        f"No Chromium found (looked for {', '.join((name,) if name else CANDIDATES)}); install "
        "one (Debian: apt-get install -y chromium) or pass --chromium PATH."
    )


def screenshot_command(chromium, report_html, output_png, window_size, profile_dir):
    """The headless Chromium command line that writes ``output_png``."""
    command = [
        chromium,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile_dir}",
        f"--window-size={window_size}",
        f"--screenshot={Path(output_png).resolve()}",
        Path(report_html).resolve().as_uri(),
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Chromium refuses root without it
        command.insert(1, "--no-sandbox")
    return command


def screenshot(report_html, output_png, window_size="1200,1600", chromium=None, timeout=120):
    """Writes a PNG of ``report_html`` as a ``window_size`` ("WIDTH,HEIGHT") window shows it."""
    report_html = Path(report_html)
    if not report_html.is_file():
        raise FileNotFoundError(f"No report at {report_html}")
    output_png = Path(output_png)
    output_png.parent.mkdir(parents=True, exist_ok=True)
    output_png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile_dir:
        command = screenshot_command(
            find_chromium(chromium), report_html, output_png, window_size, profile_dir
        )
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if not output_png.is_file():
        raise RuntimeError(
            f"Chromium wrote no screenshot (exit status {result.returncode}): "
            f"{' '.join(command)}\n{result.stderr[-2000:]}"
        )
    return output_png


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report_html", help="the report.html to capture")
    parser.add_argument("output_png", help="the PNG to write")
    parser.add_argument(
        "--window-size", default="1200,1600", help="WIDTH,HEIGHT in pixels (default: 1200,1600)"
    )
    parser.add_argument("--chromium", help="the Chromium binary (default: found on PATH)")
    args = parser.parse_args(argv)
    path = screenshot(args.report_html, args.output_png, args.window_size, args.chromium)
    print(f"Wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
