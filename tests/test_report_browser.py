"""The HTML report in a real headless browser (Debian's ``chromium``; skipped when it is not installed).

The page must load without any console message (errors included), show its leaderboard tables with every
row, decode every embedded figure, and render to a non-blank screenshot. A page with a deliberate
JavaScript error is run through the same check first, so the check is shown to be able to fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import DEFENSES, TASKS, make_run

from reports.build import ReportOptions, build_report
from reports.results import load_run
from reports.tables import build_tables

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium (Debian: apt-get install -y chromium)")
WINDOW = (1280, 2400)


def _browser(page: Path, *flags: str, tmp: Path, fragment: str = "") -> subprocess.CompletedProcess:
    # A fresh profile per call: no state leaks between runs, no prompt about a default browser.
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=5000", *flags,
                           page.resolve().as_uri() + fragment], capture_output=True, text=True, timeout=120)


def console_messages(page: Path, screenshot: Path, tmp: Path) -> list[str]:
    """Load the page, write a screenshot, return every console message it printed (errors and logs)."""
    result = _browser(page, "--enable-logging=stderr", "--v=0", f"--screenshot={screenshot}",
                      f"--window-size={WINDOW[0]},{WINDOW[1]}", tmp=tmp)
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def dom_after_load(page: Path, tmp: Path, fragment: str = "") -> str:
    return _browser(page, "--dump-dom", tmp=tmp, fragment=fragment).stdout


def test_console_check_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>notDefined();</script></body></html>")
    messages = console_messages(page, tmp_path / "broken.png", tmp_path)
    assert any("notDefined" in m for m in messages), messages


def test_report_page_in_a_headless_browser(tmp_path):
    run_dir, _ = make_run(tmp_path / "store")
    out = tmp_path / "report"
    build_report(load_run(run_dir), out, ReportOptions(grid_count=1))
    page = out / "report.html"
    screenshot = out / "screenshot.png"

    messages = console_messages(page, screenshot, tmp_path)
    assert messages == [], messages

    dom = dom_after_load(page, tmp_path)
    status = re.search(r'id="page-status"[^>]*>', dom)
    assert status, dom[:2000]
    attributes = dict(re.findall(r'data-([a-z-]+)="(\d+)"', status.group(0)))
    figures = 2 * len(TASKS) + 1 + len(TASKS)  # heatmap + bars per task, the scatter, one grid per task
    assert int(attributes["figures"]) == figures
    assert int(attributes["figures-shown"]) == figures  # every embedded PNG decoded
    assert int(attributes["table-rows"]) == len(TASKS) * len(DEFENSES)
    assert f"{figures} of {figures} figures shown" in dom

    with Image.open(screenshot) as image:
        assert image.size == WINDOW
        pixels = np.asarray(image.convert("L"), dtype=float)
    # Not a blank page: plenty of non-white pixels (tables, plots) and real contrast.
    assert (pixels < 200).mean() > 0.05 and pixels.std() > 30


def test_tables_sort_in_the_browser(tmp_path):
    """The page's own sorting code, run by the browser: '#sort=N-desc' sorts every table on column N the
    way a second click on its header does."""
    run_dir, _ = make_run(tmp_path / "store", images=False)
    out = tmp_path / "report"
    build_report(load_run(run_dir), out, ReportOptions(plots=False))
    table = build_tables(load_run(run_dir).board)[0]
    column = 1 + [c.key for c in table.columns].index("clip_score")
    dom = dom_after_load(out / "report.html", tmp_path, fragment=f"#sort={column}-desc")
    first = dom.split("<tbody>")[1].split("</tbody>")[0]
    shown = re.findall(r"<tr><td data-sort=\"([^\"]+)\"", first)
    expected = sorted(table.defenses, key=lambda d: -table.value(d, "clip_score"))
    assert shown == expected and shown != table.defenses  # it moved, and into descending CLIP order
