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
