"""The l_inf Square Attack (Andriushchenko et al., "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020): score queries only, no gradient. A model that
hides its gradient (gradient masking) stops the gradient attacks but not this one.
"""
from __future__ import annotations

import math

import torch

from attacks.base import (DEFAULT_EPS, DEFAULT_SCORE_MIDDLE, AttackResult, attack_direction, check_pixels, eval_mode,
                          keep_better, score_patches)
from families.base import QualityModel

SQUARE_QUERIES = 1000  # the square attack's default budget: score queries per image
SQUARE_P_INIT = 0.05  # initial fraction of an image's pixels in a square: the paper's value for l_inf on ImageNet
# The paper's schedule of the square size is written for 10000 queries and rescaled to the budget: the
# fraction p_init is halved each time the rescaled query index passes one of these milestones.
SQUARE_SCHEDULE_QUERIES = 10000
SQUARE_HALVING_MILESTONES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(query: int, queries: int, p_init: float = SQUARE_P_INIT) -> float:
    """Fraction of an image's pixels covered by the square of window query `query` (0-based) out of a
    budget of `queries`: the paper's schedule, p_init halved at each of SQUARE_HALVING_MILESTONES that
    the query index, rescaled to SQUARE_SCHEDULE_QUERIES, has passed (p_init / 512 at the end)."""
    rescaled = int(query / queries * SQUARE_SCHEDULE_QUERIES)
    return p_init / 2 ** sum(rescaled > milestone for milestone in SQUARE_HALVING_MILESTONES)


def square_side(fraction: float, height: int, width: int) -> int:
    """Side (pixels) of a square covering `fraction` of a height x width image: at least 1, and
    smaller than the image, so that it has more than one place to go."""
    return max(1, min(round(math.sqrt(fraction * height * width)), min(height, width) - 1))


def _random_signs(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """-1 or +1 with equal chance, drawn on the CPU from `generator`, as `like`'s dtype and device."""
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(like.device, like.dtype)


def square(model: QualityModel, pixels: torch.Tensor, eps: float = DEFAULT_EPS, queries: int = SQUARE_QUERIES,
           middle: float = DEFAULT_SCORE_MIDDLE, generator: torch.Generator | None = None,
           chunk_size: int | None = None, p_init: float = SQUARE_P_INIT) -> AttackResult:
    """The l_inf Square Attack on pixel images (B, 3, H, W) in [0, 1]: random search on the vertices of
    the eps-ball (pixel units), with `queries` score queries per image and no gradient.

    Query 1 scores the start: vertical stripes, each column of each channel moved by +eps or -eps.
    Each further query scores, for every image, a candidate whose square window (side from
    `square_fraction`, at a random place) is set to clean + eps or clean - eps, one sign per channel;
    an image takes its candidate only where the score moved further in its direction. Every image
    stays in the eps-ball and in [0, 1]. The clean images' scores, which choose the directions, are
    not counted as queries. All random draws come from `generator` (on the CPU), for the whole batch
    at once, so the result does not depend on `chunk_size`. Two differences from the paper's code: a
    window whose new signs change nothing is not redrawn (it costs its query), and a window's top
    and left offsets are drawn from [0, H - side] and [0, W - side], the last offset included, so
    that a window can touch the bottom and right edges (the paper's code draws them from
    [0, H - side), leaving the last row and column of offsets out).
    """
    check_pixels(pixels)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if queries < 1:
        raise ValueError(f"queries must be >= 1, got {queries}")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be a fraction of the image in (0, 1], got {p_init}")
    clean = pixels.detach()
    batch, channels, height, width = clean.shape
    rows = torch.arange(height, device=clean.device)
    columns = torch.arange(width, device=clean.device)

    with eval_mode(model), torch.no_grad():
        clean_scores = score_patches(model, clean, chunk_size)  # each call: one query for every image
        direction = attack_direction(clean_scores, middle)
        stripes = _random_signs((batch, channels, 1, width), generator, clean)
        best = (clean + eps * stripes).clamp(0.0, 1.0)
        best_gain = direction * (score_patches(model, best, chunk_size) - clean_scores)
        for query in range(queries - 1):
            side = square_side(square_fraction(query, queries, p_init), height, width)
            top = torch.randint(0, height - side + 1, (batch, 1), generator=generator).to(clean.device)
            left = torch.randint(0, width - side + 1, (batch, 1), generator=generator).to(clean.device)
            signs = _random_signs((batch, channels, 1, 1), generator, clean)
            in_rows = (rows >= top) & (rows < top + side)  # (B, H)
            in_columns = (columns >= left) & (columns < left + side)  # (B, W)
            window = (in_rows[:, :, None] & in_columns[:, None, :])[:, None]  # (B, 1, H, W)
            candidate = torch.where(window, (clean + eps * signs).clamp(0.0, 1.0), best)
            gain = direction * (score_patches(model, candidate, chunk_size) - clean_scores)
            best, best_gain = keep_better(best, best_gain, candidate, gain)
    return AttackResult(best, clean_scores)
