"""Geometry measures on a model's loss landscape: sharpness, gradient noise, linear stability.

Each function returns a small frozen dataclass with the value, its uncertainty where it has
one, the settings that produced it and a one-line ``describe()``.
"""

from landscape_fast.geometry.gradient_noise import GradientNoise, gradient_noise
from landscape_fast.geometry.sharpness import Sharpness, sharpness
from landscape_fast.geometry.stability import Stability, stability

__all__ = ["GradientNoise", "Sharpness", "Stability", "gradient_noise", "sharpness", "stability"]
