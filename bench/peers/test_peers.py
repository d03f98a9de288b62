"""Smoke test: the whole peer harness on the tiny digits MLP, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from . import reference, systems, workloads
from .__main__ import main


def _rows(path: Path) -> list[list[str]]:
    quantities = ("top1", "trace", "density")
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in path.read_text().splitlines()
        if line.startswith("| ")
        and line[2:].split(" ", 1)[0] in quantities
        and line.count("|") == 11  # the main table (10 columns), not the headline
    ]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_harness_on_tiny_digits_mlp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a peer that cannot be imported must show up as "not installed: <error>"
    monkeypatch.setattr(systems.ScipyArpack, "module", "no_such_module_for_the_test")
    monkeypatch.setattr(systems, "DENSITY_STEPS", 12)
    monkeypatch.setattr(systems, "DENSITY_PROBES", 2)
    out = tmp_path / "peers.md"
    argv = ["--tiny", "--workloads", "digits_mlp", "--quantities", "top1", "trace", "density"]
    argv += ["--repeats", "1", "--max-matvecs", "400", "--quiet", "--out", str(out)]
    argv += ["--reference-cache", str(tmp_path / "refs")]
    assert main(argv) == 0
    rows = _rows(out)
    names = list(systems.SYSTEMS)
    # one row per system × quantity × mode
    assert len(rows) == len(names) * 3 * 2
    by = {(r[0], r[1], r[2]): r for r in rows}
    for q in ("top1", "trace", "density"):
        for s in names:
            assert (q, s, "default") in by and (q, s, "matched") in by
    assert by[("top1", "scipy_arpack", "matched")][4].startswith("not installed: ")
    ours = by[("top1", "ours", "matched")]
    assert ours[4].startswith("met"), ours
    assert float(ours[8].split()[-1]) <= 1e-4
    assert by[("trace", "ours", "matched")][4].startswith("met")
    # PyHessian's density calls the removed torch.eig: the crash is in the table ...
    if systems.PyHessian().import_error() is None:
        assert by[("density", "pyhessian_unpatched", "default")][4].startswith("error: ")
        # ... and the patched run works
        assert by[("density", "pyhessian", "matched")][4].startswith("ok")
    text = out.read_text()
    assert "Headline (digits_mlp)" in text and "| top1 |" in text


def test_reference_cache_is_keyed_by_the_model_and_reused(tmp_path: Path) -> None:
    w = workloads.load("digits_mlp", tiny=True, trained=False)
    ref, hit = reference.cached(w, tmp_path)
    assert not hit and len(list(tmp_path.iterdir())) == 1
    again, hit = reference.cached(w, tmp_path)
    assert hit and again.method == ref.method and again.trace == ref.trace
    np.testing.assert_array_equal(again.eigenvalues, ref.eigenvalues)
    np.testing.assert_array_equal(again.top, ref.top)
    with torch.no_grad():
        next(w.model.parameters())[0, 0] += 1.0  # another model: another key
    assert not reference.cached(w, tmp_path)[1]
    assert len(list(tmp_path.iterdir())) == 2


def test_fingerprint_covers_batchnorm_buffers() -> None:
    w = workloads.load("resnet20", tiny=True, trained=False)
    key = reference.fingerprint(w)  # BatchNorm's 0-dim step counter included
    with torch.no_grad():
        next(b for n, b in w.model.named_buffers() if n.endswith("running_var")).mul_(2.0)
    assert len(key) == 64 and reference.fingerprint(w) != key


def test_trace_shrink_predicts_from_the_standard_error() -> None:
    raw = systems.Raw(trace=2.0, stderr=0.0049 * 2.0, matvecs=99)
    # 1.15 · 99 · 0.49² ≈ 28, but at most halved per step: 50, rounded up to 51 (÷ 3)
    assert systems._trace_shrink("n", {"n": 99}, raw, multiple=3) == {"n": 51}
    raw = systems.Raw(trace=2.0, stderr=0.0095 * 2.0, matvecs=51)
    assert systems._trace_shrink("n", {"n": 51}, raw, multiple=3) is None  # no room left
    assert systems._trace_shrink("n", {"n": 51}, systems.Raw(matvecs=51)) is None  # no SE


def test_cheaper_settings_are_a_half_decade_or_a_smaller_basis() -> None:
    w = workloads.load("digits_mlp", tiny=True, trained=False)
    raw = systems.Raw(matvecs=10)
    ours = systems.Ours()
    (looser,) = ours.shrink("top1", w, {"tol": 1e-3}, raw)
    assert looser["tol"] == pytest.approx(10**-2.5)
    assert ours.shrink("top1", w, looser, raw) == []  # half-decades are not split again
    assert ours.shrink("trace", w, {"method": "hutch++", "rtol": 0.01}, raw) == []
    arpack = systems.ScipyArpack().shrink("top5", w, {"tol": 0.1}, raw)
    assert arpack[0]["tol"] == pytest.approx(10**-0.5) and arpack[1] == {"tol": 0.1, "ncv": 10}
    assert systems.ScipyArpack().shrink("top1", w, {"tol": 0.0, "ncv": 3}, raw) == []
    eig = systems.Eigenthings().shrink("top5", w, {"max_iter": 20, "reorthogonalize": True}, raw)
    assert eig == [{"max_iter": 15, "reorthogonalize": True}]
