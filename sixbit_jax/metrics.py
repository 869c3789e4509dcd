"""Image-quality metrics between two clips with values in [0, 1] (numpy, float64)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SSIM_SIGMA = 1.5  # Wang et al. 2004: 11x11 Gaussian window, sigma 1.5
SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5 -> 11 taps
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB for data range 1; inf for identical inputs."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(a, b) -> float:
    """Mean structural similarity over every frame and channel of [..., H, W, C] inputs (Gaussian window, data
    range 1, windows clipped at the borders by reflection)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(f"ssim needs two [..., H, W, C] arrays of one shape; got {a.shape} and {b.shape}")
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    sigma = [0.0] * (a.ndim - 3) + [SSIM_SIGMA, SSIM_SIGMA, 0.0]  # blur over H and W only

    def blur(x):
        return ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=SSIM_TRUNCATE)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())
