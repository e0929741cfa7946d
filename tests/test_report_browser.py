"""The report page in a real browser: headless Chromium loads it offline and the charts render.

Skipped when `chromium` is not on PATH. Two Chromium processes run side by side (DOM dump and
screenshot); the whole module takes a few seconds.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from datetime import date
from pathlib import Path

import pytest

from pipeline.reporting import ReportOptions, build_report
from tests.test_report import make_tables

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (`chromium`) is not installed")

FIGURES = ("trend", "by-indication", "levers", "top-rules", "by-service")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]


def _chromium(args: list[str], profile: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> dict:
    """The fixture report written to disk, its DOM as Chromium built it, and a screenshot."""
    root = tmp_path_factory.mktemp("browser")
    paths, _ = build_report(make_tables(), root / "report",
                            ReportOptions(as_of=date(2024, 2, 20), intervention=date(2024, 2, 1)))
    url = paths[0].resolve().as_uri()
    png = root / "page.png"
    dom_proc = _chromium(["--dump-dom", url], root / "profile-dom")
    shot_proc = _chromium([f"--screenshot={png}", "--window-size=1200,2600", url], root / "profile-shot")
    try:
        dom, _ = dom_proc.communicate(timeout=60)
        shot_proc.communicate(timeout=60)
    finally:
        for proc in (dom_proc, shot_proc):
            if proc.poll() is None:
                proc.kill()
    return {"dom": dom.decode("utf-8", "replace"), "png": png}


def _figure(dom: str, key: str) -> str:
    """The markup of one <figure id="fig-KEY">."""
    match = re.search(rf'<figure id="fig-{key}"[^>]*>(.*?)</figure>', dom, re.DOTALL)
    assert match, f"figure {key} missing from the DOM"
    return match.group(1)


def test_charts_render_as_svg_with_marks(browser):
    dom = browser["dom"]
    assert "IVIG stewardship audit" in dom
    for key in FIGURES:
        fig = _figure(dom, key)
        assert "<svg" in fig, key
        marks = fig.count("<path") + fig.count("<rect")
        texts = fig.count("<text")
        assert marks > 3 and texts > 3, (key, marks, texts)
    assert "<script" not in dom.lower()


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the decompressed (still filtered) scanlines of a PNG, with the standard library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_screenshot_is_not_blank(browser):
    png = browser["png"]
    assert png.exists(), "Chromium wrote no screenshot"
    assert png.stat().st_size > 50_000, png.stat().st_size  # a blank page compresses to a few KB
    width, height, raw = _png_pixels(png)
    assert (width, height) == (1200, 2600)
    # A single-colour page has a handful of distinct byte values; text and charts have many.
    assert len(set(raw[: len(raw) // 2])) > 64


# The page is measured inside an iframe of the device's width (headless Chromium's window cannot be narrower
# than 500 px); a probe page next to the report reads the frame's layout (file pages of one folder may
# read each other with --allow-file-access-from-files) and writes it into its own DOM.
PROBE = """<html><body style="margin:0"><iframe id="f" src="index.html" style="width:{width}px;height:900px;border:0"></iframe>
<pre id="probe"></pre><script>
document.getElementById('f').onload = function () {{
  const d = this.contentDocument;
  const svgs = [...d.querySelectorAll('svg')].filter(s => s.getBoundingClientRect().width > 0);
  const scales = svgs.map(s => s.getBoundingClientRect().width / (s.width.baseVal.value || 1));
  const money = [...d.querySelectorAll('.card.money .value')].map(e => e.scrollWidth <= e.clientWidth + 1);
  document.getElementById('probe').textContent = JSON.stringify({{
    page: d.documentElement.scrollWidth, viewport: d.documentElement.clientWidth, charts: svgs.length,
    smallest_chart_scale: Math.min(...scales), money_fits: money.every(Boolean) && money.length > 0}});
}};
</script></body></html>"""


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory) -> Path:
    """The report of the audited sample (the page a manager opens), written to a folder."""
    from pipeline.night import NightRequest, run_night
    from pipeline.reporting import build_report_from_database
    from tests.conftest import SAMPLE

    root = tmp_path_factory.mktemp("device")
    inputs = {"orders": [SAMPLE / "orders"], "labs": [SAMPLE / "labs.csv"], "procedures": [SAMPLE / "procedures.csv"]}
    run_night(NightRequest(db=root / "audit.duckdb", inputs=inputs))
    paths, _ = build_report_from_database(root / "audit.duckdb", root / "report")
    return paths[0].parent


@pytest.mark.parametrize("width", [390, 1400], ids=["phone", "desktop"])
def test_page_fits_the_device_without_horizontal_scroll(sample_report: Path, tmp_path: Path, width: int):
    import json

    probe = sample_report / f"probe-{width}.html"
    probe.write_text(PROBE.format(width=width), encoding="utf-8")
    proc = _chromium(["--allow-file-access-from-files", "--window-size=1500,1000", "--virtual-time-budget=5000",
                      "--dump-dom", probe.resolve().as_uri()], tmp_path / "profile")
    try:
        dom, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    found = re.search(r'<pre id="probe">([^<]+)</pre>', dom.decode("utf-8", "replace"))
    assert found, "the probe page did not measure the report"
    layout = json.loads(found.group(1).replace("&quot;", '"'))
    assert layout["viewport"] == width
    assert layout["page"] <= width, layout  # no horizontal scroll of the page
    assert layout["charts"] == len(FIGURES)  # one drawing of each chart is shown, the one for this width
    assert layout["smallest_chart_scale"] >= 0.9, layout  # chart text stays near its 10-11 px
    assert layout["money_fits"], layout  # the money card is not clipped
