"""Synthetic report dicts in the schema of ``LandscapeReport.to_dict()`` (version 1)."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

SECTIONS = (
    "eigenvalues_top",
    "eigenvalues_bottom",
    "condition_numbers",
    "outliers",
    "trace",
    "frobenius_norm_sq",
    "spectral_density",
    "sharpness",
    "gradient_noise",
    "stability",
    "pac_bayes",
)


def _eigen(end: str, values: list[float], tol: float, start: float) -> dict[str, Any]:
    history = [{"n_matvecs": 10 * (i + 1), "max_residual": start * 0.35**i} for i in range(14)]
    return {
        "values": values,
        "residuals": [tol * 0.1 * (i + 1) for i in range(len(values))],
        "converged": [True] * (len(values) - 1) + [False],
        "tol": tol,
        "n_matvecs": history[-1]["n_matvecs"],
        "seconds": 0.81,
        "describe": f"{end} {len(values)} Hessian eigenvalues by block Lanczos (tol {tol:g}).",
        "history": history,
    }


def _density() -> dict[str, Any]:
    grid = [-2.0 + 0.06 * i for i in range(200)]
    density = [
        1e-9 + 3.0 * math.exp(-(g**2) / 0.02) + 0.02 * math.exp(-((g - 4.0) ** 2)) for g in grid
    ]
    density[5] = float("nan")  # a NaN on the grid becomes null in the dict
    return {
        "grid": grid,
        "density": density,
        "outliers": [38.2, 21.7, 9.93],
        "rank": {"value": 412.3, "stderr": 11.8},
        "negative_mass": {"value": 0.0712, "stderr": 0.0049},
        "effective_dimension": {"value": 18.44, "stderr": 0.92, "z": 1.0},
        "n_matvecs": 1600,
        "seconds": 6.3,
        "describe": "Spectral density by SLQ, 16 probes x 100 Lanczos steps.",
    }


def _sharpness() -> dict[str, Any]:
    vs_rho = []
    for rho in (0.005, 0.01, 0.02, 0.05, 0.1):
        vs_rho.append(
            {
                "rho": rho,
                "worst": 19.1 * rho**2,
                "average": 0.21 * rho**2,
                "average_stderr": 0.01 * rho**2,
                "taylor": 19.0 * rho**2,
            }
        )
    vs_rho[-1]["taylor"] = None
    return {
        "rho": 0.05,
        "norm": "l2",
        "worst": {
            "value": 0.04775,
            "lower_bound": True,
            "describe": "Worst-case sharpness at rho=0.05 (l2): >= 0.04775 (ascent lower bound).",
            "ascent_steps": 5,
        },
        "average": {
            "value": 5.25e-4,
            "stderr": 2.5e-5,
            "describe": "Average sharpness at rho=0.05: 5.25e-4 ± 2.5e-5 (64 draws).",
            "n_draws": 64,
        },
        "taylor": {"value": 0.0475, "describe": "Second-order estimate rho^2 lambda_max / 2."},
        "vs_rho": vs_rho,
        "n_matvecs": 320,
        "seconds": 2.2,
    }


def _full_report() -> dict[str, Any]:
    q = {
        "eigenvalues_top": _eigen("Top", [38.2, 21.7, 9.93, 4.41, 3.02], 1e-4, 40.0),
        "eigenvalues_bottom": _eigen("Bottom", [-0.912, -0.403, -0.117], 1e-4, 5.0),
        "condition_numbers": {
            "values": {"top_over_bottom_abs": 41.89, "top_over_kth": 12.65, "undefined": None},
            "describe": "Ratios of computed eigenvalue magnitudes.",
        },
        "outliers": {"count": 3, "gaps": [16.5, 11.77, 5.52], "describe": "3 outliers."},
        "trace": {
            "value": 154.7,
            "stderr": 1.94,
            "n_matvecs": 200,
            "method": "xtrace",
            "seconds": 1.1,
            "describe": "tr(H) = 154.7 ± 1.94 (XTrace, 200 matvecs).",
        },
        "frobenius_norm_sq": {
            "value": 2275.3,
            "stderr": float("nan"),
            "n_matvecs": 200,
            "method": "hutchinson",
            "seconds": 1.2,
            "describe": "||H||_F^2 = 2275.3 (Hutchinson).",
        },
        "spectral_density": _density(),
        "sharpness": _sharpness(),
        "gradient_noise": {
            "trace_sigma": 812.4,
            "grad_norm_sq": 0.0183,
            "b_simple": 44393.4,
            "b_noise": 3120.0,
            "b_noise_stderr": 210.5,
            "temperature": 0.00631,
            "seconds": 3.4,
            "describe": "Gradient noise scale B_simple = 4.44e4 (per-sample gradients).",
        },
        "stability": {
            "lr": 0.05,
            "lambda_max": 38.2,
            "threshold": 40.0,
            "verdict": "stable (edge of stability)",
            "seconds": 0.0,
            "describe": "lr * lambda_max = 1.91 < 2: gradient descent is linearly stable.",
        },
        "pac_bayes": {
            "bound": 0.3124,
            "train_error": 0.0211,
            "sigma": 0.0123,
            "delta": 0.05,
            "seconds": 4.1,
            "describe": "PAC-Bayes bound on the 0-1 error: 0.3124 (delta 0.05).",
        },
    }
    report = {
        "schema": "landscape_fast.report",
        "schema_version": 1,
        "landscape_fast_version": "0.1.0",
        "created": "2026-11-28T19:40:00Z",
        "complete": True,
        "model": {
            "name": "digits MLP 64-32-10",
            "params": 2410,
            "samples": 1797,
            "device": "cpu",
            "dtype": "float64",
            "operator": "hessian",
            "mode": "eval",
        },
        "settings": {
            "quantities": list(SECTIONS),
            "lr": 0.05,
            "batch_size": 128,
            "budget": {"seconds": 120.0, "matvecs": None},
            "seed": 0,
        },
        "total_seconds": 19.3,
        "total_matvecs": 4530,
        "gradient_seconds": 0.0113,
        "skipped": [],
        "quantities": q,
    }
    # What to_dict() promises: JSON-safe, NaN written as null.
    text = json.dumps(report, allow_nan=True).replace("NaN", "null")
    return json.loads(text)


FULL = _full_report()


@pytest.fixture
def report() -> dict[str, Any]:
    """Every section of the schema filled with plausible numbers."""
    return copy.deepcopy(FULL)


@pytest.fixture
def partial_report() -> dict[str, Any]:
    """Sections missing, ``complete`` false and the skips recorded."""
    r = copy.deepcopy(FULL)
    for key in ("eigenvalues_bottom", "spectral_density", "sharpness", "pac_bayes"):
        del r["quantities"][key]
    r["complete"] = False
    r["skipped"] = [
        {"quantity": "spectral_density", "reason": "budget of 120 s exhausted"},
        {"quantity": "sharpness", "reason": "failed: CUDA out of memory"},
        {"quantity": "pac_bayes", "reason": "needs <train_error> & sigma"},
    ]
    return r


@pytest.fixture(scope="session")
def full_pngs() -> dict[str, bytes]:
    """``figure_pngs`` of the full report, drawn once (plots take ~0.2 s each)."""
    from landscape_fast.report import figure_pngs

    return figure_pngs(copy.deepcopy(FULL))


@pytest.fixture(scope="session")
def full_page() -> str:
    """``render_html`` of the full report, rendered once."""
    from landscape_fast.report import render_html

    return render_html(copy.deepcopy(FULL))
