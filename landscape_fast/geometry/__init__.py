"""Geometry measures on a model's loss landscape: sharpness, gradient noise, linear stability,
PAC-Bayes bounds, saddle index.

Each function returns a small frozen dataclass with the value, its uncertainty where it has
one, the settings that produced it and a one-line ``describe()``.
"""

from landscape_fast.geometry.gradient_noise import GradientNoise, gradient_noise
from landscape_fast.geometry.pac_bayes import (
    PacBayesBound,
    PacBayesFlatness,
    document_theorem_2_2_invalid,
    pac_bayes_bound,
    pac_bayes_flatness,
)
from landscape_fast.geometry.saddles import SaddleIndex, saddle_index
from landscape_fast.geometry.sharpness import Sharpness, sharpness
from landscape_fast.geometry.stability import Stability, stability

__all__ = [
    "GradientNoise",
    "PacBayesBound",
    "PacBayesFlatness",
    "SaddleIndex",
    "Sharpness",
    "Stability",
    "document_theorem_2_2_invalid",
    "gradient_noise",
    "pac_bayes_bound",
    "pac_bayes_flatness",
    "saddle_index",
    "sharpness",
    "stability",
]
