"""The self-contained HTML page: sections, images, escaping, formatting, atomic write."""

from __future__ import annotations

import base64
import os
import re
from html.parser import HTMLParser

from landscape_fast.report import render_html, write_html
from landscape_fast.report.html import _fmt, _fmt_pm

from .conftest import SECTIONS

IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


class _Collect(HTMLParser):
    """Section ids (with the img count inside each) and every tag's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, int] = {}
        self.current: str | None = None
        self.attrs: list[tuple[str, str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.attrs += [(tag, k, v) for k, v in attrs]
        if tag == "section":
            self.current = dict(attrs)["id"]
            self.sections[self.current] = 0
        elif tag == "img" and self.current is not None:
            self.sections[self.current] += 1

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None


def _parse(page: str) -> _Collect:
    p = _Collect()
    p.feed(page)
    return p


def test_every_section_in_order_with_its_plots(report, full_page):
    page = full_page
    parsed = _parse(page)
    assert list(parsed.sections) == [*SECTIONS, "settings"]
    assert parsed.sections == {
        **{k: 0 for k in SECTIONS},
        "eigenvalues_top": 2,  # eigenvalues + convergence
        "spectral_density": 1,
        "sharpness": 1,
        "settings": 0,
    }
    images = IMG_RE.findall(page)
    assert len(images) == 4
    for b64 in images:
        assert base64.b64decode(b64, validate=True).startswith(b"\x89PNG\r\n\x1a\n")
    for key in SECTIONS:
        assert f'<section id="{key}">' in page
        describe = report["quantities"][key].get("describe")
        if describe:
            assert describe.replace("&", "&amp;").replace("<", "&lt;") in page


def test_self_contained(full_page):
    page = full_page
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    for tag, attr, value in _parse(page).attrs:
        if attr in ("src", "href"):
            assert value.startswith("data:"), (tag, attr, value[:40])


def test_header_and_tables(full_page):
    page = full_page
    for text in ("digits MLP 64-32-10", "2,410", "1,797", "cpu", "19.3", "4,530", "0.0113"):
        assert text in page
    assert "Incomplete report" not in page
    assert "<th>value</th><td>154.7 ± 1.94</td>" in page  # trace
    assert "<th>value</th><td>2275.3</td>" in page  # stderr NaN -> null -> no ± part
    assert "<th>rank</th><td>412.3 ± 11.8</td>" in page
    assert "<th>effective_dimension.z</th><td>1</td>" in page
    assert "<th>average</th><td>0.000525 ± 2.5e-05</td>" in page  # sharpness.average
    assert "<th>worst.lower_bound</th><td>yes</td>" in page
    assert "<th>worst.ascent_steps</th><td>5</td>" in page  # extra keys shown generically
    assert "<th>b_noise</th><td>3120 ± 210.5</td>" in page
    assert "b_noise_stderr" not in page
    assert "<th>values.undefined</th><td>n/a</td>" in page
    assert "<th>values</th><td>38.2, 21.7, 9.93, 4.41, 3.02</td>" in page
    assert "<th>grid</th>" not in page  # long plot data stays in the plot
    # sharpness has no describe of its own: those of worst/average/taylor are shown
    assert "Worst-case sharpness at rho=0.05" in page
    # settings and versions
    assert "<th>budget.seconds</th><td>120</td>" in page
    assert "<th>budget.matvecs</th><td>n/a</td>" in page
    assert "<th>landscape_fast_version</th><td>0.1.0</td>" in page


def test_formatting():
    assert _fmt(None) == _fmt(float("nan")) == "n/a"
    assert _fmt(3.141592653589793) == "3.1416"
    assert _fmt(1.23456789e-7) == "1.2346e-07"
    assert _fmt(1234567) == "1,234,567"
    assert _fmt(True) == "yes"
    assert _fmt_pm(2.0, None) == "2"
    assert _fmt_pm(2.0, 0.125) == "2 ± 0.125"


def test_incomplete_report_banner_and_missing_sections(partial_report):
    page = render_html(partial_report)
    parsed = _parse(page)
    missing = {"eigenvalues_bottom", "spectral_density", "sharpness", "pac_bayes"}
    assert set(parsed.sections) == (set(SECTIONS) - missing) | {"settings"}
    for key in missing:
        assert f'id="{key}"' not in page
    assert 'class="warning"' in page and "Incomplete report" in page
    assert "budget of 120 s exhausted" in page
    assert "failed: CUDA out of memory" in page
    assert "needs &lt;train_error&gt; &amp; sigma" in page  # reasons are escaped
    assert len(IMG_RE.findall(page)) == 2  # eigenvalues + convergence
    assert parsed.sections["eigenvalues_top"] == 2


def test_bottom_only_gets_the_eigenvalue_plots(report):
    del report["quantities"]["eigenvalues_top"]
    assert _parse(render_html(report)).sections["eigenvalues_bottom"] == 2


def test_escapes_injected_text(report, monkeypatch):
    monkeypatch.setattr("landscape_fast.report.html.figure_pngs", lambda r: {})  # text only
    evil = '<script>alert("x")</script>'
    report["quantities"]["trace"]["describe"] = evil
    report["quantities"]["trace"]["method"] = evil
    report["model"]["name"] = evil
    report["settings"]["quantities"] = [evil]
    report["quantities"]["custom_measure"] = {evil: evil, "describe": "extra quantity"}
    page = render_html(report)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert '<section id="custom_measure">' in page  # unknown quantities follow, generically
    assert list(_parse(page).sections)[-2:] == ["custom_measure", "settings"]


def test_minimal_and_empty_reports():
    page = render_html({})
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert list(_parse(page).sections) == ["settings"]
    assert "Incomplete report" not in page
    assert "Incomplete report" in render_html({"complete": False})


def test_write_html_atomic(report, full_page, tmp_path):
    path = tmp_path / "out" / "report.html"
    assert write_html(report, path) == path
    assert path.read_text(encoding="utf-8") == full_page
    write_html({"complete": False}, path)  # overwrite in place
    assert "Incomplete report" in path.read_text(encoding="utf-8")
    assert os.listdir(path.parent) == ["report.html"]
