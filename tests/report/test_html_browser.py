"""The HTML report rendered by a real browser (headless Chromium, no JavaScript needed)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from landscape_fast.report import write_html

from .conftest import SECTIONS

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1200, 3000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"{CHROMIUM} not found (install it with `apt-get install -y chromium`)",
    ),
]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, Path]:
    """(html path, scratch dir) for the full report."""
    from .conftest import FULL

    tmp = tmp_path_factory.mktemp("browser")
    return write_html(FULL, tmp / "report.html"), tmp


def test_dom_has_sections_and_images(written):
    html_path, tmp = written
    dom = _chromium(tmp, "--dump-dom", html_path.as_uri()).stdout.decode("utf-8")
    for key in [*SECTIONS, "settings"]:
        assert f'<section id="{key}">' in dom
    assert dom.count('<img src="data:image/png;base64,') == 4
    assert "Loss-landscape report: digits MLP 64-32-10" in dom
    assert "154.7 ± 1.94" in dom  # UTF-8 declared and read back as such


def _plot_pixels(png: Path) -> tuple[int, int]:
    """Pixels of matplotlib's C0 blue and C1 orange: drawn only by decoded plot images (the
    page's own CSS uses neither colour)."""
    import matplotlib.image
    import numpy as np

    rgb = matplotlib.image.imread(png)[..., :3]
    c0, c1 = np.array([0x1F, 0x77, 0xB4]) / 255, np.array([0xFF, 0x7F, 0x0E]) / 255
    return tuple(int((np.abs(rgb - c).max(axis=-1) < 0.08).sum()) for c in (c0, c1))


def test_screenshot_shows_decoded_plots(written):
    html_path, tmp = written
    shots = {}
    broken = tmp / "broken.html"  # negative control: same page, undecodable images
    broken.write_text(
        re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,AAAA", html_path.read_text("utf-8")), "utf-8"
    )
    for name, page in (("report", html_path), ("broken", broken)):
        shots[name] = shot = tmp / f"{name}.png"
        size = f"--window-size={WIDTH},{HEIGHT}"
        _chromium(tmp, f"--screenshot={shot}", size, page.as_uri())
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert struct.unpack(">II", data[16:24]) == (WIDTH, HEIGHT)  # IHDR width, height
        assert len(data) > 20_000, len(data)
    # The eigenvalue and convergence plots lie in the first 3000 px: both colours show.
    blue, orange = _plot_pixels(shots["report"])
    assert blue > 500 and orange > 500, (blue, orange)
    assert _plot_pixels(shots["broken"]) == (0, 0)


def test_report_of_a_real_analysis(tmp_path):
    """``lf.analyze`` on a small MLP, its HTML opened in the browser: every section and plot."""
    import torch
    from torch import nn

    import landscape_fast as lf

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    X, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    report = lf.analyze(model, "ce", (X, y), lr=0.1, top_k=3, slq_steps=20)
    page = report.to_html(tmp_path / "report.html")
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout.decode("utf-8")
    for key in report.quantities:
        assert f'<section id="{key}">' in dom, key
    assert dom.count('<img src="data:image/png;base64,') == 4
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", page.as_uri())
    assert min(_plot_pixels(shot)) > 500
