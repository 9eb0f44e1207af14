"""Structural similarity (SSIM) of image pairs: Wang, Bovik, Sheikh and Simoncelli, "Image Quality
Assessment: From Error Visibility to Structural Similarity", IEEE TIP 2004.

Local means, variances and the covariance are taken under an 11x11 Gaussian window (sigma 1.5,
weights summing to 1), at every position where the window lies inside the image (no padding):

    SSIM = mean over positions of (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))

with C1 = (K1 L)^2, C2 = (K2 L)^2, K1 = 0.01, K2 = 0.03 and L the dynamic range (1 for images in
[0, 1]). Variances and covariance are window-weighted (no sample-size correction), as in the paper.
Colour images: SSIM per channel, then the mean over the channels. The sums run in the images' dtype
(float32 or float64; half precision is promoted to float32): in float32, the variances lose about
1e-7 of the dynamic range to rounding, a thousandth of C2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW_SIZE = 11  # side of the Gaussian window, pixels
WINDOW_SIGMA = 1.5  # its standard deviation, pixels
K1, K2 = 0.01, 0.03  # the paper's stabilizing constants, as fractions of the dynamic range


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> torch.Tensor:
    """The 1-D Gaussian weights (size,), float64, summing to 1; the 2-D window is their outer product."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    return weights / weights.sum()


def _local_mean(maps: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted mean of every channel of `maps` (B, C, H, W) over the valid positions:
    (B, C, H - size + 1, W - size + 1). The window is separable: a row pass, then a column pass."""
    channels, size = maps.shape[1], window.numel()
    rows = window.view(1, 1, 1, size).expand(channels, 1, 1, size)
    columns = window.view(1, 1, size, 1).expand(channels, 1, size, 1)
    return F.conv2d(F.conv2d(maps, rows, groups=channels), columns, groups=channels)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each image pair: x, y (B, C, H, W) on the same scale (`data_range`: 1 for [0, 1]),
    H and W at least 11. Returns (B,) (1 for identical images), without gradients."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two image batches of the same shape (B, C, H, W), got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if min(x.shape[-2:]) < WINDOW_SIZE:
        raise ValueError(f"SSIM needs images of at least {WINDOW_SIZE}x{WINDOW_SIZE} pixels, got {tuple(x.shape[-2:])}")
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    with torch.no_grad():
        a, b = x.detach().to(dtype), y.detach().to(dtype)
        window = gaussian_window().to(device=a.device, dtype=dtype)
        channels = x.shape[1]
        # The five local moments in one pass: E[x], E[y], E[x^2], E[y^2], E[xy]  (B, 5C, H', W')
        moments = _local_mean(torch.cat([a, b, a * a, b * b, a * b], dim=1), window)
        mu_x, mu_y, xx, yy, xy = moments.split(channels, dim=1)
        var_x, var_y, cov = xx - mu_x ** 2, yy - mu_y ** 2, xy - mu_x * mu_y
        index_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        return index_map.mean(dim=(1, 2, 3))
