"""``LandscapeReport``: summary flags, JSON safety, access."""

from __future__ import annotations

import json

import pytest
import torch

from landscape_fast.report.landscape_report import LandscapeReport, jsonable


def _report(**sections):
    return LandscapeReport(
        {
            "schema": "landscape_fast.report",
            "schema_version": 1,
            "complete": True,
            "skipped": [],
            "total_seconds": 1.0,
            "total_matvecs": 5,
            "model": {"params": 3, "samples": 2},
            "quantities": sections,
        }
    )


def test_summary_flags_what_did_not_converge():
    r = _report(
        trace={"value": 1.0, "stderr": 0.5, "converged": False, "n_matvecs": 5, "seconds": 1.0},
        eigenvalues_top={"values": [2.0, 1.0], "converged": [True, False], "n_matvecs": 3},
        frobenius_norm_sq={"value": 4.0, "stderr": 0.1, "converged": True, "n_matvecs": 2},
    )
    lines = {line.split()[0]: line for line in r.summary().splitlines()[2:]}
    assert lines["trace"].endswith("NOT CONVERGED")
    assert lines["eigenvalues_top"].endswith("NOT CONVERGED")
    assert "NOT" not in lines["frobenius_norm_sq"]
    assert r["trace"]["value"] == 1.0 and "complete=True" in repr(r)


def test_json_is_strict_and_tensors_are_lists(tmp_path):
    data = jsonable(
        {"a": torch.tensor([1.0, float("inf")]), "b": torch.tensor(2.5), "d": torch.float32}
    )
    assert data == {"a": [1.0, None], "b": 2.5, "d": "float32"}
    r = _report(trace={"value": float("nan"), "n_matvecs": 0})
    with pytest.raises(ValueError):  # NaN must have been made None before: strict JSON
        r.to_json()
    r = _report(trace=jsonable({"value": float("nan"), "n_matvecs": 0}))
    assert json.loads(r.to_json(tmp_path / "r.json"))["quantities"]["trace"]["value"] is None
